"""``trio-asr serve --processes N``: a supervisor and N worker processes on one port.

One Python event loop does a server's protocol work on one core, however
many the model could use; N processes use N.  ``serve`` with N above 1
becomes the *supervisor*: it checks the port (and picks one for
``--port 0``), makes a state directory (:mod:`trio_asr.serving.processes`),
and starts N workers (``python -c`` :data:`WORKER_CODE`, the settings
pickled on their stdin).  Each worker loads the model itself and runs a full
:class:`~trio_asr.serving.server.Server` that listens on the port with
``SO_REUSEPORT``, the kernel spreading new connections over them; the
limits, ``/health`` and ``/metrics`` are shared through the state directory.
The supervisor prints the startup line once every worker listens.

Signals: the supervisor owns them.  The first SIGINT/SIGTERM sends every
worker SIGTERM (drain, as one server does on its first signal), a second
sends SIGUSR1 (cut the grace period short); the supervisor exits 0 once all
workers have, killing any still there after ``grace_period +
drain_timeout + close_timeout`` and 10 s more.  Workers ignore SIGINT (a
terminal's Ctrl-C reaches the whole process group; the supervisor relays
it), and drain by themselves if the supervisor disappears.

A worker that exits while the server is not shutting down is restarted,
after 0.5 s, doubling up to 30 s while restarts keep failing within 10 s,
with one log line each time; its clients' connections are gone, and the
audio of its open streams stays valid WAV up to the last write
(:class:`~trio_asr.audio.WavWriter` updates the header with every write).
A worker that fails while the server starts stops the server instead
(status 1; its own error line comes first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_asr.cli.commands import (
    BAD_INPUT,
    FAILED,
    CommandFailed,
    _build_recognizer,
    limit_malloc_arenas,
    settle_garbage_collector,
    start_failure,
)
from trio_asr.serving.addresses import listen_error, startup_line
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.logs import configure_logging, log_event
from trio_asr.serving.processes import (
    CONNECTIONS, UPLOADS, SharedPlaces, SharedState, reuse_port_supported,
)  # fmt: skip
from trio_asr.serving.server import WS_PATH, Server, ServerStartError

__all__ = ["WORKER_CODE", "WorkerSpec", "supervise", "worker_main"]

log = logging.getLogger("trio_asr.supervisor")

WORKER_CODE = "from trio_asr.cli.supervisor import worker_main; worker_main()"
#: how often a worker publishes its state (its metrics: every fourth time)
PUBLISH_EVERY = 0.25
FIRST_BACKOFF, MAX_BACKOFF, STEADY_SECONDS = 0.5, 30.0, 10.0


@attrs.frozen
class WorkerSpec:
    """What a worker is told on its stdin."""

    config: ServerConfig
    index: int
    directory: str
    parent: int


# ---------------------------------------------------------------- supervisor


def supervise(config: ServerConfig) -> int:
    """Run the supervisor until its workers have drained (see the module docstring)."""
    from trio_asr.cli.model_store import ModelNotAvailable, resolve_model_dir

    if not reuse_port_supported():
        raise CommandFailed("--processes above 1 needs SO_REUSEPORT, which this platform lacks (use --processes 1)", 2)
    try:
        config = attrs.evolve(config, model=resolve_model_dir(config.model))  # downloaded once, here
    except ModelNotAvailable as exc:
        raise CommandFailed(exc) from None
    _tag_logs("supervisor")
    with _hold_port(config) as port, tempfile.TemporaryDirectory(prefix="trio-asr-") as directory:
        state = SharedState.create(Path(directory), config.processes)
        supervisor = Supervisor(attrs.evolve(config, port=port), state)
        try:
            trio.run(supervisor.run)
        finally:
            state.close()
    if supervisor.failed:
        raise CommandFailed(supervisor.failed, supervisor.failed_status)
    return 0


@contextlib.contextmanager
def _hold_port(config: ServerConfig) -> Iterator[int]:
    """Check that the port is free (pick one for port 0), and keep it bound
    (not listening) with ``SO_REUSEPORT`` while the workers come and go."""
    host = config.host or None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:  # without SO_REUSEPORT: fails if anyone has it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
            port = probe.getsockname()[1]
        held = socket.socket(family, kind, proto)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address[0], port, *address[2:]))
    except OSError as exc:
        raise CommandFailed(listen_error(config.host, config.port, exc)) from None
    with held:
        yield int(port)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class Supervisor:
    """Starts, watches and restarts the workers; relays the signals."""

    def __init__(self, config: ServerConfig, state: SharedState) -> None:
        self.config = config
        self.state = state
        self.failed: str | None = None
        self.failed_status = FAILED
        self._procs: dict[int, trio.Process] = {}
        self._ready: set[int] = set()
        self._started = False
        self._draining = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._relay_signals)
            async with trio.open_nursery() as workers:
                for index in range(self.config.processes):
                    workers.start_soon(self._keep, index)
            nursery.cancel_scope.cancel()

    def _signal_all(self, signum: int) -> None:
        for proc in list(self._procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    def _drain(self) -> None:
        self._draining.set()
        self._signal_all(signal.SIGTERM)

    async def _relay_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                name = signal.Signals(signum).name
                if not self._draining.is_set():
                    log.warning("received %s: draining %d worker processes", name, len(self._procs))
                    self._drain()
                    trio.lowlevel.spawn_system_task(self._kill_stragglers)
                else:
                    log.warning("received %s again: workers end their streams now", name)
                    self._signal_all(signal.SIGUSR1)

    async def _kill_stragglers(self) -> None:
        config = self.config
        await trio.sleep(config.grace_period + config.drain_timeout + config.close_timeout + 10)
        if self._procs:
            log.error("%d worker processes still running: killing them", len(self._procs))
            self._signal_all(signal.SIGKILL)

    async def _keep(self, index: int) -> None:
        """Run worker ``index``, restarting it whenever it exits unasked."""
        backoff = FIRST_BACKOFF
        while not self._draining.is_set():
            started = trio.current_time()
            proc = await self._spawn(index)
            self._procs[index] = proc
            if self._draining.is_set():  # the signal came while it was starting
                proc.send_signal(signal.SIGTERM)
            async with trio.open_nursery() as watch:
                watch.start_soon(self._await_ready, index, proc)
                await proc.wait()
                watch.cancel_scope.cancel()
            del self._procs[index]
            self.state.clear(index)
            await trio.to_thread.run_sync(self.state.retire, index)
            reason = _startup_failure(self.state.directory, index)
            if self._draining.is_set():
                return
            if not self._started:
                self.failed = reason or f"worker process {index} stopped while starting ({_describe_exit(proc.returncode)})"
                self.failed_status = proc.returncode if reason and proc.returncode in (FAILED, BAD_INPUT) else FAILED
                self._drain()
                return
            delay = FIRST_BACKOFF if trio.current_time() - started > STEADY_SECONDS else backoff
            backoff = min(2 * delay, MAX_BACKOFF)  # for the next exit, if it comes soon
            log_event(log, "worker exited", logging.WARNING, worker=index, pid=proc.pid,
                      how=_describe_exit(proc.returncode), reason=reason or "", restart_in_s=delay)  # fmt: skip
            with trio.move_on_after(delay):
                await self._draining.wait()

    async def _spawn(self, index: int) -> trio.Process:
        spec = WorkerSpec(config=self.config, index=index, directory=str(self.state.directory), parent=os.getpid())
        proc = await trio.lowlevel.open_process([sys.executable, "-c", WORKER_CODE], stdin=subprocess.PIPE)
        assert proc.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError):
            await proc.stdin.send_all(pickle.dumps(spec))
        await proc.stdin.aclose()
        log_event(log, "worker started", worker=index, pid=proc.pid)
        return proc

    async def _await_ready(self, index: int, proc: trio.Process) -> None:
        """Note when the worker listens; print the startup line once all do."""
        while not (self.state.slot(index).pid == proc.pid and self.state.slot(index).state):
            await trio.sleep(0.05)
        self._ready.add(index)
        if not self._started and len(self._ready) == self.config.processes:
            self._started = True
            config = self.config
            scheme = "wss" if config.certfile is not None else "ws"
            assert config.model is not None
            print(startup_line(config, scheme=scheme, port=config.port, ws_path=WS_PATH, model_dir=config.model),
                  file=sys.stderr)  # fmt: skip
            log_event(log, "serving", processes=config.processes, port=config.port)


# ---------------------------------------------------------------- worker


def worker_main() -> None:
    """A worker process's entry point (:data:`WORKER_CODE`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = pickle.loads(sys.stdin.buffer.read())
    assert isinstance(spec, WorkerSpec)
    sys.exit(run_worker(spec))


def _tag_logs(who: str) -> None:
    """Name the process in every log line: ``[worker 1 pid 1234]``."""
    tag = f"{who} pid {os.getpid()}"
    for handler in logging.getLogger().handlers:
        if type(handler.formatter) is logging.Formatter:  # the text format (JSON has its own class)
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [{tag}]: %(message)s"))
        handler.addFilter(_JsonTag(who))


class _JsonTag(logging.Filter):
    """Adds ``process`` (``worker 1 pid 1234``) to the fields of structured (JSON) records."""

    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def filter(self, record: logging.LogRecord) -> bool:
        fields: Any = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {**fields, "process": f"{self.who} pid {os.getpid()}"}
        return True


def _startup_failure(directory: Path, index: int) -> str | None:
    """The one line in which worker ``index``, just exited, said why it could
    not start, if it did; taken, so that a later start of it is not blamed."""
    path = directory / f"worker-{index}.failed"
    try:
        reason = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path.unlink(missing_ok=True)
    return reason or None


def _report_startup_failure(spec: WorkerSpec, message: str) -> None:
    """Leave the reason for the supervisor, which prints it as the command's
    one line (printed here as well, it would be the first of two)."""
    try:
        (Path(spec.directory) / f"worker-{spec.index}.failed").write_text(message, encoding="utf-8")
    except OSError:
        print(f"trio-asr serve: {message}", file=sys.stderr)


def run_worker(spec: WorkerSpec) -> int:
    config = spec.config
    configure_logging(config.log_level, config.log_format, log_transcripts=config.log_transcripts)
    _tag_logs(f"worker {spec.index}")
    limit_malloc_arenas()
    try:
        _, recognizer = _build_recognizer(config)
    except CommandFailed as exc:
        _report_startup_failure(spec, str(exc))
        return exc.status
    state = SharedState(Path(spec.directory), config.processes, spec.index)
    server = Server(config, recognizer)
    server.shared = state
    server.places = SharedPlaces(state, CONNECTIONS, config.max_connections)
    server.api.places = SharedPlaces(state, UPLOADS, config.max_uploads)

    async def run() -> ServerStartError | None:
        try:
            await server.open()
        except ServerStartError as exc:
            return exc
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_worker_signals, server)
            nursery.start_soon(_publish, server, state, spec.parent)
            await server.run()
            nursery.cancel_scope.cancel()
        if config.metrics:  # the final counts, for the supervisor to keep
            state.write_metrics(server.metrics.exposition()[0])
        return None

    settle_garbage_collector()
    error = trio.run(run)
    state.close()
    if error is not None:
        failure = start_failure(error)
        _report_startup_failure(spec, str(failure))
        return failure.status
    return 0


async def _worker_signals(server: Server) -> None:
    """SIGTERM: drain; SIGUSR1: skip the grace period (the supervisor's second signal)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1) as received:
        async for signum in received:
            server.shutdown(immediately=signum == signal.SIGUSR1)


async def _publish(server: Server, state: SharedState, parent: int) -> None:
    """Keep this worker's slot (and, every fourth time, its metrics) up to
    date; drain if the supervisor is gone."""
    for tick in range(sys.maxsize):
        second = server.recognizer.second_pass
        state.publish(
            draining=server.lifecycle.draining, overloaded=server.overloaded,
            no_audio=server.audio.failure is not None,
            delays=(server.service.queue_delay, second.queue_delay if second is not None else 0.0),
        )  # fmt: skip
        if tick % 4 == 0 and server.config.metrics:
            await trio.to_thread.run_sync(state.write_metrics, server.metrics.exposition()[0])
        if os.getppid() != parent and not server.lifecycle.draining:
            log.warning("the supervisor is gone: draining")
            server.shutdown()
        await trio.sleep(PUBLISH_EVERY)
