"""The zipformer2-CTC model layer against sherpa-onnx and an independent loop.

What each group proves:

- ``test_greedy_matches_sherpa``: sherpa-onnx loads the very same files and
  decodes the same audio fed in the same pieces; our features + chunking +
  state plumbing + greedy search give the same token sequence and the same
  token times.  The fixture's arg-max changes on most frames and depends on
  every carried state, so this equality pins the log-probs' arg-max of every
  output frame of every chunk (sherpa's Python API exposes no log-probs).
- ``test_log_probs_match_reference_loop``: the log-probs themselves (1e-4)
  against a loop written here with onnxruntime only, taking state names,
  shapes and the chunk window from the ONNX file rather than from our metadata
  parsing, and padding the tail as documented.
- ``test_batched_equals_one_by_one``: stacking streams of unequal lengths into
  one run changes nothing (1e-5).
- ``test_fixture_depends_on_every_state``: the fixture really is sensitive:
  dropping any single state, or swapping two streams' states, changes the output,
  so the two tests above would catch such bugs.
- ``test_features_match_sherpa``: our fbank with the model's options equals
  the frames sherpa-onnx computes for the model.
"""

from __future__ import annotations

import math
import shutil
import wave
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelutil import decode_streams, finalize
from paths import AUDIO_DIR

from trio_asr.recognition.features import StreamingFbank
from trio_asr.recognition.model import ModelError, find_model_file, is_batch_invariant, load_model
from trio_asr.recognition.model.zipformer2_ctc import Zipformer2CtcModel
from trio_asr.recognition.search import GreedySearch
from trio_asr.testing import zipformer2_ctc as fixture

sherpa_onnx = pytest.importorskip("sherpa_onnx")

AUDIO = AUDIO_DIR
SPEECH = ["numbers.wav", "something.wav", "paddlespeech-test.wav"]


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == 16000
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, "<i2").astype(np.float32) / 32768


def noise(seconds: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(7).standard_normal(int(16000 * seconds)) * 0.1).astype(
        np.float32
    )


def audio(name: str) -> np.ndarray:
    if name == "noise":
        return noise()
    path = AUDIO / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return read_wav(path)


def pieces(samples: np.ndarray, size: int | None):
    if size is None:
        yield samples
        return
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def features(model, samples: np.ndarray, size: int | None = None) -> np.ndarray:
    fbank = StreamingFbank(model.feature_options)
    # StreamingFbank scales float input by 32768; undo it where the model wants [-1, 1].
    scale = model.sample_scale / 32768
    frames = [fbank.accept_waveform(p * scale) for p in pieces(samples, size)]
    frames.append(fbank.flush())
    return np.concatenate(frames)


def load_zipformer2(model_dir: Path) -> Zipformer2CtcModel:
    model = load_model(model_dir)
    if not isinstance(model, Zipformer2CtcModel):
        pytest.skip(f"{model_dir} is not a zipformer2-CTC model")
    return model


def sherpa_recognizer(model_dir: Path):
    return sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
        tokens=str(model_dir / "tokens.txt"),
        model=str(find_model_file(model_dir)),
        num_threads=1,
    )


def sherpa_chunks(num_frames: int, model) -> int:
    """Chunks sherpa-onnx runs on num_frames: it needs processed + T < ready."""
    if num_frames <= model.chunk_frames:
        return 0
    return (num_frames - model.chunk_frames - 1) // model.chunk_shift + 1


@pytest.mark.parametrize("feed", [160, 2345, None], ids=["10ms", "2345", "whole"])
@pytest.mark.parametrize("name", [*SPEECH, "noise"])
def test_greedy_matches_sherpa(request, streaming_ctc_model_dir, name, feed):
    model_dir = streaming_ctc_model_dir
    model = load_zipformer2(model_dir)
    samples = audio(name)
    recognizer = sherpa_recognizer(model_dir)
    theirs = recognizer.create_stream()
    ours = model.create_stream()
    fbank = StreamingFbank(model.feature_options)
    search = GreedySearch(blank_id=model.tokens.blank_id)
    log_probs = []
    for piece in pieces(samples, feed):
        theirs.accept_waveform(16000, piece)
        while recognizer.is_ready(theirs):
            recognizer.decode_stream(theirs)
        ours.accept_features(fbank.accept_waveform(piece * model.sample_scale / 32768))
        log_probs.append(ours.decode_ready_chunks())
    theirs.input_finished()
    while recognizer.is_ready(theirs):
        recognizer.decode_stream(theirs)
    ours.accept_features(fbank.flush())
    log_probs.append(ours.decode_ready_chunks())
    log_probs = np.concatenate(log_probs)

    # sherpa-onnx runs a chunk only when a frame beyond it exists, and never
    # pads the tail; compare the chunks both ran.
    n_chunks = sherpa_chunks(fbank.num_frames_emitted, model)
    assert ours.chunks_run >= n_chunks
    frames_per_chunk = len(log_probs) // ours.chunks_run
    search.accept(log_probs[: n_chunks * frames_per_chunk])
    best = search.best
    result = recognizer.get_result_all(theirs)
    # sherpa-onnx's symbol table spells the word-boundary mark as a space
    # (except in byte-level BPE tables); compare modulo that spelling.
    def spelled(pieces):
        return [p.replace("\u2581", " ") for p in pieces]

    assert spelled(model.tokens.piece(t) for t in best.tokens) == spelled(result.tokens)
    np.testing.assert_allclose(
        np.array(best.frames) * model.frame_shift_s, result.timestamps, atol=1e-5
    )
    if request.node.callspec.params["streaming_ctc_model_dir"] == "real":
        assert model.tokens.text(best.tokens).replace(" ", "") == result.text.replace(" ", "")
    if name != "noise" and n_chunks > 3:
        assert len(best.tokens) > n_chunks  # the comparison is not vacuous


def reference_log_probs(model_file: Path, frames: np.ndarray) -> np.ndarray:
    """Straight onnxruntime loop, independent of trio_asr.recognition.model: zero states of
    the declared input shapes (batch 1), window of T frames advanced by
    decode_chunk_len, states carried by output name, tail padded with
    log(FLT_EPSILON) until every frame lay in the advanced part of a window."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    window, shift = int(meta["T"]), int(meta["decode_chunk_len"])
    states = {}
    for i in session.get_inputs()[1:]:
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = np.int64 if i.type == "tensor(int64)" else np.float32
        states[i.name] = np.zeros(shape, dtype)
    names = list(states)
    outputs = ["log_probs"] + [f"new_{n}" for n in names]
    n_windows = math.ceil(len(frames) / shift)
    padded = np.full(((n_windows - 1) * shift + window, frames.shape[1]),
                     math.log(np.finfo(np.float32).eps), np.float32)
    padded[: len(frames)] = frames
    result = []
    for k in range(n_windows):
        x = padded[None, k * shift : k * shift + window]
        log_probs, *new = session.run(outputs, {"x": x, **states})
        states = dict(zip(names, new))
        result.append(log_probs[0])
    return np.concatenate(result)


@pytest.mark.parametrize("name", ["numbers.wav", "noise"])
def test_log_probs_match_reference_loop(streaming_ctc_model_dir, name):
    model = load_zipformer2(streaming_ctc_model_dir)
    frames = features(model, audio(name))
    stream = model.create_stream()
    got = []
    for start in range(0, len(frames), 37):  # odd feed size: chunks straddle calls
        stream.accept_features(frames[start : start + 37])
        got.append(stream.decode_ready_chunks())
    got.append(finalize(stream))
    got = np.concatenate(got)
    want = reference_log_probs(find_model_file(streaming_ctc_model_dir), frames)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


class _CheckEachBatch:
    """Model proxy: every batched run is checked against running its members
    one by one from the same states (outputs and new states, 1e-5 + 1e-6 relative)."""

    def __init__(self, model):
        self._model = model
        self.batch_sizes = []

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run(self, features, states):
        log_probs, new = self._model.run(features, states)
        self.batch_sizes.append(len(states))
        for i, state in enumerate(states):
            one, (one_state,) = self._model.run(features[i : i + 1], [state])
            # rtol covers float32 rounding of log-probs as low as -30.
            np.testing.assert_allclose(log_probs[i], one[0], atol=1e-5, rtol=1e-6)
            for a, b in zip(new[i].tensors, one_state.tensors):
                np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-6)
        return log_probs, new


def test_batched_equals_one_by_one(streaming_ctc_model_dir):
    # Per run, batched == one by one to 1e-5 (+1e-6 relative).  Over a whole
    # stream the ~1e-6 rounding differences of batched GEMMs pass through the
    # recurrent state, so whole streams are compared to 1e-4.
    model = load_zipformer2(streaming_ctc_model_dir)
    if not is_batch_invariant(model):
        pytest.skip("this model's outputs depend on the batch (dynamically quantized activations)")
    inputs = [features(model, audio(n)) for n in ("numbers.wav", "something.wav", "noise")]
    inputs[2] = inputs[2][:150]  # lengths differ: streams drop out of the batch
    single = []
    for frames in inputs:
        stream = model.create_stream()
        stream.accept_features(frames)
        single.append(np.concatenate([stream.decode_ready_chunks(), finalize(stream)]))
    checking = _CheckEachBatch(model)
    streams = [checking.create_stream() for _ in inputs]
    for stream, frames in zip(streams, inputs):
        stream.model = checking
        stream.accept_features(frames)
    batched = decode_streams(checking, streams)
    for stream in streams:
        stream.input_finished()
    tails = decode_streams(checking, streams)
    assert max(checking.batch_sizes) == 3 and min(checking.batch_sizes) < 3
    assert len(checking.batch_sizes) < sum(s.chunks_run for s in streams)
    for one, many, tail in zip(single, batched, tails):
        np.testing.assert_allclose(np.concatenate([many, tail]), one, atol=1e-4, rtol=0)


def test_fixture_depends_on_every_state(zipformer2_model_dir):
    model = load_zipformer2(zipformer2_model_dir)
    frames = features(model, audio("numbers.wav"))
    chunks = [frames[k * model.chunk_shift : k * model.chunk_shift + model.chunk_frames]
              for k in range(6)]
    initial = model.initial_state()

    def run(drop: int | None = None) -> np.ndarray:
        state, out = initial, []
        for chunk in chunks:
            if drop is not None:  # this one state is not carried
                tensors = list(state.tensors)
                tensors[drop] = initial.tensors[drop]
                state = type(state)(tuple(tensors), state.batch_axes)
            log_probs, (state,) = model.run(chunk[None], [state])
            out.append(log_probs[0])
        return np.concatenate(out)

    good = run()
    assert np.abs(good - run()).max() == 0  # deterministic
    for k in range(len(initial.tensors)):
        assert np.abs(run(drop=k) - good).max() > 1e-3, f"state {k} does not matter"
    # Batch-axis confusion: two streams with their states swapped.
    a, b = model.initial_state(), model.initial_state()
    _, (a, b) = model.run(np.stack([chunks[0], chunks[3]]), [a, b])
    right, _ = model.run(np.stack([chunks[1], chunks[4]]), [a, b])
    swapped, _ = model.run(np.stack([chunks[1], chunks[4]]), [b, a])
    assert np.abs(right - swapped).max() > 1e-3
    # The features matter too, including the right-context frames.
    shifted = chunks[1].copy()
    shifted[-1] += 1.0
    base, _ = model.run(chunks[1][None], [initial])
    moved, _ = model.run(shifted[None], [initial])
    assert np.abs(base - moved).max() > 1e-3


@pytest.mark.parametrize("name", ["numbers.wav", "noise"])
def test_features_match_sherpa(streaming_ctc_model_dir, name):
    model = load_zipformer2(streaming_ctc_model_dir)
    samples = audio(name)
    ours = features(model, samples, size=999)
    stream = sherpa_recognizer(streaming_ctc_model_dir).create_stream()
    stream.accept_waveform(16000, samples)
    stream.input_finished()
    theirs = np.array(stream.get_frames(0, len(ours)), np.float32).reshape(len(ours), -1)
    np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)


def test_model_geometry(zipformer2_model_dir):
    model = load_zipformer2(zipformer2_model_dir)
    geo = fixture.TINY
    assert model.chunk_frames == geo.T and model.chunk_shift == geo.decode_chunk_len
    assert model.subsampling == 4 and model.frame_shift_s == pytest.approx(0.04)
    assert model.vocab_size == geo.vocab_size == len(model.tokens)
    assert model.feature_dim == 80
    lp, _ = model.run(np.zeros((2, geo.T, 80), np.float32), [model.initial_state()] * 2)
    assert lp.shape == (2, geo.output_frames, geo.vocab_size) and lp.dtype == np.float32
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-5)


def test_stream_edges(zipformer2_model_dir):
    model = load_zipformer2(zipformer2_model_dir)
    stream = model.create_stream()
    assert finalize(stream).shape == (0, model.vocab_size)
    with pytest.raises(RuntimeError):
        stream.accept_features(np.zeros((1, 80), np.float32))
    stream = model.create_stream()
    with pytest.raises(ValueError):
        stream.accept_features(np.zeros((3, 40), np.float32))
    stream.accept_features(np.zeros((model.chunk_frames - 1, 80), np.float32))
    assert stream.decode_ready_chunks().shape == (0, model.vocab_size)
    # T-1 frames: one padded chunk covers the first chunk_shift, a second the rest.
    expected = math.ceil((model.chunk_frames - 1) / model.chunk_shift)
    assert finalize(stream).shape[0] == expected * (model.chunk_shift // model.subsampling)
    with pytest.raises(ValueError):
        model.run(np.zeros((1, 3, 80), np.float32), [model.initial_state()])


# ---- ModelError -----------------------------------------------------------


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_missing_tokens(zipformer2_model_dir, tmp_path):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    (d / "tokens.txt").unlink()
    with pytest.raises(ModelError, match="tokens.txt"):
        load_model(d)


def test_missing_onnx(zipformer2_model_dir, tmp_path):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    (d / "model.onnx").unlink()
    with pytest.raises(ModelError, match="no model file"):
        load_model(d)


def test_file_preference(zipformer2_model_dir, tmp_path):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    (d / "model.onnx").rename(d / "ctc-epoch-20-avg-1-chunk-16-left-128.onnx")
    assert load_model(d).vocab_size == fixture.TINY.vocab_size
    shutil.copy(d / "ctc-epoch-20-avg-1-chunk-16-left-128.onnx", d / "other.onnx")
    with pytest.raises(ModelError, match="several ONNX files"):
        load_model(d)
    (d / "other.onnx").rename(d / "model.int8.onnx")
    assert find_model_file(d).name == "model.int8.onnx"


def test_unsupported_model(zipformer2_model_dir, tmp_path):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["speech"], ["logits"])], "other",
        [helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["N", 80])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 80])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, d / "model.onnx")
    with pytest.raises(ModelError, match="not a supported model.*speech"):
        load_model(d)


def test_not_onnx(zipformer2_model_dir, tmp_path):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    (d / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        load_model(d)


@pytest.mark.parametrize("key", ["encoder_dims", "T", "left_context_len"])
def test_missing_metadata(zipformer2_model_dir, tmp_path, key):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    model = onnx.load(d / "model.onnx")
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, d / "model.onnx")
    with pytest.raises(ModelError, match=key):
        load_model(d)


def test_inconsistent_metadata(zipformer2_model_dir, tmp_path):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    model = onnx.load(d / "model.onnx")
    for p in model.metadata_props:
        if p.key == "left_context_len":
            p.value = "17,8"
    onnx.save(model, d / "model.onnx")
    with pytest.raises(ModelError, match="cached_key_0"):
        load_model(d)


def test_token_count_mismatch(zipformer2_model_dir, tmp_path):
    d = copy_dir(zipformer2_model_dir, tmp_path / "m")
    fixture.write_tokens(d / "tokens.txt", fixture.TINY.vocab_size - 1)
    with pytest.raises(ModelError, match="tokens"):
        load_model(d)
