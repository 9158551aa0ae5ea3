"""The partial reply of almost every frame: its fast encoding, and the reuse
of the text of an equal reply (issue 28, item 4)."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_asr.protocol.connection as connection
from trio_asr.protocol.connection import ConnectionProtocol
from trio_asr.protocol.messages import Audio, PartialResult, ServerReady, encode_reply


def _reference(reply: PartialResult) -> str:
    """What json.dumps writes for the spec's object: UTF-8, or ASCII escapes
    when a lone surrogate cannot be UTF-8."""
    obj: dict = {"result": reply.text}
    if reply.segment is not None:
        obj["segment"] = reply.segment
    try:
        text = json.dumps(obj, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj)
    return text


@given(st.text(), st.one_of(st.none(), st.integers(0, 10**9)))
@settings(max_examples=500, deadline=None)
def test_a_plain_partial_reply_is_written_as_json_dumps_writes_it(text: str, segment: int | None) -> None:
    reply = PartialResult(text, segment=segment)
    assert encode_reply(reply) == _reference(reply)


def test_lone_surrogates_in_a_partial_reply_fall_back_to_ascii_escapes() -> None:
    for text in ("\ud800", "a\udfffb", "你\ud800"):
        written = encode_reply(PartialResult(text, segment=3))
        written.encode("utf-8")
        assert written == json.dumps({"result": text, "segment": 3})
        assert json.loads(written)["result"] == text
    assert encode_reply(PartialResult("你好")) == '{"result": "你好"}'  # UTF-8, not escaped


def test_values_of_other_types_take_the_general_path() -> None:
    assert encode_reply(PartialResult(np.str_("a\u00e9"), segment=2)) == '{"result": "a\u00e9", "segment": 2}'
    assert encode_reply(PartialResult("a", segment=True)) == '{"result": "a", "segment": true}'


def _streaming(frames: int) -> ConnectionProtocol:
    """A protocol core whose stream is open, owing ``frames`` partial replies."""
    proto = ConnectionProtocol()
    proto.receive_text(json.dumps({"name": "a.wav", "signal": "start", "nbest": 1}))
    proto.send(ServerReady())
    for _ in range(frames):
        assert [type(e) for e in proto.receive_bytes(b"\0\0" * 8)] == [Audio]
    return proto


def test_an_equal_partial_reply_is_not_encoded_again(monkeypatch) -> None:
    proto = _streaming(4)
    calls = []
    real = connection.encode_reply
    monkeypatch.setattr(connection, "encode_reply", lambda reply: calls.append(reply) or real(reply))
    first = proto.send(PartialResult("hello", segment=1))
    again = proto.send(PartialResult("hello", segment=1))  # another object, equal: the text is reused
    assert again is first and len(calls) == 1
    assert proto.send(PartialResult("hello", segment=2)) == '{"result": "hello", "segment": 2}'
    assert proto.send(PartialResult("hello")) == '{"result": "hello"}'
    assert len(calls) == 3


def test_replies_with_floats_are_always_encoded() -> None:
    """-0.0 equals 0.0 but json writes it differently: n-best scores are not compared."""
    proto = _streaming(2)
    assert proto.send(PartialResult("a", (("a", 0.0), ("b", -1.0)))) != proto.send(
        PartialResult("a", (("a", -0.0), ("b", -1.0)))
    )

