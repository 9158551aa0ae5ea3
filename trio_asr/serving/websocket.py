"""trio-websocket's server connection, with oversized messages handed to the session.

trio-websocket closes a connection whose message exceeds its
``max_message_size`` by itself, with 1009 and no reply.  The server answers
every oversized frame with the protocol core's JSON error before that close
(:meth:`trio_asr.protocol.connection.ConnectionProtocol.receive_oversized`),
so :class:`ServerConnection` stops a message at the limit differently: it
drops what it buffered of the message, discards the rest of it as it
arrives, and delivers :data:`OVERSIZED` in the message's place, in order
with the other messages.  Memory per connection stays bounded by the limit.

:func:`wrap_server_stream` is trio-websocket's function of that name, making
a :class:`ServerConnection`.  Both lean on trio-websocket's internals (the
message buffer of ``WebSocketConnection``, its reader task), unchanged from
0.11 to 0.12; ``tests/test_hardening_2.py`` checks the behaviour end to end.
"""

from __future__ import annotations

from typing import Any, Final

import trio
import trio_websocket
import wsproto
from wsproto import ConnectionType, WSConnection

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

    async def _handle_message_event(
        self, event: wsproto.events.BytesMessage | wsproto.events.TextMessage
    ) -> None:
        if self._discarding:
            self._discarding = not event.message_finished
            return
        if self._message_size + len(event.data) <= self._max_message_size:
            await super()._handle_message_event(event)
            return
        self._message_size = 0
        self._message_parts = []
        self._discarding = not event.message_finished
        try:
            await self._send_channel.send(OVERSIZED)  # type: ignore[arg-type]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the receiving side was closed (as trio-websocket's own handler)


async def wrap_server_stream(
    nursery: trio.Nursery, stream: trio.abc.Stream, *, max_message_size: int
) -> trio_websocket.WebSocketRequest:
    """:func:`trio_websocket.wrap_server_stream`, with a :class:`ServerConnection`."""
    connection = ServerConnection(stream, WSConnection(ConnectionType.SERVER), max_message_size=max_message_size)
    nursery.start_soon(connection._reader_task)
    return await connection._get_request()
