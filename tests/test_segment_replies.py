"""Segments over the wire: ``start``'s endpoint/compact fields, the replies
built from segmented results, and whole sessions against the server.

- the ``start`` additions are validated (1007 for shape, 1008 for bounds)
  and fill in the server's rules;
- a default-mode client gets the spec's replies (full ``result``) plus, in
  replies that close segments, each segment announced once;
- a compact client's ``result`` is the open segment only, and its sequence
  of announced segments spells exactly the default mode's full text;
- lock-step and pipelined clients get one reply per binary frame.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import attrs
import numpy as np
import pytest
import trio
import trio_websocket
from paths import SPEECH_FILES
from serverutil import end_msg, recv_json, start_msg, ws_url
from test_segments import frames, segmented

from trio_asr.audio import read_wav
from trio_asr.serving.config import ConfigError, ServerConfig
from trio_asr.serving.config_file import load_config
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.protocol.messages import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_POLICY_VIOLATION,
    ErrorReply,
    PartialResult,
    SegmentFinal,
    StartStream,
    encode_reply,
)
from trio_asr.recognition.model import load_model
from trio_asr.protocol.connection import ConnectionProtocol
from trio_asr.protocol.limits import ProtocolLimits
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.protocol.replies import ReplyBuilder
from trio_asr.recognition.segments import join_texts
from trio_asr.serving.server import serve

SERVER_RULES = EndpointRules(silence_without_text=3.0, silence_after_text=1.0, max_segment=30)


def start(**fields: object) -> StartStream | ErrorReply:
    proto = ConnectionProtocol(ProtocolLimits(endpoint=SERVER_RULES))
    events = proto.receive_text(json.dumps({"name": "a.wav", "signal": "start", **fields}))
    return events[-1]


# ------------------------------------------------------------ start fields


def test_start_without_additions_uses_the_server_rules() -> None:
    event = start()
    assert isinstance(event, StartStream) and event.options.endpoint is None and not event.compact


def test_start_endpoint_fields_override_the_server_rules() -> None:
    event = start(endpoint={"silenceAfterText": 0.5, "silenceWithoutText": None, "maxSegment": 10}, compact=True)
    assert isinstance(event, StartStream) and event.compact
    assert event.options.endpoint == EndpointRules(silence_without_text=None, silence_after_text=0.5, max_segment=10.0)
    partial = start(endpoint={"maxSegment": 5})
    assert isinstance(partial, StartStream)
    assert partial.options.endpoint == attrs.evolve(SERVER_RULES, max_segment=5.0)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"endpoint": 1.0}, CLOSE_INVALID_PAYLOAD),
        ({"endpoint": {"pause": 1.0}}, CLOSE_INVALID_PAYLOAD),
        ({"endpoint": {"silenceAfterText": "1"}}, CLOSE_INVALID_PAYLOAD),
        ({"endpoint": {"silenceAfterText": True}}, CLOSE_INVALID_PAYLOAD),
        ({"endpoint": {"maxSegment": None}}, CLOSE_INVALID_PAYLOAD),
        ({"endpoint": {"silenceAfterText": 0.01}}, CLOSE_POLICY_VIOLATION),
        ({"endpoint": {"silenceWithoutText": 1e9}}, CLOSE_POLICY_VIOLATION),
        ({"endpoint": {"maxSegment": 1e6}}, CLOSE_POLICY_VIOLATION),
        ({"endpoint": {"maxSegment": float("nan")}}, CLOSE_POLICY_VIOLATION),  # NaN: never within bounds
        ({"endpoint": {"maxSegment": 10**400}}, CLOSE_POLICY_VIOLATION),  # too large for a float
        ({"compact": "yes"}, CLOSE_INVALID_PAYLOAD),
    ],
)
def test_bad_start_additions_are_refused(fields: dict, code: int) -> None:
    event = start(**fields)
    assert isinstance(event, ErrorReply) and event.code == code and event.signal == "start"
    assert "\n" not in event.message
    if code == CLOSE_POLICY_VIOLATION:
        assert "endpoint" in event.message and ("between" in event.message or "bounds" in event.message)


def test_serve_settings_make_the_default_rules() -> None:
    config = load_config(None, {"endpoint_silence_after_text": 0.8, "endpoint_silence_without_text": 0.0})
    assert config.protocol_limits().endpoint == EndpointRules(
        silence_without_text=None, silence_after_text=0.8, max_segment=20.0
    )
    for key, value in [("endpoint_max_segment", 500.0), ("endpoint_silence_after_text", 0.01)]:
        with pytest.raises(ConfigError, match=key):
            load_config(None, {key: value})


# ------------------------------------------------------------ replies


def results():
    """Partial results of a synthetic stream with two segments closing."""
    d = segmented()
    out = []
    for spec in ["he llo", "_*12 wor", "ld _*12 你", "好", "_*3"]:
        d.accept(frames(spec))
        out.append(d.result())
    d.accept(frames("a"))
    return out, d.result(final=True)


def test_default_replies_are_the_spec_until_a_segment_closes() -> None:
    partials, final = results()
    replies = ReplyBuilder(StartStream("a.wav", 1, 16, StreamOptions(nbest=1, sample_rate=16000)))
    sent = [replies.partial(r) for r in partials]
    assert [json.loads(encode_reply(r)) for r in sent[:1]] == [{"result": "hello"}]
    assert [r.text for r in sent] == ["hello", "hello wor", "hello world你", "hello world你好", "hello world你好"]
    assert [[s.index for s in r.segments] for r in sent] == [[], [0], [1], [], []]
    assert [r.segment for r in sent] == [None, 1, 2, None, None]
    end = replies.final(final)
    assert end.text == "hello world你好a" and [w for w, _, _ in end.times] == ["hello", "world", "你", "好", "a"]
    assert [s.text for s in end.segments] == ["你好a"] and end.segment == 3


def test_compact_replies_carry_the_open_segment_and_each_final_once() -> None:
    partials, final = results()
    replies = ReplyBuilder(StartStream("a.wav", 1, 16, StreamOptions(nbest=2, sample_rate=16000), compact=True))
    sent = [replies.partial(r) for r in partials] + [replies.final(final)]
    assert [r.text for r in sent] == ["hello", "wor", "你", "你好", "你好", ""]
    assert [r.segment for r in sent] == [0, 1, 2, 2, 2, 3]
    assert all(len(r.nbest) <= 2 and (not r.nbest or r.nbest[0][0] == r.text) for r in sent[:-1])
    announced = [s for r in sent for s in r.segments]
    assert [s.index for s in announced] == [0, 1, 2]
    assert functools.reduce(join_texts, [s.text for s in announced]) == final.text
    assert sent[-1].times == ()


@pytest.mark.parametrize("compact", [False, True])
def test_frames_that_move_no_search_repeat_the_reply_but_never_an_announcement(compact: bool) -> None:
    partials, _ = results()
    replies = ReplyBuilder(StartStream("a.wav", 1, 16, StreamOptions(nbest=1, sample_rate=16000), compact=compact))
    closing = partials[1]  # closes segment 0
    first, again, third = (replies.partial(closing) for _ in range(3))
    assert [s.index for s in first.segments] == [0]
    assert again.segments == () and again.text == first.text
    assert third is again  # nothing new: the same reply, encoded once by the protocol core
    assert replies.partial(partials[2]) is not again


def test_segment_fields_encoding() -> None:
    reply = PartialResult("x", (), 4, (SegmentFinal(3, "hi there", 1.0, 2.5, (("hi", 1.04, 1.2), ("there", 1.2, 1.6))),))
    assert json.loads(encode_reply(reply)) == {
        "result": "x",
        "segment": 4,
        "segments": [
            {
                "segment": 3,
                "result": "hi there",
                "bg": 1.0,
                "ed": 2.5,
                "times": [{"w": "hi", "bg": 1.04, "ed": 1.2}, {"w": "there", "bg": 1.2, "ed": 1.6}],
            }
        ],
    }


# ------------------------------------------------------------ over the wire

SHORT_RULES = {"silenceWithoutText": 0.2, "silenceAfterText": 0.1, "maxSegment": 1.0}


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path, zipformer2_model_dir: Path):
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", save_audio=False, workers=2)
    return await nursery.start(serve, config, Recognizer(load_model(zipformer2_model_dir), beam=4))


def speech_pcm() -> bytes:
    samples = np.concatenate([read_wav(p)[0][:, 0] for p in SPEECH_FILES[:3]])
    return np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()


async def session(port: int, pcm: bytes, *, pipelined: bool, **start_fields: object) -> tuple[list[dict], dict]:
    async with trio_websocket.open_websocket_url(ws_url(port)) as ws:
        await ws.send_message(start_msg(**start_fields))
        assert await recv_json(ws) == {"status": "ok", "signal": "server_ready"}
        pieces = [pcm[i : i + 2720] for i in range(0, len(pcm), 2720)]
        partials = []
        for piece in pieces:
            await ws.send_message(piece)
            if not pipelined:
                partials.append(await recv_json(ws))
        await ws.send_message(end_msg())
        while len(partials) < len(pieces):
            partials.append(await recv_json(ws))
        final = await recv_json(ws)
    assert final["signal"] == "end" and all("result" in p for p in partials)
    return partials, final


@pytest.mark.parametrize("pipelined", [False, True], ids=["lock-step", "pipelined"])
async def test_compact_finals_spell_the_default_full_text(server, zipformer2_model_dir, pipelined: bool) -> None:
    pcm = speech_pcm()
    partials, final = await session(server.port, pcm, pipelined=pipelined, endpoint=SHORT_RULES)
    c_partials, c_final = await session(server.port, pcm, pipelined=pipelined, endpoint=SHORT_RULES, compact=True)

    # the default mode: the full text, as an offline decode with the same rules gives it
    rules = EndpointRules(silence_without_text=0.2, silence_after_text=0.1, max_segment=1.0)
    offline = Recognizer(load_model(zipformer2_model_dir), beam=4).create_stream(StreamOptions(endpoint=rules))
    offline.accept_waveform(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)
    offline.input_finished()
    expected = offline.result()
    assert final["result"] == expected.text and len(expected.segments) > 5
    assert [t["w"] for t in final["times"]] == [w.piece for w in expected.times]

    # each segment announced once, in order, in both modes, with the same texts
    def announced(replies: list[dict]) -> list[dict]:
        return [s for r in replies for s in r.get("segments", [])]

    default_segments, compact_segments = announced([*partials, final]), announced([*c_partials, c_final])
    assert [s["segment"] for s in compact_segments] == list(range(len(expected.segments)))
    assert compact_segments == default_segments
    assert functools.reduce(join_texts, [s["result"] for s in compact_segments]) == final["result"]
    assert [s["result"] for s in compact_segments] == [s.text for s in expected.segments]

    # compact results hold the open segment only: bounded by a segment's length
    assert c_final["result"] == "" and c_final["times"] == []
    assert max(len(p["result"]) for p in c_partials) < max(len(s["result"]) for s in compact_segments) + 30
    assert all("segment" in p for p in c_partials)
    # default partials: the full text so far, segment fields only when a segment closes
    assert [p["result"] for p in partials][-1].startswith(default_segments[0]["result"])
    assert all(("segment" in p) == ("segments" in p) for p in partials)


def test_serve_builds_its_recognizer_from_the_segment_settings(zipformer2_model_dir, tmp_path):
    """``serve --vad --skip-non-speech`` loads the VAD and gets as far as the
    listener (a busy port, so that it stops there); skipping without the VAD
    is refused in one line."""
    import socket

    from test_cli import one_line, run_cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--model", str(zipformer2_model_dir),
                       "--audio-dir", str(tmp_path / "a"), "--vad", "--skip-non-speech", "1",
                       "--endpoint-max-segment", "10")  # fmt: skip
    assert proc.returncode == 1 and "--port" in one_line(proc.stderr, "serve")
    proc = run_cli("serve", "--model", str(zipformer2_model_dir), "--skip-non-speech", "1")
    assert proc.returncode == 2 and "needs vad" in one_line(proc.stderr, "serve")
    proc = run_cli("serve", "--model", str(zipformer2_model_dir), "--endpoint-max-segment", "1000")
    assert proc.returncode == 2 and "endpoint_max_segment" in one_line(proc.stderr, "serve")
