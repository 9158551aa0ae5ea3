"""A WebSocket connection's plain TCP socket, read and written directly
(``ReplayStream`` in ``trio_asr/serving/http_wire.py``, the send in
``trio_asr/serving/websocket.py``): replies go straight to the socket when
it takes every byte, trio-websocket's locked send otherwise, nothing lost
or reordered either way; reads give the replayed bytes first, then the
socket's, and end as trio's socket stream ends."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
import trio_websocket

from trio_asr.serving.http_wire import ReplayStream
from trio_asr.serving.websocket import ServerConnection, wrap_server_stream


#: where the socket is read and written directly (see ReplayStream)
DIRECT = os.name == "posix"


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client_stream = await trio.open_tcp_stream("127.0.0.1", port)
    server_stream = await listener.accept()
    await listener.aclose()
    assert isinstance(server_stream, trio.SocketStream)
    return server_stream, client_stream


async def _connected_pair(
    nursery: trio.Nursery, *, send_buffer: int
) -> tuple[ServerConnection, trio_websocket.WebSocketConnection]:
    server_stream, client_stream = await _tcp_pair()
    server_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    client_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, send_buffer)
    # as the server has it: behind the stream that replays the upgrade request
    replay = ReplayStream(b"", server_stream)
    accepted: list[trio_websocket.WebSocketConnection] = []

    async def accept() -> None:
        request = await wrap_server_stream(nursery, replay, max_message_size=1 << 20)
        accepted.append(await request.accept())

    async with trio.open_nursery() as handshake:
        handshake.start_soon(accept)
        client = await trio_websocket.wrap_client_stream(nursery, client_stream, "127.0.0.1", "/")
    server = accepted[0]
    assert isinstance(server, ServerConnection)
    return server, client


@pytest.mark.parametrize("size", [100, 200_000])
async def test_messages_from_two_senders_arrive_whole_and_each_in_order(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Small messages go out whole at once; large ones (several times the
    socket's buffer, read slowly) are partly written and finished under the
    lock while the other sender waits its turn."""
    writes = {"whole": 0, "partial": 0}
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        written = real_write(fd, data)
        writes["whole" if written == len(data) else "partial"] += 1
        return written

    monkeypatch.setattr(os, "write", counting_write)
    server, client = await _connected_pair(nursery, send_buffer=16384)
    count = 20

    async def send(tag: str) -> None:
        for i in range(count):
            body = f"{tag}{i:03d}:"
            await server.send_message(body + "x" * (size - len(body)))

    received: list[str] = []

    async def receive() -> None:
        for _ in range(2 * count):
            message = await client.get_message()
            assert isinstance(message, str)
            received.append(message)
            if size > 1000:
                await trio.sleep(0.002)  # a slow reader: the socket's buffer fills

    async with trio.open_nursery() as tasks:
        tasks.start_soon(send, "a")
        tasks.start_soon(send, "b")
        tasks.start_soon(receive)

    assert all(len(m) == size for m in received)
    for tag in "ab":
        assert [m.split(":")[0] for m in received if m.startswith(tag)] == [f"{tag}{i:03d}" for i in range(count)]
    if DIRECT:
        assert writes["whole"] > 0
        if size > 1000:
            assert writes["partial"] > 0
    await client.aclose()


async def test_a_send_to_a_closed_peer_is_connection_closed(nursery: trio.Nursery) -> None:
    server, client = await _connected_pair(nursery, send_buffer=16384)
    await client._stream.aclose()  # the peer goes away without a closing handshake
    with pytest.raises(trio_websocket.ConnectionClosed):
        for _ in range(100):  # the first sends may still be taken by the kernel
            await server.send_message("x" * 10000)
            await trio.sleep(0.01)


async def test_reads_give_the_replayed_bytes_then_the_sockets_then_the_end() -> None:
    server_stream, client_stream = await _tcp_pair()
    stream = ReplayStream(b"GET / HTTP/1.1", server_stream)
    assert await stream.receive_some(3) == b"GET"
    assert await stream.receive_some() == b" / HTTP/1.1"
    received = b""
    async with trio.open_nursery() as nursery:
        async def send_later() -> None:
            await trio.sleep(0.05)  # the read waits for it
            await client_stream.send_all(b"x" * 100_000)
            await client_stream.aclose()

        nursery.start_soon(send_later)
        while chunk := await stream.receive_some(30_000):
            assert len(chunk) <= 30_000
            received += chunk
    assert received == b"x" * 100_000
    assert await stream.receive_some() == b""
    await stream.aclose()


@pytest.mark.skipif(not DIRECT, reason="SO_LINGER's layout here is POSIX's")
async def test_a_reset_connection_is_a_broken_stream() -> None:
    server_stream, client_stream = await _tcp_pair()
    stream = ReplayStream(b"", server_stream)
    # close with SO_LINGER 0: the peer sends a reset, not an end
    client_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client_stream.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
    assert stream.send_now(b"x") == 0
    await stream.aclose()


async def test_a_read_waiting_when_the_stream_is_closed_is_a_closed_stream() -> None:
    server_stream, client_stream = await _tcp_pair()
    stream = ReplayStream(b"", server_stream)
    async with trio.open_nursery() as nursery:
        async def close_soon() -> None:
            await trio.sleep(0.05)
            await stream.aclose()

        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    assert stream.send_now(b"x") == 0
    await client_stream.aclose()
