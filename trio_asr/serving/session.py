"""One WebSocket connection: reader, decoder and writer tasks in a nursery.

*reader* feeds frames to the sans-I/O
:class:`~trio_asr.protocol.connection.ConnectionProtocol` and passes its events on;
*decoder* opens streams, records their audio and decodes it through the
server's :class:`~trio_asr.recognition.batched.Decoder`, turning events into replies;
*writer* sends each reply through the protocol core (which checks that it is
the one due) and closes the socket after an error.  Bounded memory channels
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
from collections.abc import Callable
from typing import TypeVar

import attrs
import trio
import trio_websocket

from trio_asr.serving.config import ServerConfig
from trio_asr.recognition.batched import Decoder
from trio_asr.recognition.hotwords import HotwordError
from trio_asr.serving.lifecycle import Lifecycle
from trio_asr.serving.logs import log_event
from trio_asr.serving.metrics import ServerMetrics
from trio_asr.protocol.messages import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    EndStream,
    ErrorReply,
    Event,
    PartialResult,
    Reply,
    ServerReady,
    StartStream,
)
from trio_asr.protocol.connection import ConnectionProtocol, LocalProtocolError, State
from trio_asr.serving.open_stream import ConnectionTotals, OpenStream
from trio_asr.serving.recording import AudioSaveError, AudioStore
from trio_asr.protocol.replies import StreamReplies

__all__ = ["Session", "SessionContext"]

log = logging.getLogger("trio_asr.serving.server")

T = TypeVar("T")


@attrs.frozen
class SessionContext:
    """What a session needs of its server."""

    config: ServerConfig
    decoder: Decoder
    audio: AudioStore
    lifecycle: Lifecycle
    metrics: ServerMetrics = attrs.field(factory=ServerMetrics)


class _ByteBudget:
    """Bounds the audio bytes queued between reader and decoder (the channel
    bounds their number); one item may always pass when nothing is queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = trio.Event()

    async def take(self, size: int) -> None:
        while self.used and self.used + size > self.limit:
            await self._freed.wait()
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        self._freed.set()
        self._freed = trio.Event()


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
        self._reader_scope = trio.CancelScope()
        self._client_gone = False  # no reply can reach the client any more
        # events the protocol produced that the reader has not handed over yet
        self._undelivered: collections.deque[Event] = collections.deque()
        self._budget = _ByteBudget(2 * self.config.max_message_bytes)
        self._totals = ConnectionTotals()
        self._metrics = context.metrics
        # perf_counter() of each audio frame whose partial reply is not sent yet
        self._frame_times: collections.deque[float] = collections.deque()
        # how a stream cut off by the protocol ended (see _note_cut)
        self._cut_how = "cut off"

    async def run(self) -> None:
        size = self.config.channel_size
        events_tx, events_rx = trio.open_memory_channel[Event](size)
        replies_tx, replies_rx = trio.open_memory_channel[Reply](size)
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
                self._peer_dead = True
                self._wake()
                return

    def _wake(self) -> None:
        if self._read_scope is not None:
            self._woken = True
            self._read_scope.cancel()

    # ------------------------------------------------------------ reader

    async def _reader(self, events: trio.MemorySendChannel[Event]) -> None:
        """Hand every event to the decoder, in order, none lost: when the
        writer gives up on the client (see :meth:`_writer`) the reader stops
        reading, and what was received still goes to the decoder."""
        pending = self._undelivered
        async with events:
            with self._reader_scope:
                while self.protocol.state is not State.CLOSED:
                    pending.extend(self._produced(await self._next_events()))
                    while pending:
                        if isinstance(pending[0], Audio):
                            await self._budget.take(len(pending[0].pcm))
                        await events.send(pending[0])
                        pending.popleft()
            if self._reader_scope.cancelled_caught:
                self._client_gone = True
            pending.extend(self._produced(self.protocol.connection_closed()))
            while pending:
                await events.send(pending.popleft())

    def _produced(self, events: list[Event]) -> list[Event]:
        self._note_cut(events)
        for event in events:
            if isinstance(event, Audio):
                self._frame_times.append(time.perf_counter())
        return events

    def _note_cut(self, events: list[Event]) -> None:
        """A stream cut off together with an error reply ended by that error
        (or by the shutdown), not by the client leaving."""
        error = next((e for e in events if isinstance(e, ErrorReply)), None)
        if error is not None and any(isinstance(e, EndStream) and not e.reply for e in events):
            self._cut_how = "shut down" if error.code == CLOSE_GOING_AWAY else "error"

    async def _next_events(self) -> list[Event]:
        protocol = self.protocol
        lifecycle = self.context.lifecycle
        if lifecycle.stopping or (lifecycle.draining and protocol.state is State.IDLE):
            return protocol.fail(CLOSE_GOING_AWAY, "server is shutting down")
        if self._peer_dead:
            self.outcome = "peer did not answer pings"
            self._client_gone = True
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
                self._client_gone = True
                reason = exc.reason
                if reason is not None and reason.code in (1002, 1007):  # wsproto refused a frame (or the client said so)
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
            return protocol.fail(CLOSE_POLICY_VIOLATION, f"no stream started for {timeout:g} s")
        if isinstance(message, str):
            return protocol.receive_text(message)
        assert isinstance(message, bytes)
        return protocol.receive_bytes(message)

    # ------------------------------------------------------------ decoder

    async def _decoder(self, events: trio.MemoryReceiveChannel[Event], replies: trio.MemorySendChannel[Reply]) -> None:
        """Turn events into replies; every byte of audio received is saved,
        however the connection ends (see :meth:`_ending`)."""
        stream: OpenStream | None = None
        async with events, replies:
            try:
                async for event in events:
                    try:
                        if isinstance(event, Audio):
                            self._budget.give(len(event.pcm))
                            if self._ending():
                                if stream is not None and not stream.closed:
                                    stream.received(event.samples.size)
                                    await stream.keep(event.pcm)
                                continue
                        stream = await self._handle(event, stream, replies)
                    except Exception as exc:
                        if isinstance(exc, AudioSaveError):
                            log.warning("connection id=%d: %s", self.id, exc)
                            if stream is not None:
                                stream.note_save_failed()
                            else:
                                self._metrics.save_failed()
                            message = str(exc)
                        else:
                            log.exception("connection id=%d: internal error", self.id)
                            message = f"internal error: {type(exc).__name__}"
                        await self._fail(replies, CLOSE_INTERNAL_ERROR, message)
                if stream is not None:
                    await self._in_thread(stream.cut, "error" if self._failed else self._cut_how)
                    stream = None
            finally:
                if stream is not None:  # cancelled: keep what is queued, here and now
                    queued: list[Event] = []
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while True:
                            queued.append(events.receive_nowait())
                    for event in [*queued, *self._undelivered]:
                        if isinstance(event, Audio):
                            stream.keep_now(event.pcm)
                    stream.cut("cancelled")

    def _ending(self) -> bool:
        """No reply to the audio still queued will be sent (the server failed,
        the client is gone, the server is stopping): save it, don't decode it."""
        return self._failed or self._client_gone or self.context.lifecycle.stopping

    async def _handle(
        self, event: Event, stream: OpenStream | None, replies: trio.MemorySendChannel[Reply]
    ) -> OpenStream | None:
        if isinstance(event, Audio):
            assert stream is not None
            stream.received(event.samples.size)
            await stream.record(event.pcm)
            result = await stream.decoding.feed(event.samples)
            await replies.send(stream.replies.partial(result))
            return stream
        if isinstance(event, StartStream):
            try:
                if event.hotwords:
                    decoding = await self.context.decoder.open_stream_with_hotwords(
                        event.nbest, event.sample_rate, event.hotwords, event.endpoint
                    )
                else:
                    decoding = self.context.decoder.open_stream(event.nbest, event.sample_rate, event.endpoint)
            except HotwordError as exc:
                await self._fail(replies, CLOSE_INVALID_PAYLOAD, f'field "hotwords": {exc}', "start")
                return None
            except ValueError as exc:
                await self._fail(replies, CLOSE_UNSUPPORTED_DATA, str(exc), "start")
                return None
            self._totals.streams += 1
            await replies.send(ServerReady())
            return OpenStream(
                event, decoding, StreamReplies(event), self.context.audio, self._metrics, self._totals,
                self.context.decoder.limiter, self.id,
            )  # fmt: skip
        if isinstance(event, EndStream):
            assert stream is not None
            if not event.reply or self._ending():
                await stream.aclose(self._cut_how)
                if self.outcome == "ok":
                    self.outcome = "disconnected mid-stream"
                return None
            result = await stream.decoding.finish()
            await stream.aclose("finished", result.text)
            await replies.send(stream.replies.final(result))
            return None
        self.outcome = f"closed {event.code}: {event.message}"
        await replies.send(event)
        return stream

    async def _fail(
        self, replies: trio.MemorySendChannel[Reply], code: int, message: str, signal: str | None = None
    ) -> None:
        """End the connection from the server's side, through the protocol core;
        events the reader queued before it need no answer any more."""
        self._failed = True
        for event in self.protocol.fail(code, message, signal):
            if isinstance(event, ErrorReply):
                self.outcome = f"closed {code}: {message}"
                await replies.send(event)

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.context.decoder.limiter)

    # ------------------------------------------------------------ writer

    async def _writer(self, replies: trio.MemoryReceiveChannel[Reply]) -> None:
        async with replies:
            async for reply in replies:
                if not self._socket_open:
                    continue  # keep draining so the decoder never blocks
                try:
                    text = self.protocol.send(reply)
                except LocalProtocolError:
                    log.exception("connection id=%d: reply out of order", self.id)
                    self.outcome = "internal error: reply out of order"
                    await self._close_socket(CLOSE_INTERNAL_ERROR, "internal error")
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
                    self._socket_open = False
                    self._reader_scope.cancel()  # what it received is still saved
                    continue
                if isinstance(reply, PartialResult) and self._frame_times:
                    self._metrics.partial_reply_sent(time.perf_counter() - self._frame_times.popleft())
                if isinstance(reply, ErrorReply):
                    await self._close_socket(reply.code, reply.message)

    async def _close_socket(self, code: int, reason: str) -> None:
        self._socket_open = False
        with trio.move_on_after(self.config.close_timeout):
            try:
                await self.ws.aclose(code, _close_reason(reason))
            except trio_websocket.ConnectionClosed:
                pass
