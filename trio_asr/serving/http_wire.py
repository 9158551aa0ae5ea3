"""The bytes under :mod:`trio_asr.serving.http`: h11 over a stream.

:class:`Wire` reads from the stream only when h11 needs data, sends what h11
makes of the events given to it (dropping a client that reads none of it for
too long), and keeps the raw bytes of the request head being read, so that
a request taken over by another protocol (a WebSocket upgrade) can be
replayed to it, from its first byte, by :class:`ReplayStream`.
"""

from __future__ import annotations

import errno
import os

import h11
import trio

__all__ = ["RECEIVE_BYTES", "ReplayStream", "Wire", "drain_before_close"]

RECEIVE_BYTES = 65536


async def drain_before_close(stream: trio.abc.Stream, seconds: float, max_bytes: int | None = None) -> None:
    """Half-close ``stream`` and read whatever the peer still sends, for at
    most ``seconds`` (and ``max_bytes``): closing a socket with unread bytes
    resets it, and the peer may lose the response just sent."""
    drained = 0
    try:
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        with trio.move_on_after(seconds):
            while (max_bytes is None or drained < max_bytes) and (data := await stream.receive_some(RECEIVE_BYTES)):
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


class ReplayStream(trio.abc.Stream):
    """A stream that first yields bytes already read from ``stream``.

    Over a plain TCP socket (POSIX) it then reads the socket itself, waiting for it
    first: a message arriving on an idle connection costs one read, where
    trio's socket stream tries a read (which fails), waits and reads again.
    :meth:`send_now` writes without waiting."""

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._stream = stream
        # POSIX only: a Windows socket's handle is no file descriptor for os.read/os.write
        self._socket = stream.socket if os.name == "posix" and isinstance(stream, trio.SocketStream) else None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        if self._socket is None:
            return bytes(await self._stream.receive_some(max_bytes))
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        while True:
            await trio.lowlevel.wait_readable(self._fileno())
            try:
                return os.read(self._fileno(), RECEIVE_BYTES if max_bytes is None else max_bytes)
            except BlockingIOError:
                continue  # woken, but another reader was first
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):  # as trio's socket stream says it
                    raise trio.ClosedResourceError("the socket was closed") from exc
                raise trio.BrokenResourceError(f"socket read failed: {exc}") from exc

    def send_now(self, data: bytes) -> int:
        """Write what a plain TCP socket takes of ``data`` at once, without
        waiting; the count.  0 when the socket is full, closed or broken, or
        not a plain socket: :meth:`send_all` then waits, or says which."""
        fd = -1 if self._socket is None else self._socket.fileno()
        if fd == -1:
            return 0
        try:
            return os.write(fd, data)  # non-blocking: trio made it so
        except OSError:
            return 0

    def _fileno(self) -> int:
        assert self._socket is not None
        fd = self._socket.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("the socket was closed")
        return fd

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Wire:
    """An h11 server connection over ``stream``; heads over
    ``max_header_bytes`` are h11's :exc:`h11.RemoteProtocolError` (431), a
    send that takes over ``send_timeout`` :exc:`trio.BrokenResourceError`."""

    def __init__(self, stream: trio.abc.Stream, max_header_bytes: int, send_timeout: float) -> None:
        self.stream = stream
        self.send_timeout = send_timeout
        self.max_header_bytes = max_header_bytes
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        # every byte from the current request's first, while nothing after its head was read
        self._raw: bytearray | None = None
        self._in_head = False

    def start_head(self) -> None:
        """A request head is read next: start keeping its bytes (some may
        have come with the previous request)."""
        self._raw = bytearray(self.h11.trailing_data[0])
        self._in_head = True

    def head_begun(self) -> bool:
        """Whether any byte of the next request has come."""
        return bool(self._raw)

    def replay(self) -> bytes | None:
        """The current request's bytes from its first, and whatever came
        with them; ``None`` once more was read (its body)."""
        return bytes(self._raw) if self._raw is not None else None

    async def next_event(self, idle: float | None = None) -> h11.Event | type[h11.PAUSED]:
        """h11's next event, reading as it needs (with no more than ``idle``
        seconds per read: :exc:`trio.TooSlowError`).  The end of the stream
        is h11's :class:`h11.ConnectionClosed`, or its
        :exc:`h11.RemoteProtocolError` inside a message."""
        while True:
            event = self.h11.next_event()
            if event is h11.PAUSED or isinstance(event, h11.Event):
                if isinstance(event, h11.Request):
                    self._in_head = False
                    self._check_head_size()
                return event
            if idle is None:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            else:
                with trio.fail_after(idle):
                    data = await self.stream.receive_some(RECEIVE_BYTES)
            if self._in_head and self._raw is not None:
                self._raw += data
            else:
                self._raw = None
            self.h11.receive_data(bytes(data))

    def _check_head_size(self) -> None:
        # h11 measures only a head still incomplete: one that came whole in a
        # single read is measured here
        assert self._raw is not None
        size = len(self._raw) - len(self.h11.trailing_data[0])
        if size > self.max_header_bytes:
            raise h11.RemoteProtocolError(f"request head of {size} bytes", error_status_hint=431)

    async def send(self, event: h11.Event) -> None:
        """Send ``event`` (h11's :exc:`h11.LocalProtocolError` if it does not fit the state)."""
        data = self.h11.send(event)
        if not data:
            return
        with trio.move_on_after(self.send_timeout):
            await self.stream.send_all(data)
            return
        raise trio.BrokenResourceError(f"the client read no response for {self.send_timeout:g} s")
