"""Structured logs: one record per event, written as a text line or a JSON object.

Code logs an event with :func:`log_event` (a name plus fields).  The
record's message is the text line, ``<event> key=value ...``, so every
handler shows it (with ``--log-format text``: ``<time> <LEVEL> <logger>:
<event> key=value ...``); with ``--log-format json`` :class:`JsonFormatter`
writes one JSON object per line with the same fields plus ``time``,
``level``, ``logger`` and ``event``.  Records logged the ordinary way (a
message, no fields) come out as ``message``.

What never reaches a log, whatever the handler: fields named in
:data:`SECRET_FIELDS` (tokens, audio) and bytes values; fields named in
:data:`TRANSCRIPT_FIELDS` (what was said) unless :func:`configure_logging`
was told ``log_transcripts``.  They are dropped by :func:`log_event` itself.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = [
    "LOG_FORMATS",
    "SECRET_FIELDS",
    "TRANSCRIPT_FIELDS",
    "JsonFormatter",
    "configure_logging",
    "log_event",
]

LOG_FORMATS = ("text", "json")
SECRET_FIELDS = frozenset({"token", "tokens", "authorization", "audio", "pcm", "samples"})
TRANSCRIPT_FIELDS = frozenset({"text", "result", "nbest", "transcript", "segments", "times"})

_log_transcripts = False


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (secrets and, by default, transcripts dropped)."""
    if not logger.isEnabledFor(level):
        return
    kept = {
        key: value
        for key, value in fields.items()
        if key not in SECRET_FIELDS
        and not isinstance(value, (bytes, bytearray, memoryview))
        and (_log_transcripts or key not in TRANSCRIPT_FIELDS)
    }
    logger.log(level, _text_line(event, kept), extra={"event": event, "fields": kept})


def _text_line(event: str, fields: dict[str, Any]) -> str:
    return " ".join([event, *(f"{key}={_text_value(value)}" for key, value in fields.items())])


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = event
            for key, value in getattr(record, "fields", {}).items():
                out.setdefault(key, value)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "warning", fmt: str = "text", *, log_transcripts: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Send all logging to ``stream`` (default stderr) in ``fmt``; returns the handler."""
    global _log_transcripts
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    _log_transcripts = log_transcripts
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if fmt == "json" else text)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
