"""The streaming-ASR WebSocket server (Trio + trio-websocket).

:class:`Server` owns the TCP listeners, the model service and one nursery
of connections.  Each accepted TCP stream speaks HTTP/1.1 first
(:mod:`trio_asr.serving.http`, keep-alive included), routed by a
:class:`~trio_asr.serving.routes.Router`: ``GET /health`` / ``/healthz`` are
answered with JSON (200 while the server takes work, 503 when full,
overloaded, shutting down or unable to save audio); a WebSocket upgrade for
:data:`WS_PATH` is handed, bytes and all, to trio-websocket and then to a
:class:`~trio_asr.serving.session.Session`; ``GET /metrics`` answers
Prometheus metrics (:mod:`trio_asr.serving.metrics`), ``GET /`` and its
assets the microphone page (:mod:`trio_asr.serving.web`); every other path
gets 404, another method 405, a plain GET of the WebSocket path 426.

With access tokens configured (:mod:`trio_asr.serving.auth`) an upgrade without a
valid one gets 401 (so does ``/metrics`` unless ``metrics_auth`` is off);
``/health`` and the page stay open.  With
``certfile`` every listener speaks TLS (:mod:`trio_asr.serving.tls`): ``wss://``
and ``https://`` on the same port.

Shutdown (:meth:`Server.shutdown`, on SIGINT/SIGTERM with
``handle_signals``): the server *drains*: connections without an open
stream are closed (1001), open streams get ``grace_period`` seconds to
finish, new WebSocket connections get 503 and ``/health`` says "shutting
down" so that balancers move on.  Then whatever is left is cut (its audio
saved) within ``drain_timeout``, and :meth:`Server.run` returns.  A second
signal skips the grace period.
"""

from __future__ import annotations

import itertools
import logging
import signal
import ssl
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio
import trio_websocket

from trio_asr.serving.addresses import exposure_warning, listen_error
from trio_asr.serving.auth import TokenError, TokenGate, load_tokens
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.file_transcriber import FileTranscriber, vad_silences
from trio_asr.recognition.batched import SteppedRecognizer
from trio_asr.serving.http import Exchange, HttpLimits, error_body
from trio_asr.serving.lifecycle import Lifecycle
from trio_asr.serving.logs import log_event
from trio_asr.serving.metrics import ServerMetrics
from trio_asr.serving.processes import LocalPlaces, SharedState, open_reuseport_listeners
from trio_asr.recognition.model_service import ModelService
from trio_asr.serving.recording import AudioSaveError, AudioStore
from trio_asr.serving.routes import Router
from trio_asr.serving.transcriptions import MODELS_PATH, TRANSCRIPTIONS_PATH, TranscriptionsApi
from trio_asr.serving.second_pass import TwoPassRecognizer, open_second_pass

from trio_asr.serving.session import Session, SessionContext
from trio_asr.serving.tcp import ConnectionBound, open_connection_limit, serve_tcp
from trio_asr.serving.tls import TlsError, server_context
from trio_asr.serving.web import ASSET_PATHS, find_asset
from trio_asr.serving.websocket import wrap_server_stream

__all__ = ["WS_PATH", "Server", "ServerStartError", "exposure_warning", "serve", "shutdown_on_signals"]

log = logging.getLogger("trio_asr.server")

WS_PATH = "/paddlespeech/asr/streaming"
HEALTH_PATHS = frozenset({"/health", "/healthz"})
METRICS_PATH = "/metrics"


class ServerStartError(Exception):
    """The server cannot start (port in use, audio directory unusable);
    ``bad_setting`` when a setting is at fault (a token file, TLS files)."""

    def __init__(self, message: str, *, bad_setting: bool = False) -> None:
        super().__init__(message)
        self.bad_setting = bad_setting


class Server:
    """A streaming-ASR server; :meth:`open` then :meth:`run`, or :func:`serve`."""

    def __init__(self, config: ServerConfig, recognizer: SteppedRecognizer) -> None:
        self.config = config
        #: this server's Prometheus metrics (its own registry)
        self.metrics = ServerMetrics()
        self.service = ModelService(recognizer.model, config.batching_policy(), on_batch=self.metrics.model_batch)
        self.metrics.track_queue_delay(lambda: self.service.queue_delay)
        model = recognizer.model
        self.metrics.model_info(
            path=str(config.model or ""), format=type(model).__name__, sample_rate=str(model.sample_rate)
        )
        self.audio = AudioStore(config.audio_dir if config.save_audio else None)
        self.lifecycle = Lifecycle()
        self.recognizer = batched = TwoPassRecognizer(recognizer, self.service, trio.CapacityLimiter(config.workers))
        self._context = SessionContext(
            config=config, recognizer=batched, audio=self.audio, lifecycle=self.lifecycle, metrics=self.metrics
        )
        self._limits = HttpLimits(
            max_header_bytes=config.max_header_bytes, head_timeout=config.handshake_timeout,
            keepalive_timeout=config.http_keepalive_timeout, body_timeout=config.body_timeout,
            send_timeout=config.send_timeout,
        )  # fmt: skip
        #: OpenAI's transcription API (its pauses finder is set in open())
        self.api = TranscriptionsApi(
            config, FileTranscriber(batched), self.metrics, overloaded=lambda: self.overloaded,
            on_idle=self._maybe_all_closed, lifecycle=self.lifecycle,
        )  # fmt: skip
        #: the HTTP routes (its gate gets the configured tokens in open())
        self.router = Router(self.lifecycle, self.metrics)
        self._add_routes()
        self._ssl_context: ssl.SSLContext | None = None  # with certfile, made by open()
        self._shutdown = trio.Event()
        self._grace_over = trio.Event()
        self._all_closed = trio.Event()
        self._listeners: Sequence[trio.abc.Listener[Any]] = ()
        self._reserved = 0  # WebSocket connections handshaking or open
        self._open = ConnectionBound(open_connection_limit(config))  # TCP connections in any phase
        #: admission's count of connections; a worker of ``serve --processes`` shares it (and sets ``shared``)
        self.places = LocalPlaces(config.max_connections)
        self.shared: SharedState | None = None
        self._ids = itertools.count(1)

    @property
    def port(self) -> int:
        """The TCP port of the first listener (useful with ``port=0``)."""
        listener: Any = self._listeners[0]
        return int(listener.socket.getsockname()[1])

    @property
    def scheme(self) -> str:
        """``wss`` with TLS, else ``ws``."""
        return "wss" if self.config.certfile is not None else "ws"

    @property
    def connections(self) -> int:
        return self._reserved

    @property
    def overloaded(self) -> bool:
        """The model's queue delay, or the second pass's, exceeds
        ``config.max_queue_delay``: new connections are refused until it drops."""
        second = self.recognizer.second_pass
        return self.service.overloaded or (second is not None and second.overloaded)

    async def open(self) -> None:
        """Check the audio directory, TLS files and tokens, and bind the port;
        raises :class:`ServerStartError` with a one-line message."""
        config = self.config
        try:
            self.audio.check()
        except AudioSaveError as exc:
            raise ServerStartError(f"{exc} (choose another --audio-dir, or --no-save-audio)") from None
        try:
            files = [config.auth_tokens_file] if config.auth_tokens_file is not None else []
            self.router.gate = TokenGate.from_tokens(load_tokens(config.auth_token, files))
            if config.certfile is not None:
                self._ssl_context = server_context(config.certfile, config.keyfile)
            self.recognizer.second_pass = self.recognizer.second_pass or await open_second_pass(config, self.metrics)
            if self.recognizer.second_pass is not None:
                self.api.transcriber.silences = await trio.to_thread.run_sync(vad_silences, config.vad_threshold)
        except (TokenError, TlsError) as exc:
            raise ServerStartError(str(exc), bad_setting=True) from None
        except ValueError as exc:  # ModelError and HotwordError are ValueErrors
            raise ServerStartError(str(exc)) from None
        try:
            if self.shared is None:
                self._listeners = await trio.open_tcp_listeners(config.port, host=config.host or None)
            else:
                self._listeners = await open_reuseport_listeners(config.port, config.host or None)
        except OSError as exc:
            raise ServerStartError(listen_error(config.host, config.port, exc)) from None
        warning = exposure_warning(config.host, tls=self._ssl_context is not None, tokens=self.router.gate.enabled,
                                   saves_audio=config.save_audio)  # fmt: skip
        if warning:
            log_event(log, "exposed", logging.WARNING, host=config.host or "*", advice=warning)

    def shutdown(self, *, immediately: bool = False) -> None:
        """Start draining (see the module docstring); ``immediately`` (e.g. a
        second SIGINT) skips the grace period."""
        self.lifecycle.drain()
        self._shutdown.set()
        if immediately:
            self._grace_over.set()
        self._maybe_all_closed()

    def _maybe_all_closed(self) -> None:
        """While draining: note when no connection and no upload is left."""
        if self.lifecycle.draining and not self._reserved and not self.api.active:
            self._all_closed.set()

    async def run(self, *, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`shutdown` and the drain that follows complete."""
        if not self._listeners:
            await self.open()
        async with trio.open_nursery() as services:
            await services.start(self.service.run)
            if self.recognizer.second_pass is not None:
                await services.start(self.recognizer.second_pass.run)
            if self.audio.saving:
                services.start_soon(self._probe_audio)
            await self._serve(task_status)
            services.cancel_scope.cancel()  # after every connection has ended

    async def _serve(self, task_status: trio.TaskStatus[Server]) -> None:
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as acceptors:
                acceptors.start_soon(
                    partial(trio.serve_listeners, self._handle_tcp, list(self._listeners), handler_nursery=handlers)
                )
                log_event(
                    log, "listening", port=self.port, tls=self.scheme == "wss", auth=self.router.gate.enabled
                )
                task_status.started(self)
                await self._shutdown.wait()
                log_event(log, "shutting down", connections=self._reserved)
                with trio.move_on_after(self.config.grace_period):
                    await _first_of(self._all_closed.wait, self._grace_over.wait)
                self.lifecycle.stop()
                with trio.move_on_after(self.config.drain_timeout):
                    await self._all_closed.wait()
                acceptors.cancel_scope.cancel()  # closes the listeners
            handlers.cancel_scope.cancel()

    async def _probe_audio(self) -> None:
        """While saving audio fails, probe the directory every few seconds
        (in a worker thread), so that ``/health`` recovers by itself once it
        works again; one log line when it does, none per failed probe."""
        audio = self.audio
        while True:
            await trio.sleep(audio.probe_every)
            if audio.failure is None:
                continue
            await trio.to_thread.run_sync(audio.probe, abandon_on_cancel=True)
            if audio.failure is None:
                log.warning("saving audio in %s works again", audio.directory)

    def _health(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {
            "status": "ok",
            "connections": self._reserved,
            "max_connections": self.config.max_connections,
            "queue_delay": round(self.service.queue_delay, 3),
        }
        if self.recognizer.second_pass is not None:
            body["second_pass_queue_delay"] = round(self.recognizer.second_pass.queue_delay, 3)
        reason = (
            "shutting down" if self.lifecycle.draining else "full" if self.places.full()
            else "overloaded" if self.overloaded else "cannot save audio" if self.audio.failure is not None else None
        )  # fmt: skip
        if self.shared is not None:  # a worker process answers for the whole server
            return self.shared.health(body, reason, self.audio.failure)
        if reason is None:
            return 200, body
        extra = {"error": self.audio.failure} if reason == "cannot save audio" else {}
        return 503, {**body, "status": reason, **extra}

    def _add_routes(self) -> None:
        router, config = self.router, self.config
        for path in HEALTH_PATHS:
            router.add(path, ["GET"], self._answer_health, needs_auth=False)
        if config.metrics:
            router.add(METRICS_PATH, ["GET"], self._answer_metrics, needs_auth=config.metrics_auth)
        if config.page:
            for path in ASSET_PATHS:
                router.add(path, ["GET"], self._answer_asset, needs_auth=False)
        router.add(WS_PATH, ["GET"], self._open_websocket, is_work=True)
        self._add_api_routes()

    def _add_api_routes(self) -> None:
        """OpenAI's transcription API (:mod:`trio_asr.serving.transcriptions`)."""
        self.router.add(TRANSCRIPTIONS_PATH, ["POST"], self.api.transcriptions, is_work=True)
        self.router.add(MODELS_PATH, ["GET"], self.api.models)

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        await serve_tcp(stream, self.router, self._limits, tls=self._ssl_context, bound=self._open,
                        on_refused=partial(self.metrics.refused, "connections"), observe=self.router.observe)  # fmt: skip

    async def _answer_health(self, exchange: Exchange) -> None:
        await exchange.respond_json(*self._health())

    async def _answer_metrics(self, exchange: Exchange) -> None:
        body, content_type = self.metrics.exposition()
        if self.shared is not None:  # a worker process: every worker's metrics
            body = await trio.to_thread.run_sync(self.shared.merged_metrics, body)
        await exchange.respond(200, body, [("content-type", content_type)])

    async def _answer_asset(self, exchange: Exchange) -> None:
        asset = find_asset(exchange.path)
        assert asset is not None, "routed for the assets' paths only"
        await exchange.respond(200, asset.body, asset.headers())

    async def _open_websocket(self, exchange: Exchange) -> None:
        """Admission (the router checked the token and the drain), then the
        upgrade and the session, on this connection."""
        if exchange.method != "GET" or "websocket" not in (exchange.header("upgrade") or "").lower():
            await exchange.respond_json(426, error_body("WebSocket upgrade required"))
            return
        refusal = "full" if self.places.full() else "overloaded" if self.overloaded else None
        if refusal is None and not self.places.take():
            refusal = "full"
        if refusal is not None:
            self.metrics.refused(refusal)
            message = "server busy" if refusal == "full" else "server overloaded"
            await exchange.respond_json(503, error_body(message))
            return
        self._reserved += 1
        try:
            await self._handle_websocket(exchange.upgrade(), exchange.peer)
        finally:
            self._reserved -= 1
            self.places.release()
            self._maybe_all_closed()

    async def _handle_websocket(self, stream: trio.abc.Stream, peer: str) -> None:
        config = self.config
        async with trio.open_nursery() as nursery:
            ws: trio_websocket.WebSocketConnection | None = None
            with trio.move_on_after(config.handshake_timeout):
                # a message over the limit is dropped and answered by the protocol core
                request = await wrap_server_stream(nursery, stream, max_message_size=config.max_message_bytes)
                ws = await request.accept()
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            self.metrics.connection_opened()
            session: Session | None = None
            try:
                session = Session(ws, self._context, next(self._ids), peer)
                await session.run()
            finally:
                with trio.move_on_after(config.close_timeout) as cleanup:
                    cleanup.shield = True
                    await ws.aclose(*(session.closing if session is not None else (1000, None)))
                closed = ws.closed.code if ws.closed is not None else None
                self.metrics.connection_closed(session.close_code if session is not None else closed)
                nursery.cancel_scope.cancel()


async def _first_of(*waiters: Any) -> None:
    async with trio.open_nursery() as nursery:
        for wait in waiters:

            async def run(wait: Any = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)


async def serve(
    config: ServerConfig,
    recognizer: SteppedRecognizer,
    *,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a server until it is shut down; ``task_status`` gets the :class:`Server`.

    With ``handle_signals`` the first SIGINT/SIGTERM starts a graceful
    shutdown and a second one skips the grace period; the function then
    returns normally.  Raises :class:`ServerStartError` if it cannot start.
    """
    server = Server(config, recognizer)
    await server.open()
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(shutdown_on_signals, server)
        await server.run(task_status=task_status)
        nursery.cancel_scope.cancel()


async def shutdown_on_signals(server: Server) -> None:
    """First SIGINT/SIGTERM: drain; second: skip the grace period."""
    signals: Sequence[int] = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    with trio.open_signal_receiver(*signals) as received:
        async for signum in received:
            log.warning("received %s: shutting down", signal.Signals(signum).name)
            server.shutdown(immediately=server.lifecycle.draining)
