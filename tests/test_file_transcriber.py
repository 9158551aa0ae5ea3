"""Uploaded files decoded with the server's models (:mod:`trio_asr.serving.file_transcriber`).

- with a second pass, a file's text is exactly what the offline recognizer
  makes of it alone (one piece) or of its pieces (a long file), each piece's
  text said in order as it is decoded, and a bounded number of its pieces
  queued at a time;
- without one, exactly what the streaming recognizer makes of the file as
  one stream, each closed segment said as it closes;
- a file at another rate is resampled to the model's; a language the
  offline model does not know is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
from offlineutil import read_wav
from paths import SPEECH_FILES
from serverutil import make_config

from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.model import load_model
from trio_asr.recognition.offline import OfflineOptions, OfflineRecognizer, load_offline_model
from trio_asr.recognition.offline.long_audio import recognize_long
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.resample import resample
from trio_asr.recognition.segments import join_texts
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.serving import file_transcriber
from trio_asr.serving.file_transcriber import FileRequest, FileTranscriber
from trio_asr.serving.server import Server, serve

RATE = 16000
RULES = EndpointRules(silence_without_text=0.2, silence_after_text=0.1, max_segment=1.0)


def speech(seconds: float) -> np.ndarray:
    clips = [read_wav(p) for p in SPEECH_FILES]
    joined = np.concatenate(clips * (1 + int(seconds * RATE) // sum(map(len, clips))))
    return joined[: int(seconds * RATE)]


async def start(nursery: trio.Nursery, tmp_path: Path, model_dir: Path, **overrides: object) -> Server:
    config = make_config(tmp_path, save_audio=False, **overrides)
    recognizer = Recognizer(load_model(model_dir), beam=4, endpoint=RULES)
    server: Server = await nursery.start(serve, config, recognizer)
    return server


def offline_recognizer(server: Server, sense_voice_dir: Path) -> OfflineRecognizer:
    config = server.config
    return OfflineRecognizer(load_offline_model(sense_voice_dir), beam=config.beam,
                             language=config.second_pass_language, use_itn=config.second_pass_itn)  # fmt: skip


async def test_a_short_file_is_what_the_offline_model_makes_of_it(
    nursery, tmp_path, zipformer2_model_dir, sense_voice_dir
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, second_pass=sense_voice_dir)
    samples = speech(6.0)
    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    found = await FileTranscriber(server.recognizer).transcribe(samples, RATE, FileRequest(nbest=2), say)
    expected = offline_recognizer(server, sense_voice_dir).recognize(samples, OfflineOptions(nbest=2))
    assert found.result.text == expected.result.text != ""
    assert found.result.nbest == expected.result.nbest
    assert found.result.times == expected.result.times
    assert expected.tags is not None and found.language == expected.tags.lang
    assert said == [expected.result.text]
    assert found.duration == pytest.approx(6.0)


async def test_a_long_file_is_decoded_in_pieces_a_few_at_a_time(
    nursery, tmp_path, zipformer2_model_dir, sense_voice_dir, monkeypatch
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, second_pass=sense_voice_dir)
    service = server.recognizer.second_pass
    assert service is not None
    most = 0
    submit = service.submit

    def counting_submit(samples, options):
        nonlocal most
        ticket = submit(samples, options)
        most = max(most, len([t for t in service._queue if not t.done.is_set()]))
        return ticket

    monkeypatch.setattr(service, "submit", counting_submit)
    monkeypatch.setattr(file_transcriber, "PIECES_IN_FLIGHT", 2)
    samples = speech(100.0)
    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    found = await FileTranscriber(server.recognizer).transcribe(samples, RATE, FileRequest(), say)
    expected = recognize_long(offline_recognizer(server, sense_voice_dir), samples)
    assert len(expected.pieces) >= 4
    assert found.result.text == expected.result.text
    assert [s.text for s in found.result.segments] == [s.text for s in expected.result.segments]
    assert [(s.start, s.end) for s in found.result.segments] == [(s.start, s.end) for s in expected.result.segments]
    assert said == [s.text for s in expected.result.segments]
    assert 1 <= most <= 2


async def test_without_a_second_pass_the_streaming_model_decodes_the_file(
    nursery, tmp_path, zipformer2_model_dir
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir)
    samples = speech(12.0)
    said: list[str] = []

    async def say(text: str) -> None:
        said.append(text)

    found = await FileTranscriber(server.recognizer).transcribe(samples, RATE, FileRequest(nbest=3), say)
    stream = Recognizer(load_model(zipformer2_model_dir), beam=4, endpoint=RULES).create_stream(StreamOptions(nbest=3))
    stream.accept_waveform(samples)
    stream.input_finished()
    expected = stream.result()
    assert len(expected.segments) > 3
    assert found.result.text == expected.text
    assert found.result.nbest == expected.nbest
    assert [s.text for s in found.result.segments] == [s.text for s in expected.segments]
    texts = [s.text for s in expected.segments] + ([expected.open.text] if expected.open and expected.open.text else [])
    assert said == texts
    joined = ""
    for text in said:
        joined = join_texts(joined, text)
    assert joined == expected.text
    assert found.language is None


async def test_a_file_at_another_rate_is_resampled(nursery, tmp_path, zipformer2_model_dir, sense_voice_dir) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, second_pass=sense_voice_dir)
    samples_44k = resample(speech(5.0), RATE, 44100)
    found = await FileTranscriber(server.recognizer).transcribe(samples_44k, 44100, FileRequest())
    expected = offline_recognizer(server, sense_voice_dir).recognize(resample(samples_44k, 44100, RATE))
    assert found.result.text == expected.result.text
    assert found.duration == pytest.approx(5.0, abs=1e-3)


async def test_a_language_the_model_does_not_know_is_refused(
    nursery, tmp_path, zipformer2_model_dir, sense_voice_dir
) -> None:
    server = await start(nursery, tmp_path, zipformer2_model_dir, second_pass=sense_voice_dir)
    transcriber = FileTranscriber(server.recognizer)
    transcriber.check(FileRequest(language="en"))
    with pytest.raises(ValueError, match="de"):
        transcriber.check(FileRequest(language="de"))
    with pytest.raises(ValueError):
        await transcriber.transcribe(speech(1.0), RATE, FileRequest(language="de"))
