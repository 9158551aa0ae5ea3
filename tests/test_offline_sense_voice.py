"""SenseVoice (offline CTC), checked against sherpa-onnx's OfflineRecognizer.

sherpa-onnx loads the very same ONNX file and is the oracle for text, tokens,
their times and the language/emotion/event tags; an independent front end
written here (kaldi-native-fbank set up as sherpa-onnx sets it up, FunASR's
LFR loop, the metadata's CMVN) is the oracle for our features.  Everything
runs on the synthetic fixture and, when ``TRIO_ASR_TEST_MODEL_DIR`` names a
SenseVoice model directory, on it too.
"""

from __future__ import annotations

from pathlib import Path

import jiwer
import kaldi_native_fbank as knf
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import sherpa_onnx

from offlineutil import model_files, ours_visible, real_model, samples_of, sherpa_decode, utterances, visible
from paths import SPEECH_FILES

from modelutil import edit_metadata
from trio_asr.recognition.model import ModelError
from trio_asr.recognition.offline import OfflineOptions, OfflineRecognizer, load_offline_model
from trio_asr.recognition.offline.lfr import apply_lfr
from trio_asr.recognition.offline.sense_voice import SenseVoiceModel, matches
from trio_asr.recognition.tokens import TokenTable
from trio_asr.testing.sense_voice import write_sense_voice_model

CONDITIONS = [("auto", False), ("en", True), ("zh", False)]


@pytest.fixture(scope="module", params=["fixture", "real"])
def model_dir(request, tmp_path_factory) -> Path:
    if request.param == "real":
        return real_model(SenseVoiceModel)
    directory = tmp_path_factory.mktemp("sense-voice")
    write_sense_voice_model(directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir) -> SenseVoiceModel:
    loaded = load_offline_model(model_dir)
    assert isinstance(loaded, SenseVoiceModel)
    return loaded


@pytest.fixture(scope="module")
def model_file(model_dir) -> Path:
    return model_files(model_dir)[0]


@pytest.fixture(scope="module")
def sherpa(model_dir, model_file):
    """sherpa-onnx recognizers by (language, use_itn), made once."""
    made = {}

    def get(language: str, use_itn: bool):
        if (language, use_itn) not in made:
            made[language, use_itn] = sherpa_onnx.OfflineRecognizer.from_sense_voice(
                model=str(model_file), tokens=str(model_files(model_dir)[1]),
                language="" if language == "auto" else language, use_itn=use_itn, num_threads=1,
            )
        return made[language, use_itn]

    return get


def funasr_lfr(frames: np.ndarray, m: int, n: int) -> np.ndarray:
    """FunASR's apply_lfr, written out as its loop (the oracle for ours)."""
    T = len(frames)
    out_frames = int(np.ceil(T / n))
    padded = np.vstack([np.tile(frames[0], ((m - 1) // 2, 1)), frames])
    T += (m - 1) // 2
    out = []
    for i in range(out_frames):
        if m <= T - i * n:
            out.append(padded[i * n : i * n + m].reshape(-1))
        else:
            rest = padded[i * n :].reshape(-1)
            out.append(np.hstack([rest] + [padded[-1]] * (m - (T - i * n))))
    return np.array(out, np.float32)


def sherpa_features(model_file: Path, samples: np.ndarray) -> np.ndarray:
    """What sherpa-onnx feeds the model, computed independently: its fbank
    options for SenseVoice, FunASR's LFR, the metadata's CMVN."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq, opts.frame_opts.dither = 16000, 0.0
    opts.frame_opts.window_type, opts.frame_opts.snip_edges = "hamming", True
    opts.mel_opts.num_bins, opts.mel_opts.high_freq = 80, 0.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, samples * 32768)
    fbank.input_finished()
    frames = np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)], np.float32)
    meta = onnx.load(str(model_file), load_external_data=False).metadata_props
    values = {p.key: p.value for p in meta}
    neg_mean = np.array(values["neg_mean"].split(","), np.float32)
    inv_stddev = np.array(values["inv_stddev"].split(","), np.float32)
    return (funasr_lfr(frames, 7, 6) + neg_mean) * inv_stddev


@pytest.mark.parametrize("count", [1, 5, 6, 7, 12, 13, 100])
def test_lfr_equals_funasr(count):
    frames = np.random.default_rng(count).standard_normal((count, 3)).astype(np.float32)
    got = apply_lfr(frames, 7, 6)
    assert got.shape == (-(-count // 6), 21)
    np.testing.assert_array_equal(got, funasr_lfr(frames, 7, 6))


def test_lfr_of_nothing_is_nothing():
    assert apply_lfr(np.zeros((0, 80), np.float32), 7, 6).shape == (0, 560)


@pytest.mark.parametrize("wav", utterances())
def test_features_equal_sherpa_onnx_front_end(model, model_file, wav):
    samples = samples_of(wav)
    expected = sherpa_features(model_file, samples)
    got = model.features(samples)
    assert got.shape == expected.shape == (-(-(1 + (len(samples) - 400) // 160) // 6), model.feature_dim)
    # CMVN multiplies the fbank's float32 rounding by up to ~0.4
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=0)


@pytest.mark.parametrize("wav", utterances())
@pytest.mark.parametrize("language, use_itn", CONDITIONS, ids=lambda v: str(v))
def test_greedy_result_equals_sherpa_onnx(model, sherpa, wav, language, use_itn):
    samples = samples_of(wav)
    expected = sherpa_decode(sherpa(language, use_itn), samples)
    ours = OfflineRecognizer(model, decoding="greedy", language=language, use_itn=use_itn).recognize(samples)

    shift = model.frame_shift_s
    assert ours_visible(ours.result, shift, ours.duration) == [
        item for item in visible(expected.tokens, expected.timestamps, shift)
        if item[1] * shift < ours.duration
    ]
    assert ours.result.text.replace(" ", "") == expected.text.replace(" ", "")
    assert ours.tags is not None
    assert (f"<|{ours.tags.lang}|>", f"<|{ours.tags.emotion}|>", f"<|{ours.tags.event}|>") == (
        expected.lang, expected.emotion, expected.event,
    )
    assert ours.tags.text_norm == ("withitn" if use_itn else "woitn")
    if language != "auto":
        assert ours.tags.lang == language
    assert expected.text or wav is None


@pytest.mark.parametrize("wav", utterances()[:3])
def test_text_depends_on_the_conditioning(request, model, wav):
    """The fixture's text changes with the language and with use_itn, so the
    parity above proves both reach the model as sherpa-onnx sends them."""
    if "real" in request.node.callspec.id:
        pytest.skip("a property of the fixture")
    samples = samples_of(wav)
    texts = {
        (language, itn): OfflineRecognizer(model, decoding="greedy", language=language, use_itn=itn)
        .recognize(samples).result.text
        for language, itn in CONDITIONS
    }
    assert len(set(texts.values())) == len(texts)


def test_unpadded_lfr_would_not_match(model, sherpa, monkeypatch):
    """The installed sherpa-onnx pads the LFR edges (ceil(T/6) frames): the
    older, unpadded stacking gives other text, so the parity tells them apart."""
    samples = samples_of(SPEECH_FILES[1])
    expected = sherpa_decode(sherpa("auto", False), samples).text.replace(" ", "")

    def unpadded(frames, m, n):
        count = (len(frames) - m) // n + 1
        return np.stack([frames[i * n : i * n + m].reshape(-1) for i in range(count)])

    monkeypatch.setattr("trio_asr.recognition.offline.sense_voice.apply_lfr", unpadded)
    assert OfflineRecognizer(model, decoding="greedy").recognize(samples).result.text.replace(" ", "") != expected


@pytest.mark.parametrize("wav", utterances())
def test_beam_is_at_least_as_likely_as_greedy(request, model, sherpa, wav):
    """Our prefix beam search's best text is at least as probable as the
    greedy path (sherpa-onnx's text); on a real model, whose outputs are
    peaky, it is nearly that text."""
    samples = samples_of(wav)
    beam = OfflineRecognizer(model, beam=10).recognize(samples, OfflineOptions(nbest=3)).result
    greedy = OfflineRecognizer(model, decoding="greedy").recognize(samples).result
    assert beam.nbest[0][1] >= greedy.nbest[0][1] - 1e-4
    assert len(beam.nbest) == 3 and beam.text == beam.nbest[0][0]
    if "real" in request.node.callspec.id:
        expected = sherpa_decode(sherpa("auto", False), samples).text.replace(" ", "")
        assert jiwer.cer(expected, beam.text.replace(" ", "")) <= 0.1 if expected else not beam.text


def test_tags_come_from_the_first_four_frames(model):
    samples = samples_of(SPEECH_FILES[0])
    recognizer = OfflineRecognizer(model)
    prepared = recognizer.prepare(samples)
    (log_probs,) = recognizer.run([prepared])
    pieces = [model.tokens.piece(int(t)) for t in log_probs[:4].argmax(axis=1)]
    tags = recognizer.decode(prepared, log_probs).tags
    assert [f"<|{v}|>" for v in (tags.lang, tags.emotion, tags.event, tags.text_norm)] == pieces


def test_geometry_comes_from_metadata(model):
    assert (model.window_size, model.window_shift, model.num_bins) == (7, 6, 80)
    assert model.feature_dim == 560 and model.tag_frames == 4
    assert model.sample_scale == 32768.0
    assert model.frame_shift_s == pytest.approx(0.06)
    assert model.tokens.blank_id == 0
    assert set(model.languages) == {"auto", "zh", "en", "yue", "ja", "ko"}


def test_unknown_language_is_refused(model):
    with pytest.raises(ValueError, match="klingon"):
        OfflineRecognizer(model, language="klingon")
    with pytest.raises(ValueError, match="xx"):
        OfflineRecognizer(model).recognize(np.zeros(16000, np.float32), OfflineOptions(language="xx"))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lfr_window_size": None}, "lfr_window_size"),
        ({"neg_mean": "1,2,3"}, "neg_mean"),
        ({"inv_stddev": "a,b"}, "inv_stddev"),
        ({"vocab_size": "7"}, "vocab_size"),
        ({"lang_zh": "x"}, "not an integer"),
        ({"comment": "FunASR Nano"}, "Nano"),
    ],
)
def test_bad_metadata_is_a_model_error(tmp_path, changes, message):
    path = write_sense_voice_model(tmp_path)
    edit_metadata(path, **changes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert matches(session) == ("lfr_window_size" not in changes)
    with pytest.raises(ModelError, match=message):
        SenseVoiceModel(session, TokenTable.from_file(tmp_path / "tokens.txt"))
