"""The streaming-ASR WebSocket protocol as a sans-I/O state machine.

:class:`ConnectionProtocol` owns both directions of one connection, like
h11's ``Connection``: it is fed what arrives (text frames, binary frames,
the connection closing) and returns the *events* they mean
(:mod:`trio_asr.messages`), and every reply goes out through
:meth:`ConnectionProtocol.send`, which enforces the order the spec demands
(§5): ``server_ready`` answers ``start``, exactly one partial result answers
each binary frame, in order, the final result comes after the partials of its
stream, and nothing follows an error reply.  It knows nothing of sockets,
tasks or models; the server does the I/O.

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
* A second ``start`` while a stream is open first ends the open stream as
  ``end`` would (its final reply is due), then the new ``start`` is judged.
* Bytes of an incomplete sample group (odd byte, or a frame cut inside a
  multi-channel group) carry over to the next frame; the remainder still
  held when a stream ends is not a sample and is dropped.
* A stream may not grow beyond what one WAV file can hold (4 GiB of PCM).
* ``start`` may carry ``hotwords`` (our extension): a list of phrases, each a
  string or a ``[phrase, score]`` pair (:func:`trio_asr.hotwords.hotwords_from_json`),
  at most ``max_stream_hotwords`` of them (1008 beyond); anything malformed
  is 1007.

Additions to ``start`` (optional; a client that sends none gets exactly the
spec's replies plus additive fields, see :mod:`trio_asr.messages`):

* ``endpoint``: an object with any of ``silenceWithoutText``,
  ``silenceAfterText`` (seconds, or ``null`` to switch that rule off) and
  ``maxSegment`` (seconds); missing keys take the server's rules.  Not an
  object, an unknown key or a non-number is 1007; a value out of bounds
  (:class:`trio_asr.endpoint.EndpointRules`) is 1008.
* ``compact``: ``true`` for replies whose ``result`` is the open segment only.
"""

from __future__ import annotations

import collections
import enum
import json
from collections.abc import Callable
from typing import Any

import attrs

from trio_asr.audio import WAV_MAX_DATA_BYTES, down_mix, pcm16_to_float
from trio_asr.endpoint import EndpointRules
from trio_asr.hotwords import HotwordError, hotwords_from_json
from trio_asr.messages import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    EndStream,
    ErrorReply,
    Event,
    FinalResult,
    PartialResult,
    Reply,
    ServerReady,
    StartStream,
    encode_reply,
)

__all__ = ["ConnectionProtocol", "LocalProtocolError", "ProtocolLimits", "State"]

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
    #: PCM bytes per stream; the default is what a WAV file can hold
    max_stream_bytes: int = attrs.field(default=WAV_MAX_DATA_BYTES, validator=_positive)
    #: the endpoint rules a ``start`` without (some of) them gets
    endpoint: EndpointRules = attrs.field(factory=EndpointRules)
    #: phrases a stream's ``hotwords`` field may hold (0: the field is refused)
    max_stream_hotwords: int = attrs.field(default=100, validator=attrs.validators.ge(0))


#: ``start``'s ``endpoint`` keys -> EndpointRules fields
_ENDPOINT_KEYS = {
    "silenceWithoutText": "silence_without_text",
    "silenceAfterText": "silence_after_text",
    "maxSegment": "max_segment",
}


class State(enum.Enum):
    IDLE = "idle"  # no stream open; waiting for start
    STREAMING = "streaming"  # a stream is open
    CLOSED = "closed"  # an error was reported or the connection ended


class LocalProtocolError(Exception):
    """The server tried to send a reply the protocol does not allow now
    (a bug in the server, never the client's doing)."""


class _BadMessage(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _excerpt(value: object, limit: int = 40) -> str:
    """``value`` as JSON for an error message, cut to ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = "?"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reply_due(event: Event) -> type | None:
    """The reply ``event`` makes due, if any."""
    if isinstance(event, StartStream):
        return ServerReady
    if isinstance(event, Audio):
        return PartialResult
    if isinstance(event, EndStream):
        return FinalResult if event.reply else None
    return ErrorReply


def _never_raises(method: Callable[..., list[Event]]) -> Callable[..., list[Event]]:
    """Input handlers turn anything unexpected into an internal-error event
    (like h11's ``next_event``, they never raise on what a peer sends)."""

    def guarded(self: ConnectionProtocol, *args: Any) -> list[Event]:
        try:
            return method(self, *args)
        except Exception as exc:
            events = self._error(CLOSE_INTERNAL_ERROR, None, f"internal error: {type(exc).__name__}")
            self._owe(events)
            return events

    guarded.__doc__ = method.__doc__
    guarded.__name__ = method.__name__
    return guarded


class ConnectionProtocol:
    """Protocol state of one WebSocket connection (sans-I/O).

    Input: every ``receive_*``/``connection_closed``/``fail`` call returns the
    events it caused, in order, and never raises.  After an
    :class:`~trio_asr.messages.ErrorReply` event or :meth:`connection_closed`
    the state is :attr:`State.CLOSED` and all further input is ignored.
    Whenever a stream is open when the connection ends for any reason, an
    ``EndStream(reply=False)`` comes first so that its audio can still be
    saved.

    Output: :meth:`send` encodes the next reply and checks that it is the one
    due: one per ``start``, binary frame and ``end``, in the order of the
    events that made them due.  An error reply may be sent once an error
    event was issued, ahead of replies still due (it ends the connection);
    nothing may be sent after it.  Anything else raises
    :class:`LocalProtocolError`.
    """

    def __init__(self, limits: ProtocolLimits = ProtocolLimits()) -> None:
        self.limits = limits
        self.state = State.IDLE
        self._stream: StartStream | None = None
        self._carry = b""
        self._frames = 0
        self._samples = 0
        self._bytes = 0
        self._due: collections.deque[type] = collections.deque()
        self._error_issued = False
        self._error_sent = False

    @property
    def stream(self) -> StartStream | None:
        """The open stream, if any."""
        return self._stream

    @property
    def replies_due(self) -> int:
        """Replies the events so far have made due and that were not sent."""
        return len(self._due)

    @property
    def error_sent(self) -> bool:
        return self._error_sent

    # ------------------------------------------------------------ input

    @_never_raises
    def receive_text(self, text: str) -> list[Event]:
        """A text frame arrived."""
        return self._owe(self._text(text))

    @_never_raises
    def receive_bytes(self, data: bytes) -> list[Event]:
        """A binary frame arrived."""
        return self._owe(self._bytes_frame(data))

    def connection_closed(self) -> list[Event]:
        """The peer went away (or the socket closed): cut the open stream."""
        events: list[Event] = [self._end(reply=False)] if self._stream is not None else []
        self.state = State.CLOSED
        return events

    def fail(self, code: int, message: str, signal: str | None = None) -> list[Event]:
        """The server ends the connection (timeout, shutdown, a format it
        cannot decode, an internal error): cut the open stream and issue an
        error reply; nothing when the connection is already closed."""
        if self.state is State.CLOSED:
            return []
        return self._owe(self._error(code, signal, message))

    # ------------------------------------------------------------ output

    def send(self, reply: Reply) -> str:
        """The JSON text of ``reply``, which must be the reply due now."""
        if self._error_sent:
            raise LocalProtocolError(f"{type(reply).__name__} after the error reply")
        if isinstance(reply, ErrorReply):
            if not self._error_issued:
                raise LocalProtocolError("error reply without an error (use fail())")
            self._error_sent = True
            self._due.clear()
        else:
            due = self._due[0] if self._due else None
            if type(reply) is not due or due is ErrorReply:
                expected = "nothing" if due is None else due.__name__
                raise LocalProtocolError(f"{type(reply).__name__} sent where {expected} is due")
            self._due.popleft()
        return encode_reply(reply)

    # ------------------------------------------------------------ internals

    def _owe(self, events: list[Event]) -> list[Event]:
        for event in events:
            due = _reply_due(event)
            if due is ErrorReply:
                self._error_issued = True
            if due is not None:
                self._due.append(due)
        return events

    def _text(self, text: str) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if len(text.encode("utf-8", "surrogatepass")) > self.limits.max_message_bytes:
            return self._error(CLOSE_MESSAGE_TOO_BIG, None, self._too_big())
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
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
        return self._error(CLOSE_POLICY_VIOLATION, signal, f"unknown signal {_excerpt(signal)}")

    def _bytes_frame(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if len(data) > self.limits.max_message_bytes:
            return self._error(CLOSE_MESSAGE_TOO_BIG, None, self._too_big())
        stream = self._stream
        if stream is None:
            return self._error(CLOSE_POLICY_VIOLATION, None, 'audio before "start"')
        self._bytes += len(data)
        if self._bytes > self.limits.max_stream_bytes:
            return self._error(
                CLOSE_POLICY_VIOLATION, None, "stream larger than one WAV file can hold (4 GiB); start a new one"
            )
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
        events: list[Event] = [self._end(reply=True)] if self._stream is not None else []
        try:
            start = self._parse_start(message)
        except _BadMessage as exc:
            return events + self._error(exc.code, "start", str(exc))
        self._stream = start
        self.state = State.STREAMING
        self._carry = b""
        self._frames = self._samples = self._bytes = 0
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
        hotwords = message.get("hotwords", [])
        if isinstance(hotwords, list) and len(hotwords) > limits.max_stream_hotwords:
            raise _BadMessage(
                CLOSE_POLICY_VIOLATION,
                f'"hotwords" holds {len(hotwords)} phrases, at most {limits.max_stream_hotwords} are allowed',
            )
        try:
            phrases = hotwords_from_json(hotwords, limit=limits.max_stream_hotwords)
        except HotwordError as exc:
            raise _BadMessage(CLOSE_INVALID_PAYLOAD, f'field "hotwords": {exc}') from None
        compact = message.get("compact", False)
        if not isinstance(compact, bool):
            raise _BadMessage(CLOSE_INVALID_PAYLOAD, f'field "compact" must be true or false, got {_excerpt(compact)}')
        return StartStream(
            name=name,
            nbest=nbest,
            sample_rate=rate,
            bits_per_sample=bits,
            channels=channels,
            hotwords=phrases,
            endpoint=self._endpoint_field(message),
            compact=compact,
        )

    def _endpoint_field(self, message: dict[str, Any]) -> EndpointRules | None:
        if "endpoint" not in message:
            return None
        given = message["endpoint"]
        if not isinstance(given, dict):
            raise _BadMessage(CLOSE_INVALID_PAYLOAD, f'field "endpoint" must be an object, got {_excerpt(given)}')
        changes: dict[str, Any] = {}
        for key, value in given.items():
            if key not in _ENDPOINT_KEYS:
                known = ", ".join(_ENDPOINT_KEYS)
                raise _BadMessage(CLOSE_INVALID_PAYLOAD, f'unknown "endpoint" key {_excerpt(key)} (known: {known})')
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number and not (value is None and key != "maxSegment"):
                raise _BadMessage(
                    CLOSE_INVALID_PAYLOAD, f'"endpoint" {key} must be a number of seconds, got {_excerpt(value)}'
                )
            if number and not -1e300 < value < 1e300:
                raise _BadMessage(CLOSE_POLICY_VIOLATION, f'"endpoint" {key} is out of bounds, got {_excerpt(value)}')
            changes[_ENDPOINT_KEYS[key]] = value
        try:
            return attrs.evolve(self.limits.endpoint, **changes)
        except (TypeError, ValueError) as exc:
            reason = str(exc)
            for key, field in _ENDPOINT_KEYS.items():
                reason = reason.replace(field, key)
            raise _BadMessage(CLOSE_POLICY_VIOLATION, f'"endpoint" {reason}') from None

    @staticmethod
    def _int_field(message: dict[str, Any], key: str, default: int) -> int:
        value = message.get(key, default)
        if not _is_int(value):
            raise _BadMessage(CLOSE_INVALID_PAYLOAD, f'field "{key}" must be an integer, got {_excerpt(value)}')
        return value
