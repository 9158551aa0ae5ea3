"""A tiny synthetic model in sherpa-onnx's NeMo *offline* CTC format.

It has the exact interface of NeMo's ``model.export`` of a CTC model with
sherpa-onnx's metadata (``scripts/nemo/fast-conformer-hybrid-transducer-ctc/
export-onnx-ctc-non-streaming.py``), so that sherpa-onnx's
``OfflineRecognizer.from_nemo_ctc`` loads it and serves as the test oracle::

    inputs   audio_signal  float32 (N, 80, T)       features, channels first
             length        int64   (N,)             valid frames of each item
    outputs  logprobs      float32 (N, T', V + 1)   log-softmax, blank last

with metadata ``vocab_size`` (without the blank), ``subsampling_factor``,
``normalize_type`` (``per_feature``), ``model_type`` and the rest.

The network is random but built like the real one where it matters: the
subsampling is a stack of stride-2 convolutions over time (kernel 3, padding
1: ``T' = ceil(T / subsampling_factor)``, as NeMo's striding subsampling
gives), each layer's input masked to its valid frames, and an utterance-wide
pooled context feeds every output frame, so each item of a padded batch gives
what it gives alone, and the output depends on every input frame and on the
length.  Built with ``onnx.helper``; no torch.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper

from trio_asr.testing.nemo_ctc import PIECES, write_tokens
from trio_asr.testing.onnx_graph import const, finish_model, write_model_dir

__all__ = ["NemoOfflineSpec", "PIECES", "write_nemo_ctc_offline_model"]


@attrs.frozen
class NemoOfflineSpec:
    """Shape parameters of a synthetic model (names follow the metadata keys)."""

    subsampling_factor: int = 4  # a power of two: one stride-2 convolution per factor 2
    feat_dim: int = 80
    channels: int = 24
    normalize_type: str = "per_feature"
    frame_gain: float = 3.0
    scale: float = 2.5  # of the output weights
    blank_bias: float = 1.0
    seed: int = 0


def write_nemo_ctc_offline_model(
    model_dir: Path, spec: NemoOfflineSpec = NemoOfflineSpec(), *, filename: str = "model.onnx"
) -> Path:
    """Write ``filename`` and ``tokens.txt`` into ``model_dir``; return the model path."""
    return write_model_dir(model_dir, _build(spec), write_tokens, filename)


def _build(s: NemoOfflineSpec) -> onnx.ModelProto:
    layers = int(math.log2(s.subsampling_factor))
    if 2**layers != s.subsampling_factor or layers < 1:
        raise ValueError(f"subsampling_factor must be a power of two >= 2, got {s.subsampling_factor}")
    rng = np.random.default_rng(s.seed)
    vocab, F, C = len(PIECES) + 1, s.feat_dim, s.channels

    def w(name: str, *shape: int, scale: float = 1.0) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 3 else shape[0]
        a = rng.standard_normal(shape) * scale / math.sqrt(fan_in)
        return const(name, a.astype(np.float32))

    bias = np.zeros(vocab, np.float32)
    bias[-1] = s.blank_bias
    inits = [
        w("W_ctx", C, C, scale=1.0),
        w("W_frame", C, C, scale=1.0),
        w("W_out", C, vocab, scale=s.scale),
        const("b_out", bias),
        const("gain", np.array(s.frame_gain, np.float32)),
        const("zero", np.array(0, np.int64)),
        const("one", np.array(1, np.int64)),
        const("two", np.array(2, np.int64)),
        const("axis1", np.array([1], np.int64)),
        const("axis2", np.array([2], np.int64)),
    ]
    n = helper.make_node
    nodes: list[onnx.NodeProto] = []
    x, length, channels = "audio_signal", "length", F
    for i in range(layers + 1):
        # mask (N, 1, T_i) of the valid frames of this layer's input
        nodes += [
            n("Shape", [x], [f"shape{i}"]),
            n("Gather", [f"shape{i}", "two"], [f"frames{i}"], axis=0),
            n("Range", ["zero", f"frames{i}", "one"], [f"positions{i}"]),
            n("Unsqueeze", [length, "axis1"], [f"length_col{i}"]),
            n("Less", [f"positions{i}", f"length_col{i}"], [f"valid{i}"]),
            n("Cast", [f"valid{i}"], [f"valid_f{i}"], to=TensorProto.FLOAT),
            n("Unsqueeze", [f"valid_f{i}", "axis1"], [f"mask{i}"]),
            n("Mul", [x, f"mask{i}"], [f"masked{i}"]),
        ]
        if i == layers:
            x = f"masked{i}"
            break
        inits += [w(f"W_conv{i}", C, channels, 3, scale=1.5), w(f"b_conv{i}", C, scale=0.1)]
        nodes += [
            n("Conv", [f"masked{i}", f"W_conv{i}", f"b_conv{i}"], [f"conv{i}"],
              kernel_shape=[3], strides=[2], pads=[1, 1]),
            n("Tanh", [f"conv{i}"], [f"act{i}"]),
            # NeMo's length after a stride-2, kernel-3, padding-1 convolution: ceil(L / 2)
            n("Add", [length, "one"], [f"length_plus{i}"]),
            n("Div", [f"length_plus{i}", "two"], [f"length{i + 1}"]),
        ]
        x, length, channels = f"act{i}", f"length{i + 1}", C
    mask = f"mask{layers}"
    nodes += [
        # utterance context: the mean over valid frames
        n("ReduceSum", [x, "axis2"], ["sum"], keepdims=0),
        n("Cast", [f"length_col{layers}"], ["count"], to=TensorProto.FLOAT),
        n("Div", ["sum", "count"], ["context"]),  # (N, C)
        n("Unsqueeze", ["context", "axis2"], ["context3"]),
        n("Sub", [x, "context3"], ["centred"]),
        n("Mul", ["centred", mask], ["centred_masked"]),
        n("Transpose", ["centred_masked"], ["frames_btc"], perm=[0, 2, 1]),
        n("MatMul", ["frames_btc", "W_frame"], ["h_frame"]),
        n("Mul", ["h_frame", "gain"], ["h_frame_scaled"]),
        n("MatMul", ["context", "W_ctx"], ["h_ctx"]),
        n("Unsqueeze", ["h_ctx", "axis1"], ["h_ctx3"]),
        n("Add", ["h_frame_scaled", "h_ctx3"], ["h_lin"]),
        n("Tanh", ["h_lin"], ["h"]),
        n("MatMul", ["h", "W_out"], ["logits0"]),
        n("Add", ["logits0", "b_out"], ["logits"]),
        n("LogSoftmax", ["logits"], ["logprobs"], axis=-1),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [
        helper.make_tensor_value_info("audio_signal", f32, ["audio_signal_dynamic_axes_1", F, "audio_signal_dynamic_axes_2"]),
        helper.make_tensor_value_info("length", i64, ["length_dynamic_axes_1"]),
    ]
    outputs = [helper.make_tensor_value_info(
        "logprobs", f32, ["logprobs_dynamic_axes_1", "logprobs_dynamic_axes_2", vocab])]
    meta = {
        "vocab_size": vocab - 1,  # NeMo counts without blank
        "normalize_type": s.normalize_type,
        "subsampling_factor": s.subsampling_factor,
        "model_type": "EncDecCTCModelBPE",
        "version": "1",
        "model_author": "NeMo",
        "comment": "synthetic test fixture (trio-asr), random weights",
    }
    return finish_model(
        nodes, "nemo_ctc_offline_fixture", inputs, outputs, inits, opset=17, ir_version=8, meta=meta
    )
