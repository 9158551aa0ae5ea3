"""The streaming-ASR WebSocket server (Trio + trio-websocket).

Structure:

* :class:`Server` owns the TCP listeners and one nursery of connections.
  Each accepted TCP stream first goes through a tiny HTTP router built on
  h11: ``GET /health`` / ``/healthz`` are answered with JSON (200 while the
  server accepts work, 503 when full or shutting down); a WebSocket upgrade
  for :data:`WS_PATH` is handed, bytes and all, to trio-websocket; every
  other path gets 404, a full server 503, a plain GET of the WebSocket path
  426 (see :mod:`trio_asr.http_router`).
* :class:`~trio_asr.session.Session` serves one WebSocket with reader,
  decoder and writer tasks in a nursery (see :mod:`trio_asr.session`).
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
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import h11
import trio
import trio_websocket

from trio_asr.config import ConfigError, ServerConfig, load_config
from trio_asr.http_router import ReplayStream, is_upgrade, read_request, respond
from trio_asr.model_service import ModelService
from trio_asr.session import Recognizer, Session

__all__ = ["WS_PATH", "Recognizer", "Server", "add_serve_parser", "serve"]

log = logging.getLogger("trio_asr.server")

WS_PATH = "/paddlespeech/asr/streaming"
HEALTH_PATHS = frozenset({"/health", "/healthz"})


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
                exact=config.exact_batching,
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
                conn, request, raw = await read_request(stream)
            if request is None:
                if conn is not None and conn.their_state is h11.ERROR:
                    await respond(stream, conn, 400, {"status": "error", "message": "bad request"})
                return
            path = request.target.decode("ascii", "replace").split("?", 1)[0]
            if path in HEALTH_PATHS and not is_upgrade(request):
                await respond(stream, conn, *self._health())
            elif path != WS_PATH:
                await respond(stream, conn, 404, {"status": "error", "message": f"no such path: {path}"})
            elif not is_upgrade(request):
                await respond(stream, conn, 426, {"status": "error", "message": "WebSocket upgrade required"})
            elif self.draining or self._reserved >= self.config.max_connections:
                await respond(stream, conn, 503, {"status": "error", "message": "server busy"})
            elif self.overloaded:
                await respond(stream, conn, 503, {"status": "error", "message": "server overloaded"})
            else:
                self._reserved += 1
                try:
                    await self._handle_websocket(ReplayStream(raw, stream), peer)
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
        "--exact-batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never batch a model whose outputs depend on the batch, e.g. int8 (default on)",
    )
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
    "batching", "max_batch", "exact_batching", "concurrent_batches", "max_queue_delay",
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
