"""trio-websocket's server connection, with oversized messages handed to the session.

trio-websocket closes a connection whose message exceeds its
``max_message_size`` by itself, with 1009 and no reply.  The server answers
every oversized frame with the protocol core's JSON error before that close
(:meth:`trio_asr.protocol.connection.ConnectionProtocol.receive_oversized`),
so :class:`ServerConnection` stops a message at the limit differently: it
drops what it buffered of the message, discards the rest of it as it
arrives, and delivers :data:`OVERSIZED` in the message's place, in order
with the other messages.  Memory per connection stays bounded by the limit.

It also spares each frame task switches: a whole message is queued for the
session without a checkpoint of its own, and a reply goes straight to a
plain TCP socket when the socket takes every byte at once (trio-websocket's
locked send otherwise, in order).

:func:`wrap_server_stream` is trio-websocket's function of that name, making
a :class:`ServerConnection`.  Both lean on trio-websocket's internals (the
message buffer of ``WebSocketConnection``, its reader task, its send lock),
unchanged from 0.11 to 0.12; ``tests/test_hardening_2.py`` checks the
behaviour end to end, ``tests/test_direct_socket.py`` the send.
"""

from __future__ import annotations

from typing import Any, Final, cast

import trio
import trio_websocket
import wsproto
from wsproto import ConnectionType, WSConnection

from trio_asr.serving.channels import send_soon
from trio_asr.serving.http_wire import ReplayStream

__all__ = ["OVERSIZED", "Oversized", "ServerConnection", "wrap_server_stream"]


class Oversized:
    """Stands for a message over the limit, which was not kept."""

    def __repr__(self) -> str:
        return "OVERSIZED"


#: what :meth:`ServerConnection.get_message` returns for a message over the limit
OVERSIZED: Final = Oversized()


class ServerConnection(trio_websocket.WebSocketConnection):
    """A server-side WebSocket whose messages over ``max_message_size``
    (measured by ``len()``, as trio-websocket does) come out of
    :meth:`get_message` as :data:`OVERSIZED` instead of closing the
    connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._discarding = False  # inside a message already delivered as OVERSIZED

    async def _send(self, event: wsproto.events.Event) -> None:
        """trio-websocket's send, without its two task switches (the lock's
        and the socket's) when the socket takes every byte at once, as it
        does while the client reads: a reply costs one switch, not three.
        What the socket does not take, and every send while another is
        under way, goes trio-websocket's way, in order."""
        stream = self._stream
        if not isinstance(stream, ReplayStream) or self._stream_lock.locked():
            await super()._send(event)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        data = self._wsproto.send(event)
        sent = stream.send_now(data)
        if sent == len(data):
            return
        async with self._stream_lock:
            try:
                await self._stream.send_all(data[sent:])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abort_web_socket()
                assert self._close_reason is not None
                raise trio_websocket.ConnectionClosed(self._close_reason) from None

    async def _handle_message_event(
        self, event: wsproto.events.BytesMessage | wsproto.events.TextMessage
    ) -> None:
        if self._discarding:
            self._discarding = not event.message_finished
            return
        size = self._message_size + len(event.data)
        if size > self._max_message_size:
            self._message_size = 0
            self._message_parts = []
            self._discarding = not event.message_finished
            await self._deliver(OVERSIZED)
            return
        data = bytes(event.data) if isinstance(event.data, bytearray) else event.data
        if not event.message_finished:
            self._message_size = size
            self._message_parts.append(data)
            return
        message: str | bytes = data
        if self._message_parts:  # the last fragment of several
            parts = [*self._message_parts, data]
            message = b"".join(parts) if isinstance(data, bytes) else "".join(parts)  # type: ignore[arg-type]
            self._message_size = 0
            self._message_parts = []
        await self._deliver(message)

    async def _deliver(self, message: str | bytes | Oversized) -> None:
        """Queue ``message`` for :meth:`get_message`, waiting only when the
        queue is full: the reader task has just come back from a socket read
        (a checkpoint), so a message costs no task switch of its own."""
        try:
            # trio-websocket's queue, typed for str and bytes: OVERSIZED goes through it too
            queue = cast("trio.MemorySendChannel[str | bytes | Oversized]", self._send_channel)
            await send_soon(queue, message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the receiving side was closed (as trio-websocket's own handler)


async def wrap_server_stream(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_message_size: int
) -> trio_websocket.WebSocketRequest:
    """:func:`trio_websocket.wrap_server_stream`, with a :class:`ServerConnection`."""
    connection = ServerConnection(stream, WSConnection(ConnectionType.SERVER), max_message_size=max_message_size)
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()
