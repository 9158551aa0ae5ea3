"""Two-pass final text over the wire (``serve --second-pass OFFLINE_DIR``).

- each closed segment is announced with the second pass's text (exactly what
  :meth:`OfflineRecognizer.recognize` makes of that segment's samples), its
  words and SenseVoice's lang/emotion/event; partials stay first-pass;
- still one reply per binary frame; segments in order; the final reply waits
  for the pending second passes and announces the rest;
- the default ``result`` is built from the second-pass texts;
- ``"secondPass": false`` gives the first pass's segments, a non-boolean 1007;
- a failing second pass leaves the first-pass text (and is counted);
- the second pass's queue delay counts for admission (/health 503).
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
from serverutil import expect_close, http_get, start_msg, ws_url
from test_segment_replies import SHORT_RULES, session, speech_pcm

from trio_asr.protocol.messages import CLOSE_INVALID_PAYLOAD
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.model import load_model
from trio_asr.recognition.offline import OfflineOptions, OfflineRecognizer, load_offline_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.segments import join_texts
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.server import serve

RATE = 16000


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path, zipformer2_model_dir: Path, sense_voice_dir: Path):
    config = ServerConfig(
        host="127.0.0.1", port=0, audio_dir=tmp_path / "audio", save_audio=False, workers=2,
        second_pass=sense_voice_dir,
    )  # fmt: skip
    return await nursery.start(serve, config, Recognizer(load_model(zipformer2_model_dir), beam=4))


def announced(replies: list[dict]) -> list[dict]:
    return [s for r in replies for s in r.get("segments", [])]


def samples_of(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32768


def segment_samples(samples: np.ndarray, bg: float, ed: float) -> np.ndarray:
    last = len(samples) if abs(ed - len(samples) / RATE) < 1e-3 else round(ed * RATE)  # the end of the audio
    return samples[round(bg * RATE) : last]


def first_pass(zipformer2_model_dir: Path, pcm: bytes):
    rules = EndpointRules(silence_without_text=0.2, silence_after_text=0.1, max_segment=1.0)
    stream = Recognizer(load_model(zipformer2_model_dir), beam=4).create_stream(StreamOptions(endpoint=rules))
    stream.accept_waveform(samples_of(pcm))
    stream.input_finished()
    return stream.result()


@pytest.mark.parametrize("pipelined", [False, True], ids=["lock-step", "pipelined"])
async def test_segments_are_announced_with_the_second_pass(
    server, zipformer2_model_dir, sense_voice_dir, pipelined: bool
) -> None:
    pcm = speech_pcm()
    partials, final = await session(server.port, pcm, pipelined=pipelined, endpoint=SHORT_RULES, nbest=2)
    segments = announced([*partials, final])
    expected_first = first_pass(zipformer2_model_dir, pcm)
    assert len(expected_first.segments) > 5
    # every segment once, in order, with the first pass's time span
    assert [s["segment"] for s in segments] == list(range(len(expected_first.segments)))
    assert [(s["bg"], s["ed"]) for s in segments] == [
        (round(s.start, 3), round(s.end, 3)) for s in expected_first.segments
    ]
    # ... and the second pass's text, words, n-best and tags: those of exactly its samples
    offline = OfflineRecognizer(load_offline_model(sense_voice_dir), beam=server.config.beam, language="auto", use_itn=True)
    samples = samples_of(pcm)
    for s in segments:
        found = offline.recognize(
            segment_samples(samples, s["bg"], s["ed"]), OfflineOptions(nbest=2, sample_rate=RATE, offset_s=s["bg"])
        )
        assert s["result"] == found.result.text
        assert [w["w"] for w in s["times"]] == [w.piece for w in found.result.times]
        assert [w["bg"] for w in s["times"]] == [round(w.start, 3) for w in found.result.times]
        assert [n["text"] for n in s["nbest"]] == [t for t, _ in found.result.nbest[:2]]
        assert found.tags is not None
        assert (s["lang"], s["emotion"], s["event"]) == (found.tags.lang, found.tags.emotion, found.tags.event)
    assert {s["lang"] for s in segments} <= {"zh", "en", "yue", "ja", "ko", "nospeech"}
    # the whole transcript and its words are second-pass
    assert final["result"] == functools.reduce(join_texts, [s["result"] for s in segments])
    assert final["times"] == [w for s in segments for w in s["times"]]
    assert final["result"] != expected_first.text
    # default partials: announced second-pass texts, then first-pass text
    so_far = ""
    for reply in partials:
        for s in reply.get("segments", []):
            so_far = join_texts(so_far, s["result"])
        assert reply["result"].startswith(so_far)


async def test_compact_replies_with_the_second_pass(server) -> None:
    pcm = speech_pcm()
    partials, final = await session(server.port, pcm, pipelined=True, endpoint=SHORT_RULES, compact=True)
    d_partials, d_final = await session(server.port, pcm, pipelined=True, endpoint=SHORT_RULES)
    assert announced([*partials, final]) == announced([*d_partials, d_final])
    assert final["result"] == "" and final["times"] == [] and all("segment" in p for p in partials)


async def test_second_pass_false_gives_first_pass_segments(server, zipformer2_model_dir) -> None:
    pcm = speech_pcm()
    partials, final = await session(server.port, pcm, pipelined=True, endpoint=SHORT_RULES, secondPass=False)
    expected = first_pass(zipformer2_model_dir, pcm)
    segments = announced([*partials, final])
    assert [s["result"] for s in segments] == [s.text for s in expected.segments]
    assert final["result"] == expected.text and all("lang" not in s for s in segments)


async def test_second_pass_must_be_a_boolean(server) -> None:
    async with trio_websocket.open_websocket_url(ws_url(server.port)) as ws:
        await ws.send_message(start_msg(secondPass="no"))
        assert await expect_close(ws) == CLOSE_INVALID_PAYLOAD


class _Failing:
    """A recognizer whose model calls fail (prepare and decode work)."""

    def __init__(self, inner: OfflineRecognizer) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def run(self, utterances):
        raise RuntimeError("model call failed")


async def test_a_failed_second_pass_keeps_the_first_pass_text(server, zipformer2_model_dir) -> None:
    service = server.recognizer.second_pass
    service.recognizer = _Failing(service.recognizer)
    pcm = speech_pcm()
    partials, final = await session(server.port, pcm, pipelined=True, endpoint=SHORT_RULES)
    expected = first_pass(zipformer2_model_dir, pcm)
    assert [s["result"] for s in announced([*partials, final])] == [s.text for s in expected.segments]
    assert final["result"] == expected.text
    _, body = await http_get(server.port, "/metrics")
    failures = [line for line in body.decode().splitlines() if line.startswith("trio_asr_second_pass_failures_total")]
    assert failures and float(failures[0].split()[-1]) == len(expected.segments)


class _Slow:
    def __init__(self, inner: OfflineRecognizer) -> None:
        self.inner, self.delay = inner, 1.0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def run(self, utterances):
        time.sleep(self.delay)
        return self.inner.run(utterances)


async def test_the_second_pass_queue_counts_for_admission(server) -> None:
    service = server.recognizer.second_pass
    service.recognizer = _Slow(service.recognizer)
    status, body = await http_get(server.port, "/health")
    assert status == 200
    tickets = [service.submit(np.zeros(n, np.float32), OfflineOptions(sample_rate=RATE)) for n in (1600, 16000)]
    await trio.sleep(0.7)  # the first batch runs, the second waits past max_queue_delay (0.5 s)
    assert service.overloaded and server.overloaded
    status, body = await http_get(server.port, "/health")
    health = json.loads(body)
    assert status == 503 and health["status"] == "overloaded" and health["second_pass_queue_delay"] > 0.5
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(ws_url(server.port)):
            pass
    assert info.value.status_code == 503
    for ticket in tickets:
        await ticket.wait()
    _, body = await http_get(server.port, "/metrics")
    assert "trio_asr_second_pass_batch_size_count 2.0" in body.decode()
    assert 'trio_asr_admission_refusals_total{reason="overloaded"} 1.0' in body.decode()
    assert (await http_get(server.port, "/health"))[0] == 200


def test_settings_from_toml_and_the_startup_line(tmp_path, sense_voice_dir) -> None:
    from trio_asr.serving.addresses import startup_line
    from trio_asr.serving.config_file import load_config

    toml = tmp_path / "server.toml"
    toml.write_text(f'second_pass = "{sense_voice_dir}"\nsecond_pass_language = "en"\nsecond_pass_itn = false\n')
    config = load_config(toml, {"second_pass_itn": None})
    assert (config.second_pass, config.second_pass_language, config.second_pass_itn) == (sense_voice_dir, "en", False)
    assert ServerConfig().second_pass is None and ServerConfig().second_pass_itn
    line = startup_line(config, scheme="ws", port=1, ws_path="/", model_dir=Path("/m"))
    assert f"model /m, second pass {sense_voice_dir}" in line


async def test_a_model_that_cannot_load_stops_the_server(tmp_path, zipformer2_model_dir) -> None:
    from trio_asr.serving.server import ServerStartError

    config = ServerConfig(host="127.0.0.1", port=0, save_audio=False, second_pass=tmp_path / "missing")
    with pytest.raises(ServerStartError, match="second pass .*missing"):
        await serve(config, Recognizer(load_model(zipformer2_model_dir), beam=4))


async def test_the_final_reply_waits_for_slow_second_passes(server) -> None:
    service = server.recognizer.second_pass
    fast = await session(server.port, speech_pcm(), pipelined=True, endpoint=SHORT_RULES)
    slow = _Slow(service.recognizer)
    slow.delay = 0.2
    service.recognizer = slow
    partials, final = await session(server.port, speech_pcm(), pipelined=True, endpoint=SHORT_RULES)
    # one reply per frame (session() checks), and the same segments and texts, more of them in the final reply
    assert announced([*partials, final]) == announced([*fast[0], fast[1]])
    assert len(final["segments"]) > len(fast[1]["segments"]) and final["result"] == fast[1]["result"]


async def test_a_stream_hotword_the_second_pass_cannot_spell_is_left_out(server, sense_voice_dir) -> None:
    # 七 is a token of the streaming fixture, not of the SenseVoice fixture
    pcm = speech_pcm()
    partials, final = await session(server.port, pcm, pipelined=True, endpoint=SHORT_RULES, hotwords=["七"])
    offline = OfflineRecognizer(load_offline_model(sense_voice_dir), beam=server.config.beam, use_itn=True)
    samples = samples_of(pcm)
    for s in announced([*partials, final]):
        clip = segment_samples(samples, s["bg"], s["ed"])
        assert s["result"] == offline.recognize(clip, OfflineOptions(sample_rate=RATE, offset_s=s["bg"])).result.text
    _, body = await http_get(server.port, "/metrics")
    assert "trio_asr_second_pass_failures_total 0.0" in body.decode()


async def test_server_hotwords_the_second_pass_cannot_spell_are_left_out(
    nursery, tmp_path, zipformer2_model_dir, sense_voice_dir, caplog
) -> None:
    phrases = tmp_path / "hotwords.txt"
    phrases.write_text("七\n三 :2.0\n", encoding="utf-8")  # 七: streaming fixture only; 三: both
    config = ServerConfig(host="127.0.0.1", port=0, save_audio=False, second_pass=sense_voice_dir,
                          hotwords_file=phrases)  # fmt: skip
    server = await nursery.start(serve, config, Recognizer(load_model(zipformer2_model_dir), beam=4))
    compiled = server.recognizer.second_pass.recognizer.hotwords
    assert [h.phrase for h in compiled.hotwords] == ["三"]
    assert "'七'" in caplog.text and "left out of the second pass" in caplog.text
