"""Structured logs: the same fields in text and JSON; secrets and transcripts kept out."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from trio_asr.serving.logs import configure_logging, log_event


@pytest.fixture
def capture():
    """Configure logging into a buffer; yields a function returning the lines."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffers = []

    def setup(fmt: str, **options) -> callable:
        buffer = io.StringIO()
        buffers.append(buffer)
        configure_logging("info", fmt, stream=buffer, **options)
        return lambda: buffer.getvalue().splitlines()

    yield setup
    configure_logging(stream=io.StringIO())  # transcripts off again
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


log = logging.getLogger("trio_asr.test")

STREAM_FIELDS = dict(conn=3, name="my talk.wav", audio_s=2.5, rtf=0.0421, outcome="completed")


def test_text_and_json_carry_the_same_fields(capture):
    text_lines = capture("text")
    log_event(log, "stream", **STREAM_FIELDS)
    [line] = text_lines()
    assert re.fullmatch(
        r"\S+ \S+ INFO trio_asr\.test: stream conn=3 name=\"my talk\.wav\" audio_s=2\.5 rtf=0\.042 outcome=completed",
        line,
    ), line

    json_lines = capture("json")
    log_event(log, "stream", **STREAM_FIELDS)
    [line] = json_lines()
    record = json.loads(line)
    assert record.pop("time").endswith("+00:00")
    assert record == {"level": "info", "logger": "trio_asr.test", "event": "stream", **STREAM_FIELDS}


def test_json_plain_messages_and_exceptions(capture):
    lines = capture("json")
    log.warning("received %s: shutting down", "SIGTERM")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("connection id=%d failed", 7)
    first, second = map(json.loads, lines())
    assert first["message"] == "received SIGTERM: shutting down" and first["level"] == "warning"
    assert second["message"] == "connection id=7 failed"
    assert "RuntimeError: boom" in second["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tokens_audio_and_transcripts_never_logged_by_default(capture, fmt):
    lines = capture(fmt)
    log_event(log, "stream", conn=1, token="tok-SECRET", audio=b"\x01\x02", samples=b"RAWPCM",
              text="the words said", nbest=["the words said"], outcome="completed")
    [line] = lines()
    for secret in ("tok-SECRET", "RAWPCM", "words said", "\\x01"):
        assert secret not in line
    assert "completed" in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_transcripts_only_with_log_transcripts(capture, fmt):
    lines = capture(fmt, log_transcripts=True)
    log_event(log, "stream", conn=1, token="tok-SECRET", text="the words said")
    [line] = lines()
    assert "the words said" in line
    assert "tok-SECRET" not in line


def test_events_below_the_level_cost_nothing(capture):
    lines = capture("json")
    log_event(log, "frame", logging.DEBUG, n=1)
    assert lines() == []


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("info", "xml", stream=io.StringIO())


def test_any_handler_sees_the_text_line_without_secrets(caplog):
    caplog.set_level(logging.INFO)
    log_event(log, "stream", token="tok-SECRET", text="the words said", **STREAM_FIELDS)
    [record] = caplog.records
    assert record.getMessage() == 'stream conn=3 name="my talk.wav" audio_s=2.5 rtf=0.042 outcome=completed'
