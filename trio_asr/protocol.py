"""The streaming-ASR WebSocket protocol as a sans-I/O state machine.

:class:`ConnectionProtocol` is fed what arrives on one WebSocket (text
frames, binary frames, the connection closing) and returns *events*:
:class:`StartStream`, :class:`Audio`, :class:`EndStream` for the decoder, and
:class:`ErrorReply` when the input breaks the protocol.  It knows nothing of
sockets, tasks or models (like h11); the server owns the I/O and turns the
recognizer's output into :class:`ServerReady`, :class:`PartialResult` and
:class:`FinalResult`, which :func:`encode_reply` serialises exactly as
the protocol specification (``spec/protocol.md``) describes.

Decisions on points the spec leaves open:

* Close codes: 1007 (invalid payload) for a text frame that is not JSON, not
  a JSON object, or has a missing or ill-typed field; 1008 (policy
  violation) for protocol-order errors (unknown signal, audio before start,
  end without start), for limits (nbest, name length, stream length, idle
  client); 1003 (unsupported data) for audio formats we cannot take; 1009
  for frames over ``max_message_bytes``.  JSON ``true``/``false`` is never an
  integer.
* ``start`` needs ``name`` (string) and ``signal``; ``nbest`` defaults to 1
  when absent (the original table calls it required *and* gives a default,
  and we take the lenient reading so that no existing client breaks).
* ``end`` needs only ``signal``; its ``name``/``nbest`` are ignored and the
  reply echoes the name given at ``start``.
* ``sampleRate`` must be one of the common rates (8000, 11025, 12000, 16000,
  22050, 24000, 32000, 44100, 48000, 88200, 96000 by default); audio is
  resampled to the model rate by the server.  ``channels`` are
  down-mixed by averaging.  ``bitsPerSample`` must be 16.
* A second ``start`` while a stream is open ends the open stream as ``end``
  would (with its reply), then starts the new one.
* Bytes of an incomplete sample group (odd byte, or a frame cut inside a
  multi-channel group) carry over to the next frame; the remainder still
  held when a stream ends is not a sample and is dropped.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any, Union

import attrs
import numpy as np

from trio_asr.audio import down_mix, pcm16_to_float

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
    "Audio",
    "ConnectionProtocol",
    "EndStream",
    "ErrorReply",
    "Event",
    "FinalResult",
    "PartialResult",
    "ProtocolLimits",
    "Reply",
    "ServerReady",
    "StartStream",
    "State",
    "encode_reply",
]

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

DEFAULT_SAMPLE_RATE = 16000
SUPPORTED_BITS_PER_SAMPLE = 16
#: rates the server resamples from; arbitrary integers are refused because
#: a rate like 8001 Hz has no practical polyphase ratio to the model's rate
STANDARD_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000})


def _positive(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen
class ProtocolLimits:
    """What one connection may ask for; enforced before any audio is accepted."""

    nbest_max: int = attrs.field(default=10, validator=_positive)
    max_message_bytes: int = attrs.field(default=1 << 20, validator=_positive)
    max_stream_seconds: float = attrs.field(default=3600.0, validator=_positive)
    max_name_length: int = attrs.field(default=256, validator=_positive)
    max_channels: int = attrs.field(default=8, validator=_positive)
    sample_rates: frozenset[int] = attrs.field(default=STANDARD_SAMPLE_RATES, converter=frozenset)


# ---------------------------------------------------------------- events


@attrs.frozen
class StartStream:
    """A client began a stream; audio in the announced format follows."""

    name: str
    nbest: int
    sample_rate: int
    bits_per_sample: int
    channels: int


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
    a second ``start``) and false when the stream was cut off (disconnect,
    error, timeout, shutdown): then only its audio is kept.
    """

    name: str
    reply: bool


# ---------------------------------------------------------------- replies


@attrs.frozen
class ServerReady:
    """Answer to ``start``."""


@attrs.frozen
class PartialResult:
    """Answer to every binary frame; ``nbest`` is sent only when non-empty."""

    text: str
    nbest: tuple[tuple[str, float], ...] = ()


@attrs.frozen
class FinalResult:
    """Answer to ``end``; ``times`` holds ``(word or piece, start s, end s)``."""

    name: str
    text: str
    nbest: tuple[tuple[str, float], ...] = ()
    times: tuple[tuple[str, float, float], ...] = ()


@attrs.frozen
class ErrorReply:
    """A JSON error to send, after which the connection closes with ``code``."""

    code: int
    signal: str | None
    message: str


Event = Union[StartStream, Audio, EndStream, ErrorReply]
Reply = Union[ServerReady, PartialResult, FinalResult, ErrorReply]


def _nbest_json(nbest: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"text": text, "score": float(score)} for text, score in nbest]


def encode_reply(reply: Reply) -> str:
    """Serialise a reply to the JSON text frame the spec prescribes."""
    obj: dict[str, Any]
    if isinstance(reply, ServerReady):
        obj = {"status": "ok", "signal": "server_ready"}
    elif isinstance(reply, PartialResult):
        obj = {"result": reply.text}
        if reply.nbest:
            obj["nbest"] = _nbest_json(reply.nbest)
    elif isinstance(reply, FinalResult):
        obj = {"name": reply.name, "signal": "end", "result": reply.text, "status": "ok"}
        if reply.nbest:
            obj["nbest"] = _nbest_json(reply.nbest)
        obj["times"] = [
            {"w": w, "bg": round(float(bg), 3), "ed": round(float(ed), 3)} for w, bg, ed in reply.times
        ]
    elif isinstance(reply, ErrorReply):
        obj = {"status": "error", "signal": reply.signal, "message": reply.message}
    else:
        raise TypeError(f"not a reply: {reply!r}")
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------- state machine


class State(enum.Enum):
    IDLE = "idle"  # no stream open; waiting for start
    STREAMING = "streaming"  # a stream is open
    CLOSED = "closed"  # an error was reported or the connection ended


class _BadMessage(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ConnectionProtocol:
    """Protocol state of one WebSocket connection (sans-I/O).

    Every ``receive_*``/``connection_closed``/``fail`` call returns the events
    it caused, in order.  After an :class:`ErrorReply` or
    :meth:`connection_closed` the state is :attr:`State.CLOSED` and all
    further input is ignored (returns no events).  Whenever a stream is open
    when the connection ends for any reason, an ``EndStream(reply=False)``
    comes first so that its audio can still be saved.
    """

    def __init__(self, limits: ProtocolLimits = ProtocolLimits()) -> None:
        self.limits = limits
        self.state = State.IDLE
        self._stream: StartStream | None = None
        self._carry = b""
        self._frames = 0
        self._samples = 0

    @property
    def stream(self) -> StartStream | None:
        """The open stream, if any."""
        return self._stream

    def receive_text(self, text: str) -> list[Event]:
        """A text frame arrived."""
        if self.state is State.CLOSED:
            return []
        if len(text.encode("utf-8", "surrogatepass")) > self.limits.max_message_bytes:
            return self._error(CLOSE_MESSAGE_TOO_BIG, None, self._too_big())
        try:
            message = json.loads(text)
        except ValueError:
            return self._error(CLOSE_INVALID_PAYLOAD, None, "text frame is not valid JSON")
        if not isinstance(message, dict):
            return self._error(CLOSE_INVALID_PAYLOAD, None, "JSON message is not an object")
        signal = message.get("signal")
        if not isinstance(signal, str):
            reason = "missing" if "signal" not in message else "not a string"
            return self._error(CLOSE_INVALID_PAYLOAD, None, f'field "signal" is {reason}')
        if signal == "start":
            return self._start(message)
        if signal == "end":
            if self._stream is None:
                return self._error(CLOSE_POLICY_VIOLATION, signal, '"end" without a started stream')
            return [self._end(reply=True)]
        return self._error(CLOSE_POLICY_VIOLATION, signal, f"unknown signal {signal!r}")

    def receive_bytes(self, data: bytes) -> list[Event]:
        """A binary frame arrived."""
        if self.state is State.CLOSED:
            return []
        if len(data) > self.limits.max_message_bytes:
            return self._error(CLOSE_MESSAGE_TOO_BIG, None, self._too_big())
        stream = self._stream
        if stream is None:
            return self._error(CLOSE_POLICY_VIOLATION, None, 'audio before "start"')
        group = 2 * stream.channels
        buf = self._carry + data
        whole = len(buf) - len(buf) % group
        self._carry = buf[whole:]
        samples = pcm16_to_float(buf[:whole])
        if stream.channels > 1:
            samples = down_mix(samples.reshape(-1, stream.channels))
        self._samples += len(samples)
        if self._samples > self.limits.max_stream_seconds * stream.sample_rate:
            return self._error(
                CLOSE_POLICY_VIOLATION,
                None,
                f"stream longer than the limit of {self.limits.max_stream_seconds:g} s",
            )
        event = Audio(samples=samples, pcm=bytes(data), frame_index=self._frames)
        self._frames += 1
        return [event]

    def connection_closed(self) -> list[Event]:
        """The peer went away (or the socket closed): cut the open stream."""
        events: list[Event] = [self._end(reply=False)] if self._stream is not None else []
        self.state = State.CLOSED
        return events

    def fail(self, code: int, message: str) -> list[Event]:
        """The server ends the connection (timeout, shutdown, internal error)."""
        if self.state is State.CLOSED:
            return []
        return self._error(code, None, message)

    # ------------------------------------------------------------ internals

    def _too_big(self) -> str:
        return f"frame larger than the limit of {self.limits.max_message_bytes} bytes"

    def _error(self, code: int, signal: str | None, message: str) -> list[Event]:
        events = self.connection_closed()
        events.append(ErrorReply(code=code, signal=signal, message=message))
        return events

    def _end(self, *, reply: bool) -> EndStream:
        assert self._stream is not None
        event = EndStream(name=self._stream.name, reply=reply)
        self._stream = None
        self.state = State.IDLE
        return event

    def _start(self, message: dict[str, Any]) -> list[Event]:
        try:
            start = self._parse_start(message)
        except _BadMessage as exc:
            return self._error(exc.code, "start", str(exc))
        events: list[Event] = [self._end(reply=True)] if self._stream is not None else []
        self._stream = start
        self.state = State.STREAMING
        self._carry = b""
        self._frames = 0
        self._samples = 0
        events.append(start)
        return events

    def _parse_start(self, message: dict[str, Any]) -> StartStream:
        limits = self.limits
        name = message.get("name")
        if not isinstance(name, str):
            reason = "missing" if "name" not in message else "not a string"
            raise _BadMessage(CLOSE_INVALID_PAYLOAD, f'field "name" is {reason}')
        if len(name) > limits.max_name_length:
            raise _BadMessage(CLOSE_POLICY_VIOLATION, f'"name" longer than {limits.max_name_length} characters')
        nbest = self._int_field(message, "nbest", 1)
        rate = self._int_field(message, "sampleRate", DEFAULT_SAMPLE_RATE)
        bits = self._int_field(message, "bitsPerSample", SUPPORTED_BITS_PER_SAMPLE)
        channels = self._int_field(message, "channels", 1)
        if not 1 <= nbest <= limits.nbest_max:
            raise _BadMessage(CLOSE_POLICY_VIOLATION, f'"nbest" must be between 1 and {limits.nbest_max}, got {nbest}')
        if bits != SUPPORTED_BITS_PER_SAMPLE:
            raise _BadMessage(CLOSE_UNSUPPORTED_DATA, f'"bitsPerSample" {bits} is not supported (only 16)')
        if not 1 <= channels <= limits.max_channels:
            raise _BadMessage(
                CLOSE_UNSUPPORTED_DATA, f'"channels" must be between 1 and {limits.max_channels}, got {channels}'
            )
        if rate not in limits.sample_rates:
            rates = ", ".join(map(str, sorted(limits.sample_rates)))
            raise _BadMessage(CLOSE_UNSUPPORTED_DATA, f'"sampleRate" {rate} is not supported (one of {rates})')
        return StartStream(name=name, nbest=nbest, sample_rate=rate, bits_per_sample=bits, channels=channels)

    @staticmethod
    def _int_field(message: dict[str, Any], key: str, default: int) -> int:
        value = message.get(key, default)
        if not _is_int(value):
            raise _BadMessage(CLOSE_INVALID_PAYLOAD, f'field "{key}" must be an integer, got {json.dumps(value)}')
        return value
