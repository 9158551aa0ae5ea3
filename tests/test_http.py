"""The HTTP/1.1 layer (serving/http.py, serving/routes.py) over raw sockets.

A server on the counting recognizer, with test-only routes added through
``server.router.add``: ``POST /echo`` answers the body it read (at most 100
bytes), ``GET /events`` streams two server-sent events.  Timeouts are short
so that the slow clients' tests are quick.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio
import trio_websocket
import trustme
from prometheus_client.parser import text_string_to_metric_families
from serverutil import end_msg, read_response, recv_json, start_msg, start_server

from trio_asr.serving.http import Exchange
from trio_asr.serving.server import WS_PATH, Server
from trio_asr.serving.tls import client_context

ECHO_LIMIT = 100
TIMEOUTS = dict(handshake_timeout=0.5, http_keepalive_timeout=0.5, body_timeout=1.5)


async def echo(exchange: Exchange) -> None:
    body = await exchange.read_body(ECHO_LIMIT)
    await exchange.respond(200, body, [("content-type", "application/octet-stream")])


async def events(exchange: Exchange) -> None:
    await exchange.start_response(200, [("content-type", "text/event-stream")])
    for n in (1, 2):
        await exchange.send(f"data: {n}\n\n".encode())
    await exchange.end_response()


async def failing(exchange: Exchange) -> None:
    raise RuntimeError("a handler bug (test)")


def add_test_routes(server: Server) -> Server:
    server.router.add("/echo", ["POST"], echo, needs_auth=False)
    server.router.add("/events", ["GET"], events, needs_auth=False)
    server.router.add("/fail", ["GET"], failing, needs_auth=False)
    return server


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> Server:
    return add_test_routes(await start_server(nursery, tmp_path, **TIMEOUTS))


class Client:
    """A raw connection: send bytes, read responses one by one."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffered = b""

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        with trio.fail_after(5):
            status, headers, body, self.buffered = await read_response(
                self.stream, self.buffered, head_only=head_only
            )
        return status, headers, body

    async def closed(self) -> bool:
        """Whether the server closes the connection (within 5 s) without sending more."""
        with trio.fail_after(5):
            rest = self.buffered + await self.stream.receive_some()
        return rest == b""


def get(path: str, headers: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n{headers}\r\n".encode()


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


# ------------------------------------------------------------ keep-alive, pipelining, HEAD, HTTP/1.0


async def test_two_requests_on_one_connection(server: Server) -> None:
    client = await Client.connect(server.port)
    for path in ("/health", "/healthz"):
        await client.send(get(path))
        status, headers, body = await client.response()
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert "close" not in headers.get("connection", "")


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(get("/health") + get("/nowhere") + post("/echo", b"ping") + get("/app.js"))
    answers = [await client.response() for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 404, 200, 200]
    assert answers[2][2] == b"ping"
    assert answers[3][1]["content-type"].startswith("text/javascript")


async def test_head_has_the_headers_of_get_and_no_body(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(get("/"))
    _, got_headers, body = await client.response()
    await client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + get("/health"))
    status, head_headers, _ = await client.response(head_only=True)
    assert status == 200 and head_headers == got_headers and int(head_headers["content-length"]) == len(body)
    assert (await client.response())[0] == 200, "the next response follows the head at once: no body"


async def test_http_1_0_and_connection_close_are_answered_then_closed(server: Server) -> None:
    for request in (get("/health", version="1.0"), get("/health", "Connection: close\r\n")):
        client = await Client.connect(server.port)
        await client.send(request)
        status, headers, body = await client.response()
        assert status == 200 and json.loads(body)["status"] == "ok" and headers["connection"] == "close"
        assert await client.closed()


async def test_an_idle_keep_alive_connection_is_closed_silently(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(get("/health"))
    assert (await client.response())[0] == 200
    with trio.fail_after(3):  # http_keepalive_timeout is 0.5 s
        assert await client.closed()


# ------------------------------------------------------------ routing errors


async def test_a_wrong_method_is_405_with_allow(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(post("/health", b"") + post("/paddlespeech/asr/streaming", b"") + get("/echo"))
    for allow in ("GET, HEAD", "GET, HEAD", "POST"):
        status, headers, body = await client.response()
        assert (status, headers["allow"]) == (405, allow)
        assert json.loads(body)["status"] == "error"
    await client.send(get("/nowhere?x=1"))
    status, _, body = await client.response()
    assert status == 404 and json.loads(body) == {"status": "error", "message": "no such path: /nowhere"}


async def test_garbage_is_400_with_the_reason_then_closed(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(b"\x00\x01 not http\r\n\r\n")
    status, headers, body = await client.response()
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["message"]  # h11's reason
    assert await client.closed()


async def test_a_huge_head_is_431_then_closed(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(get("/health", f"X-Big: {'a' * 20000}\r\n"))
    status, _, body = await client.response()
    assert status == 431 and "16384" in json.loads(body)["message"]
    assert await client.closed()


async def test_a_handler_failure_is_500_and_the_server_goes_on(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(get("/fail"))
    status, headers, _ = await client.response()
    assert status == 500 and headers["connection"] == "close"
    assert await client.closed()
    client = await Client.connect(server.port)
    await client.send(get("/health"))
    assert (await client.response())[0] == 200


# ------------------------------------------------------------ bodies


async def test_a_body_is_read_by_content_length_or_chunked(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(post("/echo", b"hello"))
    assert (await client.response())[::2] == (200, b"hello")
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    assert (await client.response())[::2] == (200, b"hello world")


async def test_expect_100_continue_gets_100_when_the_body_is_read(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    with trio.fail_after(5):
        interim = await client.stream.receive_some()
    assert interim.startswith(b"HTTP/1.1 100 ") and interim.endswith(b"\r\n\r\n")
    await client.send(b"pong")
    assert (await client.response())[::2] == (200, b"pong")


async def test_an_announced_body_over_the_limit_is_413_before_it_is_sent(server: Server) -> None:
    for expect in ("", "Expect: 100-continue\r\n"):
        client = await Client.connect(server.port)
        head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {ECHO_LIMIT + 1}\r\n{expect}\r\n"
        await client.send(head.encode())
        status, headers, body = await client.response()  # no 100 Continue first
        assert status == 413 and headers["connection"] == "close" and "limit of 100" in json.loads(body)["message"]


async def test_a_chunked_body_over_the_limit_is_413(server: Server) -> None:
    client = await Client.connect(server.port)
    chunks = b"".join(b"20\r\n" + b"x" * 32 + b"\r\n" for _ in range(4))  # 128 bytes, no end yet
    await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    status, headers, _ = await client.response()
    assert status == 413 and headers["connection"] == "close"


async def test_a_body_longer_than_announced_leaves_the_rest_as_the_next_request(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(post("/echo", b"hello")[:-5] + b"helloEXTRA BYTES\r\n\r\n")
    assert (await client.response())[::2] == (200, b"hello")
    assert (await client.response())[0] == 400  # "EXTRA BYTES" is no request line
    assert await client.closed()


async def test_a_body_shorter_than_announced_is_400(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
    await client.stream.send_eof()
    status, _, body = await client.response()
    assert status == 400 and "incomplete request body" in json.loads(body)["message"]
    assert await client.closed()


async def test_an_unread_body_is_drained_when_short_else_the_connection_closes(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(post("/health", b"x" * 1000) + get("/health"))
    assert (await client.response())[0] == 405
    assert (await client.response())[0] == 200, "the unread body was drained"
    await client.send(f"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: {10**6}\r\n\r\n".encode())
    status, headers, _ = await client.response()
    assert status == 405 and headers["connection"] == "close"
    assert await client.closed()


# ------------------------------------------------------------ slow clients


async def response_while_trickling(client: Client, data: bytes) -> tuple[tuple[int, dict[str, str], bytes], float]:
    """The response that comes while ``data`` is sent a byte every 0.2 s
    (never a pause over handshake_timeout, 0.5 s), and how long it took."""
    async with trio.open_nursery() as nursery:

        async def trickle() -> None:
            try:
                for byte in data:
                    await client.send(bytes([byte]))
                    await trio.sleep(0.2)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        nursery.start_soon(trickle)
        start = trio.current_time()
        response = await client.response()
        nursery.cancel_scope.cancel()
    return response, trio.current_time() - start


async def test_a_slow_loris_head_is_cut(server: Server) -> None:
    client = await Client.connect(server.port)
    (status, headers, _), seconds = await response_while_trickling(client, get("/health", "X-Slow: " + "x" * 40))
    assert status == 408 and headers["connection"] == "close" and seconds < 1.5


async def test_a_slow_loris_body_is_cut(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
    (status, headers, _), seconds = await response_while_trickling(client, b"x" * 50)
    assert status == 408 and headers["connection"] == "close"
    assert 1.4 < seconds < 4, "cut at body_timeout (1.5 s)"
    # a body that stops is cut after a pause of handshake_timeout
    client = await Client.connect(server.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc")
    start = trio.current_time()
    assert (await client.response())[0] == 408
    assert trio.current_time() - start < 1.4


# ------------------------------------------------------------ streamed responses, upgrades


async def test_a_streamed_response_is_chunked_and_keeps_the_connection(server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(get("/events") + get("/health"))
    status, headers, body = await client.response()
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b"data: 1\n\ndata: 2\n\n"
    assert (await client.response())[0] == 200
    client = await Client.connect(server.port)
    await client.send(get("/events", version="1.0"))  # no chunks for HTTP/1.0: the close ends the body
    status, headers, body = await client.response()
    assert "transfer-encoding" not in headers and body == b"data: 1\n\ndata: 2\n\n"


async def test_a_websocket_upgrade_after_a_keep_alive_request(nursery: trio.Nursery, server: Server) -> None:
    client = await Client.connect(server.port)
    await client.send(get("/health"))
    assert (await client.response())[0] == 200
    ws = await trio_websocket.wrap_client_stream(nursery, client.stream, "127.0.0.1", WS_PATH)
    await ws.send_message(start_msg())
    assert (await recv_json(ws))["signal"] == "server_ready"
    await ws.send_message(b"\x00\x00" * 1600)
    assert "result" in await recv_json(ws)
    await ws.send_message(end_msg())
    assert (await recv_json(ws))["signal"] == "end"
    await ws.aclose()


async def test_a_refused_upgrade_keeps_the_connection_for_the_next(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path, auth_token=("tok-0123456789",), **TIMEOUTS)
    upgrade = (
        f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    client = await Client.connect(server.port)
    await client.send(f"{upgrade}\r\n".encode() + get("/health"))
    status, headers, _ = await client.response()
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert (await client.response())[0] == 200
    await client.send(f"{upgrade}Authorization: Bearer tok-0123456789\r\n\r\n".encode())
    status, headers, _ = await client.response(head_only=True)
    assert status == 101 and headers["upgrade"].lower() == "websocket"
    await client.stream.aclose()


# ------------------------------------------------------------ metrics and logs


async def test_requests_are_counted_by_route_never_by_raw_path(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_asr.http")
    client = await Client.connect(server.port)
    await client.send(get("/health") + get("/nowhere/at/all?token=secret") + post("/health", b"") + get("/metrics"))
    for _ in range(3):
        await client.response()
    _, _, body = await client.response()
    samples = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "trio_asr_http_requests_total"
    }
    assert samples == {
        (("method", "GET"), ("route", "/health"), ("status", "200")): 1,
        (("method", "GET"), ("route", "other"), ("status", "404")): 1,
        (("method", "POST"), ("route", "/health"), ("status", "405")): 1,
    }
    lines = [r.getMessage() for r in caplog.records if r.name == "trio_asr.http"][:3]  # /metrics' own may follow
    assert [line.split()[:2] for line in lines] == [["request", "method=GET"]] * 2 + [["request", "method=POST"]]
    assert "secret" not in " ".join(lines) and "token=***" in lines[1]


# ------------------------------------------------------------ TLS


async def test_tls_keeps_the_connection_alive(nursery: trio.Nursery, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, cafile = tmp_path / "cert.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    server = await start_server(nursery, tmp_path, certfile=certfile, **TIMEOUTS)
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", server.port, ssl_context=client_context(cafile), https_compatible=True
    )
    client = Client(stream)
    await client.send(get("/health") + get("/nowhere"))
    assert (await client.response())[0] == 200
    assert (await client.response())[0] == 404
    await client.send(get("/healthz"))
    assert (await client.response())[0] == 200
    await stream.aclose()
