"""The vocabulary of the streaming-ASR protocol: events, replies, close codes.

*Events* are what a client's frames mean (:class:`StartStream`,
:class:`Audio`, :class:`EndStream`, or an :class:`ErrorReply` when the input
breaks the protocol); *replies* are what the server answers
(:class:`ServerReady`, :class:`PartialResult`, :class:`FinalResult`,
:class:`ErrorReply`).  :func:`encode_reply` writes a reply exactly as the
protocol (``docs/protocol.md``) describes.  The state machine
that turns frames into events and orders the replies is
:class:`trio_asr.protocol.connection.ConnectionProtocol`.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring
from collections.abc import Callable, Sequence
from typing import Any, Union

import attrs
import numpy as np

from trio_asr.recognition.stream_options import StreamOptions

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNSUPPORTED_DATA",
    "Audio",
    "EndStream",
    "ErrorReply",
    "Event",
    "FinalResult",
    "PartialResult",
    "Reply",
    "SegmentFinal",
    "ServerReady",
    "StartStream",
    "encode_reply",
]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013


# ---------------------------------------------------------------- events


@attrs.frozen
class StartStream:
    """A client began a stream; audio in the announced format follows.

    ``options`` are what the stream asks of recognition (n-best, its sample
    rate, which is always set, its own hotwords, its endpoint rules);
    ``compact`` asks for replies whose ``result`` is the open segment only,
    each finalised segment being announced once."""

    name: str
    channels: int
    bits_per_sample: int
    options: StreamOptions = attrs.field()
    compact: bool = False
    second_pass: bool = True  # closed segments get the server's second pass, if it has one

    @options.validator
    def _check_options(self, _attribute: object, options: StreamOptions) -> None:
        if options.sample_rate is None:
            raise ValueError("a started stream has a sample rate")

    @property
    def nbest(self) -> int:
        return self.options.nbest

    @property
    def sample_rate(self) -> int:
        """The client's sample rate, Hz."""
        rate = self.options.sample_rate
        assert rate is not None  # checked above
        return rate


@attrs.frozen(eq=False)
class Audio:
    """One binary frame of the open stream.

    ``samples`` are the complete samples this frame finished, down-mixed to
    float32 mono in [-1, 1) at the *client's* rate (possibly empty).  ``pcm``
    is the frame exactly as received, for saving in the client's format.
    ``frame_index`` counts binary frames from 0 within the stream.
    """

    samples: np.ndarray
    pcm: bytes
    frame_index: int


@attrs.frozen
class EndStream:
    """The open stream is over.

    ``reply`` is true when the client asked for the final result (``end`` or
    a second ``start``, or the stream fell silent) and false when the stream
    was cut off: then only its audio is kept.  ``how`` says which, for logs
    and metrics: ``"finished"`` (a reply is due), ``"cut off"`` (the
    connection closed), ``"error"`` or ``"shut down"`` (an error reply ends
    the connection).
    """

    name: str
    reply: bool
    how: str = attrs.field()

    @how.default
    def _how(self) -> str:
        return "finished" if self.reply else "cut off"


# ---------------------------------------------------------------- replies


@attrs.frozen
class ServerReady:
    """Answer to ``start``."""


@attrs.frozen
class SegmentFinal:
    """A segment of the stream that a reply closes: its index (from 0), final
    text, time span and words as ``(word, start s, end s)``."""

    index: int
    text: str
    start: float
    end: float
    times: tuple[tuple[str, float, float], ...] = ()
    #: a second pass's n-best and SenseVoice's tags, written only when set
    nbest: tuple[tuple[str, float], ...] = attrs.field(default=(), kw_only=True)
    tags: tuple[tuple[str, str], ...] = attrs.field(default=(), kw_only=True)


@attrs.frozen
class PartialResult:
    """Answer to every binary frame; ``nbest`` is sent only when non-empty.

    ``segment`` (the index of the open segment) and ``segments`` (those this
    reply closes) are additive fields, sent when set / non-empty."""

    text: str
    nbest: tuple[tuple[str, float], ...] = ()
    segment: int | None = None
    segments: tuple[SegmentFinal, ...] = ()


@attrs.frozen
class FinalResult:
    """Answer to ``end``; ``times`` holds ``(word, start s, end s)``;
    ``segment``/``segments`` as in :class:`PartialResult`."""

    name: str
    text: str
    nbest: tuple[tuple[str, float], ...] = ()
    times: tuple[tuple[str, float, float], ...] = ()
    segment: int | None = None
    segments: tuple[SegmentFinal, ...] = ()


@attrs.frozen
class ErrorReply:
    """A JSON error to send, after which the connection closes with ``code``;
    ``signal`` names the message it answers, if any."""

    code: int
    message: str
    signal: str | None = None


Event = Union[StartStream, Audio, EndStream, ErrorReply]
Reply = Union[ServerReady, PartialResult, FinalResult, ErrorReply]


def _nbest_json(nbest: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"text": text, "score": float(score)} for text, score in nbest]


_UTF8 = json.JSONEncoder(ensure_ascii=False)
_ASCII = json.JSONEncoder()

Times = Sequence[tuple[str, float, float]]


def _seconds(value: float, encode: Callable[[Any], str]) -> str:
    """A time rounded to milliseconds, as json.dumps writes it (-0.0 as 0.0)."""
    rounded = round(float(value), 3) + 0.0
    return repr(rounded) if math.isfinite(rounded) else encode(rounded)


def _times_entries(times: Times, encode: Callable[[Any], str]) -> list[str]:
    """The JSON text of each ``{"w": …, "bg": …, "ed": …}``."""
    return [
        f'{{"w": {encode(word)}, "bg": {_seconds(start, encode)}, "ed": {_seconds(end, encode)}}}'
        for word, start, end in times
    ]


def _segments_json(
    segments: Sequence[SegmentFinal], encode: Callable[[Any], str], times: Times, entries: list[str]
) -> str:
    """The ``segments`` list.  ``entries`` are the texts of ``times``, written
    with the same ``encode``: a segment whose words are the last of ``times``
    (the final reply's closing segment: often hundreds of words) reuses them
    instead of writing them again.  Equal values write equal texts, as
    ``_seconds`` writes -0.0 as 0.0."""
    texts = []
    for s in segments:
        n = len(s.times)
        if n and n <= len(times) and tuple(times[len(times) - n :]) == tuple(s.times):
            words = entries[len(entries) - n :]
        else:
            words = _times_entries(s.times, encode)
        fields = {"segment": s.index, "result": s.text, "bg": round(float(s.start), 3), "ed": round(float(s.end), 3)}
        if s.nbest:
            fields["nbest"] = _nbest_json(s.nbest)
        fields.update(s.tags)
        texts.append(f'{encode(fields)[:-1]}, "times": [{", ".join(words)}]}}')
    return "[" + ", ".join(texts) + "]"


def _encode(reply: Reply, encoder: json.JSONEncoder) -> str:
    """The reply's JSON text, as ``encoder.encode`` would write the spec's
    object.  The fields without word lists are encoded as a dict; ``times``,
    ``segment`` and ``segments``, which come last in the spec's order, are
    spliced in by hand because a final reply's closing segment repeats the
    last of ``times``, often hundreds of words, which are then written once
    (half the time of ``json.dumps``; a property test checks the text is the
    same)."""
    obj: dict[str, Any]
    final = False
    segment: int | None = None
    segments: Sequence[SegmentFinal] = ()
    if isinstance(reply, ServerReady):
        obj = {"status": "ok", "signal": "server_ready"}
    elif isinstance(reply, PartialResult):
        obj = {"result": reply.text}
        if reply.nbest:
            obj["nbest"] = _nbest_json(reply.nbest)
        segment, segments = reply.segment, reply.segments
    elif isinstance(reply, FinalResult):
        obj = {"name": reply.name, "signal": "end", "result": reply.text, "status": "ok"}
        if reply.nbest:
            obj["nbest"] = _nbest_json(reply.nbest)
        final, segment, segments = True, reply.segment, reply.segments
    elif isinstance(reply, ErrorReply):
        obj = {"status": "error", "signal": reply.signal, "message": reply.message}
    else:
        raise TypeError(f"not a reply: {reply!r}")
    text = encoder.encode(obj)
    if not final and segment is None and not segments:
        return text
    encode = encoder.encode
    times = reply.times if isinstance(reply, FinalResult) else ()
    entries = _times_entries(times, encode)
    tail = [f', "times": [{", ".join(entries)}]'] if final else []
    if segment is not None:
        tail.append(f', "segment": {encode(segment)}')
    if segments:
        tail.append(f', "segments": {_segments_json(segments, encode, times, entries)}')
    return text[:-1] + "".join(tail) + "}"


def _plain_partial(reply: PartialResult) -> str | None:
    """The text of a partial reply of text (and segment index) only, the
    reply of almost every frame, as ``_encode`` writes it with ``_UTF8``
    (which ``encode_basestring``, the C function behind ``ensure_ascii=False``,
    writes a string as) at a fifth of its cost; None for any other reply."""
    if reply.nbest or reply.segments or type(reply.text) is not str:
        return None
    segment = reply.segment
    if segment is None:
        return '{"result": ' + encode_basestring(reply.text) + "}"
    if type(segment) is int:
        return '{"result": ' + encode_basestring(reply.text) + ', "segment": ' + int.__repr__(segment) + "}"
    return None


def encode_reply(reply: Reply) -> str:
    """Serialise a reply to the JSON text frame the spec prescribes.

    Text is UTF-8 (no ``\\u`` escapes) unless a string echoed from the client
    cannot be UTF-8 (a lone surrogate such as ``"\\ud800"``, which JSON
    allows): that reply is written with ASCII escapes instead, so every reply
    can be sent whatever the client sent.  Times are rounded to milliseconds.
    """
    text = _plain_partial(reply) if type(reply) is PartialResult else None
    if text is not None:
        if text.isascii():  # no surrogate: nothing to check
            return text
    else:
        text = _encode(reply, _UTF8)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _encode(reply, _ASCII)
    return text
