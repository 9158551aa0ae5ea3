"""End-to-end: the real recognizer behind the server, and clients other than ours.

The recognizer runs on the synthetic zipformer2-CTC fixture (and on the real
model too when $TRIO_ASR_TEST_MODEL_DIR is set).  The reference for every
final result is the same :class:`Recognizer` decoding the whole audio in one
call, without the server: the server must give exactly that, whatever the
client's chunking, pacing, rate or channel count, and whether the server
batches model calls across connections or not.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import trio
import websockets.sync.client
from paths import SPEECH_FILES
from serverutil import ws_url

from trio_asr.audio import WavWriter, read_wav
from trio_asr.cli.commands import main
from trio_asr.cli.client import ClientError, stream_file, stream_pcm
from trio_asr.serving.config import ServerConfig
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.resample import resample
from trio_asr.serving.server import Server, serve
from trio_asr.cli.transcribe import transcribe_file
from trio_asr.recognition.stream_options import StreamOptions

RNG = np.random.default_rng(99)


@pytest.fixture
def recognizer(streaming_ctc_model_dir: Path) -> Recognizer:
    return Recognizer(load_model(streaming_ctc_model_dir), beam=4)


@pytest.fixture(params=[True, False], ids=["batched", "unbatched"])
async def server(nursery: trio.Nursery, tmp_path: Path, recognizer: Recognizer, request) -> Server:
    """The server with batching on and off (one chunk per model call)."""
    config = ServerConfig(
        host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", idle_timeout=20.0, workers=2, batching=request.param
    )
    server = await nursery.start(serve, config, recognizer)
    assert server.service.max_batch == (config.max_batch if request.param else 1)
    return server


def speechlike(seconds: float, rate: int = 16000) -> np.ndarray:
    """Noise shaped by a slow envelope: enough structure for the model to emit tokens."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t) ** 2
    tone = np.sin(2 * np.pi * (200 + 150 * np.sin(2 * np.pi * 0.7 * t)) * t)
    x = 0.3 * envelope * (0.6 * tone + 0.4 * RNG.standard_normal(n))
    return np.clip(x, -1, 1).astype(np.float32)


def to_pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def reference(recognizer: Recognizer, pcm: np.ndarray, rate: int, nbest: int = 1):
    """Decode the whole utterance in one go, no server involved."""
    x = pcm.astype(np.float32) / 32768
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float64).astype(np.float32)
    if rate != recognizer.sample_rate:
        x = resample(x, rate, recognizer.sample_rate)
    stream = recognizer.create_stream(StreamOptions(nbest=nbest))
    stream.accept_waveform(x)
    stream.decode()
    stream.input_finished()
    return stream.result()


def paddlespeech_like_session(url: str, pcm: bytes, nbest: int = 1) -> tuple[list[dict], dict]:
    """What PaddleSpeech's ASRWsAudioHandler does, with the `websockets` library:
    start, then 85 ms chunks lock-step, then end."""
    partials = []
    with websockets.sync.client.connect(url) as ws:
        ws.send(json.dumps({"name": "test.wav", "signal": "start", "nbest": nbest}))
        assert json.loads(ws.recv()) == {"status": "ok", "signal": "server_ready"}
        for i in range(0, len(pcm), 2720):
            ws.send(pcm[i : i + 2720])
            partials.append(json.loads(ws.recv()))
        ws.send(json.dumps({"name": "test.wav", "signal": "end", "nbest": nbest}))
        final = json.loads(ws.recv())
    return partials, final


async def test_paddlespeech_style_client_gets_the_offline_result(server: Server, recognizer: Recognizer) -> None:
    pcm = to_pcm16(speechlike(1.5))
    partials, final = await trio.to_thread.run_sync(paddlespeech_like_session, ws_url(server.port), pcm.tobytes())
    expected = reference(recognizer, pcm, 16000)
    assert len(partials) == -(-pcm.nbytes // 2720)
    assert all(set(p) == {"result"} and isinstance(p["result"], str) for p in partials)
    assert final["result"] == expected.text
    assert final["name"] == "test.wav" and final["signal"] == "end" and final["status"] == "ok"
    assert [t["w"] for t in final["times"]] == [t.piece for t in expected.times]
    end = round(len(pcm) / 16000, 3)  # a word heard only in the padded tail is cut to nothing there
    assert all(0 <= t["bg"] < t["ed"] or t["bg"] == t["ed"] == end for t in final["times"])
    assert final["times"][-1]["ed"] <= end
    assert expected.text, "the fixture model must emit text for the comparison to mean something"


async def test_nbest_over_the_wire_matches_offline(server: Server, recognizer: Recognizer) -> None:
    pcm = to_pcm16(speechlike(1.0))
    _, final = await trio.to_thread.run_sync(paddlespeech_like_session, ws_url(server.port), pcm.tobytes(), 3)
    expected = reference(recognizer, pcm, 16000, nbest=3)
    assert [h["text"] for h in final["nbest"]] == [text for text, _ in expected.nbest]
    assert [h["score"] for h in final["nbest"]] == pytest.approx([s for _, s in expected.nbest], abs=1e-4)


def web_demo_session(url: str, pcm: bytes) -> int:
    """The web demo: nbest 5, chunks pushed without waiting, never says "end"."""
    with websockets.sync.client.connect(url) as ws:
        ws.send(json.dumps({"name": "demo.wav", "signal": "start", "nbest": 5}))
        json.loads(ws.recv())
        chunk = 9600  # 300 ms
        frames = [pcm[i : i + chunk] for i in range(0, len(pcm), chunk)]
        for frame in frames:
            ws.send(frame)
        replies = [json.loads(ws.recv()) for _ in frames]
    assert all("result" in r and len(r["nbest"]) >= 1 for r in replies)
    return len(replies)


async def test_web_demo_style_client_without_end(server: Server) -> None:
    pcm = to_pcm16(speechlike(1.2))
    n = await trio.to_thread.run_sync(web_demo_session, ws_url(server.port), pcm.tobytes())
    assert n == 4
    with trio.fail_after(10):
        while server.connections:
            await trio.sleep(0.01)
    saved, rate = read_wav(server.config.audio_dir / "demo.wav")
    assert rate == 16000
    np.testing.assert_array_equal(to_pcm16(saved[:, 0]), pcm)


@pytest.mark.parametrize("pipeline", [False, True])
async def test_our_client_on_a_stereo_44k_file(
    server: Server, recognizer: Recognizer, tmp_path: Path, pipeline: bool
) -> None:
    stereo = np.stack([to_pcm16(speechlike(1.0, 44100)), to_pcm16(speechlike(1.0, 44100))], axis=1)
    path = tmp_path / "stereo.wav"
    with WavWriter(path, 44100, 2) as wav:
        wav.write(stereo.tobytes())
    partials: list[dict] = []
    final = await stream_file(ws_url(server.port), path, pipeline=pipeline, on_partial=partials.append)
    assert final["result"] == reference(recognizer, stereo, 44100).text
    assert len(partials) == -(-44100 // round(44100 * 0.085))
    saved, rate = read_wav(server.config.audio_dir / "stereo.wav")
    assert rate == 44100 and saved.shape == (44100, 2)


async def test_concurrent_real_streams_do_not_mix(server: Server, recognizer: Recognizer) -> None:
    clips = [to_pcm16(speechlike(0.6 + 0.1 * i)) for i in range(6)]
    finals: dict[int, str] = {}

    async def one(i: int) -> None:
        final = await stream_pcm(ws_url(server.port), clips[i].tobytes(), name=f"c{i}.wav", chunk_ms=40)
        finals[i] = final["result"]

    async with trio.open_nursery() as nursery:
        for i in range(len(clips)):
            nursery.start_soon(one, i)
    for i, clip in enumerate(clips):
        assert finals[i] == reference(recognizer, clip, 16000).text
    assert server.service.stats.chunks > 0, "the model ran through the service"


async def test_client_command_prints_final_text(server: Server, recognizer: Recognizer, tmp_path: Path, capsys) -> None:
    pcm = to_pcm16(speechlike(0.8))
    path = tmp_path / "cli.wav"
    with WavWriter(path, 16000, 1) as wav:
        wav.write(pcm.tobytes())
    args = ["client", str(path), "--url", ws_url(server.port), "--json"]
    assert await trio.to_thread.run_sync(main, args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["result"] == reference(recognizer, pcm, 16000).text
    bad = ["client", str(path), "--url", ws_url(server.port, "/nope")]
    assert await trio.to_thread.run_sync(main, bad) == 1
    assert "404" in capsys.readouterr().err


@pytest.mark.parametrize("path", SPEECH_FILES, ids=[p.name for p in SPEECH_FILES])
async def test_real_speech_over_the_wire_equals_transcribe(
    server: Server, recognizer: Recognizer, path: Path
) -> None:
    """Each shared speech file sent the way PaddleSpeech's client sends it
    ends with exactly the text `trio-asr transcribe` prints for the file."""
    samples, rate = read_wav(path)
    pcm = to_pcm16(samples[:, 0])
    _, final = await trio.to_thread.run_sync(paddlespeech_like_session, ws_url(server.port), pcm.tobytes())
    expected = transcribe_file(recognizer, path)
    assert expected.text
    assert final["result"] == expected.text


async def test_client_command_reports_a_server_error_in_one_line(
    nursery: trio.Nursery, recognizer: Recognizer, tmp_path: Path, capsys
) -> None:
    """A pipelined client whose stream the server ends with an error prints
    that error, not a traceback of exception groups."""
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", max_message_bytes=2000)
    server = await nursery.start(serve, config, recognizer)
    path = tmp_path / "big-frames.wav"
    with WavWriter(path, 16000, 1) as wav:
        wav.write(to_pcm16(speechlike(0.5)).tobytes())
    for mode in (["--pipeline"], []):
        args = ["client", str(path), "--url", ws_url(server.port), *mode]
        assert await trio.to_thread.run_sync(main, args) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("trio-asr client: ") and "2000 bytes" in err[0], err


async def test_client_gives_up_on_a_server_that_stops_replying(
    nursery: trio.Nursery, tmp_path: Path, capsys
) -> None:
    """A server that answers the start and then no frame: the client (lock-step
    and pipelined, library and command) fails after --reply-timeout with one
    line, instead of waiting for ever."""
    import trio_websocket

    async def silent(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed), trio.move_on_after(30):
            await ws.get_message()
            await ws.send_message(json.dumps({"status": "ok", "signal": "server_ready"}))
            while True:
                await ws.get_message()

    server = await nursery.start(trio_websocket.serve_websocket, silent, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{server.port}/paddlespeech/asr/streaming"
    pcm = to_pcm16(speechlike(0.5)).tobytes()
    for pipeline in (False, True):
        with trio.fail_after(5):
            with pytest.raises(ClientError, match=r"no reply from the server in 0\.3 s"):
                await stream_pcm(url, pcm, pipeline=pipeline, reply_timeout=0.3)
    path = tmp_path / "speech.wav"
    with WavWriter(path, 16000, 1) as wav:
        wav.write(pcm)
    args = ["client", str(path), "--url", url, "--reply-timeout", "0.3"]
    assert await trio.to_thread.run_sync(main, args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "no reply from the server in 0.3 s" in err[0], err
    assert await trio.to_thread.run_sync(main, [*args[:-1], "0"]) == 2
    assert "--reply-timeout" in capsys.readouterr().err


async def test_client_gives_up_on_a_server_that_ignores_the_close(nursery: trio.Nursery) -> None:
    """A server that stops short of everything, the closing handshake
    included: the reply timeout's error comes after about twice the
    timeout, not after trio-websocket's minute for the close."""
    import wsproto
    import wsproto.events

    async def handler(stream: trio.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        with trio.move_on_after(30):
            while True:
                data = await stream.receive_some()
                if not data:
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, wsproto.events.Request):
                        await stream.send_all(ws.send(wsproto.events.AcceptConnection()))
                    elif isinstance(event, wsproto.events.TextMessage):  # the start: then nothing more
                        ready = json.dumps({"status": "ok", "signal": "server_ready"})
                        await stream.send_all(ws.send(wsproto.events.Message(data=ready)))

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/paddlespeech/asr/streaming"
    pcm = to_pcm16(speechlike(0.5)).tobytes()
    for pipeline in (False, True):
        started = trio.current_time()
        with trio.fail_after(10):
            with pytest.raises(ClientError, match=r"no reply from the server in 0\.3 s"):
                await stream_pcm(url, pcm, pipeline=pipeline, reply_timeout=0.3)
        assert trio.current_time() - started < 5


async def test_client_gives_up_on_a_server_that_never_answers_the_handshake(nursery: trio.Nursery) -> None:
    async def mute(stream: trio.SocketStream) -> None:
        with trio.move_on_after(30):
            while await stream.receive_some():
                pass

    listeners = await nursery.start(functools.partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
    url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/paddlespeech/asr/streaming"
    with trio.fail_after(5):
        with pytest.raises(ClientError, match=r"no answer to the opening handshake in 0\.3 s"):
            await stream_pcm(url, b"\0\0" * 1600, reply_timeout=0.3)
    with pytest.raises(ValueError, match="reply_timeout"):
        await stream_pcm(url, b"\0\0" * 1600, reply_timeout=0)
