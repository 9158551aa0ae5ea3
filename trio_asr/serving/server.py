"""The streaming-ASR WebSocket server (Trio + trio-websocket).

:class:`Server` owns the TCP listeners, the model service and one nursery
of connections.  Each accepted TCP stream first goes through a tiny HTTP
router built on h11 (:mod:`trio_asr.serving.http_router`): ``GET /health`` /
``/healthz`` are answered with JSON (200 while the server takes work, 503
when full, overloaded, shutting down or unable to save audio); a WebSocket
upgrade for :data:`WS_PATH` is handed, bytes and all, to trio-websocket and
then to a :class:`~trio_asr.serving.session.Session`; ``GET /metrics`` answers
Prometheus metrics (:mod:`trio_asr.serving.metrics`), ``GET /`` and its assets the
microphone page (:mod:`trio_asr.serving.web`); every other path gets 404, a plain
GET of the WebSocket path 426.

With access tokens configured (:mod:`trio_asr.serving.auth`) an upgrade without a
valid one gets 401 before anything else is looked at (so is ``/metrics``
unless ``metrics_auth`` is off); ``/health`` and the page stay open.  With
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

import ipaddress
import itertools
import logging
import signal
import ssl
from collections.abc import Sequence
from functools import partial
from typing import Any

import h11
import trio
import trio_websocket

from trio_asr.serving.auth import TokenError, TokenGate, challenge_headers, load_tokens
from trio_asr.serving.config import ServerConfig
from trio_asr.recognition.batched import SteppedRecognizer
from trio_asr.serving.http_router import ReplayStream, is_upgrade, read_request, respond, respond_bytes
from trio_asr.serving.lifecycle import Lifecycle
from trio_asr.serving.logs import log_event
from trio_asr.serving.metrics import ServerMetrics
from trio_asr.recognition.model_service import ModelService
from trio_asr.serving.recording import AudioSaveError, AudioStore
from trio_asr.serving.second_pass import TwoPassRecognizer, open_second_pass
from trio_asr.serving.session import Session, SessionContext
from trio_asr.serving.tls import TlsError, server_context
from trio_asr.serving.web import find_asset
from trio_asr.serving.websocket import wrap_server_stream

__all__ = ["WS_PATH", "Server", "ServerStartError", "exposure_warning", "serve", "shutdown_on_signals"]

log = logging.getLogger("trio_asr.server")

WS_PATH = "/paddlespeech/asr/streaming"
HEALTH_PATHS = frozenset({"/health", "/healthz"})
METRICS_PATH = "/metrics"


class ServerStartError(Exception):
    """The server cannot start (port in use, audio directory unusable)."""


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
        self._gate = TokenGate.from_tokens(())  # the configured tokens, loaded by open()
        self._ssl_context: ssl.SSLContext | None = None  # with certfile, made by open()
        self._shutdown = trio.Event()
        self._grace_over = trio.Event()
        self._all_closed = trio.Event()
        self._listeners: Sequence[trio.abc.Listener[Any]] = ()
        self._reserved = 0  # WebSocket connections handshaking or open
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
            self._gate = TokenGate.from_tokens(load_tokens(config.auth_token, files))
            if config.certfile is not None:
                self._ssl_context = server_context(config.certfile, config.keyfile)
            self.recognizer.second_pass = self.recognizer.second_pass or await open_second_pass(config, self.metrics)
        except (TokenError, TlsError, ValueError) as exc:  # ModelError and HotwordError are ValueErrors
            raise ServerStartError(str(exc)) from None
        warning = exposure_warning(config.host, tls=self._ssl_context is not None, tokens=self._gate.enabled)
        if warning:
            log_event(log, "exposed", logging.WARNING, host=config.host or "*", advice=warning)
        try:
            self._listeners = await trio.open_tcp_listeners(config.port, host=config.host or None)
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise ServerStartError(
                f"cannot listen on {where}: {exc.strerror or exc} (is another server running? pick another --port)"
            ) from None

    def shutdown(self, *, immediately: bool = False) -> None:
        """Start draining (see the module docstring); ``immediately`` (e.g. a
        second SIGINT) skips the grace period."""
        self.lifecycle.drain()
        self._shutdown.set()
        if immediately:
            self._grace_over.set()
        if not self._reserved:
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
                    log, "listening", port=self.port, tls=self.scheme == "wss", auth=self._gate.enabled
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
        if self.lifecycle.draining:
            return 503, {**body, "status": "shutting down"}
        if self._reserved >= self.config.max_connections:
            return 503, {**body, "status": "full"}
        if self.overloaded:
            return 503, {**body, "status": "overloaded"}
        if self.audio.failure is not None:
            return 503, {**body, "status": "cannot save audio", "error": self.audio.failure}
        return 200, body

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; its failures are logged, never propagated."""
        try:
            peer = "%s:%s" % stream.socket.getpeername()[:2]
        except (OSError, TypeError):
            peer = "?"
        try:
            if self._ssl_context is None:
                await self._route(stream, peer)
            else:
                tls = await self._start_tls(stream)
                if tls is not None:
                    await self._route(tls, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection from %s broke", peer)
        except Exception:
            log.exception("connection from %s failed", peer)

    async def _start_tls(self, stream: trio.SocketStream) -> trio.SSLStream[ReplayStream] | None:
        """The TLS side of a connection; plain HTTP sent to the TLS port gets a
        400 saying so (and ``None``), instead of a silent handshake failure."""
        assert self._ssl_context is not None
        first = b""
        with trio.move_on_after(self.config.handshake_timeout):
            first = await stream.receive_some(4096)
        if first[:1] == b"\x16":  # a TLS handshake record
            return trio.SSLStream(ReplayStream(first, stream), self._ssl_context, server_side=True,
                                  https_compatible=True)  # fmt: skip
        async with stream:
            if first:
                plain = ReplayStream(first, stream)
                with trio.move_on_after(self.config.handshake_timeout):
                    conn, request, _ = await read_request(plain)
                    if request is not None:
                        message = "this server speaks TLS: use wss:// or https://"
                        await respond(plain, conn, 400, {"status": "error", "message": message})
        return None

    async def _route(self, stream: trio.abc.Stream, peer: str) -> None:
        async with stream:
            conn = request = None
            raw = b""
            with trio.move_on_after(self.config.handshake_timeout):
                conn, request, raw = await read_request(stream)
            if conn is None:
                return
            if request is None:
                if conn.their_state is h11.ERROR:
                    await respond(stream, conn, 400, {"status": "error", "message": "bad request"})
                return
            path = request.target.decode("ascii", "replace").split("?", 1)[0]
            upgrade = is_upgrade(request)
            asset = find_asset(path) if self.config.page and not upgrade else None
            authorized = self._gate.allows(request.target, request.headers)
            if path in HEALTH_PATHS and not upgrade:
                await respond(stream, conn, *self._health())
            elif path == METRICS_PATH and self.config.metrics and not upgrade:
                if self.config.metrics_auth and not authorized:
                    await self._unauthorized(stream, conn)
                else:
                    body, content_type = self.metrics.exposition()
                    await respond_bytes(stream, conn, 200, body, [("content-type", content_type)])
            elif asset is not None:
                await respond_bytes(stream, conn, 200, asset.body, asset.headers())
            elif path != WS_PATH:
                await respond(stream, conn, 404, {"status": "error", "message": f"no such path: {path}"})
            elif not upgrade:
                await respond(stream, conn, 426, {"status": "error", "message": "WebSocket upgrade required"})
            elif not authorized:
                await self._unauthorized(stream, conn)
            elif self.lifecycle.draining:
                self.metrics.refused("shutting_down")
                await respond(stream, conn, 503, {"status": "error", "message": "server shutting down"})
            elif self._reserved >= self.config.max_connections:
                self.metrics.refused("full")
                await respond(stream, conn, 503, {"status": "error", "message": "server busy"})
            elif self.overloaded:
                self.metrics.refused("overloaded")
                await respond(stream, conn, 503, {"status": "error", "message": "server overloaded"})
            else:
                self._reserved += 1
                try:
                    await self._handle_websocket(ReplayStream(raw, stream), peer)
                finally:
                    self._reserved -= 1
                    if not self._reserved and self.lifecycle.draining:
                        self._all_closed.set()

    async def _unauthorized(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        self.metrics.unauthorized()
        message = "missing or wrong access token (send Authorization: Bearer TOKEN, or ?token=TOKEN)"
        await respond(stream, conn, 401, {"status": "error", "message": message}, challenge_headers())

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
                    await ws.aclose()
                closed = ws.closed.code if ws.closed is not None else None
                self.metrics.connection_closed(session.close_code if session is not None else closed)
                nursery.cancel_scope.cancel()


def exposure_warning(host: str, *, tls: bool, tokens: bool) -> str | None:
    """The startup warning for binding ``host`` with neither TLS nor tokens
    (``None`` for a loopback address, or with either)."""
    if tls or tokens or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        "anyone who can reach this address can stream audio (saved to disk) in clear text; "
        "use --auth-token/--auth-tokens-file and --certfile/--keyfile, or --host 127.0.0.1"
    )


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
