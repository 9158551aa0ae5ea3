"""One WebSocket connection: reader, decoder and writer tasks in a nursery.

*reader* feeds frames to the sans-I/O
:class:`~trio_asr.protocol.connection.ConnectionProtocol` and passes its
events on; *decoder* routes each event to the open stream
(:class:`~trio_asr.serving.open_stream.OpenStream`, which records, decodes
and builds the reply), and turns failures into the protocol core's error
events; *writer* sends each reply through the protocol core (which checks
that it is the one due) and closes the socket after an error.  Bounded memory channels
join them, so a slow client or a slow model applies backpressure.  A fourth
task, the *watcher*, wakes the reader when the server starts draining or
stopping, and pings connections that have no stream open.

A session sees only its :class:`SessionContext`, never the server.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time

import attrs
import trio
import trio_websocket

from trio_asr.protocol.connection import PEER_REFUSALS, ConnectionProtocol, LocalProtocolError, State
from trio_asr.protocol.messages import (
    CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, Audio, EndStream, ErrorReply, Event, Reply, ServerReady,
    StartStream,
)  # fmt: skip
from trio_asr.recognition.batched import BatchedRecognizer
from trio_asr.recognition.compile_queue import CompileQueueFull
from trio_asr.serving.channels import ByteBudget, send_soon
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.lifecycle import Lifecycle
from trio_asr.serving.logs import log_event
from trio_asr.serving.metrics import ServerMetrics
from trio_asr.serving.open_stream import ConnectionTotals, OpenStream, StreamContext
from trio_asr.serving.recording import AudioSaveError, AudioStore
from trio_asr.serving.websocket import Oversized

__all__ = ["Session", "SessionContext"]

log = logging.getLogger("trio_asr.server")

#: an event and when the reader received it (perf_counter); a reply and when
#: the frame it answers was received (None: it answers no frame)
Received = tuple[Event, float]
Outgoing = tuple[Reply, "float | None"]


@attrs.frozen
class SessionContext:
    """What a session needs of its server."""

    config: ServerConfig
    recognizer: BatchedRecognizer
    audio: AudioStore
    lifecycle: Lifecycle
    metrics: ServerMetrics = attrs.field(factory=ServerMetrics)


def _close_reason(message: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    return message.encode("utf-8", "replace")[:120].decode("utf-8", "ignore")


class Session:
    """One WebSocket connection; :meth:`run` serves it until it ends."""

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, context: SessionContext, conn_id: int, peer: str
    ) -> None:
        self.ws = ws
        self.context = context
        self.config = context.config
        self.id = conn_id
        self.peer = peer
        self.protocol = ConnectionProtocol(self.config.protocol_limits())
        self.outcome = "ok"
        self._read_scope: trio.CancelScope | None = None
        self._woken = False
        self._peer_dead = False
        self._socket_open = True
        self._failed = False  # the decoder ended the connection (see _fail)
        self._sent_close_code: int | None = None  # the code of the close this session began
        #: the close a connection given up on gets (see :attr:`closing`)
        self._drop: tuple[int, str] | None = None
        self._reader_scope = trio.CancelScope()
        self._client_gone = False  # no reply can reach the client any more (see _lose_client)
        self._opening = trio.CancelScope()  # that of the stream being opened (see _open)
        # events the protocol produced that the reader has not handed over yet
        self._undelivered: collections.deque[Received] = collections.deque()
        self._budget = ByteBudget(2 * self.config.max_message_bytes)
        self._totals = ConnectionTotals()
        self._metrics = context.metrics
        self._streams = StreamContext(context.recognizer, context.audio, context.metrics, self._totals, conn_id, peer)

    @property
    def close_code(self) -> int | None:
        """The close code the connection ended with, as the server sent it:
        that of the close the session began (whatever the peer answers to
        it, if anything), else trio-websocket's (the peer's code, which it
        echoes; 1000 for the server's own close; 1006 when the connection
        ended without a closing handshake); None while it is open."""
        if self._sent_close_code is not None:
            return self._sent_close_code
        closed = self.ws.closed
        return None if closed is None else int(closed.code)

    @property
    def closing(self) -> tuple[int, str | None]:
        """The code and reason of the close the server sends once :meth:`run`
        returns (if the socket is still open): a normal close, or why a
        client that stopped answering pings or reading was given up on."""
        return self._drop or (CLOSE_NORMAL, None)

    def _give_up(self, code: int, reason: str) -> None:
        self._drop = (code, reason)  # sent (and then counted) once run() returns, unless the peer closed first

    async def run(self) -> None:
        size = self.config.channel_size
        events_tx, events_rx = trio.open_memory_channel[Received](size)
        replies_tx, replies_rx = trio.open_memory_channel[Outgoing](size)
        started = time.perf_counter()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._watcher)
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._reader, events_tx)
                    tasks.start_soon(self._decoder, events_rx, replies_tx)
                    tasks.start_soon(self._writer, replies_rx)
                outer.cancel_scope.cancel()
        finally:
            totals = self._totals
            rtf = totals.decode_seconds / totals.audio_seconds if totals.audio_seconds else 0.0
            log_event(
                log, "connection", id=self.id, peer=self.peer, streams=totals.streams,
                audio_s=round(totals.audio_seconds, 2), rtf=round(rtf, 3),
                duration_s=round(time.perf_counter() - started, 2), outcome=self.outcome,
            )  # fmt: skip

    # ------------------------------------------------------------ watcher

    async def _watcher(self) -> None:
        """Wake the reader on lifecycle changes; ping while no stream is open."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._wake_on_lifecycle)
            if self.config.ping_interval > 0:
                nursery.start_soon(self._ping)

    async def _wake_on_lifecycle(self) -> None:
        while True:
            await self.context.lifecycle.wait_changed()
            self._wake()

    async def _ping(self) -> None:
        interval = self.config.ping_interval
        while True:
            await trio.sleep(interval)
            if self.protocol.state is not State.IDLE:
                continue
            with trio.move_on_after(interval) as scope:
                try:
                    await self.ws.ping()
                except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if scope.cancelled_caught:
                log.info("connection id=%d: no pong within %g s; dropping it", self.id, interval)
                self._give_up(CLOSE_INTERNAL_ERROR, "no pong")  # as the websockets library closes for it
                self._peer_dead = True
                self._wake()
                return

    def _lose_client(self) -> None:
        """No reply can reach the client any more: a stream being opened is for no one."""
        self._client_gone = True
        self._opening.cancel()

    def _wake(self) -> None:
        if self._read_scope is not None:
            self._woken = True
            self._read_scope.cancel()

    # ------------------------------------------------------------ reader

    async def _reader(self, events: trio.MemorySendChannel[Received]) -> None:
        """Hand every event to the decoder, in order, none lost: when the
        writer gives up on the client (see :meth:`_writer`) the reader stops
        reading, and what was received still goes to the decoder."""
        pending = self._undelivered
        async with events:
            with self._reader_scope:
                while self.protocol.state is not State.CLOSED:
                    received = await self._next_events()
                    now = time.perf_counter()
                    pending.extend((event, now) for event in received)
                    while pending:
                        event = pending[0][0]
                        if isinstance(event, Audio):
                            await self._budget.take(len(event.pcm))
                        await send_soon(events, pending[0])
                        pending.popleft()
            if self._reader_scope.cancelled_caught:
                self._lose_client()
            now = time.perf_counter()
            pending.extend((event, now) for event in self.protocol.connection_closed())
            while pending:
                await events.send(pending.popleft())

    async def _next_events(self) -> list[Event]:
        protocol = self.protocol
        lifecycle = self.context.lifecycle
        if lifecycle.stopping or (lifecycle.draining and protocol.state is State.IDLE):
            return protocol.shut_down()
        if self._peer_dead:
            self.outcome = "peer did not answer pings"
            self._lose_client()
            return protocol.connection_closed()
        self._woken = False
        streaming = protocol.state is State.STREAMING
        timeout = self.config.idle_timeout if streaming else self.config.connection_idle_timeout
        message: str | bytes | None = None
        with trio.move_on_after(timeout) as scope:
            self._read_scope = scope
            try:
                message = await self.ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                self._lose_client()
                reason = exc.reason
                if reason is not None and reason.code in PEER_REFUSALS:  # wsproto refused a frame, or the client did
                    self.outcome = f"closed {reason.code}: {reason.reason}"
                return protocol.connection_closed()
            finally:
                self._read_scope = None
        if scope.cancelled_caught:
            if self._woken:
                self._woken = False
                return []
            if streaming:  # e.g. PaddleSpeech's web demo after Stop: it never sends "end"
                log.info("connection id=%d: stream silent for %g s; ending it", self.id, timeout)
                return protocol.stream_idle()
            return protocol.connection_idle(timeout)
        if isinstance(message, str):
            return protocol.receive_text(message)
        if isinstance(message, Oversized):  # over max_message_bytes, not kept (see serving/websocket.py)
            return protocol.receive_oversized()
        assert isinstance(message, bytes)
        return protocol.receive_bytes(message)

    # ------------------------------------------------------------ decoder

    async def _decoder(
        self, events: trio.MemoryReceiveChannel[Received], replies: trio.MemorySendChannel[Outgoing]
    ) -> None:
        """Route events to the open stream; every byte of audio received is
        saved, however the connection ends (see :meth:`_ending`)."""
        stream: OpenStream | None = None
        async with events, replies:
            try:
                async for event, received in events:
                    try:
                        stream = await self._route(event, received, stream, replies)
                    except Exception as exc:
                        if isinstance(exc, AudioSaveError):  # the stream counted it
                            log.warning("connection id=%d: %s", self.id, exc)
                            failure = self.protocol.internal_error(str(exc))
                        else:
                            log.exception("connection id=%d: internal error", self.id)
                            failure = self.protocol.internal_error(f"internal error: {type(exc).__name__}")
                        await self._fail(replies, failure)
                if stream is not None:  # the protocol's cut of it went with a failure of ours
                    await stream.abort("error")
                    stream = None
            finally:
                if stream is not None:  # cancelled: keep what is queued, here and now
                    queued: list[Received] = []
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while True:
                            queued.append(events.receive_nowait())
                    for event, _ in [*queued, *self._undelivered]:
                        if not isinstance(event, Audio):
                            break  # what follows belongs to the next stream, if any
                        stream.keep_now(event.pcm)
                    stream.cut("cancelled")

    def _ending(self) -> bool:
        """No reply to the audio still queued will be sent (the server failed,
        the client is gone, the server is stopping): save it, don't decode it."""
        return self._failed or self._client_gone or self.context.lifecycle.stopping

    async def _route(
        self, event: Event, received: float, stream: OpenStream | None, replies: trio.MemorySendChannel[Outgoing]
    ) -> OpenStream | None:
        """Hand one event to the open stream (or open one); the stream open after it."""
        if isinstance(event, Audio):
            self._budget.give(len(event.pcm))
            if stream is None or stream.closed:
                return stream  # its start was refused: the connection is failing
            if self._ending():
                await stream.keep(event)
            else:
                await send_soon(replies, (await stream.feed(event), received))
            return stream
        if isinstance(event, StartStream):
            try:
                stream = await self._open(event)
            except (ValueError, CompileQueueFull) as exc:  # HotwordError is a ValueError
                await self._fail(replies, self.protocol.refuse_stream(exc))
                return None
            if stream is not None:
                await replies.send((ServerReady(), None))
            return stream
        if isinstance(event, EndStream):
            if stream is None:
                return None  # its start was refused: nothing to end
            if event.reply and not self._ending():
                await replies.send((await stream.finish(), None))
                return None
            await stream.abort(event.how if not event.reply else self._cut_how())
            if self.outcome == "ok":
                self.outcome = "disconnected mid-stream"
            return None
        self.outcome = f"closed {event.code}: {event.message}"
        await replies.send((event, None))
        return stream

    async def _open(self, start: StartStream) -> OpenStream | None:
        """The stream ``start`` asks for; None if the client left first (what its hotwords needed is dropped)."""
        with trio.CancelScope() as self._opening:
            if self._client_gone:
                self._opening.cancel()
            return await OpenStream.open(start, self._streams)
        return None

    def _cut_how(self) -> str:
        """How a stream whose final reply cannot be sent ends."""
        if self._failed:
            return "error"
        return "shut down" if self.context.lifecycle.stopping else "cut off"

    async def _fail(self, replies: trio.MemorySendChannel[Outgoing], events: list[Event]) -> None:
        """End the connection from the server's side with the protocol core's
        failure ``events``; events the reader queued before it need no
        answer any more."""
        self._failed = True
        for event in events:
            if isinstance(event, ErrorReply):
                self.outcome = f"closed {event.code}: {event.message}"
                await replies.send((event, None))

    # ------------------------------------------------------------ writer

    async def _writer(self, replies: trio.MemoryReceiveChannel[Outgoing]) -> None:
        async with replies:
            async for reply, received in replies:
                if not self._socket_open:
                    continue  # keep draining so the decoder never blocks
                try:
                    text = self.protocol.send(reply)
                except LocalProtocolError as exc:
                    log.exception("connection id=%d: reply out of order", self.id)
                    self.outcome = "internal error: reply out of order"
                    await self._close_socket(exc.close_code, "internal error")
                    continue
                try:
                    with trio.move_on_after(self.config.send_timeout) as scope:
                        await self.ws.send_message(text)
                except trio_websocket.ConnectionClosed:
                    self._socket_open = False
                    continue
                if scope.cancelled_caught:
                    log.info("connection id=%d: client stopped reading; dropping it", self.id)
                    self.outcome = "client stopped reading"
                    self._give_up(CLOSE_POLICY_VIOLATION, "client stopped reading")
                    self._socket_open = False
                    self._reader_scope.cancel()  # what it received is still saved
                    continue
                if received is not None:
                    self._metrics.partial_reply_sent(time.perf_counter() - received)
                if isinstance(reply, ErrorReply):
                    await self._close_socket(reply.code, reply.message)

    async def _close_socket(self, code: int, reason: str) -> None:
        self._socket_open = False
        if self.ws.closed is None:  # not closed by the peer first: our close frame goes out
            self._sent_close_code = code
        with trio.move_on_after(self.config.close_timeout):
            try:
                await self.ws.aclose(code, _close_reason(reason))
            except trio_websocket.ConnectionClosed:
                pass
