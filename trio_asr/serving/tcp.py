"""One TCP connection, from accept to close: the process's bound on open
connections, TLS when configured, then HTTP (which may become a WebSocket).

``--max-connections`` bounds WebSocket connections and ``--max-uploads`` the
transcription uploads, but a connection is neither until its request head
has arrived: until then it holds a task, a socket and a head buffer.
:class:`ConnectionBound` keeps the connections open at once (in any phase)
to :func:`open_connection_limit`; one more is answered 503 at once, without
reading its request, and closed, so a flood of idle sockets cannot grow a
server's memory or crowd out its descriptors.  The bound is per process.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator

import trio

from trio_asr.serving.config import ServerConfig
from trio_asr.serving.http import HttpLimits, Observer, serve_http
from trio_asr.serving.http_wire import drain_before_close
from trio_asr.serving.routes import Router
from trio_asr.serving.tls import accept_tls
from trio_asr.serving.transcriptions import RECEIVING_PER_PLACE

__all__ = ["EXTRA_CONNECTIONS", "ConnectionBound", "open_connection_limit", "serve_tcp"]

log = logging.getLogger("trio_asr.server")

#: connections allowed beyond the streams' and uploads', for /health,
#: /metrics, the page, and requests still arriving
EXTRA_CONNECTIONS = 64

_REFUSAL_BODY = b'{"status": "error", "message": "too many open connections; retry shortly"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)
_REFUSAL_SECONDS = 1.0
_REFUSAL_DRAIN_BYTES = 256 * 1024


def open_connection_limit(config: ServerConfig) -> int:
    """TCP connections one server process keeps open at once: every
    WebSocket connection, every upload that may be received or wait, and
    :data:`EXTRA_CONNECTIONS`."""
    return config.max_connections + RECEIVING_PER_PLACE * config.max_uploads + EXTRA_CONNECTIONS


class ConnectionBound:
    """Counts the connections open now against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[bool]:
        """Whether one more connection may be served; counted while inside."""
        if self.open >= self.limit:
            yield False
            return
        self.open += 1
        try:
            yield True
        finally:
            self.open -= 1


async def _refuse(stream: trio.SocketStream) -> None:
    """Send the canned 503, then let the request arrive before closing."""
    with trio.move_on_after(_REFUSAL_SECONDS):
        await stream.send_all(_REFUSAL)
    await drain_before_close(stream, _REFUSAL_SECONDS, _REFUSAL_DRAIN_BYTES)


async def serve_tcp(
    stream: trio.SocketStream,
    router: Router,
    limits: HttpLimits,
    *,
    tls: ssl.SSLContext | None,
    bound: ConnectionBound,
    on_refused: Callable[[], None],
    observe: Observer | None = None,
) -> None:
    """Serve one accepted connection until it is done; its failures are
    logged, never propagated."""
    try:
        peer = "%s:%s" % stream.socket.getpeername()[:2]
    except (OSError, TypeError):
        peer = "?"
    try:
        async with stream:
            with bound.admit() as admitted:
                if not admitted:
                    on_refused()
                    log.debug("connection from %s refused: %d open", peer, bound.open)
                    if tls is None:  # a TLS client is only closed: plain bytes would break its handshake
                        await _refuse(stream)
                    return
                if tls is None:
                    await serve_http(stream, router, limits, peer=peer, observe=observe)
                    return
                secured = await accept_tls(stream, tls, limits, peer, observe)
                if secured is not None:
                    async with secured:  # its close_notify, then the socket's close
                        await serve_http(secured, router, limits, peer=peer, observe=observe)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("connection from %s broke", peer)
    except Exception:
        log.exception("connection from %s failed", peer)
