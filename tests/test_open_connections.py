"""The bound on open TCP connections: sockets whose request never comes
cannot pile up past it; one more is answered 503 without its request being
read, and a place that frees up serves again."""

from __future__ import annotations

import trio
from serverutil import http_get, read_response, start_server

from trio_asr.serving import tcp


def refusals(server) -> float:
    return server.metrics.registry.get_sample_value("trio_asr_admission_refusals_total", {"reason": "connections"})


async def test_idle_sockets_past_the_bound_get_503_and_a_freed_place_serves_again(nursery, tmp_path, monkeypatch):
    monkeypatch.setattr(tcp, "EXTRA_CONNECTIONS", 2)
    server = await start_server(nursery, tmp_path, max_connections=1, max_uploads=1, handshake_timeout=30.0)
    limit = 1 + 4 * 1 + 2
    assert tcp.open_connection_limit(server.config) == limit
    idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(limit)]
    await trio.sleep(0.2)  # every one accepted, none has sent a byte
    with trio.fail_after(5):
        extra = await trio.open_tcp_stream("127.0.0.1", server.port)
        status, headers, body, _ = await read_response(extra)  # without having sent a request
    assert status == 503 and headers["retry-after"] == "1" and b"too many open connections" in body
    with trio.fail_after(5):  # a client whose request (an upload's body too) is already on its way
        eager = await trio.open_tcp_stream("127.0.0.1", server.port)
        await eager.send_all(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\ncontent-length: 100000\r\n\r\n"
                             + b"\0" * 100_000)  # fmt: skip
        status, _, body, _ = await read_response(eager)
    assert status == 503 and b"too many open connections" in body, "the answer must not be lost to a reset"
    assert refusals(server) == 2
    await idle.pop().aclose()
    await trio.sleep(0.2)
    assert (await http_get(server.port, "/health"))[0] == 200
    for stream in idle:
        await stream.aclose()
