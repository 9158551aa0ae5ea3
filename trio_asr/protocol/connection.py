"""The streaming-ASR WebSocket protocol as a sans-I/O state machine.

:class:`ConnectionProtocol` owns both directions of one connection, like
h11's ``Connection``: it is fed what arrives (text frames, binary frames,
the connection closing) and returns the *events* they mean
(:mod:`trio_asr.protocol.messages`), and every reply goes out through
:meth:`ConnectionProtocol.send`, which enforces the order the spec demands
(§5): ``server_ready`` answers ``start``, exactly one partial result answers
each binary frame, in order, the final result comes after the partials of its
stream, and nothing follows an error reply.  It knows nothing of sockets,
tasks or models; the server does the I/O.

Decisions on points the spec leaves open:

* Close codes (chosen here only; the server names the failure, the core
  picks the code): 1007 (invalid payload) for a text frame that is not
  JSON, not a JSON object, or has a missing or ill-typed field, or a
  hotword the model cannot spell; 1008 (policy violation) for
  protocol-order errors (unknown signal, audio before start, end without
  start), for limits (nbest, name length, stream length, idle client);
  1003 (unsupported data) for audio formats we cannot take; 1009 for frames
  over ``max_message_bytes``; 1001 when the server shuts down; 1011 for
  the server's own failures; 1013 (try again later) for a ``start`` the
  server is too busy to take now (too many hotword lists waiting to be
  compiled).  JSON ``true``/``false`` is never an integer.
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
* ``start`` may carry our additive fields ``hotwords``, ``endpoint`` and
  ``compact``: see :mod:`trio_asr.protocol.start`.
"""

from __future__ import annotations

import collections
import enum
import json
from collections.abc import Callable
from typing import Any


from trio_asr.audio import down_mix, pcm16_to_float
from trio_asr.protocol.limits import ProtocolLimits
from trio_asr.protocol.messages import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
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
from trio_asr.protocol.start import BadStart, excerpt, parse_start
from trio_asr.recognition.compile_queue import CompileQueueFull
from trio_asr.recognition.hotwords import HotwordError

__all__ = ["PEER_REFUSALS", "ConnectionProtocol", "LocalProtocolError", "State"]

#: close codes with which a peer (or the WebSocket library on our side)
#: refuses what it was sent: worth noting in the connection's log line
PEER_REFUSALS = frozenset({CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_PAYLOAD})
#: characters of a refused message's "signal" that its error reply echoes
MAX_SIGNAL_ECHO = 64

class State(enum.Enum):
    IDLE = "idle"  # no stream open; waiting for start
    STREAMING = "streaming"  # a stream is open
    CLOSED = "closed"  # an error was reported or the connection ended


class LocalProtocolError(Exception):
    """The server tried to send a reply the protocol does not allow now
    (a bug in the server, never the client's doing); the connection is then
    closed with :attr:`close_code`, without a reply."""

    close_code = CLOSE_INTERNAL_ERROR


def _reply_due(event: Event) -> type | None:
    """The reply ``event`` makes due, if any."""
    if isinstance(event, StartStream):
        return ServerReady
    if isinstance(event, Audio):
        return PartialResult
    if isinstance(event, EndStream):
        return FinalResult if event.reply else None
    return ErrorReply


def _same_text(last: Reply, reply: Reply) -> bool:
    """Whether ``reply`` is written exactly as ``last`` was: equal partial
    replies of text and segment index only (a frame whose search step did not
    change the text).  Replies with floats (n-best scores, segment times) are
    not compared: -0.0 equals 0.0 but is written differently."""
    return (
        type(reply) is PartialResult
        and type(last) is PartialResult
        and not reply.nbest
        and not reply.segments
        and not last.nbest
        and not last.segments
        and reply.segment == last.segment
        and reply.text == last.text
    )


def _never_raises(method: Callable[..., list[Event]]) -> Callable[..., list[Event]]:
    """Input handlers turn anything unexpected into an internal-error event
    (like h11's ``next_event``, they never raise on what a peer sends)."""

    def guarded(self: ConnectionProtocol, *args: Any) -> list[Event]:
        try:
            return method(self, *args)
        except Exception as exc:
            events = self._error(CLOSE_INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
            self._owe(events)
            return events

    guarded.__doc__ = method.__doc__
    guarded.__name__ = method.__name__
    return guarded


class ConnectionProtocol:
    """Protocol state of one WebSocket connection (sans-I/O).

    Input: every ``receive_*``/``connection_closed``/``fail`` call returns the
    events it caused, in order, and never raises.  After an
    :class:`~trio_asr.protocol.messages.ErrorReply` event or :meth:`connection_closed`
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
        self._last_sent: tuple[Reply, str] | None = None  # a repeated (or equal) partial reply is encoded once
        self._error_issued = False
        self._error_sent = False

    @property
    def stream(self) -> StartStream | None:
        """The open stream, if any."""
        return self._stream

    # ------------------------------------------------------------ input

    @_never_raises
    def receive_text(self, text: str) -> list[Event]:
        """A text frame arrived."""
        return self._owe(self._text(text))

    @_never_raises
    def receive_bytes(self, data: bytes) -> list[Event]:
        """A binary frame arrived."""
        return self._owe(self._bytes_frame(data))

    @_never_raises
    def receive_oversized(self) -> list[Event]:
        """A frame larger than ``max_message_bytes`` arrived, which the
        WebSocket layer did not keep (see :mod:`trio_asr.serving.websocket`):
        the same 1009 as a kept frame over the limit."""
        if self.state is State.CLOSED:
            return []
        return self._owe(self._error(CLOSE_MESSAGE_TOO_BIG, self._too_big()))

    def stream_idle(self) -> list[Event]:
        """The open stream has been silent too long: it ends as if the client
        had sent ``end`` (its final reply is due), the connection stays open."""
        return self._owe([self._end(reply=True)] if self._stream is not None else [])

    def connection_closed(self) -> list[Event]:
        """The peer went away (or the socket closed): cut the open stream."""
        events: list[Event] = [self._end(reply=False)] if self._stream is not None else []
        self.state = State.CLOSED
        return events

    def fail(self, code: int, message: str, signal: str | None = None) -> list[Event]:
        """The server ends the connection: cut the open stream and issue an
        error reply with ``code``; nothing when the connection is already
        closed.  The server uses the named failures below."""
        if self.state is State.CLOSED:
            return []
        return self._owe(self._error(code, message, signal))

    def shut_down(self) -> list[Event]:
        """The server is shutting down."""
        return self.fail(CLOSE_GOING_AWAY, "server is shutting down")

    def connection_idle(self, seconds: float) -> list[Event]:
        """No stream was started for ``seconds``."""
        return self.fail(CLOSE_POLICY_VIOLATION, f"no stream started for {seconds:g} s")

    def internal_error(self, message: str) -> list[Event]:
        """The server failed this connection (a bug, or its disk)."""
        return self.fail(CLOSE_INTERNAL_ERROR, message)

    def refuse_stream(self, error: ValueError | CompileQueueFull) -> list[Event]:
        """The recognizer cannot take the stream the last ``start`` asked
        for: a hotword it cannot spell (1007), an audio format (1003), or
        not now: too many starts wait for their hotwords (1013)."""
        if isinstance(error, CompileQueueFull):
            return self.fail(CLOSE_TRY_AGAIN_LATER, f"server busy: {error}; try again later", "start")
        if isinstance(error, HotwordError):
            return self.fail(CLOSE_INVALID_PAYLOAD, f'field "hotwords": {error}', "start")
        return self.fail(CLOSE_UNSUPPORTED_DATA, str(error), "start")

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
            if due is ErrorReply or type(reply) is not due:
                expected = "nothing" if due is None else due.__name__
                raise LocalProtocolError(f"{type(reply).__name__} sent where {expected} is due")
            self._due.popleft()
        last = self._last_sent
        if last is not None and (last[0] is reply or _same_text(last[0], reply)):
            return last[1]
        text = encode_reply(reply)
        self._last_sent = (reply, text)
        return text

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
            return self._error(CLOSE_MESSAGE_TOO_BIG, self._too_big())
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            return self._error(CLOSE_INVALID_PAYLOAD, "text frame is not valid JSON")
        if not isinstance(message, dict):
            return self._error(CLOSE_INVALID_PAYLOAD, "JSON message is not an object")
        signal = message.get("signal")
        if not isinstance(signal, str):
            reason = "missing" if "signal" not in message else "not a string"
            return self._error(CLOSE_INVALID_PAYLOAD, f'field "signal" is {reason}')
        if signal == "start":
            return self._start(message)
        if signal == "end":
            if self._stream is None:
                return self._error(CLOSE_POLICY_VIOLATION, '"end" without a started stream', signal)
            return [self._end(reply=True)]
        return self._error(CLOSE_POLICY_VIOLATION, f"unknown signal {excerpt(signal)}", signal)

    def _bytes_frame(self, data: bytes) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if len(data) > self.limits.max_message_bytes:
            return self._error(CLOSE_MESSAGE_TOO_BIG, self._too_big())
        stream = self._stream
        if stream is None:
            return self._error(CLOSE_POLICY_VIOLATION, 'audio before "start"')
        self._bytes += len(data)
        if self._bytes > self.limits.max_stream_bytes:
            return self._error(
                CLOSE_POLICY_VIOLATION, "stream larger than one WAV file can hold (4 GiB); start a new one"
            )
        group = 2 * stream.channels
        buf = self._carry + data
        whole = len(buf) - len(buf) % group
        self._carry = buf[whole:]
        samples = pcm16_to_float(buf[:whole])
        if stream.channels > 1:
            samples = down_mix(samples.reshape(-1, stream.channels))
        self._samples += len(samples)
        event = Audio(samples=samples, pcm=bytes(data), frame_index=self._frames)
        self._frames += 1
        if self._samples > self.limits.max_stream_seconds * stream.sample_rate:
            # the frame that crosses the limit is still audio received: it ends the stream, saved with it
            limit = f"stream longer than the limit of {self.limits.max_stream_seconds:g} s"
            return [event, *self._error(CLOSE_POLICY_VIOLATION, limit)]
        return [event]

    def _too_big(self) -> str:
        return f"frame larger than the limit of {self.limits.max_message_bytes} bytes"

    def _error(self, code: int, message: str, signal: str | None = None) -> list[Event]:
        how = "shut down" if code == CLOSE_GOING_AWAY else "error"
        events: list[Event] = [self._end(reply=False, how=how)] if self._stream is not None else []
        self.state = State.CLOSED
        if signal is not None and len(signal) > MAX_SIGNAL_ECHO:
            signal = signal[:MAX_SIGNAL_ECHO]  # an unknown one can be as long as a frame: no reply that size
        events.append(ErrorReply(code, message, signal))
        return events

    def _end(self, *, reply: bool, how: str | None = None) -> EndStream:
        assert self._stream is not None
        event = EndStream(self._stream.name, reply) if how is None else EndStream(self._stream.name, reply, how)
        self._stream = None
        self.state = State.IDLE
        return event

    def _start(self, message: dict[str, Any]) -> list[Event]:
        events: list[Event] = [self._end(reply=True)] if self._stream is not None else []
        try:
            start = parse_start(message, self.limits)
        except BadStart as exc:
            return events + self._error(exc.code, str(exc), "start")
        self._stream = start
        self.state = State.STREAMING
        self._carry = b""
        self._frames = self._samples = self._bytes = 0
        events.append(start)
        return events
