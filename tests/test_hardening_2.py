"""Hardening II (issue items 3, 5, 6, 7): each test failed before its fix.

3. client numbers too large for a float are bad input, never a 1011;
5. a frame far over ``--max-message-bytes`` gets the JSON error reply too;
6. ``trio_asr_close_codes_total`` counts the code the server sent;
7. ``HEAD`` is answered like ``GET``, without the body.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families
from serverutil import raw_websocket, recv_json, replies_until_close, start_msg, start_server, ws_url

from trio_asr.protocol.connection import ConnectionProtocol
from trio_asr.protocol.messages import ErrorReply
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.hotwords import HotwordError, hotwords_from_json
from trio_asr.serving.config import ConfigError
from trio_asr.serving.config_file import load_config
from trio_asr.serving.server import WS_PATH, Server
from trio_asr.serving.websocket import ServerConnection

HUGE = "1" + "0" * 400  # a JSON integer beyond any float


# ------------------------------------------------------------ raw clients, the server's counts


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class ServerFrames:
    """Reads the frames the server sends on a raw stream: (opcode, payload)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.data = b""

    async def next(self) -> tuple[int, bytes]:
        with trio.fail_after(10):
            while True:
                data = self.data
                if len(data) >= 2:
                    size, at = data[1] & 0x7F, 2
                    if size == 126:
                        size, at = int.from_bytes(data[2:4], "big"), 4
                    elif size == 127:
                        size, at = int.from_bytes(data[2:10], "big"), 10
                    if len(data) >= at + size:
                        self.data = data[at + size :]
                        return data[0] & 0x0F, data[at : at + size]
                chunk = await self.stream.receive_some()
                assert chunk, "the server closed TCP without a close frame"
                self.data += chunk

    async def until_close(self) -> list[tuple[int, bytes]]:
        """Every frame up to and with the close frame."""
        frames = [await self.next()]
        while frames[-1][0] != 0x8:
            frames.append(await self.next())
        return frames


async def server_frames(stream: trio.SocketStream) -> list[tuple[int, bytes]]:
    return await ServerFrames(stream).until_close()


def close_codes(server: Server) -> dict[str, float]:
    """``trio_asr_close_codes_total`` by code."""
    body, _ = server.metrics.exposition()
    return {
        s.labels["code"]: s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "trio_asr_close_codes_total"
    }


async def all_closed(server: Server) -> None:
    with trio.fail_after(10):
        while server.connections:
            await trio.sleep(0.01)


def frame_head(opcode: int, size: int) -> bytes:
    """The head of one final, masked client frame of ``size`` bytes (mask of zeros)."""
    if size < 126:
        return bytes([0x80 | opcode, 0x80 | size]) + bytes(4)
    if size < 1 << 16:
        return bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big") + bytes(4)
    return bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big") + bytes(4)


# ------------------------------------------------------------ 3: huge numbers


def error_of(text: str) -> ErrorReply:
    [event] = ConnectionProtocol().receive_text(text)
    assert isinstance(event, ErrorReply), event
    return event


@pytest.mark.parametrize("score", [HUGE, "-" + HUGE])
def test_a_huge_hotword_score_is_1007_naming_the_entry(score: str) -> None:
    error = error_of('{"name": "a.wav", "signal": "start", "hotwords": ["北京", ["张伟", %s]]}' % score)
    assert error.code == 1007
    assert error.message.startswith('field "hotwords": the score of \'张伟\' must be above 0 and at most 10')
    assert len(error.message) < 200


@pytest.mark.parametrize(
    "field, code, message",
    [
        ("nbest", 1008, '"nbest" must be between 1 and 10'),
        ("sampleRate", 1003, '"sampleRate" 1000'),
        ("channels", 1003, '"channels" must be between 1 and 8'),
        ("bitsPerSample", 1003, '"bitsPerSample" 1000'),
    ],
)
def test_huge_integer_fields_get_their_code_and_a_short_message(field: str, code: int, message: str) -> None:
    error = error_of('{"name": "a.wav", "signal": "start", "%s": %s}' % (field, HUGE))
    assert error.code == code and error.message.startswith(message)
    assert len(error.message) < 200, "the error reply echoes at most an excerpt of the number"


@pytest.mark.parametrize("key", ["silenceWithoutText", "silenceAfterText", "maxSegment"])
@pytest.mark.parametrize("value", [HUGE, "-" + HUGE, "1" + "0" * 299])
def test_huge_endpoint_values_are_1008(key: str, value: str) -> None:
    error = error_of('{"name": "a.wav", "signal": "start", "endpoint": {"%s": %s}}' % (key, value))
    assert error.code == 1008 and error.message.startswith(f'"endpoint" {key} ')
    assert len(error.message) < 200


def test_the_parts_refuse_huge_integers_as_values_out_of_bounds() -> None:
    with pytest.raises(HotwordError, match="must be above 0"):
        hotwords_from_json([["张伟", 10**400]])
    with pytest.raises(HotwordError, match="too long to show"):
        hotwords_from_json([["张伟", 10**5000]])
    with pytest.raises(ValueError, match="max_segment must be between 1 and 120"):
        EndpointRules(max_segment=10**400)


@pytest.mark.parametrize("key", ["idle_timeout", "nbest_max", "port", "hotwords_score", "endpoint_max_segment"])
def test_a_huge_integer_in_the_config_file_is_a_config_error(tmp_path: Path, key: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(f"{key} = {HUGE}\n")
    with pytest.raises(ConfigError, match=f"{key} is out of range"):
        load_config(path)
    path.write_text(f"{key} = {'1' * 5000}\n")  # beyond what Python parses into an int
    with pytest.raises(ConfigError, match="4300 digits"):
        load_config(path)
    with pytest.raises(ConfigError, match=f"{key} is out of range"):
        load_config(None, {key: 10**400})  # the same value as a flag


async def test_a_huge_hotword_score_is_refused_by_a_server_with_1007(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg().replace('"nbest": 1', f'"hotwords": [["张伟", {HUGE}]]'))
        replies, code = await replies_until_close(ws)
    assert code == 1007
    assert replies == [{"status": "error", "signal": "start", "message": replies[0]["message"]}]
    assert "the score of '张伟'" in replies[0]["message"]
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:  # the server goes on
        await ws.send_message(start_msg())
        assert (await recv_json(ws))["signal"] == "server_ready"


# ------------------------------------------------------------ 5: frames far over the limit


def error_then_1009(frames: list[tuple[int, bytes]], limit: int) -> None:
    """The frames the server sent end with the JSON error reply and close 1009."""
    *_, (text_opcode, text), (close_opcode, close) = frames
    assert text_opcode == 0x1 and json.loads(text) == {
        "status": "error", "signal": None, "message": f"frame larger than the limit of {limit} bytes"
    }
    assert close_opcode == 0x8 and int.from_bytes(close[:2], "big") == 1009


@pytest.mark.parametrize("opcode", [0x2, 0x1], ids=["binary", "text"])
@pytest.mark.parametrize("times", [3, 1.5])
async def test_a_frame_over_the_limit_gets_the_json_error_then_1009(
    nursery: trio.Nursery, tmp_path: Path, opcode: int, times: float
) -> None:
    limit = 4000
    server = await start_server(nursery, tmp_path, max_message_bytes=limit, close_timeout=1.0)
    stream = await raw_websocket(server.port)
    frames = ServerFrames(stream)
    await stream.send_all(client_frame(0x1, start_msg().encode()))
    assert json.loads((await frames.next())[1])["signal"] == "server_ready"
    await stream.send_all(client_frame(0x2, bytes(3200)))  # within the limit: its reply comes first
    assert "result" in json.loads((await frames.next())[1])
    size = int(times * limit)
    await stream.send_all(frame_head(opcode, size) + b"a" * size)  # a zero mask: sent as is
    error_then_1009(await frames.until_close(), limit)
    await stream.send_all(client_frame(0x8, (1009).to_bytes(2, "big")))
    await all_closed(server)
    await stream.aclose()
    assert close_codes(server) == {"1009": 1}
    assert [p.name for p in (tmp_path / "audio").iterdir()] == ["t.wav"], "the stream was cut, its audio saved"


async def test_a_huge_frame_is_refused_before_it_is_complete(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame announcing 1 GiB gets its error once the limit is passed, not
    after the server has buffered it: it keeps at most the limit."""
    buffered: list[int] = []
    handle = ServerConnection._handle_message_event

    async def spy(self: ServerConnection, event: Any) -> None:
        await handle(self, event)
        buffered.append(sum(len(part) for part in self._message_parts))

    monkeypatch.setattr(ServerConnection, "_handle_message_event", spy)
    limit = 4000
    server = await start_server(nursery, tmp_path, max_message_bytes=limit, close_timeout=0.5)
    stream = await raw_websocket(server.port)
    await stream.send_all(frame_head(0x2, 1 << 30) + bytes(3 * limit))
    error_then_1009(await server_frames(stream), limit)
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(bytes(50 * limit))  # more of it, and never the rest
    await all_closed(server)  # the close handshake cannot finish mid-frame: the server closes TCP
    await stream.aclose()
    assert len(buffered) > 3 and max(buffered) <= limit


def test_the_protocol_core_refuses_a_frame_it_was_not_given() -> None:
    protocol = ConnectionProtocol()
    assert protocol.receive_text(start_msg())[0].name == "t.wav"
    events = protocol.receive_oversized()
    assert [type(e).__name__ for e in events] == ["EndStream", "ErrorReply"]
    assert events[0].how == "error" and events[1].code == 1009
    assert events[1].message == "frame larger than the limit of 1048576 bytes"
    assert protocol.receive_oversized() == []  # closed: nothing more


async def test_a_trio_websocket_client_gets_the_error_for_a_frame_three_times_the_limit(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery, tmp_path, max_message_bytes=4000)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg())
        await recv_json(ws)
        await ws.send_message(b"\x00" * 12000)
        replies, code = await replies_until_close(ws)
    assert replies == [{"status": "error", "signal": None, "message": "frame larger than the limit of 4000 bytes"}]
    assert code == 1009
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:  # the server goes on
        await ws.send_message(start_msg("next.wav"))
        assert (await recv_json(ws))["signal"] == "server_ready"


# ------------------------------------------------------------ 6: close codes counted as sent


@pytest.mark.parametrize("answer", [b"\x03\xe8", b"", None], ids=["answers-1000", "answers-no-code", "answers-not"])
async def test_an_idle_connection_closed_with_1008_is_counted_as_1008(
    nursery: trio.Nursery, tmp_path: Path, answer: bytes | None
) -> None:
    """Whatever the client answers to the server's close frame (1000, a close
    frame without a code, nothing at all), the server sent 1008 and counts it."""
    server = await start_server(
        nursery, tmp_path, connection_idle_timeout=0.3, ping_interval=0, close_timeout=0.3
    )
    stream = await raw_websocket(server.port)
    frames = await server_frames(stream)
    error = json.loads(frames[0][1])
    assert error["status"] == "error" and "no stream started" in error["message"]
    assert frames[-1][0] == 0x8 and int.from_bytes(frames[-1][1][:2], "big") == 1008
    if answer is not None:
        await stream.send_all(client_frame(0x8, answer))
    await all_closed(server)
    await stream.aclose()
    assert close_codes(server) == {"1008": 1}


async def test_every_close_path_counts_its_code(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path, max_message_bytes=4000, ping_interval=0, grace_period=0.2)
    url = ws_url(server.port)
    async with trio_websocket.open_websocket_url(url) as ws:  # bad input: 1007
        await ws.send_message("{not json")
        assert (await replies_until_close(ws))[1] == 1007
    async with trio_websocket.open_websocket_url(url) as ws:  # too big: 1009
        await ws.send_message(start_msg())
        await recv_json(ws)
        await ws.send_message(b"\x00" * 4001)
        assert (await replies_until_close(ws))[1] == 1009
    async with trio_websocket.open_websocket_url(url) as ws:  # the client closes: 1000
        await ws.send_message(start_msg("closing.wav"))
        await recv_json(ws)
    stream = await raw_websocket(server.port)  # the client closes with its own code
    await stream.send_all(client_frame(0x8, (4000).to_bytes(2, "big") + b"bye"))
    assert int.from_bytes((await server_frames(stream))[-1][1][:2], "big") == 4000
    await stream.aclose()
    await all_closed(server)
    assert close_codes(server) == {"1007": 1, "1009": 1, "1000": 1, "4000": 1}

    idle = await raw_websocket(server.port)  # shutdown: 1001, counted also when the client does not answer
    streaming = await raw_websocket(server.port)
    await streaming.send_all(client_frame(0x1, start_msg("open.wav").encode()))
    readers = {idle: ServerFrames(idle), streaming: ServerFrames(streaming)}
    assert json.loads((await readers[streaming].next())[1])["signal"] == "server_ready"
    server.shutdown()
    for stream in (idle, streaming):
        frames = await readers[stream].until_close()
        assert int.from_bytes(frames[-1][1][:2], "big") == 1001
        await stream.send_all(client_frame(0x8, b"\x03\xe8"))  # answered with 1000
    await all_closed(server)
    assert close_codes(server) == {"1007": 1, "1009": 1, "1000": 1, "4000": 1, "1001": 2}


# ------------------------------------------------------------ 7: HEAD


async def raw_http(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a raw socket, read until the server closes:
    (status, headers, everything after the head)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no response to {method} {path}: {data!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers, body


@pytest.mark.parametrize(
    "path, status",
    [("/health", 200), ("/healthz", 200), ("/", 200), ("/metrics", 200), ("/nowhere", 404), (WS_PATH, 426)],
)
async def test_head_is_answered_like_get_without_the_body(
    nursery: trio.Nursery, tmp_path: Path, path: str, status: int
) -> None:
    server = await start_server(nursery, tmp_path)
    for method in ("GET", "HEAD"):  # /metrics counts requests: their series exist from now on
        await raw_http(server.port, method, path)
    got_status, got_headers, body = await raw_http(server.port, "GET", path)
    head_status, head_headers, nothing = await raw_http(server.port, "HEAD", path)
    assert (got_status, head_status) == (status, status)
    assert nothing == b""
    assert head_headers == got_headers
    assert int(head_headers["content-length"]) == len(body) > 0


async def test_head_with_an_http_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The standard library's client, which reads no body after HEAD and so
    would hang or misread the next response if one came."""
    server = await start_server(nursery, tmp_path)

    def ask(method: str) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.request(method, "/health")
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    get_status, get_headers, body = await trio.to_thread.run_sync(ask, "GET")
    head_status, head_headers, nothing = await trio.to_thread.run_sync(ask, "HEAD")
    assert get_status == head_status == 200 and json.loads(body)["status"] == "ok"
    assert nothing == b"" and head_headers == get_headers
    assert int(head_headers["content-length"]) == len(body)

