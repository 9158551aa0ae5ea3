"""The server under attack and misuse (issue: hardening), over real sockets.

Each test reproduces one defect found by attacking the server: it failed
before the fix.  The recognizer is the counting test double (see
:mod:`serverutil`), whose text summarises the audio it got.
"""

from __future__ import annotations

import contextlib

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
from wsproto.events import Message
from serverutil import (
    CountingRecognizer,
    end_msg,
    http_get,
    make_config,
    raw_websocket,
    recv_json,
    replies_until_close,
    start_msg,
    start_server,
    summary,
    ws_url,
)

from trio_asr.audio import read_wav
from trio_asr.serving.server import WS_PATH, Server, serve

RNG = np.random.default_rng(99)


def pcm16(n: int) -> np.ndarray:
    return RNG.integers(-20000, 20000, size=n, dtype=np.int16)


# ------------------------------------------------------------ drain


async def test_drain_after_earlier_connections_lets_every_open_stream_finish(tmp_path: Path) -> None:
    """The drain used to be skipped once any connection had closed before."""
    recognizer = CountingRecognizer()
    recognizer.decode_delay = 0.002  # replies lag: frames are still unread at shutdown
    audio = [pcm16(20000 + i) for i in range(10)]
    finals: dict[int, dict] = {}
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, make_config(tmp_path, grace_period=20.0), recognizer)
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as first:  # a whole session first
            await first.send_message(start_msg("first.wav"))
            await recv_json(first)
            await first.send_message(end_msg())
            await recv_json(first)
        with trio.fail_after(5):
            while server.connections:
                await trio.sleep(0.01)
        opened = trio.Event()
        ready = 0

        async def client(i: int) -> None:
            nonlocal ready
            async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
                await ws.send_message(start_msg(f"s{i}.wav"))
                assert (await recv_json(ws))["signal"] == "server_ready"
                for k in range(0, len(audio[i]), 500):
                    await ws.send_message(audio[i][k : k + 500].tobytes())
                ready += 1
                if ready == 10:
                    opened.set()
                await opened.wait()  # everyone has sent everything; now the server drains
                await ws.send_message(end_msg())
                replies, code = await replies_until_close(ws)
                assert code == 1001 and replies[-1]["status"] == "error"  # idle once finished
                finals[i] = replies[-2]

        async with trio.open_nursery() as clients:
            for i in range(10):
                clients.start_soon(client, i)
            await opened.wait()
            server.shutdown()
            status, body = await http_get(server.port, "/health")
            assert status == 503 and json.loads(body)["status"] == "shutting down"
    assert sorted(finals) == list(range(10))
    for i, final in finals.items():
        assert final["signal"] == "end"
        assert final["result"] == summary(audio[i].astype(np.float32) / 32768) + " final"
        saved, _ = read_wav(tmp_path / "audio" / f"s{i}.wav")
        np.testing.assert_array_equal((saved[:, 0] * 32768).astype(np.int16), audio[i])


async def test_second_shutdown_skips_the_grace_period_and_saves(tmp_path: Path) -> None:
    audio = pcm16(3000)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, make_config(tmp_path, grace_period=60.0), CountingRecognizer())
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
            await ws.send_message(start_msg("slow.wav"))
            await recv_json(ws)
            await ws.send_message(audio.tobytes())
            await recv_json(ws)
            server.shutdown()
            await trio.sleep(0.1)
            assert server.connections == 1, "the open stream is given its grace period"
            with trio.fail_after(5):  # far less than the 60 s grace period
                server.shutdown(immediately=True)
                replies, code = await replies_until_close(ws)
    assert code == 1001 and replies[-1]["status"] == "error"
    saved, _ = read_wav(tmp_path / "audio" / "slow.wav")
    assert saved.shape == (3000, 1)


# ------------------------------------------------------------ what clients send


async def test_deeply_nested_json_gets_1007(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message("[" * 987)
        replies, code = await replies_until_close(ws)
    assert code == 1007 and replies[-1]["status"] == "error"


async def test_lone_surrogates_are_echoed_and_the_file_name_stays_sane(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message('{"signal": "start", "name": "a\\ud800b", "nbest": 1}')
        assert (await recv_json(ws))["signal"] == "server_ready"
        await ws.send_message(pcm16(10).tobytes())
        await recv_json(ws)
        await ws.send_message(end_msg())
        final = await recv_json(ws)
        assert final["name"] == "a\ud800b"
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message('{"signal": "\\udfff"}')
        replies, code = await replies_until_close(ws)
        assert code == 1008 and replies[-1]["signal"] == "\udfff"
    [saved] = (tmp_path / "audio").iterdir()
    saved.name.encode("utf-8")
    assert read_wav(saved)[0].shape == (10, 1)


async def test_invalid_second_start_finishes_the_open_stream_first(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path)
    audio = pcm16(700)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("one.wav"))
        await ws.send_message(audio.tobytes())
        await ws.send_message(start_msg("two.wav", sampleRate=1))
        replies, code = await replies_until_close(ws)
    assert [r.get("signal") for r in replies] == ["server_ready", None, "end", "start"]
    assert replies[2]["name"] == "one.wav"
    assert replies[2]["result"] == summary(audio.astype(np.float32) / 32768) + " final"
    assert replies[3]["status"] == "error" and code == 1003
    assert read_wav(tmp_path / "audio" / "one.wav")[0].shape == (700, 1)


async def test_frame_errors_end_the_connection_without_hurting_the_server(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Invalid UTF-8 and framing violations end only that connection, and the
    server goes on.  (It does not check the close frame RFC 6455 asks for:
    trio-websocket closes TCP without one; see docs/protocol.md, "Known limit".)"""
    server = await start_server(nursery, tmp_path)
    for frame in (b"\x81\x82\x00\x00\x00\x00\xff\xfe", b"\x81\x02{}", b"\xa1\x80\x00\x00\x00\x00"):
        stream = await raw_websocket(server.port)
        await stream.send_all(frame)
        with trio.fail_after(5):
            while await stream.receive_some():
                pass
        await stream.aclose()
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg())
        assert (await recv_json(ws))["signal"] == "server_ready"


async def test_a_rate_the_recognizer_refuses_is_1003_and_queued_frames_are_dropped(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recognizer = CountingRecognizer()
    recognizer.refused_rates = {8000}
    server = await start_server(nursery, tmp_path, recognizer)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        frames = [start_msg(sampleRate=8000)] + [pcm16(100).tobytes()] * 5
        await ws._stream.send_all(b"".join(ws._wsproto.send(Message(data=f)) for f in frames))  # one TCP write
        replies, code = await replies_until_close(ws)
    assert code == 1003 and len(replies) == 1 and "8000 Hz" in replies[0]["message"]
    assert "internal error" not in caplog.text


# ------------------------------------------------------------ saving fails


async def test_a_failing_disk_gets_an_error_reply_and_health_says_so(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_asr import audio as audio_module

    server = await start_server(nursery, tmp_path)
    real_write = audio_module.WavWriter.write

    def full_disk(self: object, pcm: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async with trio_websocket.open_websocket_url(ws_url(server.port)) as bystander:
        await bystander.send_message(start_msg("bystander.wav"))
        await recv_json(bystander)
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as victim:
            await victim.send_message(start_msg("victim.wav"))
            await recv_json(victim)
            monkeypatch.setattr(audio_module.WavWriter, "write", full_disk)
            await victim.send_message(pcm16(20000).tobytes())  # > 32 KiB: a write is due
            replies, code = await replies_until_close(victim)
            assert code == 1011
            assert replies[-1]["status"] == "error" and "No space left" in replies[-1]["message"]
        status, body = await http_get(server.port, "/health")
        assert status == 503 and json.loads(body)["status"] == "cannot save audio"
        monkeypatch.setattr(audio_module.WavWriter, "write", real_write)
        await bystander.send_message(pcm16(20000).tobytes())
        assert "result" in await recv_json(bystander), "other connections go on"
        await bystander.send_message(end_msg())
        assert (await recv_json(bystander))["signal"] == "end"
    assert (await http_get(server.port, "/health"))[0] == 200, "a save that works clears the failure"
    assert read_wav(tmp_path / "audio" / "bystander.wav")[0].shape == (20000, 1)


# ------------------------------------------------------------ idle connections


async def test_paddlespeech_web_demo_can_record_again_after_a_pause(nursery: trio.Nursery, tmp_path: Path) -> None:
    """PaddleSpeech's web demo never sends "end": Stop just stops sending, and
    the next Start sends a new "start" on the same socket, maybe minutes later.
    The silent stream ends by itself (final reply, audio saved) and the
    connection waits, much longer than the stream's idle timeout."""
    server = await start_server(nursery, tmp_path, idle_timeout=0.2, connection_idle_timeout=30.0)
    first, second = pcm16(4800), pcm16(3200)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("test.wav", nbest=5))
        assert (await recv_json(ws))["signal"] == "server_ready"
        await ws.send_message(first.tobytes())
        await recv_json(ws)
        final = await recv_json(ws)  # Stop: silence
        assert final["signal"] == "end" and final["result"] == summary(first.astype(np.float32) / 32768) + " final"
        await trio.sleep(0.6)  # three stream idle timeouts between recordings
        await ws.send_message(start_msg("test.wav", nbest=5))
        assert (await recv_json(ws))["signal"] == "server_ready"
        await ws.send_message(second.tobytes())
        assert "result" in await recv_json(ws)
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    audio = tmp_path / "audio"
    assert [read_wav(audio / name)[0].shape[0] for name in ("test.wav", "test-1.wav")] == [4800, 3200]


async def test_a_connection_that_never_starts_a_stream_is_closed(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path, connection_idle_timeout=0.3, ping_interval=0)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        replies, code = await replies_until_close(ws)
    assert code == 1008 and "no stream started" in replies[-1]["message"]


def close_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (code, reason) of each close frame in a server's unmasked frames."""
    found, pos = [], 0
    while pos + 2 <= len(data):
        opcode, size, pos = data[pos] & 0x0F, data[pos + 1] & 0x7F, pos + 2
        if size == 126:
            size, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif size == 127:
            size, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        payload, pos = data[pos : pos + size], pos + size
        if opcode == 0x8:
            found.append((int.from_bytes(payload[:2], "big"), payload[2:]))
    return found


async def test_a_dead_peer_is_found_by_pings(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A peer that answers nothing (not even pings) is dropped, long before
    the connection idle timeout."""
    server = await start_server(nursery, tmp_path, ping_interval=0.2, connection_idle_timeout=60.0, close_timeout=0.5)
    stream = await raw_websocket(server.port)
    assert server.connections == 1
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.05)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
    await stream.aclose()
    assert close_frames(received) == [(1011, b"no pong")], "not a normal close: the client did not end it"
    # a live client answers the pings (trio-websocket does) and stays
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await trio.sleep(1.0)
        await ws.send_message(start_msg())
        assert (await recv_json(ws))["signal"] == "server_ready"


# ------------------------------------------------------------ no audio lost, however it ends


@pytest.fixture
def accepted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """PCM bytes the protocol core accepted as audio, per stream name."""
    from trio_asr.protocol.connection import ConnectionProtocol

    counts: dict[str, int] = {}
    receive = ConnectionProtocol.receive_bytes

    def counting(self: ConnectionProtocol, data: bytes) -> list:
        name = self.stream.name if self.stream is not None else None
        events = receive(self, data)
        for event in events:
            if hasattr(event, "pcm") and name is not None:
                counts[name] = counts.get(name, 0) + len(event.pcm)
        return events

    monkeypatch.setattr(ConnectionProtocol, "receive_bytes", counting)
    return counts


def saved_bytes(path: Path) -> int:
    saved, _ = read_wav(path)
    return saved.size * 2


async def send_burst(ws: trio_websocket.WebSocketConnection, name: str, frames: int, frame_bytes: int = 3200) -> None:
    messages = [start_msg(name)] + [pcm16(frame_bytes // 2).tobytes() for _ in range(frames)]
    await ws._stream.send_all(b"".join(ws._wsproto.send(Message(data=m)) for m in messages))


async def test_a_client_that_stops_reading_loses_no_audio(
    nursery: trio.Nursery, tmp_path: Path, accepted: dict[str, int]
) -> None:
    """The server gives up on a client that reads no replies; what it received is saved."""
    import socket

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    server = await start_server(nursery, tmp_path, send_timeout=0.5)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small, so the server's sends block soon
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    await stream.socket.connect(("127.0.0.1", server.port))
    client = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(client.send(Request(host="x", target=WS_PATH)))
    while not any(isinstance(e, AcceptConnection) for e in client.events()):
        client.receive_data(await stream.receive_some())
    messages = [start_msg("deaf.wav", nbest=10)] + [pcm16(1).tobytes()] * 20000  # a long reply per 2 bytes
    with trio.move_on_after(10):
        await stream.send_all(b"".join(client.send(Message(data=m)) for m in messages))
    with trio.fail_after(15):
        while server.connections:
            await trio.sleep(0.05)
    await stream.aclose()
    assert 0 < accepted["deaf.wav"] <= 40000
    assert saved_bytes(tmp_path / "audio" / "deaf.wav") == accepted["deaf.wav"]


async def test_the_frame_that_crosses_the_length_limit_is_saved_too(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Past --max-stream-seconds the stream ends with an error, and every
    byte received, the frame that crossed the limit included, is saved."""
    server = await start_server(nursery, tmp_path, max_stream_seconds=0.5)
    frames = [pcm16(3200).tobytes() for _ in range(4)]  # 0.2 s each: the third crosses 0.5 s
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("long.wav"))
        await recv_json(ws)
        for frame in frames:
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                await ws.send_message(frame)
        replies, code = await replies_until_close(ws)
    assert code == 1008 and replies[-1]["status"] == "error"
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.05)
    assert saved_bytes(tmp_path / "audio" / "long.wav") == 3 * 6400


async def test_a_stop_with_frames_queued_saves_them_all(tmp_path: Path, accepted: dict[str, int]) -> None:
    recognizer = CountingRecognizer()
    recognizer.decode_delay = 0.3  # frames queue up behind a slow model
    config = make_config(tmp_path, grace_period=0.0, drain_timeout=1.0, close_timeout=1.0)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(serve, config, recognizer)
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
            await send_burst(ws, "queued.wav", 40)
            await trio.sleep(0.5)
            with trio.fail_after(4):  # grace 0 + drain 1 + close 1, with room
                server.shutdown()
                replies, code = await replies_until_close(ws)
    assert code == 1001
    assert accepted["queued.wav"] > 3200
    assert saved_bytes(tmp_path / "audio" / "queued.wav") == accepted["queued.wav"]


async def test_a_model_failure_with_frames_queued_saves_them_all(
    nursery: trio.Nursery, tmp_path: Path, accepted: dict[str, int]
) -> None:
    recognizer = CountingRecognizer()
    recognizer.decode_delay = 0.05
    server = await start_server(nursery, tmp_path, recognizer)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        recognizer.fail_on_decode = True
        await send_burst(ws, "failed.wav", 40)
        replies, code = await replies_until_close(ws)
    assert code == 1011 and replies[-1]["status"] == "error"
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.02)
    assert accepted["failed.wav"] > 3200
    assert saved_bytes(tmp_path / "audio" / "failed.wav") == accepted["failed.wav"]


async def test_a_client_gone_mid_burst_is_not_decoded_further(
    nursery: trio.Nursery, tmp_path: Path, accepted: dict[str, int]
) -> None:
    recognizer = CountingRecognizer()
    recognizer.decode_delay = 0.2
    server = await start_server(nursery, tmp_path, recognizer)
    ws = await trio_websocket.connect_websocket_url(nursery, ws_url(server.port))
    await send_burst(ws, "gone.wav", 40)
    await trio.sleep(0.3)
    await ws._stream.aclose()  # vanish; 40 frames at 0.2 s each would take 8 s to decode
    with trio.fail_after(2):
        while server.connections:
            await trio.sleep(0.02)
    assert saved_bytes(tmp_path / "audio" / "gone.wav") == accepted["gone.wav"] > 3200
