"""Hotwords through the recognizer, the protocol, the server and the CLI, on
the synthetic zipformer2-CTC fixture model (a Chinese character table)."""

from __future__ import annotations

import json
import logging
import wave
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
from serverutil import end_msg, expect_close, recv_json, start_server, start_msg, ws_url

from trio_asr.cli.commands import main
from trio_asr.recognition.hotwords import Hotword, HotwordError, compile_hotwords
from trio_asr.protocol.messages import ErrorReply, StartStream
from trio_asr.recognition.model import load_model
from trio_asr.protocol.connection import ConnectionProtocol
from trio_asr.protocol.limits import ProtocolLimits
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.cli.transcribe import transcribe_samples
from trio_asr.recognition.stream_options import StreamOptions

SECONDS = 3


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(16000 * SECONDS) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def model(zipformer2_model_dir):
    return load_model(zipformer2_model_dir)


@pytest.fixture(scope="module")
def phrase(model, audio) -> str:
    """Two characters of the runner-up hypothesis that the best one lacks."""
    nbest = transcribe_samples(Recognizer(model, beam=8), audio, 16000, nbest=8).nbest
    best = nbest[0][0]
    for text, _ in nbest[1:]:
        for i in range(len(text) - 1):
            if text[i : i + 2] not in best:
                return text[i : i + 2]
    pytest.fail(f"no n-best entry differs from the best: {nbest}")


def test_recognizer_hotwords_flip_the_result_and_stream_lists_add_to_them(model, audio, phrase):
    plain = transcribe_samples(Recognizer(model, beam=8), audio, 16000).text
    assert phrase not in plain
    compiled = compile_hotwords([Hotword(phrase, 5.0)], model.tokens)
    biased = transcribe_samples(Recognizer(model, beam=8, hotwords=compiled), audio, 16000).text
    assert phrase in biased
    # The same phrase given per stream only, and the server's list with nothing in it.
    recognizer = Recognizer(model, beam=8, hotwords=compile_hotwords([], model.tokens))
    stream = recognizer.create_stream(StreamOptions(nbest=1, sample_rate=16000, hotwords=[Hotword(phrase, 5.0)]))
    stream.accept_waveform(audio)
    stream.input_finished()
    assert stream.result().text == biased
    assert transcribe_samples(recognizer, audio, 16000).text == plain
    with pytest.raises(HotwordError, match="cannot spell"):
        recognizer.create_stream(StreamOptions(nbest=1, sample_rate=16000, hotwords=[Hotword("hello")]))
    with pytest.raises(ValueError, match="beam"):
        Recognizer(model, decoding="greedy", hotwords=compiled).create_stream()


def test_protocol_parses_and_bounds_the_start_field():
    protocol = ConnectionProtocol(ProtocolLimits(max_stream_hotwords=2))
    [event] = protocol.receive_text(start_msg(hotwords=["new york", ["gnu", 2]]))
    assert isinstance(event, StartStream)
    assert event.options.hotwords == (Hotword("new york"), Hotword("gnu", 2.0))
    [event] = ConnectionProtocol().receive_text(start_msg())
    assert isinstance(event, StartStream) and event.options.hotwords == ()
    for hotwords, code in [
        (["a", "b", "c"], 1008),
        ("a", 1007),
        ([["a", "x"]], 1007),
        ([["a", 20]], 1007),
        (["a:1"], 1007),
        ([{"phrase": "a"}], 1007),
    ]:
        [error] = ConnectionProtocol(ProtocolLimits(max_stream_hotwords=2)).receive_text(start_msg(hotwords=hotwords))
        assert isinstance(error, ErrorReply) and error.code == code, (hotwords, error)
        assert "hotwords" in error.message


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def stream_over(port: int, name: str, audio: np.ndarray, **fields) -> dict:
    async with trio_websocket.open_websocket_url(ws_url(port)) as ws:
        await ws.send_message(start_msg(name, **fields))
        assert (await recv_json(ws))["signal"] == "server_ready"
        data = pcm(audio)
        for start in range(0, len(data), 2720):  # 85 ms frames, like PaddleSpeech's client
            await ws.send_message(data[start : start + 2720])
            await recv_json(ws)
            await trio.sleep(0)
        await ws.send_message(end_msg(name))
        return await recv_json(ws)


async def test_a_stream_with_hotwords_and_one_without_on_one_server(
    nursery: trio.Nursery, tmp_path: Path, model, audio, phrase
) -> None:
    """Concurrently on one server, each stream gets its own behaviour: the
    one that asked for the phrase gets it, the other gets the plain result."""
    recognizer = Recognizer(model, beam=8, hotwords=compile_hotwords([], model.tokens))
    heard = pcm(audio)  # what the server decodes: the 16-bit audio
    samples = np.frombuffer(heard, "<i2").astype(np.float32) / 32768
    plain = transcribe_samples(recognizer, samples, 16000).text
    compiled = compile_hotwords([Hotword(phrase, 5.0)], model.tokens)
    biased = transcribe_samples(Recognizer(model, beam=8, hotwords=compiled), samples, 16000).text
    assert phrase in biased and phrase not in plain

    server = await start_server(nursery, tmp_path, recognizer, batching=False)
    finals: dict[str, dict] = {}

    async def run(name: str, **fields) -> None:
        finals[name] = await stream_over(server.port, name, audio, **fields)

    async with trio.open_nursery() as both:
        both.start_soon(lambda: run("with.wav", hotwords=[[phrase, 5.0]]))
        both.start_soon(lambda: run("without.wav"))
    assert finals["with.wav"]["result"] == biased
    assert finals["without.wav"]["result"] == plain


async def test_a_phrase_the_model_cannot_spell_is_refused_at_start(
    nursery: trio.Nursery, tmp_path: Path, model
) -> None:
    server = await start_server(nursery, tmp_path, Recognizer(model, beam=4))
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg(hotwords=["hello"]))
        error = await recv_json(ws)
        assert error["status"] == "error" and error["signal"] == "start"
        assert "hotwords" in error["message"] and "cannot spell 'h'" in error["message"]
        assert await expect_close(ws) == 1007


async def test_a_refused_start_followed_at_once_by_end_logs_no_traceback(
    nursery: trio.Nursery, tmp_path: Path, model, caplog: pytest.LogCaptureFixture
) -> None:
    """The ``end`` queued behind a refused ``start`` needs no answer: the
    client gets its 1007, the log no traceback (bad input logs at most a line)."""
    server = await start_server(nursery, tmp_path, Recognizer(model, beam=4))
    with caplog.at_level(logging.INFO, logger="trio_asr"):
        async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
            await ws.send_message(start_msg(hotwords=["hello"]))
            await ws.send_message(end_msg())
            assert (await recv_json(ws))["signal"] == "start"
            assert await expect_close(ws) == 1007
        with trio.fail_after(5):
            while server.connections:
                await trio.sleep(0.01)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm(audio))
    return path


def test_transcribe_hotwords_file(zipformer2_model_dir, model, tmp_path, audio, phrase, capsys):
    wav = str(write_wav(tmp_path / "noise.wav", audio))
    hot = tmp_path / "hot.txt"
    hot.write_text(f"# the runner-up\n{phrase} : 5\n", encoding="utf-8")
    args = ["transcribe", "--model", str(zipformer2_model_dir), "--json", "--beam", "8"]
    assert main([*args, wav]) == 0
    plain = json.loads(capsys.readouterr().out)["text"]
    assert main([*args, "--hotwords-file", str(hot), wav]) == 0
    biased = json.loads(capsys.readouterr().out)["text"]
    assert phrase in biased and phrase not in plain


@pytest.mark.parametrize(
    "content, flags, message",
    [
        ("a : x\n", [], "hot.txt:1: the score 'x' is not a number"),
        ("hello\n", [], "hotword 'hello'"),
        ("好\n", ["--hotwords-score", "0"], "--hotwords-score must be above 0"),
        ("好\n", ["--greedy"], "needs beam search"),
    ],
)
def test_transcribe_hotwords_errors_are_one_line(zipformer2_model_dir, tmp_path, capsys, content, flags, message):
    hot = tmp_path / "hot.txt"
    hot.write_text(content, encoding="utf-8")
    wav = str(write_wav(tmp_path / "x.wav", np.zeros(1600, np.float32)))
    status = main(["transcribe", "--model", str(zipformer2_model_dir), "--hotwords-file", str(hot), *flags, wav])
    assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("trio-asr transcribe: ") and message in lines[0], lines


def test_serve_with_a_bad_hotwords_file_is_one_line_before_loading_a_model(tmp_path, capsys):
    hot = tmp_path / "hot.txt"
    hot.write_text("ok\nbad : -1\n", encoding="utf-8")
    status = main(["serve", "--hotwords-file", str(hot), "--model", str(tmp_path / "no-such-model")])
    assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "hot.txt:2: the score must be above 0" in lines[0], lines


def test_config_settings_are_checked(tmp_path):
    from trio_asr.serving.config import ConfigError
    from trio_asr.serving.config_file import load_config

    toml = tmp_path / "server.toml"
    toml.write_text('hotwords_file = "hot.txt"\nhotwords_score = 2.5\nmax_stream_hotwords = 7\n')
    config = load_config(toml)
    assert (config.hotwords_file, config.hotwords_score) == (Path("hot.txt"), 2.5)
    assert config.protocol_limits().max_stream_hotwords == 7
    for bad, message in [("hotwords_score = 0", "hotwords_score must be above 0"),
                         ("hotwords_score = 11", "at most 10"),
                         ("max_stream_hotwords = 5000", "max_stream_hotwords must be between 0 and 1000")]:  # fmt: skip
        toml.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=message):
            load_config(toml)
