"""The plain-HTTP side of the server's port, before any WebSocket handshake.

trio-websocket rejects non-upgrade requests before a handler sees them, so
the server reads each request head itself (with h11), answers health checks,
404s and 503s here, and hands WebSocket upgrades on to trio-websocket through
:class:`ReplayStream`, which replays the bytes already read.

Every answer is the same whatever the method; ``HEAD`` (load balancers,
uptime checkers) gets the status and headers of ``GET``, Content-Length
included, without the body.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import h11
import trio

__all__ = ["ReplayStream", "is_upgrade", "read_request", "respond", "respond_bytes"]

#: connections (of :func:`read_request`) whose request is a HEAD: answered without the body
_HEAD_REQUESTS: weakref.WeakSet[h11.Connection] = weakref.WeakSet()


class ReplayStream(trio.abc.Stream):
    """A stream that first yields bytes already read from ``stream``."""

    def __init__(self, prefix: bytes, stream: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._stream = stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return bytes(data)
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def read_request(stream: trio.abc.Stream) -> tuple[h11.Connection, h11.Request | None, bytes]:
    """Read one HTTP request head; ``None`` if the peer left or sent garbage."""
    conn = h11.Connection(h11.SERVER)
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return conn, None, bytes(raw)
        if isinstance(event, h11.Request):
            if event.method == b"HEAD":
                _HEAD_REQUESTS.add(conn)
            return conn, event, bytes(raw)
        if event is not h11.NEED_DATA:
            return conn, None, bytes(raw)
        data = await stream.receive_some(16384)
        if not data:
            return conn, None, bytes(raw)
        raw += data
        conn.receive_data(bytes(data))


async def respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[str, str]] | None = None,
) -> None:
    """Send a JSON response (and ``connection: close``)."""
    payload = json.dumps(body).encode()
    await respond_bytes(
        stream, conn, status, payload, [("content-type", "application/json"), *(headers or [])]
    )


async def respond_bytes(
    stream: trio.abc.Stream, conn: h11.Connection, status: int, payload: bytes, headers: list[tuple[str, str]]
) -> None:
    """Send ``payload`` with ``headers`` (content length and ``connection:
    close`` are added unless given); to a HEAD request, the same without the
    payload."""
    names = {name.lower() for name, _ in headers}
    headers = [*headers, *([("content-length", str(len(payload)))] if "content-length" not in names else [])]
    headers.append(("connection", "close"))
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers))
        if conn not in _HEAD_REQUESTS:
            data += conn.send(h11.Data(data=payload))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)


def is_upgrade(request: h11.Request) -> bool:
    return any(k == b"upgrade" and b"websocket" in v.lower() for k, v in request.headers)
