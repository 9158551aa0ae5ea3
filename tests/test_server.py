"""Server tests: in-process server on a free port, trio-websocket clients.

The recognizer here is a test double (:class:`serverutil.CountingRecognizer`)
whose "text" summarises the audio it received; it tests the plumbing
(ordering, errors, saving, limits, shutdown), not recognition.  End-to-end
tests with the real recognizer live in ``test_client_interop.py``.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
from serverutil import (
    ControlledModel,
    make_config,
    start_server,
    CountingRecognizer,
    end_msg,
    expect_close,
    http_get,
    recv_json,
    replies_until_close,
    start_msg,
    summary,
    ws_url,
)

from trio_asr.audio import read_wav
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.resample import resample
from trio_asr.serving.server import Server, serve

RNG = np.random.default_rng(1234)


@pytest.fixture(
    params=[(False, True), (True, False), (False, False), (True, True)],
    ids=["accept-in-thread", "search-in-thread", "both-in-threads", "both-on-loop"],
)
def recognizer(request: pytest.FixtureRequest) -> CountingRecognizer:
    """The test double, with each placement of feature and search work."""
    recognizer = CountingRecognizer()
    recognizer.cheap_accept, recognizer.cheap_search = request.param
    return recognizer


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path, recognizer: CountingRecognizer) -> Server:
    return await start_server(nursery, tmp_path, recognizer)


def pcm16(n: int) -> np.ndarray:
    return RNG.integers(-20000, 20000, size=n, dtype=np.int16)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def wavs(server: Server) -> list[Path]:
    return sorted(server.config.audio_dir.glob("*.wav"))


# ------------------------------------------------------------ happy path


async def test_lock_step_session_replies_byte_for_byte(server: Server) -> None:
    audio = pcm16(16000)
    data = audio.tobytes()
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("hello.wav"))
        ready = await ws.get_message()
        assert json.loads(ready) == {"status": "ok", "signal": "server_ready"}
        sent = 0
        for chunk in chunks(data, 2720):
            await ws.send_message(chunk)
            sent += len(chunk) // 2
            reply = await recv_json(ws)
            assert reply == {"result": summary(audio[:sent].astype(np.float32) / 32768)}
        await ws.send_message(end_msg("hello.wav"))
        final = await recv_json(ws)
    expected_text = summary(audio.astype(np.float32) / 32768) + " final"
    assert final == {
        "name": "hello.wav",
        "signal": "end",
        "result": expected_text,
        "status": "ok",
        "times": [{"w": "n", "bg": 0.0, "ed": 1.0}],
    }
    [path] = wavs(server)
    assert path.name == "hello.wav"
    saved, rate = read_wav(path)
    assert rate == 16000 and saved.shape == (16000, 1)
    np.testing.assert_array_equal((saved[:, 0] * 32768).astype(np.int16), audio)


async def test_nbest_replies(server: Server) -> None:
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg(nbest=3))
        await recv_json(ws)
        await ws.send_message(pcm16(100).tobytes())
        partial = await recv_json(ws)
        assert set(partial) == {"result", "nbest"}
        assert len(partial["nbest"]) == 3
        assert all(set(h) == {"text", "score"} and isinstance(h["score"], float) for h in partial["nbest"])
        assert partial["nbest"][0]["text"] == partial["result"]
        await ws.send_message(end_msg())
        final = await recv_json(ws)
        assert len(final["nbest"]) == 3 and final["nbest"][0]["text"] == final["result"]


async def test_pipelined_client_gets_one_reply_per_frame_in_order(server: Server, recognizer) -> None:
    recognizer.decode_delay = 0.001
    audio = pcm16(30000)
    frames = chunks(audio.tobytes(), 999) + [b""] * 3  # odd sizes and empty frames
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg())
        for frame in frames:
            await ws.send_message(frame)
        await ws.send_message(end_msg())
        replies = [await recv_json(ws) for _ in range(len(frames) + 2)]
    assert replies[0]["signal"] == "server_ready"
    total = 0
    for frame, reply in zip(frames, replies[1:-1]):
        total += len(frame)
        n = total // 2
        assert reply == {"result": summary(audio[:n].astype(np.float32) / 32768)}
    assert replies[-1]["signal"] == "end"
    assert replies[-1]["result"] == summary(audio.astype(np.float32) / 32768) + " final"


async def test_second_start_finishes_first_stream(server: Server) -> None:
    a, b = pcm16(500), pcm16(700)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("one.wav"))
        await ws.send_message(a.tobytes())
        await ws.send_message(start_msg("two.wav"))
        await ws.send_message(b.tobytes())
        await ws.send_message(end_msg("two.wav"))
        replies = [await recv_json(ws) for _ in range(6)]
    assert [r.get("signal") for r in replies] == ["server_ready", None, "end", "server_ready", None, "end"]
    assert replies[2]["name"] == "one.wav" and replies[2]["result"].startswith(summary(a / np.float32(32768)))
    assert replies[5]["name"] == "two.wav" and replies[5]["result"].startswith(summary(b / np.float32(32768)))
    assert [p.name for p in wavs(server)] == ["one.wav", "two.wav"]


async def test_stereo_48k_is_saved_as_sent_and_decoded_as_16k_mono(server: Server, recognizer) -> None:
    stereo = RNG.integers(-10000, 10000, size=(4800, 2), dtype=np.int16)
    data = stereo.tobytes()
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("st.wav", sampleRate=48000, channels=2))
        await recv_json(ws)
        for chunk in chunks(data, 1001):  # splits inside sample groups
            await ws.send_message(chunk)
            await recv_json(ws)
        await ws.send_message(end_msg())
        await recv_json(ws)
    saved, rate = read_wav(wavs(server)[0])
    assert rate == 48000 and saved.shape == (4800, 2)
    np.testing.assert_array_equal((saved * 32768).astype(np.int16), stereo)
    decoded = np.concatenate(recognizer.streams[0].samples)
    mono = stereo.astype(np.float32).mean(axis=1) / 32768
    np.testing.assert_allclose(decoded, resample(mono, 48000, 16000), atol=1e-5)


# ------------------------------------------------------------ HTTP routing


async def test_health(server: Server) -> None:
    for path in ("/health", "/healthz"):
        status, body = await http_get(server.port, path)
        assert status == 200
        assert json.loads(body)["status"] == "ok"


async def test_wrong_path_is_404(server: Server) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(ws_url(server.port, "/paddlespeech/asr/other")):
            pass
    assert info.value.status_code == 404
    status, _ = await http_get(server.port, "/nothing")
    assert status == 404


async def test_plain_get_of_ws_path_is_426(server: Server) -> None:
    status, _ = await http_get(server.port, "/paddlespeech/asr/streaming")
    assert status == 426


async def test_garbage_http_is_400(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(b"\x00\x01 not http\r\n\r\n")
        with trio.fail_after(5):
            data = await stream.receive_some()
    assert data.startswith(b"HTTP/1.1 400")


async def test_max_connections_is_503(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path, max_connections=2)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as one:
        async with trio_websocket.open_websocket_url(ws_url(server.port)):
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with trio_websocket.open_websocket_url(ws_url(server.port)):
                    pass
            assert info.value.status_code == 503
            status, body = await http_get(server.port, "/health")
            assert status == 503 and json.loads(body)["status"] == "full"
        await one.send_message(start_msg())
        assert (await recv_json(one))["signal"] == "server_ready"
    # slots are given back once clients leave
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg())
        await recv_json(ws)


# ------------------------------------------------------------ errors (§6)


@pytest.mark.parametrize(
    ("messages", "code", "signal"),
    [
        (["not json"], 1007, None),
        (["[1]"], 1007, None),
        (['{"signal": "start", "nbest": 1}'], 1007, "start"),
        (['{"signal": "start", "name": "a", "nbest": true}'], 1007, "start"),
        (['{"signal": "pause", "name": "a"}'], 1008, "pause"),
        (['{"signal": "%s"}' % ("x" * 100_000)], 1008, "x" * 64),  # not echoed whole
        ([b"\x00\x00"], 1008, None),
        (['{"signal": "end", "name": "a", "nbest": 1}'], 1008, "end"),
        ([start_msg(bitsPerSample=8)], 1003, "start"),
        ([start_msg(channels=0)], 1003, "start"),
        ([start_msg(sampleRate=1)], 1003, "start"),
        ([start_msg(nbest=0)], 1008, "start"),
        ([start_msg(nbest=1000)], 1008, "start"),
        ([start_msg(), b"\x00" * 10, "{oops"], 1007, None),
    ],
)
async def test_protocol_errors_get_json_error_and_close_code(
    server: Server, messages: list, code: int, signal: str | None
) -> None:
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        for message in messages:
            await ws.send_message(message)
        replies, closed = await replies_until_close(ws)
    error = replies[-1]
    assert error["status"] == "error" and error["signal"] == signal and isinstance(error["message"], str)
    assert closed == code
    assert all(r.get("status") != "error" for r in replies[:-1])


async def test_oversize_frame_is_1009(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path, max_message_bytes=4000)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg())
        await recv_json(ws)
        await ws.send_message(b"\x00" * 4000)
        assert "result" in await recv_json(ws)
        await ws.send_message(b"\x00" * 4001)
        error = await recv_json(ws)
        assert error["status"] == "error"
        assert await expect_close(ws) == 1009
    # far over the limit: not buffered beyond the limit, and the same error reply
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("big.wav"))
        await recv_json(ws)
        await ws.send_message(b"\x00" * 100_000)
        assert (await recv_json(ws))["status"] == "error"
        assert await expect_close(ws) == 1009
    assert [p.name for p in wavs(server)] == ["t.wav"], "a stream that got no audio leaves no file"


async def test_idle_client_is_closed(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A silent stream ends by itself; a connection that then stays silent is closed."""
    server = await start_server(nursery, tmp_path, idle_timeout=0.3, connection_idle_timeout=0.3, ping_interval=0)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("idle.wav"))
        await recv_json(ws)
        await ws.send_message(pcm16(160).tobytes())
        await recv_json(ws)
        final = await recv_json(ws)  # nothing sent for longer than the timeout
        assert final["signal"] == "end" and final["name"] == "idle.wav"
        error = await recv_json(ws)
        assert error["status"] == "error" and "0.3" in error["message"]
        assert await expect_close(ws) == 1008
    saved, _ = read_wav(wavs(server)[0])
    assert saved.shape == (160, 1)


async def test_recognizer_failure_is_1011_and_isolated(server: Server, recognizer) -> None:
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as good:
        await good.send_message(start_msg("good.wav"))
        await recv_json(good)
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as bad:
            await bad.send_message(start_msg("bad.wav"))
            await recv_json(bad)
            recognizer.fail_on_decode = True
            await bad.send_message(pcm16(10).tobytes())
            error = await recv_json(bad)
            assert error["status"] == "error"
            assert await expect_close(bad) == 1011
        recognizer.fail_on_decode = False
        await good.send_message(pcm16(10).tobytes())
        assert "result" in await recv_json(good)
    saved, _ = read_wav(server.config.audio_dir / "bad.wav")
    assert saved.shape == (10, 1), "audio of the failed stream is still saved"


# ------------------------------------------------------------ model service (batching, admission)


@pytest.fixture
def controlled_model(zipformer2_model_dir: Path) -> ControlledModel:
    return ControlledModel(load_model(zipformer2_model_dir))


async def wait_until_running(model: ControlledModel) -> None:
    with trio.fail_after(10):
        await trio.to_thread.run_sync(model.entered.wait)


async def wait_for_health(port: int, expected: int) -> dict:
    with trio.fail_after(10):
        while True:
            status, body = await http_get(port, "/health")
            if status == expected:
                return json.loads(body)
            await trio.sleep(0.02)


async def test_overloaded_model_refuses_new_connections_until_it_catches_up(
    nursery: trio.Nursery, tmp_path: Path, controlled_model: ControlledModel
) -> None:
    model = controlled_model
    server = await start_server(nursery, tmp_path, Recognizer(model, beam=2), max_queue_delay=0.05)
    assert server.service is not None
    assert (await wait_for_health(server.port, 200))["queue_delay"] == 0
    model.gate = threading.Event()  # the model "takes forever": the queue delay grows
    try:
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as busy:
            await busy.send_message(start_msg())
            await recv_json(busy)
            await busy.send_message(pcm16(16000).tobytes())  # 1 s: at least one chunk
            await wait_until_running(model)
            body = await wait_for_health(server.port, 503)
            assert body["status"] == "overloaded" and body["queue_delay"] > 0.05
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with trio_websocket.open_websocket_url(ws_url(server.port)):
                    pass
            assert info.value.status_code == 503
            model.gate.set()  # load drops
            assert "result" in await recv_json(busy), "the open stream goes on"
            assert (await wait_for_health(server.port, 200))["status"] == "ok"
            async with trio_websocket.open_websocket_url(ws_url(server.port)) as late:
                await late.send_message(start_msg("late.wav"))
                assert (await recv_json(late))["signal"] == "server_ready"
            await busy.send_message(end_msg())
            assert (await recv_json(busy))["signal"] == "end"
    finally:
        model.gate.set()


async def test_model_failure_ends_only_the_streams_of_that_batch(
    nursery: trio.Nursery, tmp_path: Path, controlled_model: ControlledModel
) -> None:
    model = controlled_model
    server = await start_server(nursery, tmp_path, Recognizer(model, beam=2))
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as good:
        await good.send_message(start_msg("good.wav"))
        await recv_json(good)
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as bad:
            await bad.send_message(start_msg("bad.wav"))
            await recv_json(bad)
            model.fail_calls = {len(model.batch_sizes)}  # the next model call
            await bad.send_message(pcm16(16000).tobytes())
            error = await recv_json(bad)
            assert error["status"] == "error"
            assert await expect_close(bad) == 1011
        await good.send_message(pcm16(16000).tobytes())
        assert "result" in await recv_json(good)
        await good.send_message(end_msg("good.wav"))
        assert (await recv_json(good))["signal"] == "end"
    assert server.service is not None and server.service.stats.failed_batches == 1


async def two_streams_while_the_model_is_held(model: ControlledModel, port: int, hold: float) -> None:
    """Two streams send 1 s each while the first model call is held for
    ``hold`` s longer, so the other stream's chunks queue up behind it."""
    model.gate = threading.Event()
    try:
        async with trio_websocket.open_websocket_url(ws_url(port)) as a:
            async with trio_websocket.open_websocket_url(ws_url(port)) as b:
                for ws in (a, b):
                    await ws.send_message(start_msg())
                    await recv_json(ws)
                    await ws.send_message(pcm16(16000).tobytes())
                await wait_until_running(model)
                await trio.sleep(hold)
                model.gate.set()
                for ws in (a, b):
                    assert "result" in await recv_json(ws)
    finally:
        model.gate.set()


async def test_batching_off_runs_one_chunk_per_model_call(
    nursery: trio.Nursery, tmp_path: Path, controlled_model: ControlledModel
) -> None:
    """--no-batching goes through the same decode path, one chunk per call."""
    server = await start_server(nursery, tmp_path, Recognizer(controlled_model, beam=2), batching=False)
    await two_streams_while_the_model_is_held(controlled_model, server.port, 0.2)
    assert len(controlled_model.batch_sizes) > 2 and set(controlled_model.batch_sizes) == {1}


async def test_batching_on_batches_the_chunks_of_several_streams(
    nursery: trio.Nursery, tmp_path: Path, controlled_model: ControlledModel
) -> None:
    """The control for the test above: the same load with batching on."""
    server = await start_server(nursery, tmp_path, Recognizer(controlled_model, beam=2), concurrent_batches=1)
    await two_streams_while_the_model_is_held(controlled_model, server.port, 0.2)
    assert max(controlled_model.batch_sizes) == 2


# ------------------------------------------------------------ saving


async def test_disconnect_mid_stream_saves_all_audio(server: Server) -> None:
    audio = pcm16(8001)
    data = audio.tobytes()
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("cut.wav"))
        await recv_json(ws)
        for chunk in chunks(data, 3001):  # odd sizes: the last byte pairs up across frames
            await ws.send_message(chunk)
    # the client is gone without "end"; wait until the server let go of it
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    saved, _ = read_wav(server.config.audio_dir / "cut.wav")
    np.testing.assert_array_equal((saved[:, 0] * 32768).astype(np.int16), audio)


async def test_abrupt_tcp_reset_mid_stream(server: Server) -> None:
    audio = pcm16(4000)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg("reset.wav"))
        await recv_json(ws)
        await ws.send_message(audio.tobytes())
        await recv_json(ws)
        await ws._stream.aclose()  # vanish without a close handshake
    with trio.fail_after(5):
        while server.connections:
            await trio.sleep(0.01)
    saved, _ = read_wav(server.config.audio_dir / "reset.wav")
    assert saved.shape == (4000, 1)


@pytest.mark.parametrize(
    "name", ["../../escape.wav", "/etc/passwd", "..", "a/b\\c.wav", "CON", "nul.txt", "", "x" * 250]
)
async def test_untrusted_names_stay_inside_audio_dir(server: Server, name: str) -> None:
    for _ in range(2):
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
            await ws.send_message(start_msg(name))
            await recv_json(ws)
            await ws.send_message(pcm16(10).tobytes())
            await recv_json(ws)
            await ws.send_message(end_msg(name))
            await recv_json(ws)
    audio_dir = server.config.audio_dir.resolve()
    files = [p for p in audio_dir.parent.rglob("*") if p.is_file()]
    assert len(files) == 2, "same name twice gives two files"
    assert all(p.parent == audio_dir for p in files)
    assert all(read_wav(p)[0].shape == (10, 1) for p in files)


async def test_save_audio_off(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path, save_audio=False)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg())
        await recv_json(ws)
        await ws.send_message(end_msg())
        assert (await recv_json(ws))["signal"] == "end"
    assert not server.config.audio_dir.exists()


# ------------------------------------------------------------ concurrency, shutdown


async def test_concurrent_clients_get_their_own_results(server: Server) -> None:
    results: dict[int, tuple[str, str]] = {}

    async def client(i: int) -> None:
        audio = pcm16(3000 + 37 * i)
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
            await ws.send_message(start_msg(f"c{i}.wav"))
            await recv_json(ws)
            for chunk in chunks(audio.tobytes(), 800):
                await ws.send_message(chunk)
                await recv_json(ws)
                await trio.sleep(0)
            await ws.send_message(end_msg())
            final = await recv_json(ws)
        results[i] = (final["result"], summary(audio.astype(np.float32) / 32768) + " final")

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(client, i)
    assert len(results) == 20
    for got, expected in results.values():
        assert got == expected
    assert len(wavs(server)) == 20


async def test_graceful_shutdown_lets_open_stream_finish(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, tmp_path, grace_period=5.0)
    audio = pcm16(2000)
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as busy:
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as idle:
            await busy.send_message(start_msg("busy.wav"))
            await recv_json(busy)
            server.shutdown()
            # an idle connection is closed at once with 1001
            error = await recv_json(idle)
            assert error["status"] == "error"
            assert await expect_close(idle) == 1001
            # no new streams: balancers see 503 and move on
            with pytest.raises(trio_websocket.ConnectionRejected) as info:
                async with trio_websocket.open_websocket_url(ws_url(server.port)):
                    pass
            assert info.value.status_code == 503
            status, body = await http_get(server.port, "/health")
            assert status == 503 and json.loads(body)["status"] == "shutting down"
            # the open stream can still finish
            await busy.send_message(audio.tobytes())
            assert "result" in await recv_json(busy)
            await busy.send_message(end_msg("busy.wav"))
            assert (await recv_json(busy))["signal"] == "end"
            assert await expect_close(busy) == 1001


async def test_shutdown_after_grace_cuts_stream_and_saves(tmp_path: Path) -> None:
    audio = pcm16(1000)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, make_config(tmp_path, grace_period=0.2), CountingRecognizer())
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
            await ws.send_message(start_msg("slow.wav"))
            await recv_json(ws)
            await ws.send_message(audio.tobytes())
            await recv_json(ws)
            with trio.fail_after(5):
                server.shutdown()
                error = await recv_json(ws)
                assert await expect_close(ws) == 1001
            assert error["status"] == "error"
    # serve() returned by itself (the nursery exited without cancellation)
    saved, _ = read_wav(tmp_path / "audio" / "slow.wav")
    assert saved.shape == (1000, 1)


# ------------------------------------------------------------ configuration


def test_config_from_toml_with_cli_overrides(tmp_path: Path) -> None:
    from trio_asr.serving.config import ConfigError
    from trio_asr.serving.config_file import load_config

    path = tmp_path / "server.toml"
    path.write_text('port = 9000\nidle_timeout = 5\n[server]\nmax_connections = 3\naudio_dir = "/tmp/x"\n')
    config = load_config(path, {"port": 9100, "beam": None})
    assert (config.port, config.idle_timeout, config.max_connections) == (9100, 5.0, 3)
    assert config.audio_dir == Path("/tmp/x") and config.beam == 10
    path.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(path)
    path.write_text("port = 'x'\n")
    with pytest.raises(ConfigError):
        load_config(path)
    path.write_text("port = [\n")
    with pytest.raises(ConfigError):
        load_config(path)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")
    for bad in (
        {"max_connections": 0}, {"port": 70000}, {"idle_timeout": -1}, {"log_level": "loud"},
        {"max_batch": 0}, {"max_queue_delay": 0}, {"batching": "yes"},
    ):  # fmt: skip
        with pytest.raises(ConfigError):
            load_config(None, bad)
    defaults = load_config()
    assert (defaults.batching, defaults.max_batch, defaults.max_queue_delay) == (True, 64, 0.5)
    path.write_text("batching = false\nmax_batch = 4\nmax_queue_delay = 0.25\n")
    config = load_config(path, {"max_batch": 8})
    assert (config.batching, config.max_batch, config.max_queue_delay) == (False, 8, 0.25)


@pytest.mark.skipif(
    sys.platform == "win32",
    reason="Windows cannot send SIGINT to a child process (only SIGTERM, a hard kill, and console events)",
)
async def test_serve_command_exits_0_on_sigint(tmp_path: Path, zipformer2_model_dir: Path) -> None:
    import signal
    import subprocess

    cmd = [sys.executable, "-m", "trio_asr", "serve", "--port", "0", "--host", "127.0.0.1", "--model", str(zipformer2_model_dir)]
    cmd += ["--audio-dir", str(tmp_path / "a")]
    proc = await trio.lowlevel.open_process(cmd, stderr=subprocess.PIPE)
    try:
        line = b""
        with trio.fail_after(30):
            while b"serving ws://" not in line:
                chunk = await proc.stderr.receive_some()
                assert chunk, "server exited early"
                line += chunk
        port = int(line.split(b"serving ws://127.0.0.1:")[1].split(b"/")[0])
        status, _ = await http_get(port, "/health")
        assert status == 200
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_abrupt_and_silent_tcp_clients_do_not_hurt_the_server(nursery: trio.Nursery, tmp_path: Path) -> None:
    import socket

    server = await start_server(nursery, tmp_path, handshake_timeout=0.3)
    for payload in (b"", b"GET /heal", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"GET " + b"x" * 70000):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            await stream.send_all(payload)
        except trio.BrokenResourceError:
            pass
        await stream.aclose()  # with SO_LINGER 0: a TCP reset
    # a client that connects and says nothing is dropped after the handshake timeout
    silent = await trio.open_tcp_stream("127.0.0.1", server.port)
    with trio.fail_after(5):
        assert await silent.receive_some() == b""
    await silent.aclose()
    status, _ = await http_get(server.port, "/health")
    assert status == 200
