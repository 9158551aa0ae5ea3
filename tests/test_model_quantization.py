"""Batched int8 that stays exact: per-item dynamic quantization.

The int8 fixtures are made as icefall / sherpa-onnx make ``model.int8.onnx``
(onnxruntime's ``quantize_dynamic`` of the MatMuls), and also with every op
type quantized.  What each group proves:

- ``test_original_int8_depends_on_the_batch``: the file as exported is not
  batch-invariant (so the tests below can fail), the loaded model is.
- ``test_batched_item_equals_it_alone_in_the_original``: the property, over
  random batch sizes, loudness per item and carried states: each item alone
  in the rewritten model gives exactly the original's log-probs and states,
  and in a batch the same up to float rounding (see LOG_PROB_TOLERANCE) with
  the same arg-max on every frame that is not a near tie.
- ``test_speech_batched_equals_original_alone``: the same on real speech,
  whole streams of unequal lengths, greedy tokens identical; NeMo format too.
- ``test_service_batches_int8_streams_as_if_each_ran_alone``: the model
  service (exact batching, as the server runs it) batches the rewritten
  model, and every stream's text and times are those of the original file
  decoding it alone.
- ``test_rewrite_*``: hand-built graphs with the layouts the real models
  have: time-major activations, quantized activation x activation MatMuls,
  an operand that does not depend on the batch; a batch merged into another
  axis is reported, not silently mis-rewritten; the scaling fused into the
  matmuls rounds as the unfused graph does, in every layout, and a tensor a
  subgraph reads is not fused away.
- convolutions (``ConvInteger``, from quantizing the whole model, as
  sherpa-onnx's NeMo export scripts do, QUInt8, and icefall's whole-model
  exports, QInt8; per channel and reduce_range too): a padded, strided Conv2d,
  a depthwise and a pointwise Conv1d give each item of every batch
  composition bit for bit what the original gives it alone
  (``test_rewritten_convolutions_*``); implicit padding is reported; both
  fixtures with their convolutions load batch-invariant, nothing reported
  (``test_models_with_convolutions_*``), and the "all-ops" layouts run
  every model-level test.
- ``test_extended_weight_*``, ``test_rewrite_gives_each_item_the_original_kernel_s_integers``:
  onnxruntime's int8 sums depend on the CPU (see ``pair_saturating_matmul``);
  the rewrite reproduces the original's, on a kernel that saturates (emulated
  in numpy, so checked on every machine) and on this machine's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from trio_asr.testing import zipformer2_ctc
from trio_asr.testing.int8 import quantize_model_dir
from trio_asr.testing.nemo_ctc import write_nemo_ctc_model
from paths import AUDIO_DIR
from serverutil import ControlledModel
from trio_asr.audio import down_mix, read_wav
from trio_asr.recognition.features import StreamingFbank
from trio_asr.recognition.model import is_batch_invariant, kernel_probes, load_model, quantization, quantized_ops
from trio_asr.recognition.model_service import BatchingPolicy, ModelService
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.search import GreedySearch
from trio_asr.cli.transcribe import transcribe_samples
from trio_asr.recognition.stream_options import StreamOptions

SPEECH = ["numbers.wav", "something.wav", "paddlespeech-test.wav", "english.wav"]


def quantize_whole_model(float_dir: Path, int8_dir: Path, weight_type: str = "QUInt8", **options) -> Path:
    """``int8_dir`` with the whole model quantized as sherpa-onnx's NeMo
    export scripts do it (``quantize_dynamic(..., weight_type=QUInt8)``;
    icefall's whole-model exports: QInt8), convolutions included."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_dir.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(float_dir / "model.onnx", int8_dir / "model.int8.onnx",
                     weight_type=QuantType[weight_type], **options)  # fmt: skip
    (int8_dir / "tokens.txt").write_bytes((float_dir / "tokens.txt").read_bytes())
    return int8_dir


#: The fixtures have the real models' convolutions; "matmul": int8 as icefall
#: exports it (the MatMuls, QInt8; the convolutions stay float); "all-ops":
#: the whole model, convolutions included (ConvInteger), QInt8 or, as
#: sherpa-onnx's NeMo export scripts do it, QUInt8.
INT8_LAYOUTS = ["zipformer2-matmul", "zipformer2-all-ops", "zipformer2-all-ops-uint8", "nemo-matmul",
                "nemo-all-ops-uint8"]  # fmt: skip


@pytest.fixture(scope="module", params=INT8_LAYOUTS)
def int8_dir(request, tmp_path_factory) -> Path:
    float_dir = tmp_path_factory.mktemp("float")
    if request.param.startswith("nemo"):
        write_nemo_ctc_model(float_dir)
    else:
        zipformer2_ctc.write_model(float_dir)
    int8_dir = tmp_path_factory.mktemp("int8")
    if "all-ops" in request.param:
        return quantize_whole_model(float_dir, int8_dir, "QUInt8" if request.param.endswith("uint8") else "QInt8")
    return quantize_model_dir(float_dir, int8_dir, op_types=("MatMul",))


@pytest.fixture(scope="module")
def models(int8_dir):
    """(rewritten, original) models of the same int8 file; the rewritten one
    runs even batches of one on the rewritten graph (by default they run on
    the original, which is the same for one stream and faster)."""
    rewritten = load_model(int8_dir)
    assert rewritten._single_stream_session is not None
    rewritten._single_stream_session = None
    return rewritten, load_model(int8_dir, per_item_quantization=False)


def test_original_int8_depends_on_the_batch(models) -> None:
    rewritten, original = models
    assert not is_batch_invariant(original)
    assert is_batch_invariant(rewritten)
    assert ModelService(original, BatchingPolicy(max_batch=8, exact=True)).max_batch == 1
    assert ModelService(rewritten, BatchingPolicy(max_batch=8, exact=True)).max_batch == 8


def random_features(model, rng, loudness: float) -> np.ndarray:
    """Log-mel-like frames of one chunk; ``loudness`` in decades of amplitude."""
    frames = rng.normal(-6.0, 3.0, (model.chunk_frames, model.feature_dim)) + 2 * np.log(10) * loudness
    return frames.astype(np.float32)


# Alone, the rewritten model IS the original (bit for bit).  In a batch the
# integer parts are still exact, but the float parts of a model (here a
# ReduceMean; in real models norms and softmaxes) round differently in a
# batch (~1e-7), and once in a while that moves one element of a quantized
# tensor across a rounding boundary: one quantization step, which the
# fixture's large output weights turn into a few 1e-2 in log-probs (measured:
# ~96 % of items within 1e-4, the worst 0.06, no arg-max changed; the
# original file batched: every item off, median 0.24, arg-maxes changed).
LOG_PROB_TOLERANCE = 0.15


def assert_same_result(batched, alone, new_batched, new_alone) -> None:
    np.testing.assert_allclose(batched, alone, atol=LOG_PROB_TOLERANCE)
    top2 = np.sort(alone, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 2 * LOG_PROB_TOLERANCE
    np.testing.assert_array_equal(batched.argmax(-1)[clear], alone.argmax(-1)[clear])
    for a, b in zip(new_batched.tensors, new_alone.tensors):
        np.testing.assert_allclose(a, b, atol=LOG_PROB_TOLERANCE)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_batched_item_equals_it_alone_in_the_original(models, data) -> None:
    rewritten, original = models
    size = data.draw(st.integers(1, 6), label="batch size")
    loudness = data.draw(st.lists(st.floats(-2.0, 1.5), min_size=size, max_size=size), label="loudness")
    history = data.draw(st.lists(st.integers(0, 3), min_size=size, max_size=size), label="chunks before")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    states = []
    for past, loud in zip(history, loudness):
        state = original.initial_state()
        for _ in range(past):
            _, (state,) = original.run(random_features(original, rng, loud)[None], [state])
        states.append(state)
    features = np.stack([random_features(original, rng, loud) for loud in loudness])
    log_probs, new_states = rewritten.run(features, states)
    for i, state in enumerate(states):
        alone, (new_alone,) = original.run(features[i : i + 1], [state])
        assert_same_result(log_probs[i], alone[0], new_states[i], new_alone)
        rewritten_alone, (new_rewritten,) = rewritten.run(features[i : i + 1], [state])
        np.testing.assert_array_equal(rewritten_alone, alone)
        for a, b in zip(new_rewritten.tensors, new_alone.tensors):
            np.testing.assert_array_equal(a, b)


def speech_features(model, name: str) -> np.ndarray:
    path = AUDIO_DIR / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    samples, rate = read_wav(path)
    assert rate == 16000
    fbank = StreamingFbank(model.feature_options)
    scale = model.sample_scale / 32768  # StreamingFbank scales float input by 32768
    return np.concatenate([fbank.accept_waveform(down_mix(samples) * scale), fbank.flush()])


def greedy(model, log_probs: np.ndarray) -> list[int]:
    search = GreedySearch(blank_id=model.tokens.blank_id)
    search.accept(log_probs)
    return list(search.best.tokens)


def decode_together(model, streams) -> list[np.ndarray]:
    """Every ready chunk of many streams, one chunk of each per model call."""
    outputs: list[list[np.ndarray]] = [[] for _ in streams]
    while ready := [(i, c) for i, s in enumerate(streams) if (c := s.next_chunk()) is not None]:
        log_probs, states = model.run(np.stack([c for _, c in ready]), [streams[i].state for i, _ in ready])
        for (i, _), lp, state in zip(ready, log_probs, states):
            streams[i].advance(state)
            outputs[i].append(lp)
    return [np.concatenate(o) for o in outputs]


def test_speech_batched_equals_original_alone(models) -> None:
    rewritten, original = models
    inputs = [speech_features(original, name) for name in SPEECH]
    alone = []
    for frames in inputs:
        stream = original.create_stream()
        stream.accept_features(frames)
        stream.input_finished()
        alone.append(stream.decode_ready_chunks())
    streams = [rewritten.create_stream() for _ in inputs]
    for stream, frames in zip(streams, inputs):
        stream.accept_features(frames)
        stream.input_finished()
    for ours, theirs in zip(decode_together(rewritten, streams), alone):
        # whole streams: quantization steps moved by rounding pass through the state
        np.testing.assert_allclose(ours, theirs, atol=2 * LOG_PROB_TOLERANCE)
        assert greedy(original, ours) == greedy(original, theirs)


async def _decode_via(service: ModelService, rs, x: np.ndarray, step: int) -> None:
    """Drive a recognizer stream as the server does, its model via the service."""
    for start in range(0, len(x), step):
        await trio.to_thread.run_sync(rs.accept_waveform, x[start : start + step])
        rs.accept_log_probs(await service.decode(rs.model_stream))
    await trio.to_thread.run_sync(rs.flush_input)
    rs.accept_log_probs(await service.decode(rs.model_stream))


async def test_service_batches_int8_streams_as_if_each_ran_alone(models) -> None:
    rewritten, original = models
    counting = ControlledModel(rewritten)
    service = ModelService(counting, BatchingPolicy(max_batch=16))  # exact, as the server runs it
    utterances = []
    for name in SPEECH:
        if not (AUDIO_DIR / name).exists():
            pytest.skip(f"{AUDIO_DIR / name} not available")
        samples, rate = read_wav(AUDIO_DIR / name)
        utterances.append((down_mix(samples), rate))
    utterances += [(x[: len(x) * (k + 2) // 5], rate) for k, (x, rate) in enumerate(utterances)]
    recognizer = Recognizer(counting, decoding="greedy")
    streams = [recognizer.create_stream(StreamOptions(nbest=1, sample_rate=rate)) for _, rate in utterances]
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        async with trio.open_nursery() as clients:
            for rs, (x, rate) in zip(streams, utterances):
                clients.start_soon(_decode_via, service, rs, x, round(0.1 * rate))
        nursery.cancel_scope.cancel()
    assert service.max_batch == 16 and service.stats.largest_batch > 1, service.stats
    alone = Recognizer(original, decoding="greedy")
    for rs, (x, rate) in zip(streams, utterances):
        expected = transcribe_samples(alone, x, rate)
        assert (rs.result().text, rs.result().times) == (expected.text, expected.times)
    assert any(rs.result().text for rs in streams)


# ------------------------------------------------------------ hand-built graphs

T, K, HEADS, D = 5, 16, 2, 4


def _graph(nodes, initializers, batch_input) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, batch_input)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def attention_like() -> onnx.ModelProto:
    """x (T, N, K) time-major -> q, k projections (quantized MatMuls with
    weights) -> per-head scores q @ k^T (H, N, T, T) and q @ p with p (H, 1, D, T)
    computed from constants only (quantized activation x activation MatMuls)."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal((K, HEADS * D)).astype(np.float32), n)
            for n in ("wq", "wk")]  # fmt: skip
    init += [
        numpy_helper.from_array(np.array([T, -1, HEADS, D], np.int64), "split"),
        numpy_helper.from_array(rng.standard_normal((HEADS, 1, D, T)).astype(np.float32), "pos"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q2"]),
        helper.make_node("MatMul", ["x", "wk"], ["k2"]),
        helper.make_node("Reshape", ["q2", "split"], ["q3"]),
        helper.make_node("Reshape", ["k2", "split"], ["k3"]),
        helper.make_node("Transpose", ["q3"], ["q"], perm=[2, 1, 0, 3]),  # (H, N, T, D)
        helper.make_node("Transpose", ["k3"], ["kt"], perm=[2, 1, 3, 0]),  # (H, N, D, T)
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Tanh", ["pos"], ["p"]),
        helper.make_node("MatMul", ["q", "p"], ["pos_scores"]),
        helper.make_node("Add", ["scores", "pos_scores"], ["y"]),
    ]
    return _graph(nodes, init, [T, "N", K])


def merged_batch() -> onnx.ModelProto:
    """x (N, T, K) reshaped to (N*T, K) before its quantized MatMul."""
    rng = np.random.default_rng(1)
    init = [numpy_helper.from_array(rng.standard_normal((K, 8)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([-1, K], np.int64), "flat")]  # fmt: skip
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["x2"]), helper.make_node("MatMul", ["x2", "w"], ["y"])]
    return _graph(nodes, init, ["N", T, K])


def quantized(model: onnx.ModelProto, tmp_path: Path) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(model, tmp_path / "f.onnx")
    # MatMulConstBOnly=False: activation x activation MatMuls too, as older
    # onnxruntime versions quantized them
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", op_types_to_quantize=["MatMul"],
                     weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": False})  # fmt: skip
    return (tmp_path / "q.onnx").read_bytes()


def session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def loud_items(batch: int, axis: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    gains = np.geomspace(0.01, 30, batch).astype(np.float32)
    return x * gains.reshape([-1 if a == axis else 1 for a in range(len(shape))])


def test_rewrite_time_major_and_activation_matmuls(tmp_path) -> None:
    data = quantized(attention_like(), tmp_path)
    assert quantization.is_dynamically_quantized(data)
    batch = 4
    x = loud_items(batch, 1, (T, batch, K))
    rewritten, skipped = quantization.rewrite_model(
        data, lambda b: {"x": loud_items(b, 1, (T, b, K), seed=b)}, session
    )
    assert skipped == []
    ops = {n.op_type for n in onnx.load_from_string(rewritten).graph.node}
    assert "DynamicQuantizeLinear" in ops  # the constant-only operand keeps its own
    (together,) = session(rewritten).run(["y"], {"x": x})
    (original_batched,) = session(data).run(["y"], {"x": x})
    for i in range(batch):
        (alone,) = session(data).run(["y"], {"x": x[:, i : i + 1]})
        np.testing.assert_allclose(together[:, i : i + 1], alone, rtol=1e-5, atol=1e-5)
    # and the original file really mixes the items (so the check above can fail)
    assert np.abs(original_batched[:, :1] - session(data).run(["y"], {"x": x[:, :1]})[0]).max() > 1e-3


WIDE = 4096
LAYOUTS = {"batch first": (["N", T, WIDE], 0), "time major": ([T, "N", WIDE], 1), "2-D": (["N", WIDE], 0)}


def wide_projection(shape) -> onnx.ModelProto:
    """x (..., WIDE) @ w (WIDE, 8), all positive: the int32 sums exceed
    2**24, so converting them to float rounds."""
    rng = np.random.default_rng(2)
    w = rng.uniform(0.5, 1.0, (WIDE, 8)).astype(np.float32)
    return _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")], shape)


def wide_input(shape, axis: int, batch: int) -> np.ndarray:
    concrete = [batch if d == "N" else d for d in shape]
    x = np.random.default_rng(3).uniform(0.5, 1.0, concrete).astype(np.float32)
    gains = np.geomspace(0.1, 7.0, batch).astype(np.float32)
    return x * gains.reshape([-1 if a == axis else 1 for a in range(len(shape))])


def item(x: np.ndarray, axis: int, i: int) -> np.ndarray:
    return x[(slice(None),) * axis + (slice(i, i + 1),)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rewrite_fuses_the_scaling_bit_for_bit(tmp_path, monkeypatch, layout) -> None:
    shape, axis = LAYOUTS[layout]
    batch = 3
    data = quantized(wide_projection(shape), tmp_path)
    x = wide_input(shape, axis, batch)
    initializers = onnx.load_from_string(data).graph.initializer
    weight = next(numpy_helper.to_array(t) for t in initializers if t.dims == [WIDE, 8])
    first = item(x, axis, 0).reshape(-1, WIDE)
    lo, hi = min(float(first.min()), 0.0), max(float(first.max()), 0.0)
    q = np.clip(np.round(first / ((hi - lo) / 255)) + np.round(-lo / ((hi - lo) / 255)), 0, 255)
    for matmul in (exact_matmul, pair_saturating_matmul):  # float(acc) rounds, whichever the kernel is
        assert np.abs(matmul(q.astype(np.uint8), weight)).max() > 2**24

    def rewrite() -> bytes:
        rewritten, skipped = quantization.rewrite_model(data, lambda b: {"x": wide_input(shape, axis, b)}, session)
        assert skipped == []
        return rewritten

    fused = onnx.load_from_string(rewrite())
    ops = [n.op_type for n in fused.graph.node]
    if quantization.kernel_scales_per_item():  # see test_kernel_takes_a_per_item_scale
        assert "MatMulIntegerToFloat" in ops and "MatMulInteger" not in ops and "Cast" not in ops
        assert any(o.domain == "com.microsoft" for o in fused.opset_import)
    else:
        assert "MatMulIntegerToFloat" not in ops and {"MatMulInteger", "Cast"} <= set(ops)
    monkeypatch.setattr(quantization, "kernel_scales_per_item", lambda: False)  # as if onnxruntime could not
    unfused = rewrite()
    assert {"MatMulInteger", "Cast"} <= {n.op_type for n in onnx.load_from_string(unfused).graph.node}

    # as the loader runs them: without onnxruntime's own fusion, which multiplies in another order
    fused_session, unfused_session = (
        ort.InferenceSession(g, providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulIntegerToFloatFusion"])
        for g in (fused.SerializeToString(), unfused)
    )
    (y,) = fused_session.run(["y"], {"x": x})
    np.testing.assert_array_equal(y, unfused_session.run(["y"], {"x": x})[0])
    for i in range(batch):
        (alone,) = session(data).run(["y"], {"x": item(x, axis, i)})
        np.testing.assert_array_equal(item(y, axis, i), alone)


def test_kernel_takes_a_per_item_scale() -> None:
    """The probe's answer for this onnxruntime: its sums do not saturate on
    any kernel, so it is the same on every x86 machine (it said no on AVX2
    without VNNI while it summed pairs that saturate there)."""
    assert quantization.kernel_scales_per_item()


# MLAS's u8s8 kernels without VNNI (AVX2, AVX-512BW) add the products of
# columns 2j and 2j+1 in int16 with saturation (vpmaddubsw); VNNI and AMX ones
# sum exactly.  The original file's integers are therefore machine-dependent,
# but on each machine a function of the item alone, which the rewrite keeps.
def exact_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) @ w.astype(np.int64)


def pair_saturating_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    a, w = a.astype(np.int64), w.astype(np.int64)
    if a.shape[-1] % 2:  # the kernels pad the depth with zeros
        a, w = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, 1)]), np.pad(w, [(0, 1), (0, 0)])
    pairs = a[..., 0::2, None] * w[0::2] + a[..., 1::2, None] * w[1::2]
    return np.clip(pairs, -(2**15), 2**15 - 1).sum(axis=-2)


@pytest.mark.parametrize("depth", [15, 16])
@pytest.mark.parametrize("w_zp", [0, 37])
@pytest.mark.parametrize("exact_sums", [False, True])
def test_extended_weight_sums_as_the_original_on_every_kernel(depth, w_zp, exact_sums) -> None:
    rng = np.random.default_rng(depth + w_zp)
    wq = rng.integers(-127, 64, (depth, 8)).astype(np.int8)
    wq[-1] = 127  # and positive rows appended: with an odd depth, a pair that saturates unless padded
    extended = quantized_ops.extended_weight(wq, np.int8(w_zp), exact_sums=exact_sums)
    assert extended is not None and np.array_equal(extended[:depth], wq)
    pair_safe = quantized_ops.extended_weight(wq, np.int8(w_zp))
    assert pair_safe is not None
    if exact_sums:  # the whole int8 range: about half the rows
        assert len(extended) - depth <= (len(pair_safe) - depth) // 2 + 2
    kernels = (exact_matmul,) if exact_sums else (exact_matmul, pair_saturating_matmul)
    # rows holding the weight zero point, as rewrite_matmul adds where another
    # matmul of the same input needs more columns
    extended = np.concatenate([extended, np.full((3, 8), w_zp, np.int8)])
    xq = rng.integers(0, 256, (64, depth)).astype(np.uint8)
    assert (pair_saturating_matmul(xq, wq) != exact_matmul(xq, wq)).any()  # the data saturates
    for zp in (0, 1, 128, 255):
        ours = np.concatenate([xq, np.full((64, len(extended) - depth), zp, np.uint8)], axis=1)
        for matmul in kernels:
            # as MLAS computes it: the kernel's sum of the stored values, then
            # the zero-point terms in int32
            colsum, rowsum = wq.sum(axis=0, dtype=np.int64), xq.sum(axis=1, keepdims=True, dtype=np.int64)
            original = matmul(xq, wq) - zp * colsum - w_zp * rowsum + depth * zp * w_zp
            rewritten = matmul(ours, extended) - w_zp * ours.sum(axis=1, keepdims=True, dtype=np.int64)
            np.testing.assert_array_equal(rewritten, original)
    assert quantized_ops.extended_weight(wq, np.int8(100)) is None  # no room: corrected in int32 instead


ODD = 33


def saturating_projection() -> onnx.ModelProto:
    """x (N, T, ODD) @ w (ODD, 8), w large: pairs of large inputs times large
    weights pass int16; an odd depth pairs the last column with padding, and
    with the first row appended unless the rewrite pads it too."""
    w = np.random.default_rng(4).uniform(0.6, 1.0, (ODD, 8)).astype(np.float32)
    w[-1] = -1.0  # the rows appended are negative: x[-1] * w[-1] and one of them can pass -2**15
    return _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")],
                  ["N", T, ODD])  # fmt: skip


def skewed_input(batch: int) -> np.ndarray:
    """Each item from its own -low up to 1: zero points from ~5 to ~190."""
    rng = np.random.default_rng(5)
    low = np.geomspace(0.02, 3.0, batch).astype(np.float32)[:, None, None]
    return (rng.uniform(0.0, 1.0, (batch, T, ODD)) * (1 + low) - low).astype(np.float32)


def test_rewrite_gives_each_item_the_original_kernel_s_integers(tmp_path) -> None:
    """Whether this machine's kernel sums exactly or saturates pairs, each
    item of a batch gets exactly what the original file gives it alone."""
    batch = 5
    data = quantized(saturating_projection(), tmp_path)
    x = skewed_input(batch)
    rewritten, skipped = quantization.rewrite_model(data, lambda b: {"x": skewed_input(b)}, session)
    assert skipped == []
    (y,) = session(rewritten).run(["y"], {"x": x})
    model = onnx.load_from_string(data)
    weight = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.dims == [ODD, 8])
    w_scale = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_scale"))
    probe, _ = quantization.with_probe_outputs(model)
    quantizer = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLinear")
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in quantizer.output)
    kernels, apart = set(), False
    for i in range(batch):
        (alone,) = session(data).run(["y"], {"x": x[i : i + 1]})
        np.testing.assert_array_equal(y[i : i + 1], alone)
        q, scale, zp = session(probe.SerializeToString()).run(list(quantizer.output), {"x": x[i : i + 1]})
        sums = {m.__name__: m(q[0], weight) - int(zp) * weight.sum(axis=0, dtype=np.int64)
                for m in (exact_matmul, pair_saturating_matmul)}  # fmt: skip
        apart |= not np.array_equal(*sums.values())
        found = {k for k, acc in sums.items() if np.array_equal(alone[0], acc.astype(np.float32) * (scale * w_scale))}
        assert found, "the original's integers are neither the exact nor the pair-saturated sums"
        kernels |= found
    assert apart  # the data tells the two kernels apart
    # one kernel on one machine, the one the probe names
    assert kernels == {"exact_matmul" if kernel_probes.kernel_sums_exactly() else "pair_saturating_matmul"}


def test_rewrite_keeps_the_scaling_a_subgraph_uses(tmp_path) -> None:
    """A tensor an If branch reads from the outer graph is not fused away."""
    data = quantized(wide_projection(["N", T, WIDE]), tmp_path)
    model = onnx.load_from_string(data)
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    branch = helper.make_graph([helper.make_node("Identity", [cast.output[0]], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])  # fmt: skip
    model.graph.node.append(
        helper.make_node("If", ["c"], ["peek"], then_branch=branch, else_branch=branch)
    )
    model.graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    model.graph.output.append(helper.make_tensor_value_info("peek", TensorProto.FLOAT, None))
    feed = lambda b: {"x": wide_input(["N", T, WIDE], 0, b), "c": np.array(True)}  # noqa: E731
    rewritten, _ = quantization.rewrite_model(model.SerializeToString(), feed, session)
    ops = [n.op_type for n in onnx.load_from_string(rewritten).graph.node]
    assert "Cast" in ops and "MatMulIntegerToFloat" not in ops
    x = feed(2)
    (peek,) = session(rewritten).run(["peek"], x)
    assert peek.shape[-1] == 8


def test_rewrite_reports_a_batch_merged_into_another_axis(tmp_path) -> None:
    data = quantized(merged_batch(), tmp_path)
    rewritten, skipped = quantization.rewrite_model(
        data, lambda b: {"x": loud_items(b, 0, (b, T, K))}, session
    )
    assert skipped == ["x2"]
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load_from_string(rewritten).graph.node}


def test_rewrite_reports_quantizers_inside_subgraphs() -> None:
    branch = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
         helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)],
        "branch", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", K]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    _, skipped = quantization.per_item_quantization(model, {}, {})
    assert skipped == ["x", "x"]  # one per branch: the model is not batch-invariant


def test_serve_settings_choose_the_rewrite(int8_dir) -> None:
    """--exact-batching (the default) loads the per-item rewrite; without it
    the int8 file is served as exported (batched anyway)."""
    from trio_asr.cli.commands import _build_recognizer
    from trio_asr.serving.config import ServerConfig
    from trio_asr.recognition.model_service import ModelService

    _, exact = _build_recognizer(ServerConfig(model=int8_dir))
    _, as_exported = _build_recognizer(ServerConfig(model=int8_dir, exact_batching=False))
    assert is_batch_invariant(exact.model) and not is_batch_invariant(as_exported.model)
    assert ModelService(exact.model, BatchingPolicy(exact=True)).max_batch > 1
    assert ModelService(as_exported.model, BatchingPolicy(exact=False)).max_batch > 1


# ------------------------------------------------------------ convolutions

CONV_OPTIONS = {  # quantize_dynamic's options, as the export scripts use them and their variants
    "QUInt8": dict(weight_type="QUInt8"),
    "QInt8": dict(weight_type="QInt8"),
    "QUInt8 per channel": dict(weight_type="QUInt8", per_channel=True),
    "QInt8 per channel": dict(weight_type="QInt8", per_channel=True),
    "QUInt8 reduce range": dict(weight_type="QUInt8", reduce_range=True),
    "QInt8 reduce range, per channel": dict(weight_type="QInt8", reduce_range=True, per_channel=True),
}
FRAMES, FREQS, CHANNELS = 9, 7, 6


def conv_stack(auto_pad: str | None = None) -> onnx.ModelProto:
    """x (N, 1, FRAMES, FREQS) -> a padded, strided Conv2d with bias (the
    subsampling), Relu, a depthwise Conv1d with unequal pads, a pointwise
    Conv1d (N, CHANNELS, ...): the convolutions of NeMo's and zipformer2's
    front ends and conv modules.  Large weights, so that a kernel summing
    pairs of products in int16 would saturate."""
    rng = np.random.default_rng(6)
    freqs = (FREQS - 1) // 2 + 1
    pads = {} if auto_pad else {"pads": [1, 1, 1, 1]}
    init = [
        numpy_helper.from_array(rng.uniform(-1, 1, (CHANNELS, 1, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(CHANNELS).astype(np.float32), "b1"),
        numpy_helper.from_array(np.array([0, CHANNELS * freqs, -1], np.int64), "flat"),
        numpy_helper.from_array(rng.uniform(-1, 1, (CHANNELS * freqs, 1, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.uniform(-1, 1, (CHANNELS, CHANNELS * freqs, 1)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[2, 2],
                         **({"auto_pad": auto_pad} if auto_pad else {}), **pads),  # fmt: skip
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Transpose", ["r1"], ["t1"], perm=[0, 1, 3, 2]),  # (N, C, freqs, T)
        helper.make_node("Reshape", ["t1", "flat"], ["f1"]),
        helper.make_node("Conv", ["f1", "w2"], ["c2"], kernel_shape=[4], group=CHANNELS * freqs, pads=[3, 1]),
        helper.make_node("Conv", ["c2", "w3"], ["y"], kernel_shape=[1]),
    ]
    return _graph(nodes, init, ["N", 1, FRAMES, FREQS])


def quantized_convs(model: onnx.ModelProto, tmp_path: Path, options) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(model, tmp_path / "f.onnx")
    options = {**options, "weight_type": QuantType[options["weight_type"]]}
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", **options)  # the whole model, as sherpa-onnx's scripts
    data = (tmp_path / "q.onnx").read_bytes()
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in onnx.load_from_string(data).graph.node}
    return data


def conv_items(offsets, gains, seed: int) -> np.ndarray:
    """Per item: uniform values from -offset to 1, times gain (zero points
    from 0, all positive, to 255, all negative)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (len(offsets), 1, FRAMES, FREQS))
    low, gain = np.array(offsets)[:, None, None, None], np.array(gains)[:, None, None, None]
    return ((x * (1 + low) - low) * gain).astype(np.float32)


@pytest.fixture(scope="module", params=list(CONV_OPTIONS))
def conv_models(request, tmp_path_factory) -> tuple[bytes, bytes]:
    """(original, rewritten) whole-model int8 conv stacks."""
    data = quantized_convs(conv_stack(), tmp_path_factory.mktemp("conv"), CONV_OPTIONS[request.param])
    rewritten, skipped = quantization.rewrite_model(
        data, lambda b: {"x": conv_items([0.5] * b, [1.0] * b, b)}, session
    )
    assert skipped == []
    assert "DynamicQuantizeLinear" not in {n.op_type for n in onnx.load_from_string(rewritten).graph.node}
    return data, rewritten


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_rewritten_convolutions_give_each_item_the_original_alone(conv_models, data) -> None:
    """Every batch composition: each item's output is bit for bit the
    original file's for the item alone (padding, strides, groups included)."""
    original, rewritten = conv_models
    size = data.draw(st.integers(1, 6), label="batch size")
    offsets = data.draw(st.lists(st.sampled_from([0.0, 0.01, 0.3, 1.0, 5.0, 1e3]), min_size=size, max_size=size))
    gains = data.draw(st.lists(st.floats(1e-3, 1e3), min_size=size, max_size=size), label="gains")
    x = conv_items(offsets, gains, data.draw(st.integers(0, 2**16), label="seed"))
    (y,) = session(rewritten).run(["y"], {"x": x})
    for i in range(size):
        (alone,) = session(original).run(["y"], {"x": x[i : i + 1]})
        np.testing.assert_array_equal(y[i : i + 1], alone)


def test_original_convolutions_depend_on_the_batch(conv_models) -> None:
    original, _ = conv_models
    x = conv_items([0.0, 1.0, 0.3], [0.01, 1.0, 100.0], 0)
    (together,) = session(original).run(["y"], {"x": x})
    (alone,) = session(original).run(["y"], {"x": x[:1]})
    assert np.abs(together[:1] - alone).max() > 1e-3 * np.abs(alone).max()


def test_rewrite_reports_a_convolution_padded_implicitly(tmp_path) -> None:
    """auto_pad SAME_*: the pads are not in the graph; the quantizer is left
    as it was and reported, so the model runs one stream per call."""
    data = quantized_convs(conv_stack(auto_pad="SAME_UPPER"), tmp_path, CONV_OPTIONS["QUInt8"])
    _, skipped = quantization.rewrite_model(data, lambda b: {"x": conv_items([0.5] * b, [1.0] * b, b)}, session)
    assert skipped == ["x"]


@pytest.mark.parametrize(("kind", "options"), [
    ("nemo", "QUInt8"), ("nemo", "QInt8"), ("nemo", "QUInt8 reduce range"),
    ("zipformer2", "QUInt8"), ("zipformer2", "QInt8 per channel"), ("zipformer2", "QInt8 reduce range, per channel"),
])  # fmt: skip
def test_models_with_convolutions_load_batch_invariant(tmp_path, caplog, kind, options) -> None:
    """Whole-model int8 exports of the fixtures with convolutions: nothing is
    reported at load, the model service batches them, a batch gives each
    stream what the original file gives it alone.  (Not the NeMo fixture
    per channel: onnxruntime cannot run its per-channel (L, D, D) weight's
    MatMulInteger, in the original file either.)"""
    if kind == "nemo":
        write_nemo_ctc_model(tmp_path / "float")
    else:
        zipformer2_ctc.write_model(tmp_path / "float")
    int8_dir = quantize_whole_model(tmp_path / "float", tmp_path / "int8", **CONV_OPTIONS[options])
    assert "ConvInteger" in {n.op_type for n in onnx.load(int8_dir / "model.int8.onnx").graph.node}
    with caplog.at_level("WARNING"):
        rewritten = load_model(int8_dir)
    assert not [r for r in caplog.records if "per stream" in r.getMessage()]
    assert is_batch_invariant(rewritten)
    assert ModelService(rewritten, BatchingPolicy(max_batch=8, exact=True)).max_batch == 8
    rewritten._single_stream_session = None
    original = load_model(int8_dir, per_item_quantization=False)
    rng = np.random.default_rng(7)
    features = np.stack([random_features(original, rng, loud) for loud in (-2.0, 0.0, 1.5)])
    states = [original.initial_state()] * 3
    log_probs, new_states = rewritten.run(features, states)
    for i in range(3):
        alone, (new_alone,) = original.run(features[i : i + 1], [states[i]])
        assert_same_result(log_probs[i], alone[0], new_states[i], new_alone)


@pytest.mark.parametrize("weight_type", ["QUInt8", "QInt8"])
def test_a_quantizer_shared_with_a_transpose_keeps_extended_weights(tmp_path, weight_type) -> None:
    """Whole-model ``quantize_dynamic`` quantizes a Transpose of a matmul
    input too (the zipformer's attention input feeds six projections and
    a Transpose).  Its matmuls still take the zero-point term from extended
    weights, not from an int32 correction after each of them, and the
    Transpose gets the values without the extra columns (the property tests
    above check the results)."""
    zipformer2_ctc.write_model(tmp_path / "float")
    int8_dir = quantize_whole_model(tmp_path / "float", tmp_path / "int8", weight_type)
    graph = onnx.load(int8_dir / "model.int8.onnx").graph
    users: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    shared = [n for n in graph.node
              if n.op_type == "DynamicQuantizeLinear" and {"Transpose", "MatMulInteger"} <= users[n.output[0]]]  # fmt: skip
    assert shared, "the fixture no longer has the pattern under test"
    original = load_model(int8_dir, per_item_quantization=False)
    rng = np.random.default_rng(3)

    def feed(batch: int) -> dict[str, np.ndarray]:
        features = np.stack([random_features(original, rng, 0.0) for _ in range(batch)])
        return original.feed(features, [original.initial_state()] * batch)

    rewritten, skipped = quantization.rewrite_model(onnx.load(int8_dir / "model.int8.onnx"), feed, session)
    assert skipped == []
    corrections = [t.name for t in onnx.load_from_string(rewritten).graph.initializer if "colsum" in t.name]
    assert corrections == [], f"{len(corrections)} matmuls corrected in int32 instead of by extended weights"
