"""What this machine's onnxruntime int8 kernels compute, asked once each.

The per-item rewrite (:mod:`trio_asr.recognition.model.quantization`) must
give each stream the integers and floats the original file gives it alone,
and two facts about the kernels decide how cheaply it can:

- :func:`kernel_sums_exactly`: whether uint8 x int8 ``MatMulInteger`` sums
  its products exactly (VNNI, AMX) or adds adjacent pairs in int16 with
  saturation first (AVX2, AVX-512BW without VNNI);
- :func:`kernel_scales_per_item`: whether ``MatMulIntegerToFloat`` takes a
  per-item input scale.

Each probe runs a one-node graph on data whose answer is known exactly, and
is cached for the process.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

__all__ = ["kernel_scales_per_item", "kernel_sums_exactly"]


def _run_one_node(node: onnx.NodeProto, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray]) -> np.ndarray:
    """Run ``node`` alone on the CPU; raises what onnxruntime raises."""
    graph = helper.make_graph(
        [node], "probe",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for name, v in inputs.items()],
        [helper.make_empty_tensor_value_info(node.output[0])],
        [numpy_helper.from_array(v, name) for name, v in constants.items()],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # what every supported onnxruntime reads
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run([node.output[0]], inputs)
    return np.asarray(out)


@functools.cache
def kernel_sums_exactly() -> bool:
    """Whether this machine's uint8 x int8 ``MatMulInteger`` sums exactly:
    each pair of adjacent products here, 255 * 127 twice, passes int16, so a
    kernel that saturates pairs gives 32767 a pair instead of 64770."""
    depth = 64
    a = np.full((4, depth), 255, np.uint8)
    w = np.full((depth, 4), 127, np.int8)
    node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
    try:
        got = _run_one_node(node, {"a": a}, {"w": w})
    except Exception:  # onnxruntime raises its own, undocumented classes
        return False
    return bool((got == depth * 255 * 127).all())


@functools.cache
def kernel_scales_per_item() -> bool:
    """Whether this onnxruntime's ``MatMulIntegerToFloat`` takes a per-item
    input scale (shape (N, 1, 1)) and computes ``float(acc) * scale`` with it
    exactly, int32 sums past 2**24 included.

    Only the scaling is in question: the integer sum is the same kernel's as
    ``MatMulInteger``'s, saturating or not, so the probe's products stay
    clear of saturation (a pair at most 255 * 64 * 2) and the exact sum is
    the reference on every machine; sums of 2048 of them pass 2**24, where
    converting to float rounds."""
    rng = np.random.default_rng(0)
    batch, rows, depth, cols = 2, 3, 2048, 4
    weight = rng.integers(32, 65, (depth, cols)).astype(np.int8)  # pairs within int16: 2 * 255 * 64
    a = rng.integers(128, 256, (batch, rows, depth)).astype(np.uint8)
    scale = rng.uniform(1e-4, 1e-2, (batch, 1, 1)).astype(np.float32)
    acc = a.astype(np.int64) @ weight.astype(np.int64)
    assert (acc > 2**24).any() and (acc < 2**31).all()
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "scale", "one", "zp"], ["y"], domain="com.microsoft")
    constants: dict[str, np.ndarray] = {"w": weight, "one": np.ones(1, np.float32), "zp": np.zeros((), np.uint8)}
    try:
        got = _run_one_node(node, {"a": a, "scale": scale}, constants)
    except Exception:  # onnxruntime raises its own, undocumented classes
        return False
    return bool(np.array_equal(got, acc.astype(np.float32) * scale))
