"""The streaming-ASR WebSocket server (Trio + trio-websocket).

Structure:

* :class:`Server` owns the TCP listeners and one nursery of connections.
  Each accepted TCP stream first goes through a tiny HTTP router built on
  h11: ``GET /health`` / ``/healthz`` are answered with JSON (200 while the
  server accepts work, 503 when full or shutting down); a WebSocket upgrade
  for :data:`WS_PATH` is handed, bytes and all, to trio-websocket; every
  other path gets 404, a full server 503, a plain GET of the WebSocket path
  426.  (trio-websocket alone rejects non-upgrade requests before any
  handler sees them, hence the router.)
* :class:`Session` serves one WebSocket with three tasks in a nursery:
  *reader* (frames -> :class:`~trio_asr.protocol.ConnectionProtocol` ->
  events), *decoder* (events -> recognizer calls in worker threads, WAV
  saving -> replies) and *writer* (replies -> JSON frames, then the close
  code after an error).  Bounded memory channels join them, so replies keep
  the order of the requests, exactly one per binary frame.
* With ``config.batching`` the server nursery also runs one
  :class:`~trio_asr.model_service.ModelService`: decoders compute features
  and run the CTC search in worker threads as before, but hand their model
  chunks to the service, which batches the chunks of all connections into
  one model call.  Recognizers without a ``model`` (test doubles) are served
  unbatched, each stream running its own model calls.
* Admission control: while the service's queue delay exceeds
  ``config.max_queue_delay``, new WebSocket upgrades get HTTP 503 and
  ``/health`` answers 503 ``overloaded``; open streams go on.

Close codes are those of :mod:`trio_asr.protocol`; in addition an idle
client (no message for ``idle_timeout`` s) gets an error and 1008, an
internal error 1011 and a server shutdown 1001.  Frames up to twice
``max_message_bytes`` get a JSON error before the 1009 close; larger ones
are cut off by the WebSocket layer (1009 alone) before being buffered.

Saved audio: one WAV per stream under ``audio_dir``, exactly as the client
sent it (its rate and channel count, PCM16); names come from
:func:`trio_asr.audio.create_unique_wav` and never escape the directory or
overwrite a file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import attrs
import h11
import numpy as np
import trio
import trio_websocket

from trio_asr.audio import WavWriter, create_unique_wav
from trio_asr.config import ServerConfig
from trio_asr.config import ConfigError, load_config
from trio_asr.model_service import ModelService
from trio_asr.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    ConnectionProtocol,
    EndStream,
    ErrorReply,
    Event,
    FinalResult,
    PartialResult,
    Reply,
    ServerReady,
    StartStream,
    State,
    encode_reply,
)
from trio_asr.model import ModelStream
from trio_asr.recognizer import RecognitionResult

__all__ = ["WS_PATH", "Recognizer", "Server", "add_serve_parser", "serve"]

log = logging.getLogger("trio_asr.server")

WS_PATH = "/paddlespeech/asr/streaming"
HEALTH_PATHS = frozenset({"/health", "/healthz"})


class RecognizerStream(Protocol):
    def accept_waveform(self, samples: np.ndarray) -> None: ...
    def decode(self) -> None: ...
    def input_finished(self) -> None: ...
    def result(self) -> RecognitionResult: ...


class SteppedRecognizerStream(RecognizerStream, Protocol):
    """A stream whose model chunks can be run elsewhere (batched); see
    :class:`trio_asr.recognizer.RecognizerStream`."""

    model_stream: ModelStream

    def accept_log_probs(self, log_probs: np.ndarray) -> None: ...
    def flush_input(self) -> None: ...


class Recognizer(Protocol):
    """What the server needs of a recognizer (see ``trio_asr.recognizer``).

    ``create_stream(nbest, sample_rate)`` returns a stream taking float32 mono
    samples at ``sample_rate`` (resampling them to the model's rate itself, or
    raising ValueError for a rate it cannot take); ``result()`` gives a
    :class:`~trio_asr.recognizer.RecognitionResult`.
    Stream methods are called from worker threads, one call at a time per
    stream.

    A recognizer with a ``model`` attribute (an
    :class:`~trio_asr.model.AcousticModel`) must create
    :class:`SteppedRecognizerStream` s; with ``config.batching`` their chunks
    are then run by the server's :class:`~trio_asr.model_service.ModelService`.
    """

    sample_rate: int

    def create_stream(self, nbest: int, sample_rate: int) -> RecognizerStream: ...


# ---------------------------------------------------------------- HTTP router


class _ReplayStream(trio.abc.Stream):
    """A stream that first yields bytes already read from ``stream``."""

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _read_request(stream: trio.abc.Stream) -> tuple[h11.Connection, h11.Request | None, bytes]:
    """Read one HTTP request head; ``None`` if the peer left or sent garbage."""
    conn = h11.Connection(h11.SERVER)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return conn, None, bytes(raw)
        if isinstance(event, h11.Request):
            return conn, event, bytes(raw)
        if event is not h11.NEED_DATA:
            return conn, None, bytes(raw)
        data = await stream.receive_some(16384)
        if not data:
            return conn, None, bytes(raw)
        raw += data
        conn.receive_data(data)


async def _respond(stream: trio.abc.Stream, conn: h11.Connection, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(payload))),
        ("connection", "close"),
    ]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers))
        data += conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)


def _is_upgrade(request: h11.Request) -> bool:
    return any(k == b"upgrade" and b"websocket" in v.lower() for k, v in request.headers)


# ---------------------------------------------------------------- server


class Server:
    """A running streaming-ASR server; see :func:`serve`."""

    def __init__(self, config: ServerConfig, recognizer: Recognizer) -> None:
        self.config = config
        self.recognizer = recognizer
        self.limiter = trio.CapacityLimiter(config.workers)
        model = getattr(recognizer, "model", None)
        #: runs the model for every connection; None without batching (or model)
        self.service: ModelService | None = (
            ModelService(
                model,
                max_batch=config.max_batch,
                max_queue_delay=config.max_queue_delay,
                concurrent_batches=config.concurrent_batches,
            )
            if config.batching and model is not None
            else None
        )
        self.draining = False
        self._shutdown = trio.Event()
        self._grace_over = trio.Event()
        self._drained = trio.Event()
        self._listeners: list[trio.SocketListener] = []
        self._sessions: set[Session] = set()
        self._reserved = 0  # WebSocket slots taken (handshaking or open)
        self._ids = itertools.count(1)

    @property
    def port(self) -> int:
        """The TCP port of the first listener (useful with ``port=0``)."""
        return self._listeners[0].socket.getsockname()[1]

    @property
    def connections(self) -> int:
        return self._reserved

    @property
    def overloaded(self) -> bool:
        """The model's queue delay exceeds ``config.max_queue_delay``: new
        connections are refused until it drops."""
        return self.service is not None and self.service.overloaded

    def shutdown(self, *, immediately: bool = False) -> None:
        """Stop accepting; close idle sessions; give open streams the grace period.

        With ``immediately`` (e.g. a second SIGINT) the grace period is skipped.
        """
        self.draining = True
        self._shutdown.set()
        if immediately:
            self._grace_over.set()
        for session in list(self._sessions):
            session.wake()

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`shutdown` and the drain that follows complete."""
        self._listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host or None)
        async with trio.open_nursery() as services:
            if self.service is not None:
                await services.start(self.service.run)
            await self._serve(task_status)
            services.cancel_scope.cancel()  # after every connection has ended

    async def _serve(self, task_status: trio.TaskStatus[Server]) -> None:
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as acceptors:
                acceptors.start_soon(
                    partial(trio.serve_listeners, self._handle_tcp, self._listeners, handler_nursery=handlers)
                )
                log.info("listening on port %d", self.port)
                task_status.started(self)
                await self._shutdown.wait()
                acceptors.cancel_scope.cancel()  # closes the listeners
            log.info("shutting down: %d connection(s) open", len(self._sessions))
            if self._sessions:
                with trio.move_on_after(self.config.grace_period):
                    await _first_of(self._drained.wait, self._grace_over.wait)
            for session in list(self._sessions):
                session.stop()
            with trio.move_on_after(self.config.handshake_timeout):
                while self._sessions:
                    self._drained = trio.Event()
                    await self._drained.wait()
            handlers.cancel_scope.cancel()

    def _health(self) -> tuple[int, dict[str, Any]]:
        body = {"status": "ok", "connections": self._reserved, "max_connections": self.config.max_connections}
        if self.draining:
            return 503, {**body, "status": "shutting down"}
        if self._reserved >= self.config.max_connections:
            return 503, {**body, "status": "full"}
        if self.service is not None:
            body["queue_delay"] = round(self.service.queue_delay, 3)
            if self.service.overloaded:
                return 503, {**body, "status": "overloaded"}
        return 200, body

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; its failures are logged, never propagated."""
        try:
            peer = "%s:%s" % stream.socket.getpeername()[:2]
        except (OSError, TypeError):
            peer = "?"
        try:
            await self._route(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection from %s broke", peer)
        except Exception:
            log.exception("connection from %s failed", peer)

    async def _route(self, stream: trio.SocketStream, peer: str) -> None:
        async with stream:
            conn: h11.Connection | None = None
            request: h11.Request | None = None
            with trio.move_on_after(self.config.handshake_timeout):
                conn, request, raw = await _read_request(stream)
            if request is None:
                if conn is not None and conn.their_state is h11.ERROR:
                    await _respond(stream, conn, 400, {"status": "error", "message": "bad request"})
                return
            path = request.target.decode("ascii", "replace").split("?", 1)[0]
            if path in HEALTH_PATHS and not _is_upgrade(request):
                await _respond(stream, conn, *self._health())
            elif path != WS_PATH:
                await _respond(stream, conn, 404, {"status": "error", "message": f"no such path: {path}"})
            elif not _is_upgrade(request):
                await _respond(stream, conn, 426, {"status": "error", "message": "WebSocket upgrade required"})
            elif self.draining or self._reserved >= self.config.max_connections:
                await _respond(stream, conn, 503, {"status": "error", "message": "server busy"})
            elif self.overloaded:
                await _respond(stream, conn, 503, {"status": "error", "message": "server overloaded"})
            else:
                self._reserved += 1
                try:
                    await self._handle_websocket(_ReplayStream(raw, stream), peer)
                finally:
                    self._reserved -= 1

    async def _handle_websocket(self, stream: trio.abc.Stream, peer: str) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            ws: trio_websocket.WebSocketConnection | None = None
            with trio.move_on_after(config.handshake_timeout):
                request = await trio_websocket.wrap_server_stream(
                    nursery, stream, max_message_size=2 * config.max_message_bytes
                )
                ws = await request.accept()
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            session = Session(self, ws, next(self._ids), peer)
            self._sessions.add(session)
            try:
                await session.run()
            finally:
                self._sessions.discard(session)
                if not self._sessions:
                    self._drained.set()
                with trio.move_on_after(config.handshake_timeout) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()


async def _first_of(*waiters: Any) -> None:
    async with trio.open_nursery() as nursery:
        for wait in waiters:

            async def run(wait: Any = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)


# ---------------------------------------------------------------- session


def _close_reason(message: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    return message.encode("utf-8")[:120].decode("utf-8", "ignore")


@attrs.define
class _Stream:
    """Decoder-side state of one open audio stream."""

    start: StartStream
    recognizer_stream: RecognizerStream
    wav: WavWriter | None
    path: Path | None
    samples: int = 0
    decode_seconds: float = 0.0
    closed: bool = False

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.start.sample_rate


class Session:
    """One WebSocket connection: reader, decoder and writer tasks."""

    def __init__(self, server: Server, ws: trio_websocket.WebSocketConnection, conn_id: int, peer: str) -> None:
        self.server = server
        self.config = server.config
        self.ws = ws
        self.id = conn_id
        self.peer = peer
        self.protocol = ConnectionProtocol(self.config.protocol_limits())
        self.outcome = "ok"
        self._stopping = False
        self._read_scope: trio.CancelScope | None = None
        self._woken = False
        self._streams = 0
        self._audio_seconds = 0.0
        self._decode_seconds = 0.0
        self._failed = False
        self._nursery: trio.Nursery | None = None

    def wake(self) -> None:
        """Make the reader look at the server state (used when draining starts)."""
        if self._read_scope is not None:
            self._woken = True
            self._read_scope.cancel()

    def stop(self) -> None:
        """End the session soon: error 1001 after the replies already due."""
        self._stopping = True
        self.wake()

    async def run(self) -> None:
        size = self.config.channel_size
        events_tx, events_rx = trio.open_memory_channel[Event](size)
        replies_tx, replies_rx = trio.open_memory_channel[Reply](size)
        started = time.perf_counter()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader, events_tx)
                nursery.start_soon(self._decoder, events_rx, replies_tx)
                nursery.start_soon(self._writer, replies_rx)
        finally:
            rtf = self._decode_seconds / self._audio_seconds if self._audio_seconds else 0.0
            log.info(
                "connection id=%d peer=%s streams=%d audio_s=%.2f rtf=%.3f duration_s=%.2f outcome=%s",
                self.id,
                self.peer,
                self._streams,
                self._audio_seconds,
                rtf,
                time.perf_counter() - started,
                self.outcome,
            )

    # ------------------------------------------------------------ reader

    async def _reader(self, events: trio.MemorySendChannel[Event]) -> None:
        protocol = self.protocol
        async with events:
            while protocol.state is not State.CLOSED:
                out = await self._next_events()
                for event in out:
                    await events.send(event)

    async def _next_events(self) -> list[Event]:
        protocol = self.protocol
        if self._stopping or (self.server.draining and protocol.state is State.IDLE):
            return protocol.fail(CLOSE_GOING_AWAY, "server is shutting down")
        message: str | bytes | None = None
        with trio.move_on_after(self.config.idle_timeout) as scope:
            self._read_scope = scope
            try:
                message = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return protocol.connection_closed()
            finally:
                self._read_scope = None
        if scope.cancelled_caught:
            if self._woken:
                self._woken = False
                return []
            return protocol.fail(CLOSE_POLICY_VIOLATION, f"no message for {self.config.idle_timeout:g} s")
        if isinstance(message, str):
            return protocol.receive_text(message)
        assert isinstance(message, bytes)
        return protocol.receive_bytes(message)

    # ------------------------------------------------------------ decoder

    async def _decoder(self, events: trio.MemoryReceiveChannel[Event], replies: trio.MemorySendChannel[Reply]) -> None:
        stream: _Stream | None = None
        async with events, replies:
            try:
                async for event in events:
                    if self._failed:
                        continue
                    try:
                        stream = await self._handle(event, stream, replies)
                    except _Unsupported as exc:
                        self._failed = True
                        await self._fail(replies, stream, ErrorReply(CLOSE_UNSUPPORTED_DATA, "start", str(exc)))
                    except Exception as exc:
                        log.exception("connection id=%d: internal error", self.id)
                        self._failed = True
                        reply = ErrorReply(CLOSE_INTERNAL_ERROR, None, f"internal error: {type(exc).__name__}")
                        await self._fail(replies, stream, reply)
            finally:
                self._cut(stream, "cancelled")

    async def _fail(self, replies: trio.MemorySendChannel[Reply], stream: _Stream | None, reply: ErrorReply) -> None:
        self._cut(stream, "error")
        self.outcome = f"closed {reply.code}: {reply.message}"
        await replies.send(reply)

    async def _handle(
        self, event: Event, stream: _Stream | None, replies: trio.MemorySendChannel[Reply]
    ) -> _Stream | None:
        if isinstance(event, Audio):
            assert stream is not None
            await replies.send(await self._feed(stream, event))
            return stream
        if isinstance(event, StartStream):
            stream = await self._run(self._open, event)
            self._streams += 1
            await replies.send(ServerReady())
            return stream
        if isinstance(event, EndStream):
            assert stream is not None
            if event.reply:
                final = await self._finish(stream)
                self._close(stream, "finished")
                await replies.send(final)
            else:
                self._close(stream, "cut off")
                if self.outcome == "ok":
                    self.outcome = "disconnected mid-stream"
            return None
        assert isinstance(event, ErrorReply)
        self.outcome = f"closed {event.code}: {event.message}"
        await replies.send(event)
        return stream

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Run a blocking call in a worker thread; never blocks the event loop."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.server.limiter)

    def _open(self, start: StartStream) -> _Stream:
        try:
            recognizer_stream = self.server.recognizer.create_stream(start.nbest, start.sample_rate)
        except ValueError as exc:
            raise _Unsupported(str(exc)) from None
        wav = path = None
        if self.config.save_audio:
            self.config.audio_dir.mkdir(parents=True, exist_ok=True)
            path, file = create_unique_wav(self.config.audio_dir, start.name)
            wav = WavWriter(file, start.sample_rate, start.channels)
        return _Stream(start, recognizer_stream, wav, path)

    async def _feed(self, stream: _Stream, audio: Audio) -> PartialResult:
        """Save and decode one audio frame: features, model (batched through
        the service or run by the stream itself), search, partial result."""
        t0 = time.perf_counter()
        service = self.server.service
        if service is None:
            partial_result = await self._run(self._feed_unbatched, stream, audio)
        else:
            await self._run(self._accept, stream, audio)
            rs = stream.recognizer_stream
            log_probs = await service.decode(rs.model_stream)
            if len(log_probs) == 0 and rs.result_is_cached:
                partial_result = self._partial(stream, None)  # nothing new: a lookup
            else:
                partial_result = await self._run(self._partial, stream, log_probs)
        stream.decode_seconds += time.perf_counter() - t0
        return partial_result

    async def _finish(self, stream: _Stream) -> FinalResult:
        """End of the stream: decode the padded tail, give the final result."""
        t0 = time.perf_counter()
        service = self.server.service
        rs = stream.recognizer_stream
        if service is None:
            await self._run(rs.input_finished)
            final = await self._run(self._final, stream, None)
        else:
            await self._run(rs.flush_input)
            log_probs = await service.decode(rs.model_stream)
            final = await self._run(self._final, stream, log_probs)
        stream.decode_seconds += time.perf_counter() - t0
        return final

    def _accept(self, stream: _Stream, audio: Audio) -> None:
        if stream.wav is not None:
            stream.wav.write(audio.pcm)
        samples = audio.samples
        stream.samples += samples.size
        if samples.size:
            stream.recognizer_stream.accept_waveform(samples)

    def _feed_unbatched(self, stream: _Stream, audio: Audio) -> PartialResult:
        self._accept(stream, audio)
        if audio.samples.size:
            stream.recognizer_stream.decode()
        return self._partial(stream, None)

    def _partial(self, stream: _Stream, log_probs: np.ndarray | None) -> PartialResult:
        rs = stream.recognizer_stream
        if log_probs is not None:
            rs.accept_log_probs(log_probs)
        result = rs.result()
        return PartialResult(text=result.text, nbest=_nbest(result, stream.start.nbest))

    def _final(self, stream: _Stream, log_probs: np.ndarray | None) -> FinalResult:
        rs = stream.recognizer_stream
        if log_probs is not None:
            rs.accept_log_probs(log_probs)
        result = rs.result()
        times = tuple((t.piece, float(t.start), float(t.end)) for t in result.times)
        return FinalResult(
            name=stream.start.name, text=result.text, nbest=_nbest(result, stream.start.nbest), times=times
        )

    def _close(self, stream: _Stream, how: str) -> None:
        stream.closed = True
        if stream.wav is not None:
            stream.wav.close()
        self._audio_seconds += stream.audio_seconds
        self._decode_seconds += stream.decode_seconds
        rtf = stream.decode_seconds / stream.audio_seconds if stream.samples else 0.0
        log.info(
            "stream conn=%d name=%r saved=%s audio_s=%.2f rtf=%.3f outcome=%s",
            self.id,
            stream.start.name,
            stream.path,
            stream.audio_seconds,
            rtf,
            how,
        )

    def _cut(self, stream: _Stream | None, how: str) -> None:
        if stream is not None and not stream.closed:
            self._close(stream, how)

    # ------------------------------------------------------------ writer

    async def _writer(self, replies: trio.MemoryReceiveChannel[Reply]) -> None:
        open_ = True
        async with replies:
            async for reply in replies:
                if not open_:
                    continue  # keep draining so the decoder never blocks
                try:
                    with trio.move_on_after(self.config.idle_timeout) as scope:
                        await self.ws.send_message(encode_reply(reply))
                    if scope.cancelled_caught:
                        log.info("connection id=%d: client stopped reading; dropping it", self.id)
                        self.outcome = "client stopped reading"
                        assert self._nursery is not None
                        self._nursery.cancel_scope.cancel()
                        return
                    if isinstance(reply, ErrorReply):
                        open_ = False
                        with trio.move_on_after(self.config.handshake_timeout):
                            await self.ws.aclose(reply.code, _close_reason(reply.message))
                except trio_websocket.ConnectionClosed:
                    open_ = False


class _Unsupported(Exception):
    """The client's audio format cannot be served (close 1003)."""


def _nbest(result: RecognitionResult, n: int) -> tuple[tuple[str, float], ...]:
    if n <= 1:
        return ()
    return tuple((str(text), float(score)) for text, score in list(result.nbest)[:n])


# ---------------------------------------------------------------- entry point


async def serve(
    config: ServerConfig,
    recognizer: Recognizer,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a server until it is shut down; ``task_status`` gets the :class:`Server`.

    With ``handle_signals`` the first SIGINT/SIGTERM starts a graceful
    shutdown (stop accepting, let open streams finish within
    ``config.grace_period``) and a second one skips the grace period; the
    function then returns normally.
    """
    server = Server(config, recognizer)
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_shutdown_on_signals, server)
        await server.run(task_status=task_status)
        nursery.cancel_scope.cancel()


async def _shutdown_on_signals(server: Server) -> None:
    signals: Sequence[int] = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            log.warning("received %s: shutting down", signal.Signals(signum).name)
            server.shutdown(immediately=server.draining)


# ---------------------------------------------------------------- CLI


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command to ``trio-asr``'s parser.

    Flags left out keep the value from ``--config`` (TOML) or the default.
    """
    parser = subparsers.add_parser("serve", help="run the streaming ASR WebSocket server")
    parser.add_argument("--config", type=Path, help="TOML file with ServerConfig settings")
    parser.add_argument("--host", help="interface to bind (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="TCP port (default 8090; 0 picks a free one)")
    parser.add_argument("--model", help="model directory or registry name (default: $TRIO_ASR_MODEL_DIR or the cache)")
    parser.add_argument("--audio-dir", type=Path, help="where streams are saved as WAV (default ./audio)")
    parser.add_argument(
        "--save-audio", action=argparse.BooleanOptionalAction, default=None, help="save each stream (default on)"
    )
    parser.add_argument("--beam", type=int, help="CTC prefix beam width (default 10)")
    parser.add_argument("--nbest-max", type=int, help="largest nbest a client may ask for (default 10)")
    parser.add_argument("--max-connections", type=int, help="WebSocket sessions at once (default 100)")
    parser.add_argument("--max-message-bytes", type=int, help="largest frame accepted (default 1 MiB)")
    parser.add_argument("--max-stream-seconds", type=float, help="longest stream accepted (default 3600)")
    parser.add_argument("--idle-timeout", type=float, help="close clients silent this long, s (default 60)")
    parser.add_argument("--grace-period", type=float, help="s open streams get on shutdown (default 10)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads per model run (default 1)")
    parser.add_argument("--workers", type=int, help="decode calls at once (default: CPU count)")
    parser.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batch the model calls of all connections (default on)",
    )
    parser.add_argument("--max-batch", type=int, help="most chunks per batched model call (default 16)")
    parser.add_argument(
        "--concurrent-batches", type=int, help="batched model calls at once (default: CPU count)"
    )
    parser.add_argument(
        "--max-queue-delay", type=float, help="model queue delay, s, above which new connections get 503 (default 0.5)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default warning")
    parser.set_defaults(run=run_serve)
    return parser


_SERVE_FLAGS = (
    "host", "port", "model", "audio_dir", "save_audio", "beam", "nbest_max", "max_connections",
    "max_message_bytes", "max_stream_seconds", "idle_timeout", "grace_period", "threads", "workers", "log_level",
    "batching", "max_batch", "concurrent_batches", "max_queue_delay",
)  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    from trio_asr.model import ModelError, load_model
    from trio_asr.model_store import ModelNotAvailable, resolve_model_dir
    from trio_asr.recognizer import Recognizer as AsrRecognizer

    try:
        config = load_config(args.config, {flag: getattr(args, flag) for flag in _SERVE_FLAGS})
    except ConfigError as exc:
        print(f"trio-asr serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model_dir = resolve_model_dir(config.model)
        model = load_model(model_dir, threads=config.threads)
    except (ModelNotAvailable, ModelError) as exc:
        print(f"trio-asr serve: {exc}", file=sys.stderr)
        return 1
    recognizer = AsrRecognizer(model, beam=config.beam)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve, config, recognizer, handle_signals=True))
            print(f"trio-asr: serving ws://{config.host}:{server.port}{WS_PATH} (model {model_dir})", file=sys.stderr)

    trio.run(main)
    return 0
