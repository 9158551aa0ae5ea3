"""What the worker processes of ``serve --processes N`` share, so that they are one server.

The supervisor (:mod:`trio_asr.cli.supervisor`) makes a state directory and
:meth:`SharedState.create` a file of N fixed-size *slots* in it, one per
worker; every process maps it (``mmap``).  A worker writes its own slot
only: its pid and state, the WebSocket connections and uploads it has
admitted, whether it is overloaded or cannot save audio, its queue delays.
The supervisor zeroes the slot of a worker that has exited.

* **Limits** (:class:`SharedPlaces`): a worker admits a connection (or an
  upload) by :meth:`SharedState.reserve`: under an exclusive ``flock`` of
  the slots file, the sum over all slots is compared with the limit and the
  worker's own count raised, so ``--max-connections`` and ``--max-uploads``
  hold for the whole server exactly.  :class:`LocalPlaces` is the same
  interface for a server of one process.
* **Health** (:meth:`SharedState.health`): any worker's ``/health`` answers
  for the whole server: 503 only when every worker is draining, the sum of
  connections is at the limit, or no worker can take work (overloaded,
  cannot save audio); its body's connections are summed, its queue delays
  the largest.
* **Metrics**: each worker writes its exposition to ``metrics/<index>.prom``
  at least once a second (:meth:`SharedState.write_metrics`); any worker's
  ``/metrics`` merges them with its own (:meth:`SharedState.merged_metrics`,
  :mod:`trio_asr.serving.metrics_merge`), so other workers' figures are at
  most about a second old.  A worker that exits leaves its counters and
  histograms in ``metrics/retired.prom`` (:meth:`SharedState.retire`).

Listeners: every worker binds the same port with ``SO_REUSEPORT``
(:func:`open_reuseport_listeners`), and the kernel spreads new connections
over them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import trio

from trio_asr.serving.metrics_merge import lasting_part, merge_expositions

__all__ = [
    "CONNECTIONS", "DRAINING", "READY", "UPLOADS", "LocalPlaces", "SharedPlaces", "SharedState", "Slot",
    "open_reuseport_listeners", "reuse_port_supported",
]  # fmt: skip

#: a slot: pid, state, connections, uploads, flags, (pad), queue delay, second-pass queue delay
_SLOT = struct.Struct("<iiiii4xdd")
_SLOT_BYTES = 64
#: the counted fields' offsets in a slot
CONNECTIONS, UPLOADS = 8, 12
_STATE = 4
#: a slot's states: 0 no worker
READY, DRAINING = 1, 2
#: flags: what keeps a worker from taking work
_OVERLOADED, _NO_AUDIO = 1, 2
_COUNTS = struct.Struct("<i")
_RETIRED = "retired.prom"
_BACKLOG = 0xFFFF  # the kernel caps it at net.core.somaxconn


class Slot(NamedTuple):
    pid: int
    state: int
    connections: int
    uploads: int
    flags: int
    queue_delay: float
    second_pass_queue_delay: float


def reuse_port_supported() -> bool:
    """Whether this platform lets several processes listen on one port."""
    return hasattr(socket, "SO_REUSEPORT") and os.name == "posix"


class SharedState:
    """The slots file and metrics directory of ``directory``, seen by the
    worker ``index`` (``None``: the supervisor)."""

    def __init__(self, directory: Path, processes: int, index: int | None = None) -> None:
        self.directory = Path(directory)
        self.processes = processes
        self.index = index
        self._file = open(self.directory / "slots", "r+b")  # noqa: SIM115 (closed in close())
        self._map = mmap.mmap(self._file.fileno(), processes * _SLOT_BYTES)

    @classmethod
    def create(cls, directory: Path, processes: int) -> SharedState:
        """Make the slots file (all empty) and the metrics directory."""
        (directory / "slots").write_bytes(bytes(processes * _SLOT_BYTES))
        (directory / "metrics").mkdir(exist_ok=True)
        return cls(directory, processes)

    def close(self) -> None:
        self._map.close()
        self._file.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl  # POSIX only, as SO_REUSEPORT: a server of one process (Windows too) never gets here

        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    # -- slots

    def slots(self) -> list[Slot]:
        return [Slot(*_SLOT.unpack_from(self._map, i * _SLOT_BYTES)) for i in range(self.processes)]

    def slot(self, index: int) -> Slot:
        return Slot(*_SLOT.unpack_from(self._map, index * _SLOT_BYTES))

    def _own(self) -> int:
        assert self.index is not None, "a worker's method"
        return self.index * _SLOT_BYTES

    def total(self, field: int) -> int:
        """The sum of a counted field (:data:`CONNECTIONS`, :data:`UPLOADS`) over all slots."""
        return sum(_COUNTS.unpack_from(self._map, i * _SLOT_BYTES + field)[0] for i in range(self.processes))

    def reserve(self, field: int, limit: int) -> bool:
        """Count one more in this worker's ``field`` if the whole server has fewer than ``limit``."""
        with self._locked():
            if self.total(field) >= limit:
                return False
            where = self._own() + field
            _COUNTS.pack_into(self._map, where, _COUNTS.unpack_from(self._map, where)[0] + 1)
            return True

    def release(self, field: int) -> None:
        with self._locked():
            where = self._own() + field
            _COUNTS.pack_into(self._map, where, max(0, _COUNTS.unpack_from(self._map, where)[0] - 1))

    def publish(self, *, draining: bool, overloaded: bool, no_audio: bool, delays: tuple[float, float]) -> None:
        """This worker's pid, state and condition (its counts are kept by :meth:`reserve`)."""
        own = self._own()
        flags = (_OVERLOADED if overloaded else 0) | (_NO_AUDIO if no_audio else 0)
        struct.pack_into("<ii", self._map, own, os.getpid(), DRAINING if draining else READY)
        struct.pack_into("<i", self._map, own + 16, flags)
        struct.pack_into("<dd", self._map, own + 24, *delays)

    def clear(self, index: int) -> None:
        """Empty the slot of a worker that has exited (the supervisor)."""
        with self._locked():
            self._map[index * _SLOT_BYTES : (index + 1) * _SLOT_BYTES] = bytes(_SLOT_BYTES)

    # -- health

    def health(self, body: dict[str, Any], reason: str | None, audio_error: str | None) -> tuple[int, dict[str, Any]]:
        """The whole server's ``/health`` from the answering worker's own
        ``body`` and ``reason`` (``None``: it can take work)."""
        own = self._own() // _SLOT_BYTES
        others = [s for i, s in enumerate(self.slots()) if s.state and i != own]
        body = {
            **body,
            "connections": self.total(CONNECTIONS),
            "processes": len(others) + 1,
            "queue_delay": round(max([body["queue_delay"], *(s.queue_delay for s in others)]), 3),
        }
        if "second_pass_queue_delay" in body:
            delays = [body["second_pass_queue_delay"], *(s.second_pass_queue_delay for s in others)]
            body["second_pass_queue_delay"] = round(max(delays), 3)
        if reason == "shutting down" and all(s.state == DRAINING for s in others):
            return 503, {**body, "status": reason}
        if body["connections"] >= body["max_connections"]:
            return 503, {**body, "status": "full"}
        if reason in (None, "full") or any(s.state == READY and not s.flags for s in others):
            return 200, body
        if reason == "shutting down":  # and no other worker can take work either
            reason = "overloaded" if any(s.flags & _OVERLOADED for s in others) else "cannot save audio"
        extra = {"error": audio_error or "in another worker process"} if reason == "cannot save audio" else {}
        return 503, {**body, "status": reason, **extra}

    # -- metrics

    def write_metrics(self, exposition: bytes) -> None:
        """Publish this worker's exposition (blocking: call in a thread)."""
        path = self.directory / "metrics" / f"{self.index}.prom"
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(exposition)
        os.replace(temporary, path)

    def merged_metrics(self, own: bytes) -> bytes:
        """The whole server's exposition: ``own`` (this worker's, now), the
        other workers' last ones, and the retired counts (blocking)."""
        texts = [own.decode()]
        for path in sorted((self.directory / "metrics").glob("*.prom")):
            if path.name != f"{self.index}.prom":
                with contextlib.suppress(FileNotFoundError):
                    texts.append(path.read_text())
        return merge_expositions(texts)

    def retire(self, index: int) -> None:
        """Keep the counters and histograms of worker ``index``, which has
        exited, in the retired sums (the supervisor; blocking)."""
        metrics = self.directory / "metrics"
        path, retired = metrics / f"{index}.prom", metrics / _RETIRED
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        texts = [text, retired.read_text()] if retired.exists() else [text]
        temporary = retired.with_suffix(".tmp")
        temporary.write_bytes(lasting_part(texts))
        os.replace(temporary, retired)
        path.unlink()


class LocalPlaces:
    """At most ``limit`` of something at once, in one process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def full(self) -> bool:
        return self.count >= self.limit

    def take(self) -> bool:
        """Take a place if one is free; whether it was."""
        if self.full():
            return False
        self.count += 1
        return True

    def release(self) -> None:
        self.count -= 1


class SharedPlaces(LocalPlaces):
    """At most ``limit`` at once across all the workers (see the module docstring)."""

    def __init__(self, state: SharedState, field: int, limit: int) -> None:
        super().__init__(limit)
        self.state = state
        self.field = field

    def full(self) -> bool:
        return self.state.total(self.field) >= self.limit

    def take(self) -> bool:
        return self.state.reserve(self.field, self.limit)

    def release(self) -> None:
        self.state.release(self.field)


async def open_reuseport_listeners(port: int, host: str | None) -> list[trio.SocketListener]:
    """Like :func:`trio.open_tcp_listeners`, with ``SO_REUSEPORT`` set on each socket."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _name, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(_BACKLOG)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners
