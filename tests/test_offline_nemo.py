"""NeMo offline CTC models, checked against sherpa-onnx's OfflineRecognizer.

sherpa-onnx loads the very same ONNX file and is the oracle for text, tokens
and their times; kaldi-native-fbank set up as sherpa-onnx sets it up, with
NeMo's log guard and per-feature normalisation written out here, is the
oracle for our features.  Everything runs on synthetic fixtures (subsampling
4 and 8, normalised per feature or not) and, when ``TRIO_ASR_TEST_MODEL_DIR``
names a NeMo offline CTC model directory, on it too.
"""

from __future__ import annotations

from pathlib import Path

import jiwer
import kaldi_native_fbank as knf
import numpy as np
import onnxruntime as ort
import pytest
import sherpa_onnx

from offlineutil import model_files, ours_visible, real_model, samples_of, sherpa_decode, utterances, visible

from modelutil import edit_metadata
from trio_asr.recognition.model import ModelError
from trio_asr.recognition.offline import OfflineOptions, OfflineRecognizer, is_offline_model, load_offline_model
from trio_asr.recognition.offline.nemo_ctc import NemoCtcOfflineModel, matches
from trio_asr.recognition.tokens import TokenTable
from trio_asr.testing.nemo_ctc import write_nemo_ctc_model
from trio_asr.testing.nemo_ctc_offline import NemoOfflineSpec, write_nemo_ctc_offline_model

SPECS = {
    "sub4": NemoOfflineSpec(subsampling_factor=4, seed=0),
    "sub8": NemoOfflineSpec(subsampling_factor=8, seed=1),
    "raw": NemoOfflineSpec(subsampling_factor=4, normalize_type="", seed=2),
}


@pytest.fixture(scope="module", params=[*SPECS, "real"])
def model_dir(request, tmp_path_factory) -> Path:
    if request.param == "real":
        return real_model(NemoCtcOfflineModel)
    directory = tmp_path_factory.mktemp(f"nemo-offline-{request.param}")
    write_nemo_ctc_offline_model(directory, SPECS[request.param])
    return directory


@pytest.fixture(scope="module")
def model(model_dir) -> NemoCtcOfflineModel:
    loaded = load_offline_model(model_dir)
    assert isinstance(loaded, NemoCtcOfflineModel)
    return loaded


@pytest.fixture(scope="module")
def sherpa(model_dir, model):
    return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
        model=str(model_files(model_dir)[0]), tokens=str(model_files(model_dir)[1]),
        feature_dim=model.feature_dim, num_threads=1,
    )


def sherpa_features(samples: np.ndarray, num_bins: int, per_feature: bool) -> np.ndarray:
    """What sherpa-onnx 2.x feeds a NeMo offline model, written out here:
    kaldi-native-fbank with its options; normalised per feature, the log is
    NeMo's log(mel + 2^-24) (found by probing sherpa-onnx's model input)."""
    opts = knf.FbankOptions()
    f, m = opts.frame_opts, opts.mel_opts
    f.samp_freq, f.dither, f.snip_edges = 16000, 0.0, False
    f.window_type, f.preemph_coeff, f.remove_dc_offset = "hann", 0.97, False
    m.num_bins, m.low_freq, m.high_freq, m.is_librosa = num_bins, 0.0, 0.0, True
    opts.use_log_fbank = not per_feature
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, samples)
    fbank.input_finished()
    frames = np.array([fbank.get_frame(i) for i in range(fbank.num_frames_ready)], np.float64)
    if not per_feature:
        return frames.astype(np.float32)
    frames = np.log(frames + 2.0**-24)
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    return ((frames - mean) / (std + 1e-5)).astype(np.float32)


@pytest.mark.parametrize("wav", utterances())
def test_features_equal_sherpa_onnx_front_end(model, wav):
    samples = samples_of(wav)
    expected = sherpa_features(samples, model.feature_dim, model.per_feature)
    got = model.features(samples)
    assert got.shape == expected.shape == (round(len(samples) / 160), model.feature_dim)
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("wav", utterances())
def test_greedy_result_equals_sherpa_onnx(model, sherpa, wav):
    samples = samples_of(wav)
    expected = sherpa_decode(sherpa, samples)
    ours = OfflineRecognizer(model, decoding="greedy").recognize(samples)

    shift = model.frame_shift_s
    assert ours_visible(ours.result, shift, ours.duration) == [
        item for item in visible(expected.tokens, expected.timestamps, shift)
        if item[1] * shift < ours.duration
    ]
    # sherpa-onnx spells <unk> in its text; our text leaves control tokens out
    assert ours.result.text == " ".join(expected.text.replace("<unk>", "").split())
    assert ours.tags is None
    assert expected.text or wav is None


def test_output_frames_are_sherpa_onnxs_count(model):
    """sherpa-onnx decodes T // subsampling_factor output frames (the model
    gives ceil(T / subsampling_factor) for these exports); so do we."""
    for samples in (16000 + 160 * k for k in range(model.subsampling)):
        recognizer = OfflineRecognizer(model)
        prepared = recognizer.prepare(np.zeros(samples, np.float32))
        (log_probs,) = recognizer.run([prepared])
        assert len(log_probs) == len(prepared.features) // model.subsampling


@pytest.mark.parametrize("wav", utterances())
def test_beam_is_at_least_as_likely_as_greedy(request, model, sherpa, wav):
    samples = samples_of(wav)
    beam = OfflineRecognizer(model, beam=10).recognize(samples, OfflineOptions(nbest=3)).result
    greedy = OfflineRecognizer(model, decoding="greedy").recognize(samples).result
    assert beam.nbest[0][1] >= greedy.nbest[0][1] - 1e-4
    assert beam.text == beam.nbest[0][0]
    if "real" in request.node.callspec.id:
        expected = " ".join(sherpa_decode(sherpa, samples).text.split())
        assert jiwer.wer(expected, beam.text) <= 0.1 if expected else not beam.text


def test_geometry_comes_from_metadata(model, model_dir):
    meta = ort.InferenceSession(
        str(model_files(model_dir)[0]), providers=["CPUExecutionProvider"]
    ).get_modelmeta().custom_metadata_map
    assert model.subsampling == int(meta["subsampling_factor"])
    assert model.frame_shift_s == pytest.approx(0.01 * model.subsampling)
    assert model.vocab_size == int(meta["vocab_size"]) + 1 == len(model.tokens)
    assert model.tokens.blank_id == model.vocab_size - 1
    assert model.per_feature == (meta.get("normalize_type", "") == "per_feature")
    assert model.sample_scale == 1.0 and model.tag_frames == 0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"normalize_type": "all_features"}, "normalization"),
        ({"is_giga_am": "1"}, "GigaAM"),
        ({"vocab_size": "40"}, "classes"),
        ({"subsampling_factor": "0"}, "positive"),
        ({"subsampling_factor": "x"}, "not an integer"),
    ],
)
def test_bad_metadata_is_a_model_error(tmp_path, changes, message):
    path = write_nemo_ctc_offline_model(tmp_path)
    edit_metadata(path, **changes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelError, match=message):
        NemoCtcOfflineModel(session, TokenTable.from_file(tmp_path / "tokens.txt"))


def test_tokens_without_blank_last_is_a_model_error(tmp_path):
    path = write_nemo_ctc_offline_model(tmp_path)
    tokens = tmp_path / "tokens.txt"
    lines = tokens.read_text(encoding="utf-8").splitlines()
    tokens.write_text("\n".join(lines[:-1] + ["<other> " + lines[-1].split()[1]]) + "\n", "utf-8")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="blank"):
        NemoCtcOfflineModel(session, TokenTable.from_file(tokens))


def test_streaming_and_offline_formats_are_told_apart(tmp_path):
    streaming, offline = tmp_path / "streaming", tmp_path / "offline"
    write_nemo_ctc_model(streaming)
    write_nemo_ctc_offline_model(offline)
    sessions = {
        name: ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
        for name, d in (("streaming", streaming), ("offline", offline))
    }
    assert matches(sessions["offline"]) and not matches(sessions["streaming"])
    assert is_offline_model(offline) and not is_offline_model(streaming)
    with pytest.raises(ModelError, match="not a supported offline model"):
        load_offline_model(streaming)
