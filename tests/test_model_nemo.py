"""NeMo streaming fast-conformer CTC models, checked against sherpa-onnx.

sherpa-onnx loads the very same ONNX file and is the oracle for tokens, text
and timestamps; an independent onnxruntime loop written here is the oracle for
log-probs and state plumbing.  Features come from our ``StreamingFbank`` with
``model.feature_options``; that they equal sherpa-onnx's (kaldi-native-fbank
set up the way sherpa-onnx sets it up for NeMo) is checked on its own.
Everything runs on the synthetic fixture and, when ``TRIO_ASR_TEST_MODEL_DIR``
names a NeMo model directory, on it too.
"""

from __future__ import annotations

import os
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import onnxruntime as ort
import pytest
import sherpa_onnx

from modelutil import decode_streams, edit_metadata
from offlineutil import noise, read_wav
from paths import SPEECH_FILES as SPEECH

from trio_asr.recognition.features import StreamingFbank
from trio_asr.recognition.model import ModelError, ModelState, find_model_file
from trio_asr.recognition.model.nemo_ctc import NemoCtcModel, matches
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.search import GreedySearch
from trio_asr.recognition.tokens import TokenTable
from trio_asr.testing.nemo_ctc import NemoCtcSpec, write_nemo_ctc_model

TAIL_PADDING_S = 0.5  # silence after the audio, as sherpa-onnx's examples append

# 480 ms-like (6 output frames per run) and 80 ms-like (1 output frame per run)
SPECS = {
    "w57s48": NemoCtcSpec(window_size=57, chunk_shift=48, seed=1),
    "w17s8": NemoCtcSpec(window_size=17, chunk_shift=8, seed=2),
}


def _real_model_dir() -> Path | None:
    value = os.environ.get("TRIO_ASR_TEST_MODEL_DIR")
    return Path(value) if value else None


def _load(model_dir: Path, threads: int = 1) -> NemoCtcModel:
    session = ort.InferenceSession(
        str(find_model_file(model_dir)), providers=["CPUExecutionProvider"]
    )
    if not matches(session):
        pytest.skip(f"{model_dir} is not a NeMo streaming CTC model")
    return NemoCtcModel(session, TokenTable.from_file(model_dir / "tokens.txt"))


@pytest.fixture(scope="module", params=[*SPECS, "real"])
def model_dir(request, tmp_path_factory) -> Path:
    if request.param == "real":
        real = _real_model_dir()
        if real is None:
            pytest.skip("TRIO_ASR_TEST_MODEL_DIR is not set (no real NeMo model to check)")
        return real
    directory = tmp_path_factory.mktemp(f"nemo-{request.param}")
    write_nemo_ctc_model(directory, SPECS[request.param])
    return directory


@pytest.fixture(scope="module")
def model(model_dir) -> NemoCtcModel:
    return _load(model_dir)


def padded(samples: np.ndarray) -> np.ndarray:
    return np.concatenate([samples, np.zeros(int(16000 * TAIL_PADDING_S), np.float32)])


def fbank(model: NemoCtcModel, samples: np.ndarray) -> np.ndarray:
    """All frames of ``samples`` (in [-1, 1], as sherpa-onnx takes them) with
    the model's feature options and sample scale, by our StreamingFbank
    (which scales float input by 32768, like the recognizer undoes)."""
    fb = StreamingFbank(model.feature_options)
    scaled = (samples * (model.sample_scale / 32768)).astype(np.float32)
    return np.concatenate([fb.accept_waveform(scaled), fb.flush()])


def sherpa_fbank(samples: np.ndarray, num_bins: int) -> np.ndarray:
    """What sherpa-onnx 2.x computes for NeMo CTC models: kaldi-native-fbank
    with these options, written out here (not taken from feature_options)."""
    opts = knf.FbankOptions()
    f, m = opts.frame_opts, opts.mel_opts
    f.samp_freq, f.dither, f.snip_edges = 16000, 0.0, False
    f.window_type, f.preemph_coeff, f.remove_dc_offset = "hann", 0.97, False
    m.num_bins, m.low_freq, m.high_freq, m.is_librosa = num_bins, 0.0, 0.0, True
    online = knf.OnlineFbank(opts)
    online.accept_waveform(16000, samples.astype(np.float32))
    online.input_finished()
    return np.array([online.get_frame(i) for i in range(online.num_frames_ready)], np.float32)


def sherpa_decode(model_dir: Path, samples: np.ndarray, feed: int):
    recognizer = sherpa_onnx.OnlineRecognizer.from_nemo_ctc(
        tokens=str(model_dir / "tokens.txt"), model=str(find_model_file(model_dir)),
        num_threads=1,
    )
    stream = recognizer.create_stream()
    for start in range(0, len(samples), feed):
        stream.accept_waveform(16000, samples[start : start + feed])
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
    stream.input_finished()
    while recognizer.is_ready(stream):
        recognizer.decode_stream(stream)
    return recognizer.get_result_all(stream)


def chunks_sherpa_runs(model: NemoCtcModel, num_frames: int) -> int:
    """sherpa-onnx runs a chunk only once a frame *beyond* it exists."""
    return max(0, (num_frames - model.chunk_frames - 1) // model.chunk_shift + 1)


def ours(model: NemoCtcModel, features: np.ndarray, feed: int) -> np.ndarray:
    stream = model.create_stream()
    out = []
    for start in range(0, len(features), feed):
        stream.accept_features(features[start : start + feed])
        out.append(stream.decode_ready_chunks())
    return np.concatenate(out)


def reference_log_probs(model_file: Path, features: np.ndarray) -> np.ndarray:
    """An independent run of the exported graph: inputs by position, states
    zero-initialised from the metadata and fed back output 2..4 -> input 2..4."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    window, shift = int(meta["window_size"]), int(meta["chunk_shift"])
    names = [i.name for i in session.get_inputs()]
    caches = [
        np.zeros([1] + [int(meta[f"cache_last_{k}_dim{d}"]) for d in (1, 2, 3)], np.float32)
        for k in ("channel", "time")
    ]
    cache_len = np.zeros(1, np.int64)
    out = []
    start = 0
    while start + window <= len(features):
        x = features[start : start + window].T[None].copy()
        results = session.run(None, dict(zip(names, [
            x, np.array([window], np.int64), caches[0], caches[1], cache_len])))
        out.append(results[0][0])
        caches, cache_len = [results[2], results[3]], results[4]
        start += shift
    return np.concatenate(out)


def _utterances():
    return [pytest.param(p, id=p.stem) for p in SPEECH] + [pytest.param(None, id="noise")]


@pytest.mark.parametrize("wav", _utterances())
@pytest.mark.parametrize("feed", [160, 1031, 4000], ids=lambda n: f"feed{n}")
def test_greedy_result_equals_sherpa_onnx(model, model_dir, wav, feed):
    samples = padded(read_wav(wav) if wav is not None else noise())
    expected = sherpa_decode(model_dir, samples, feed)

    features = fbank(model, samples)
    n_chunks = chunks_sherpa_runs(model, len(features))
    usable = (n_chunks - 1) * model.chunk_shift + model.chunk_frames
    log_probs = ours(model, features[:usable], feed=max(1, feed // 160))
    search = GreedySearch(blank_id=model.tokens.blank_id)
    search.accept(log_probs)
    best = search.best

    assert [model.tokens.piece(t).replace("\u2581", " ") for t in best.tokens] == expected.tokens
    assert " ".join(model.tokens.text(best.tokens).split()) == " ".join(
        expected.text.replace("<unk>", "").split()
    )
    # sherpa-onnx reports CTC times as frame * 40 ms whatever the model's
    # subsampling (a constant in online-recognizer-ctc-impl.h), so compare frames.
    assert list(best.frames) == [round(t / 0.04) for t in expected.timestamps]
    assert len(expected.tokens) > 0 or wav is None


@pytest.mark.parametrize("wav", _utterances())
def test_features_equal_sherpa_onnx_features(model, wav):
    samples = padded(read_wav(wav) if wav is not None else noise())
    expected = sherpa_fbank(samples, model.feature_dim)
    got = fbank(model, samples)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("wav", _utterances())
@pytest.mark.parametrize("feed", [160, 4000], ids=lambda n: f"feed{n}")
def test_recognizer_greedy_equals_sherpa_onnx(model, model_dir, wav, feed):
    """The whole path (audio -> StreamingFbank -> model chunks -> greedy CTC ->
    text and times) against sherpa-onnx's streaming greedy decode.

    sherpa-onnx stops before the padded tail we decode in input_finished, so
    only what both decoded is compared: tokens in output frames of the chunks
    sherpa-onnx ran."""
    samples = padded(read_wav(wav) if wav is not None else noise())
    expected = sherpa_decode(model_dir, samples, feed)

    stream = Recognizer(model, decoding="greedy").create_stream()
    for start in range(0, len(samples), feed):
        stream.accept_waveform(samples[start : start + feed])
        stream.decode()
    stream.input_finished()
    result = stream.result()

    n_chunks = chunks_sherpa_runs(model, len(sherpa_fbank(samples, model.feature_dim)))
    limit = n_chunks * model.chunk_shift // model.subsampling  # output frames sherpa decoded
    got = [(t.piece, round(t.start / model.frame_shift_s)) for t in result.tokens]
    both = [(piece, frame) for piece, frame in got if frame < limit]
    want = [
        (piece.strip(), round(t / 0.04))
        for piece, t in zip(expected.tokens, expected.timestamps)
        if piece.strip() and piece != "<unk>"
    ]
    assert both == want
    assert len(want) > 0 or wav is None
    ours_text = " ".join(result.text.split())
    sherpa_text = " ".join(expected.text.replace("<unk>", "").split())
    assert ours_text.startswith(sherpa_text)
    if len(both) == len(got):  # nothing after sherpa's last chunk
        assert ours_text == sherpa_text


def test_frame_geometry_comes_from_metadata(model, model_dir):
    meta = ort.InferenceSession(
        str(find_model_file(model_dir)), providers=["CPUExecutionProvider"]
    ).get_modelmeta().custom_metadata_map
    assert model.chunk_frames == int(meta["window_size"])
    assert model.chunk_shift == int(meta["chunk_shift"])
    assert model.subsampling == int(meta["subsampling_factor"])
    assert model.frame_shift_s == pytest.approx(0.01 * model.subsampling)
    assert model.vocab_size == int(meta["vocab_size"]) + 1 == len(model.tokens)
    assert model.tokens.blank_id == model.vocab_size - 1
    x = np.zeros((1, model.chunk_frames, model.feature_dim), np.float32)
    log_probs, _ = model.run(x, [model.initial_state()])
    assert log_probs.shape == (1, model.chunk_shift // model.subsampling, model.vocab_size)


def test_pad_value_is_the_features_of_silence(model):
    silence = fbank(model, np.zeros(16000, np.float32))
    np.testing.assert_allclose(silence, model.feature_pad_value, atol=1e-6, rtol=0)


@pytest.mark.parametrize("feed", [1, 13, 200])
def test_log_probs_equal_independent_reference_loop(model, model_dir, feed):
    features = fbank(model, padded(read_wav(SPEECH[0])))
    expected = reference_log_probs(find_model_file(model_dir), features)
    got = ours(model, features, feed)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0, atol=1e-4)


def test_batch_of_unequal_streams_equals_one_by_one(model):
    inputs = [read_wav(p) for p in SPEECH[:3]] + [noise(1.3, seed=5)]
    features = [fbank(model, padded(x)) for x in inputs]
    assert len({len(f) for f in features}) == len(features)

    alone = [ours(model, f, feed=len(f)) for f in features]

    streams = [model.create_stream() for _ in features]
    batched = [[] for _ in features]
    for step in range(0, max(len(f) for f in features), 37):
        for stream, f in zip(streams, features):
            if step < len(f):
                stream.accept_features(f[step : step + 37])
        for out, got in zip(batched, decode_streams(model, streams)):
            out.append(got)
    for one, many in zip(alone, batched):
        # batched GEMMs round differently: equal to float32 precision, not bitwise
        np.testing.assert_allclose(np.concatenate(many), one, atol=1e-5, rtol=1e-5)


def test_run_stacks_states_of_different_streams(model):
    rng = np.random.default_rng(3)
    shape = (1, model.chunk_frames, model.feature_dim)
    chunks = [rng.normal(-5, 3, shape).astype(np.float32) for _ in range(3)]
    states = []
    for chunk in chunks:  # give every stream its own history
        _, (state,) = model.run(chunk, [model.initial_state()])
        states.append(state)
    batched_lp, batched_states = model.run(np.concatenate(chunks[::-1]), states[::-1])
    for b, (chunk, state) in enumerate(zip(chunks[::-1], states[::-1])):
        lp, (new,) = model.run(chunk, [state])
        np.testing.assert_allclose(batched_lp[b], lp[0], atol=1e-5, rtol=1e-5)
        for got, want in zip(batched_states[b].tensors, new.tensors):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_fixture_output_depends_on_every_state_tensor(tmp_path, spec):
    model = _load_fixture(tmp_path, spec)
    rng = np.random.default_rng(0)
    shape = (1, model.chunk_frames, model.feature_dim)
    state = model.initial_state()
    for _ in range(2):
        _, (state,) = model.run(rng.normal(-5, 3, shape).astype(np.float32), [state])
    chunk = rng.normal(-5, 3, shape).astype(np.float32)
    reference, _ = model.run(chunk, [state])
    for i, tensor in enumerate(state.tensors):
        flat = tensor.reshape(-1)
        for j in (0, flat.size - 1):  # first and last element of each tensor
            changed = flat.copy()
            changed[j] += 1
            tensors = list(state.tensors)
            tensors[i] = changed.reshape(tensor.shape)
            lp, _ = model.run(chunk, [ModelState(tensors, state.batch_axes)])
            assert np.abs(lp - reference).max() > 1e-3, (i, j)
    other, _ = model.run(chunk + 0.5, [state])
    assert np.abs(other - reference).max() > 1e-3


def _load_fixture(directory: Path, spec: NemoCtcSpec = SPECS["w57s48"]) -> NemoCtcModel:
    write_nemo_ctc_model(directory, spec)
    return _load(directory)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"normalize_type": "per_feature"}, "normalization"),
        ({"window_size": None}, "window_size"),
        ({"vocab_size": "40"}, "classes"),
        ({"cache_last_time_dim3": "4"}, "cache_last_time"),
        ({"chunk_shift": "x"}, "not an integer"),
    ],
)
def test_bad_metadata_is_a_model_error(tmp_path, changes, message):
    path = write_nemo_ctc_model(tmp_path)
    edit_metadata(path, **changes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelError, match=message):
        NemoCtcModel(session, TokenTable.from_file(tmp_path / "tokens.txt"))


def test_tokens_without_blank_last_is_a_model_error(tmp_path):
    path = write_nemo_ctc_model(tmp_path)
    tokens = tmp_path / "tokens.txt"
    lines = tokens.read_text(encoding="utf-8").splitlines()
    tokens.write_text("\n".join(lines[:-1] + ["<other> " + lines[-1].split()[1]]) + "\n", "utf-8")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="blank"):
        NemoCtcModel(session, TokenTable.from_file(tokens))


def test_other_formats_do_not_match(tmp_path):
    path = write_nemo_ctc_model(tmp_path)
    edit_metadata(path, cache_last_channel_dim1=None)
    assert not matches(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
