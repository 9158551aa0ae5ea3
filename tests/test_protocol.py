"""Unit tests of the sans-I/O protocol core: no sockets, no event loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_asr.protocol.messages import (
    Audio,
    EndStream,
    ErrorReply,
    FinalResult,
    PartialResult,
    SegmentFinal,
    ServerReady,
    StartStream,
    encode_reply,
)
from trio_asr.protocol.connection import ConnectionProtocol, LocalProtocolError, State
from trio_asr.protocol.limits import ProtocolLimits
from trio_asr.recognition.stream_options import StreamOptions


def start_msg(**fields: object) -> str:
    msg = {"name": "a.wav", "signal": "start", "nbest": 1}
    msg.update(fields)
    return json.dumps(msg)


def started(limits: ProtocolLimits = ProtocolLimits(), **fields: object) -> ConnectionProtocol:
    proto = ConnectionProtocol(limits)
    [event] = proto.receive_text(start_msg(**fields))
    assert isinstance(event, StartStream)
    return proto


def pcm(values: list[int]) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


# ------------------------------------------------------------ happy path


def test_start_defaults_and_fields() -> None:
    proto = ConnectionProtocol()
    [ev] = proto.receive_text(json.dumps({"name": "x.wav", "signal": "start", "nbest": 3}))
    assert ev == StartStream(name="x.wav", channels=1, bits_per_sample=16, options=StreamOptions(nbest=3, sample_rate=16000))
    assert proto.state is State.STREAMING
    proto2 = ConnectionProtocol()
    [ev2] = proto2.receive_text(start_msg(sampleRate=48000, channels=2, bitsPerSample=16))
    assert (ev2.sample_rate, ev2.channels) == (48000, 2)


def test_missing_nbest_defaults_to_one() -> None:
    [ev] = ConnectionProtocol().receive_text(json.dumps({"name": "x", "signal": "start"}))
    assert ev.nbest == 1


def test_audio_end_and_new_stream_on_same_connection() -> None:
    proto = started()
    [a0] = proto.receive_bytes(pcm([0, 16384, -32768]))
    [a1] = proto.receive_bytes(pcm([32767]))
    assert isinstance(a0, Audio) and (a0.frame_index, a1.frame_index) == (0, 1)
    np.testing.assert_array_equal(a0.samples, np.array([0.0, 0.5, -1.0], dtype=np.float32))
    assert a0.samples.dtype == np.float32
    assert proto.receive_text(json.dumps({"signal": "end", "name": "a.wav", "nbest": 1})) == [
        EndStream(name="a.wav", reply=True)
    ]
    assert proto.state is State.IDLE
    [again] = proto.receive_text(start_msg(name="b.wav"))
    assert again.name == "b.wav"
    [b0] = proto.receive_bytes(b"")
    assert b0.frame_index == 0, "frame numbering restarts per stream"


def test_zero_length_frame_still_yields_one_event() -> None:
    proto = started()
    [ev] = proto.receive_bytes(b"")
    assert isinstance(ev, Audio) and ev.samples.size == 0 and ev.pcm == b""


def test_odd_bytes_carry_across_frames() -> None:
    values = np.arange(-500, 500, 7, dtype="<i2")
    data = values.tobytes()
    proto = started()
    got = []
    cuts = [0, 1, 2, 5, 6, 11, 40, len(data) - 1, len(data)]
    for a, b in zip(cuts, cuts[1:]):
        [ev] = proto.receive_bytes(data[a:b])
        assert ev.pcm == data[a:b]
        got.append(ev.samples)
    np.testing.assert_array_equal(np.concatenate(got), values.astype(np.float32) / 32768)


def test_multichannel_is_down_mixed_with_carry_inside_groups() -> None:
    frames = np.array([[1000, 3000], [-200, 200], [32767, 32767], [-4, 0]], dtype="<i2")
    data = frames.tobytes()
    proto = started(channels=2)
    out = []
    for a, b in [(0, 3), (3, 9), (9, 10), (10, 16)]:
        [ev] = proto.receive_bytes(data[a:b])
        out.append(ev.samples)
    # 3 bytes complete no 4-byte group, 9 bytes complete two groups, ...
    assert [len(x) for x in out] == [0, 2, 0, 2]
    expected = frames.astype(np.float64).mean(axis=1) / 32768
    np.testing.assert_allclose(np.concatenate(out), expected, rtol=0, atol=1e-7)


def test_second_start_finishes_open_stream_first() -> None:
    proto = started(name="first.wav")
    proto.receive_bytes(pcm([1]))
    events = proto.receive_text(start_msg(name="second.wav", nbest=2))
    assert events == [
        EndStream(name="first.wav", reply=True),
        StartStream(name="second.wav", channels=1, bits_per_sample=16, options=StreamOptions(nbest=2, sample_rate=16000)),
    ]
    [ev] = proto.receive_bytes(pcm([5]))
    assert ev.frame_index == 0


def test_second_start_resets_carry() -> None:
    proto = started()
    proto.receive_bytes(b"\x01")  # half a sample left over
    proto.receive_text(start_msg())
    [ev] = proto.receive_bytes(pcm([256]))
    np.testing.assert_array_equal(ev.samples, np.array([256 / 32768], dtype=np.float32))


def test_disconnect_mid_stream_cuts_stream_without_reply() -> None:
    proto = started(name="cut.wav")
    proto.receive_bytes(pcm([1, 2]))
    assert proto.connection_closed() == [EndStream(name="cut.wav", reply=False)]
    assert proto.state is State.CLOSED
    assert proto.receive_bytes(pcm([1])) == []
    assert proto.receive_text(start_msg()) == []


def test_disconnect_when_idle_has_no_events() -> None:
    assert ConnectionProtocol().connection_closed() == []


def test_fail_cuts_open_stream_then_errors() -> None:
    proto = started(name="t.wav")
    events = proto.fail(1008, "idle for too long")
    assert events == [EndStream(name="t.wav", reply=False, how="error"), ErrorReply(1008, "idle for too long")]
    assert proto.fail(1001, "again") == []


# ------------------------------------------------------------ §6 error cases


def error_of(events: list) -> ErrorReply:
    assert isinstance(events[-1], ErrorReply), events
    return events[-1]


@pytest.mark.parametrize(
    ("text", "code", "signal"),
    [
        ("not json", 1007, None),
        ("{", 1007, None),
        ("[1, 2]", 1007, None),
        ('"start"', 1007, None),
        ("null", 1007, None),
        ('{"name": "a"}', 1007, None),
        ('{"signal": 5, "name": "a"}', 1007, None),
        ('{"signal": "start"}', 1007, "start"),
        ('{"signal": "start", "name": 3, "nbest": 1}', 1007, "start"),
        ('{"signal": "start", "name": null, "nbest": 1}', 1007, "start"),
        ('{"signal": "start", "name": "a", "nbest": "1"}', 1007, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1.0}', 1007, "start"),
        ('{"signal": "start", "name": "a", "nbest": true}', 1007, "start"),
        ('{"signal": "start", "name": "a", "nbest": null}', 1007, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "sampleRate": "16000"}', 1007, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "channels": false}', 1007, "start"),
        ('{"signal": "start", "name": "a", "nbest": 0}', 1008, "start"),
        ('{"signal": "start", "name": "a", "nbest": -3}', 1008, "start"),
        ('{"signal": "start", "name": "a", "nbest": 11}', 1008, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "bitsPerSample": 8}', 1003, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "bitsPerSample": 32}', 1003, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "channels": 0}', 1003, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "channels": 9}', 1003, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "sampleRate": 100}', 1003, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "sampleRate": 10000000}', 1003, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "sampleRate": -16000}', 1003, "start"),
        ('{"signal": "start", "name": "a", "nbest": 1, "sampleRate": 16001}', 1003, "start"),
        ('{"signal": "stop", "name": "a"}', 1008, "stop"),
        ('{"signal": "end", "name": "a", "nbest": 1}', 1008, "end"),
    ],
)
def test_bad_text_frames_on_fresh_connection(text: str, code: int, signal: str | None) -> None:
    proto = ConnectionProtocol()
    events = proto.receive_text(text)
    assert events == [error_of(events)]
    err = events[0]
    assert (err.code, err.signal) == (code, signal)
    assert err.message
    assert proto.state is State.CLOSED
    assert proto.receive_text(start_msg()) == [], "input after an error is ignored"


def test_name_too_long_is_refused() -> None:
    proto = ConnectionProtocol(ProtocolLimits(max_name_length=8))
    assert error_of(proto.receive_text(start_msg(name="x" * 9))).code == 1008
    assert isinstance(ConnectionProtocol(ProtocolLimits(max_name_length=8)).receive_text(start_msg(name="x" * 8))[0], StartStream)


def test_sample_rates_accepted() -> None:
    for rate in (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000):
        [ev] = ConnectionProtocol().receive_text(start_msg(sampleRate=rate))
        assert ev.sample_rate == rate


def test_nbest_limit_is_configurable() -> None:
    limits = ProtocolLimits(nbest_max=5)
    assert ConnectionProtocol(limits).receive_text(start_msg(nbest=5))[0].nbest == 5
    assert error_of(ConnectionProtocol(limits).receive_text(start_msg(nbest=6))).code == 1008


def test_audio_before_start() -> None:
    proto = ConnectionProtocol()
    assert proto.receive_bytes(b"\x00\x00") == [ErrorReply(1008, 'audio before "start"')]


def test_audio_after_end_is_audio_before_start() -> None:
    proto = started()
    proto.receive_text('{"signal": "end"}')
    assert error_of(proto.receive_bytes(b"\x00\x00")).code == 1008


def test_error_mid_stream_cuts_the_stream_first() -> None:
    proto = started(name="s.wav")
    proto.receive_bytes(pcm([1, 2, 3]))
    events = proto.receive_text("garbage")
    assert events[0] == EndStream(name="s.wav", reply=False, how="error")
    assert error_of(events).code == 1007


def test_oversize_frames() -> None:
    limits = ProtocolLimits(max_message_bytes=100)
    proto = started(limits)
    assert isinstance(proto.receive_bytes(b"\x00" * 100)[0], Audio)
    events = proto.receive_bytes(b"\x00" * 101)
    assert events[0] == EndStream(name="a.wav", reply=False, how="error")
    assert error_of(events).code == 1009
    long_text = json.dumps({"signal": "start", "name": "é" * 60})  # 120 bytes of UTF-8, 60 chars
    assert error_of(ConnectionProtocol(limits).receive_text(long_text)).code == 1009


def test_stream_length_limit() -> None:
    proto = started(ProtocolLimits(max_stream_seconds=0.001), sampleRate=8000)  # 8 samples
    assert isinstance(proto.receive_bytes(pcm([0] * 8))[0], Audio)
    events = proto.receive_bytes(pcm([7, 8]))
    assert error_of(events).code == 1008
    audio, end = events[0], events[1]  # the frame over the limit was received: it is kept, then the stream ends
    assert isinstance(audio, Audio) and audio.pcm == pcm([7, 8]) and isinstance(end, EndStream)


@pytest.mark.parametrize("field", ["nbest_max", "max_message_bytes", "max_stream_seconds", "max_channels"])
def test_limits_validate(field: str) -> None:
    with pytest.raises(ValueError):
        ProtocolLimits(**{field: 0})


# ------------------------------------------------------------ serialisation


def test_encode_server_ready() -> None:
    assert json.loads(encode_reply(ServerReady())) == {"status": "ok", "signal": "server_ready"}


def test_encode_partial() -> None:
    assert json.loads(encode_reply(PartialResult("你好"))) == {"result": "你好"}
    assert "你好" in encode_reply(PartialResult("你好")), "UTF-8 text, not \\u escapes"
    obj = json.loads(encode_reply(PartialResult("a b", nbest=(("a b", -1.5), ("a c", -2.0)))))
    assert obj == {"result": "a b", "nbest": [{"text": "a b", "score": -1.5}, {"text": "a c", "score": -2.0}]}


def test_encode_final() -> None:
    reply = FinalResult(name="t.wav", text="hi", times=(("hi", 0.12345, 0.5),))
    assert json.loads(encode_reply(reply)) == {
        "name": "t.wav",
        "signal": "end",
        "result": "hi",
        "status": "ok",
        "times": [{"w": "hi", "bg": 0.123, "ed": 0.5}],
    }
    obj = json.loads(encode_reply(FinalResult(name="t", text="x", nbest=(("x", np.float32(-0.5)),))))
    assert obj["nbest"] == [{"text": "x", "score": -0.5}]
    assert isinstance(obj["nbest"][0]["score"], float)


def test_encode_error() -> None:
    assert json.loads(encode_reply(ErrorReply(1007, "bad"))) == {
        "status": "error",
        "signal": None,
        "message": "bad",
    }
    assert json.loads(encode_reply(ErrorReply(1008, "no", "end")))["signal"] == "end"


def test_lone_surrogates_stay_encodable() -> None:
    """JSON allows "\\ud800"; UTF-8 does not: such a reply falls back to ASCII escapes."""
    for reply in (
        FinalResult(name="\ud800x", text="hi"),
        ErrorReply(1008, "unknown signal", "\udfff"),
    ):
        text = encode_reply(reply)
        text.encode("utf-8")
        assert json.loads(text) == json.loads(json.dumps(json.loads(text)))
    assert json.loads(encode_reply(FinalResult(name="\ud800x", text="hi")))["name"] == "\ud800x"


def _spec_json(reply: FinalResult | PartialResult) -> dict:
    """The reply as the spec writes it, built field by field."""

    def times(ts):
        return [{"w": w, "bg": round(float(bg), 3), "ed": round(float(ed), 3)} for w, bg, ed in ts]

    if isinstance(reply, FinalResult):
        obj = {"name": reply.name, "signal": "end", "result": reply.text, "status": "ok"}
    else:
        obj = {"result": reply.text}
    if reply.nbest:
        obj["nbest"] = [{"text": t, "score": float(s)} for t, s in reply.nbest]
    if isinstance(reply, FinalResult):
        obj["times"] = times(reply.times)
    if reply.segment is not None:
        obj["segment"] = reply.segment
    if reply.segments:
        obj["segments"] = [
            {"segment": s.index, "result": s.text, "bg": round(float(s.start), 3), "ed": round(float(s.end), 3), "times": times(s.times)}
            for s in reply.segments
        ]
    return obj


_texts = st.text(alphabet=st.sampled_from(["a", "z", " ", "你", '"', "\\", "\n", "\x00", "é", "\U0001f600", "\ud800"]), max_size=4)
_times_s = st.one_of(
    st.floats(0, 1e6),
    st.sampled_from([0.0, 0.0425, 0.12345, 0.0005, 1e-9, float("nan"), float("inf")]),
    st.integers(0, 10**6),
    st.floats(0, 1e4, width=32).map(np.float32),
)
_words = st.lists(st.tuples(_texts, _times_s, _times_s), max_size=6).map(tuple)
_segments = st.builds(SegmentFinal, st.integers(0, 9), _texts, _times_s, _times_s, _words)


def _same_values(words: tuple) -> tuple:
    """Equal words of other types: what the reuse compares by value."""
    return tuple((np.str_(w), np.float64(bg), np.float64(ed)) for w, bg, ed in words)


@st.composite
def _replies(draw):
    words = draw(_words)
    segments = draw(st.lists(_segments, max_size=2))
    if draw(st.booleans()):  # words that are a slice of the stream's: the tail is reused, others not
        start = draw(st.integers(0, len(words)))
        end = draw(st.one_of(st.just(len(words)), st.integers(start, len(words))))
        sliced = words[start:end]
        if draw(st.booleans()):
            sliced = _same_values(sliced)
        segments.insert(draw(st.integers(0, len(segments))), SegmentFinal(3, draw(_texts), 1.0, 2.0, sliced))
    nbest = tuple(draw(st.lists(st.tuples(_texts, st.floats(-1e4, 0)), max_size=2)))
    segment = draw(st.sampled_from([None, 0, 7]))
    if draw(st.booleans()):
        return FinalResult(draw(_texts), draw(_texts), nbest, words, segment, tuple(segments))
    return PartialResult(draw(_texts), nbest, segment, tuple(segments))


@given(_replies())
@settings(max_examples=400, deadline=None)
def test_encode_writes_the_spec_json(reply: FinalResult | PartialResult) -> None:
    """Replies with word lists are written in pieces (a final's closing segment
    reuses the text of the stream's words): the result must be exactly what
    json.dumps writes for the spec's object, UTF-8 or, for lone surrogates,
    ASCII-escaped."""
    obj = _spec_json(reply)
    try:
        expected = json.dumps(obj, ensure_ascii=False)
        expected.encode("utf-8")
    except UnicodeEncodeError:
        expected = json.dumps(obj)
    assert encode_reply(reply) == expected


# ------------------------------------------------------------ never raises (fuzz)


def test_deeply_nested_json_is_an_error_not_a_crash() -> None:
    for text in ("[" * 987, "[" * 100_000, '{"a":' * 50_000):
        proto = ConnectionProtocol()
        events = proto.receive_text(text)
        assert error_of(events).code == 1007
        assert proto.state is State.CLOSED


frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.builds(
        lambda fields: json.dumps({"signal": "start", **fields}),
        st.dictionaries(
            st.sampled_from(["name", "nbest", "sampleRate", "channels", "bitsPerSample"]),
            st.one_of(st.integers(-5, 100_000), st.text(max_size=5), st.none(), st.booleans(), st.floats()),
        ),
    ),
    st.just('{"signal": "end"}'),
    st.just(start_msg()),
    st.builds(lambda n: "[" * n, st.integers(0, 5000)),
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(frames, max_size=12))
def test_no_input_sequence_raises_and_replies_stay_orderly(sequence: list) -> None:
    """Whatever arrives, the core returns events (never raises), and
    answering every event with its reply is always accepted by send()."""
    proto = ConnectionProtocol(ProtocolLimits(max_message_bytes=4096))
    for frame in [*sequence, None]:
        if frame is None:
            events = proto.connection_closed()
        elif isinstance(frame, str):
            events = proto.receive_text(frame)
        else:
            events = proto.receive_bytes(frame)
        for event in events:
            reply = reply_to(event)
            if reply is not None:
                json.loads(proto.send(reply))
    assert_nothing_due(proto)


# ------------------------------------------------------------ outgoing order (§5)


def assert_nothing_due(proto: ConnectionProtocol) -> None:
    """Every reply due was sent: the core refuses any other."""
    with pytest.raises(LocalProtocolError, match="where nothing is due|after the error reply"):
        proto.send(ServerReady())


def reply_to(event: object) -> object:
    if isinstance(event, StartStream):
        return ServerReady()
    if isinstance(event, Audio):
        return PartialResult("x")
    if isinstance(event, EndStream):
        return FinalResult(event.name, "x") if event.reply else None
    assert isinstance(event, ErrorReply)
    return event


def test_replies_go_out_in_the_order_the_frames_came() -> None:
    proto = ConnectionProtocol()
    proto.receive_text(start_msg())
    proto.receive_bytes(pcm([1]))
    proto.receive_bytes(pcm([2]))
    proto.receive_text('{"signal": "end"}')
    with pytest.raises(LocalProtocolError):
        proto.send(PartialResult("early"))  # server_ready is due first
    proto.send(ServerReady())
    with pytest.raises(LocalProtocolError):
        proto.send(FinalResult("a.wav", "too early"))  # two partials are due first
    proto.send(PartialResult("1"))
    proto.send(PartialResult("2"))
    with pytest.raises(LocalProtocolError):
        proto.send(PartialResult("3"))  # one per frame
    assert json.loads(proto.send(FinalResult("a.wav", "done")))["signal"] == "end"
    assert_nothing_due(proto)
    with pytest.raises(LocalProtocolError):
        proto.send(ServerReady())  # nothing was asked


def test_a_repeated_reply_is_still_one_per_frame() -> None:
    proto = ConnectionProtocol()
    proto.receive_text(start_msg())
    proto.receive_bytes(pcm([1]))
    proto.receive_bytes(pcm([2]))
    proto.send(ServerReady())
    same = PartialResult("so far", (("so far", -1.5),))
    first = proto.send(same)
    assert proto.send(same) == first == encode_reply(same)
    with pytest.raises(LocalProtocolError):
        proto.send(same)  # the third frame never came


def test_an_error_may_overtake_replies_due_and_nothing_follows_it() -> None:
    proto = ConnectionProtocol()
    proto.receive_text(start_msg())
    proto.receive_bytes(pcm([1]))
    with pytest.raises(LocalProtocolError):
        proto.send(ErrorReply(1011, "no error was issued"))
    [cut, error] = proto.fail(1011, "internal error: boom")
    assert cut == EndStream(name="a.wav", reply=False, how="error")
    proto.send(ServerReady())
    assert json.loads(proto.send(error))["status"] == "error"
    assert_nothing_due(proto)
    for late in (PartialResult("late"), error):
        with pytest.raises(LocalProtocolError):
            proto.send(late)


def test_invalid_second_start_finishes_the_open_stream_first() -> None:
    """Spec §4: the open stream ends (its final reply due, audio saved), then
    the new start is judged."""
    proto = started(name="one.wav")
    events = proto.receive_text(start_msg(name="two.wav", sampleRate=1))
    assert events[0] == EndStream(name="one.wav", reply=True)
    assert error_of(events).code == 1003 and len(events) == 2
    proto.send(ServerReady())
    proto.send(FinalResult("one.wav", "text"))
    proto.send(events[1])


def test_stream_may_not_outgrow_a_wav_file() -> None:
    proto = started(ProtocolLimits(max_stream_bytes=10))
    assert isinstance(proto.receive_bytes(b"\x00" * 10)[0], Audio)
    events = proto.receive_bytes(b"\x00\x00")
    assert error_of(events).code == 1008 and "WAV" in error_of(events).message


def test_an_idle_stream_ends_with_its_final_reply_due() -> None:
    proto = started(name="quiet.wav")
    proto.receive_bytes(pcm([1]))
    assert proto.stream_idle() == [EndStream(name="quiet.wav", reply=True)]
    assert proto.state is State.IDLE and proto.stream_idle() == []
    proto.send(ServerReady())
    proto.send(PartialResult("1"))
    proto.send(FinalResult("quiet.wav", "1"))
    assert_nothing_due(proto)
