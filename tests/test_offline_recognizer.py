"""The offline recognizer: batches, int8 models, hotwords, options, result shapes.

Runs on both offline fixtures (SenseVoice, NeMo CTC); parity with
sherpa-onnx is checked per format in test_offline_sense_voice.py and
test_offline_nemo.py, and here for their int8 versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sherpa_onnx

from offlineutil import model_files, noise, read_wav, real_model, sherpa_decode
from paths import SPEECH_FILES

from trio_asr.recognition.hotwords import Hotword, compile_hotwords
from trio_asr.recognition.model import ModelError
from trio_asr.recognition.offline import (
    OfflineModel,
    OfflineOptions,
    OfflineRecognizer,
    is_offline_model,
    load_offline_model,
    shift_times,
)
from trio_asr.recognition.offline.sense_voice import SenseVoiceModel
from trio_asr.testing import zipformer2_ctc
from trio_asr.testing.int8 import quantize_model_dir
from trio_asr.testing.nemo_ctc_offline import write_nemo_ctc_offline_model
from trio_asr.testing.sense_voice import write_sense_voice_model

WRITERS = {"sense-voice": write_sense_voice_model, "nemo": write_nemo_ctc_offline_model}
PHRASES = {"sense-voice": "我们", "nemo": "three"}


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [read_wav(p) for p in SPEECH_FILES] + [noise(1.3, seed=4)]


@pytest.fixture(scope="module", params=[*WRITERS, "real"])
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def float_dir(kind, tmp_path_factory) -> Path:
    """A float model: each fixture, and the real model if there is one."""
    if kind == "real":
        return real_model(OfflineModel)
    directory = tmp_path_factory.mktemp(f"{kind}-float")
    WRITERS[kind](directory)
    return directory


@pytest.fixture(scope="module")
def int8_dir(kind, float_dir, tmp_path_factory) -> Path:
    if kind == "real":
        pytest.skip("the int8 versions of the fixtures, made here")
    return quantize_model_dir(float_dir, tmp_path_factory.mktemp("int8"))


def sherpa_for(kind: str, model_dir: Path):
    files = dict(model=str(model_dir / "model.int8.onnx"), tokens=str(model_dir / "tokens.txt"))
    if kind == "sense-voice":
        return sherpa_onnx.OfflineRecognizer.from_sense_voice(**files)
    return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(**files)


def test_a_batch_gives_each_utterance_what_it_gives_alone(kind, float_dir, clips):
    model = load_offline_model(float_dir)
    if kind == "real" and not model.batch_invariant:
        pytest.skip(f"{float_dir} is an int8 model (name its model.onnx to batch it)")
    assert model.batch_invariant
    recognizer = OfflineRecognizer(model, beam=8)
    options = OfflineOptions(nbest=3)
    batch = recognizer.recognize_batch(clips, options)
    for clip, got in zip(clips, batch):
        alone = recognizer.recognize(clip, options)
        assert [t for t, _ in got.result.nbest] == [t for t, _ in alone.result.nbest]
        np.testing.assert_allclose(
            [s for _, s in got.result.nbest], [s for _, s in alone.result.nbest], rtol=1e-5, atol=1e-4
        )
        assert got.result.tokens == alone.result.tokens and got.tags == alone.tags


def test_sense_voice_batch_mixes_languages(tmp_path, clips):
    write_sense_voice_model(tmp_path)
    recognizer = OfflineRecognizer(load_offline_model(tmp_path), decoding="greedy")
    options = [OfflineOptions(language=lang, use_itn=i % 2 == 0) for i, lang in
               enumerate(["en", "zh", "auto", "ja", "ko", "yue"])]
    batch = recognizer.recognize_batch(clips, options)
    for clip, option, got in zip(clips, options, batch):
        alone = recognizer.recognize(clip, option)
        assert got.result.text == alone.result.text and got.tags == alone.tags
        assert got.tags.text_norm == ("withitn" if option.use_itn else "woitn")


def test_int8_models_run_one_by_one_and_match_sherpa_onnx(kind, int8_dir, clips):
    """A dynamically quantized model is not batch invariant: the recognizer
    runs its utterances alone, each giving exactly what it gives alone, which
    is what sherpa-onnx gives."""
    model = load_offline_model(int8_dir)
    assert not model.batch_invariant
    recognizer = OfflineRecognizer(model, decoding="greedy")
    sherpa = sherpa_for(kind, int8_dir)
    for clip, got in zip(clips, recognizer.recognize_batch(clips)):
        assert got == recognizer.recognize(clip)
        expected = sherpa_decode(sherpa, clip)
        assert got.result.text.replace(" ", "") == expected.text.replace("<unk>", "").replace(" ", "")


def test_result_has_the_streaming_shapes(float_dir, clips):
    model = load_offline_model(float_dir)
    clip = clips[1]
    result = OfflineRecognizer(model).recognize(clip, OfflineOptions(nbest=4)).result
    duration = len(clip) / 16000
    assert result.text and result.text == result.nbest[0][0] and len(result.nbest) == 4
    assert len({t for t, _ in result.nbest}) == 4
    (segment,) = result.segments
    assert segment.final and segment.index == 0 and segment.text == result.text
    assert segment.start == 0.0 and duration - model.frame_shift_s <= segment.end <= duration
    assert result.tokens == segment.tokens and result.times == segment.words
    starts = [t.start for t in result.tokens]
    assert starts == sorted(starts) and all(t.start < t.end <= duration for t in result.tokens)
    assert result.open is not None and not result.open.final and result.open.text == ""


def test_offset_moves_every_time(float_dir, clips):
    recognizer = OfflineRecognizer(load_offline_model(float_dir))
    plain = recognizer.recognize(clips[0]).result
    moved = recognizer.recognize(clips[0], OfflineOptions(offset_s=12.5)).result
    assert moved == shift_times(plain, 12.5)
    assert moved.text == plain.text
    assert [t.start for t in moved.tokens] == pytest.approx([t.start + 12.5 for t in plain.tokens])
    assert moved.segments[0].start == 12.5 and moved.times[0].start == pytest.approx(plain.times[0].start + 12.5)


def test_other_sample_rates_are_resampled(float_dir, clips):
    recognizer = OfflineRecognizer(load_offline_model(float_dir))
    at_8k = clips[1][::2].copy()
    result = recognizer.recognize(at_8k, OfflineOptions(sample_rate=8000))
    assert result.duration == pytest.approx(len(at_8k) / 8000)
    assert result.result.text and all(t.end <= result.duration for t in result.result.tokens)


@pytest.mark.parametrize("length", [0, 1, 399, 400])
def test_audio_too_short_for_the_model_is_no_text(float_dir, length):
    model = load_offline_model(float_dir)
    result = OfflineRecognizer(model).recognize(np.zeros(length, np.float32))
    assert result.duration == length / 16000
    if not len(model.features(np.zeros(length, np.float32))):
        assert result.result.text == "" and result.tags is None and result.result.segments == ()


def test_hotwords_bias_the_search(kind, float_dir, clips):
    if kind == "real":
        pytest.skip("the phrases are the fixtures'")
    model = load_offline_model(float_dir)
    phrase = PHRASES[kind]
    hotwords = [Hotword(phrase, 3.0)]
    plain = OfflineRecognizer(model).recognize(clips[1]).result.text
    per_utterance = OfflineRecognizer(model).recognize(clips[1], OfflineOptions(hotwords=hotwords)).result.text
    shared = OfflineRecognizer(model, hotwords=compile_hotwords(hotwords, model.tokens)).recognize(clips[1])
    assert per_utterance.count(phrase) > plain.count(phrase)
    assert shared.result.text == per_utterance


def test_greedy_refuses_hotwords(float_dir):
    recognizer = OfflineRecognizer(load_offline_model(float_dir), decoding="greedy")
    with pytest.raises(ValueError, match="beam"):
        recognizer.prepare(np.zeros(1600, np.float32), OfflineOptions(hotwords=[Hotword("a")]))


def test_options_are_checked():
    with pytest.raises(ValueError):
        OfflineOptions(nbest=0)
    with pytest.raises(ValueError):
        OfflineOptions(offset_s=-1.0)
    with pytest.raises(ValueError):
        OfflineOptions(sample_rate=0)


def test_batch_needs_one_options_per_utterance(float_dir, clips):
    recognizer = OfflineRecognizer(load_offline_model(float_dir))
    with pytest.raises(ValueError, match="options"):
        recognizer.recognize_batch(clips[:2], [OfflineOptions()])


def test_loading(float_dir, tmp_path):
    model = load_offline_model(float_dir)
    model_file, _ = model_files(float_dir)
    assert load_offline_model(model_file).vocab_size == model.vocab_size
    assert is_offline_model(float_dir) and is_offline_model(model_file)
    assert not is_offline_model(tmp_path / "missing")
    with pytest.raises(ModelError, match="does not exist"):
        load_offline_model(tmp_path / "missing")
    (tmp_path / "no-tokens").mkdir()
    (tmp_path / "no-tokens" / "model.onnx").write_bytes(model_file.read_bytes())
    with pytest.raises(ModelError, match="tokens.txt"):
        load_offline_model(tmp_path / "no-tokens")
    (tmp_path / "not-onnx").mkdir()
    (tmp_path / "not-onnx" / "model.onnx").write_bytes(b"not a model")
    (tmp_path / "not-onnx" / "tokens.txt").write_text("<blk> 0\n")
    with pytest.raises(ModelError, match="cannot load"):
        load_offline_model(tmp_path / "not-onnx")


def test_a_streaming_model_is_not_an_offline_one(tmp_path):
    directory = zipformer2_ctc.write_model(tmp_path)
    assert not is_offline_model(directory)
    with pytest.raises(ModelError, match="not a supported offline model"):
        load_offline_model(directory)


def test_sense_voice_is_detected(tmp_path):
    write_sense_voice_model(tmp_path)
    assert isinstance(load_offline_model(tmp_path), SenseVoiceModel)
