"""A real-size synthetic SenseVoice-Small, for benchmarks.

:data:`SENSE_VOICE_SMALL` (and :class:`SenseVoiceSize` for other sizes,
:func:`write_real_size_sense_voice_model`) has the interface, metadata and tag frames, and
SenseVoice-Small's network (FunASR's ``SenseVoiceEncoderSmall``) with random
weights: the four queries prepended to the 560-dim LFR frames, inputs scaled
by sqrt(512) plus sinusoidal positions, SAN-M layers (pre-LayerNorm
self-attention of dimension 512 with 4 heads and an FSMN memory block, a
depthwise Conv1d of kernel 11 over time on the values, then a ReLU
feed-forward of 2048), the first layer taking 560 dims, a LayerNorm after
the 50th and after the last, and the CTC projection to 25,055 tokens.  The
graph is written as ``torch.onnx.export`` at opset 13 writes it (Linear as
MatMul + Add, LayerNorm spelled out, which onnxruntime fuses back), so that
its cost per frame is the real model's: SenseVoice-Small has 70 such layers
(1 + 49 + 20 "tp" layers, ~234 M parameters, ~900 MB in float32).
Its interface, metadata, tokens' first ids and tag frames are those of
:mod:`trio_asr.testing.sense_voice`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnx
from onnx import TensorProto, helper

from trio_asr.testing.onnx_graph import const, finish_model, write_model_dir
from trio_asr.testing.sense_voice import (
    _CLOSED,
    _EMBEDDINGS,
    _PIECES,
    TOKENS,
    SenseVoiceSpec,
    _cmvn,
    _metadata,
    _prefix_tables,
)

__all__ = ["SENSE_VOICE_SMALL", "SenseVoiceSize", "real_size_tokens", "write_real_size_sense_voice_model"]


@attrs.frozen
class SenseVoiceSize:
    """Geometry of a real-size synthetic SenseVoice (defaults: SenseVoice-Small's).

    ``layers`` SAN-M layers in all (the real model: 1 + 49 + 20 = 70); a
    LayerNorm follows layer ``min(50, layers)`` (``after_norm``) and the last
    (``tp_norm``).  Text frames carry ``blank_bias`` on blank, so that about a
    fifth of them emit a token on speech (the random network's text is
    meaningless; its cost is what counts).  Builds in about 30 s (float32,
    ~950 MB) and quantizes in about 20 s (~250 MB) on a 2-core machine.
    """

    layers: int = 70
    dim: int = 512
    heads: int = 4
    ffn: int = 2048
    kernel: int = 11
    vocab: int = 25055
    num_bins: int = 80
    lfr_window_size: int = 7
    lfr_window_shift: int = 6
    blank_bias: float = 6.0
    seed: int = 0

    @property
    def parameters(self) -> int:
        """Weights in the network (embeddings and CMVN aside)."""
        d, f, first = self.dim, self.ffn, self.num_bins * self.lfr_window_size
        attn = 3 * d + d * d + d + d * self.kernel  # qkv bias, out, out bias, FSMN
        ffn = d * f + f + f * d + d + 2 * d  # both linears and their LayerNorm
        rest = (self.layers - 1) * (2 * d + d * 3 * d + attn + ffn)
        norms = 2 * d * (1 if self.layers <= 50 else 2)
        return 2 * first + first * 3 * d + attn + ffn + rest + norms + d * self.vocab + self.vocab


#: SenseVoice-Small's geometry (~234 M parameters)
SENSE_VOICE_SMALL = SenseVoiceSize()


def real_size_tokens(vocab: int) -> tuple[str, ...]:
    """:data:`TOKENS`, then distinct filler pieces up to ``vocab`` (CJK
    characters first, as most of SenseVoice's vocabulary is)."""
    extra = vocab - len(TOKENS)
    if extra < 0:
        raise ValueError(f"vocab {vocab} is smaller than the {len(TOKENS)} fixed tokens")
    taken = set(TOKENS)
    fillers = (p for p in (*(chr(0x4E00 + i) for i in range(20992)), *(f"▁w{i}" for i in range(vocab)))
               if p not in taken)  # fmt: skip
    return (*TOKENS, *(next(fillers) for _ in range(extra)))


def write_real_size_sense_voice_model(model_dir: Path, size: SenseVoiceSize = SENSE_VOICE_SMALL) -> Path:
    """Write ``model.onnx`` (float32) and ``tokens.txt`` of a real-size
    SenseVoice into ``model_dir``; return the model path.  For the int8
    ``model.int8.onnx`` as sherpa-onnx's export makes it, pass the directory
    to :func:`trio_asr.testing.int8.quantize_model_dir` with
    ``weight_type="QUInt8"``."""
    tokens = real_size_tokens(size.vocab)

    def write(path: Path) -> None:
        path.write_text("".join(f"{p} {i}\n" for i, p in enumerate(tokens)), encoding="utf-8")

    return write_model_dir(model_dir, _build_real_size(size), write, "model.onnx")


class _Graph:
    """Nodes and initializers of the real-size graph, with fresh names."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits.append(const(name, value))
        return name

    def weight(self, *shape: int, scale: float = 1.0) -> str:
        a = self.rng.standard_normal(shape, dtype=np.float32)
        a *= np.float32(scale / np.sqrt(shape[0]))
        return self.const(a, "w")

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> str:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else ",".join(names)

    def linear(self, x: str, d_in: int, d_out: int, scale: float = 1.0) -> str:
        bias = self.const((self.rng.standard_normal(d_out, dtype=np.float32) * 0.02), "b")
        return self.op("Add", self.op("MatMul", x, self.weight(d_in, d_out, scale=scale)), bias)

    def layer_norm(self, x: str, dim: int) -> str:
        """As torch.onnx.export writes LayerNorm at opset 13."""
        mean = self.op("ReduceMean", x, axes=[-1])
        centred = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Pow", centred, self.const(np.array(2.0, np.float32))), axes=[-1])
        std = self.op("Sqrt", self.op("Add", var, self.const(np.array(1e-5, np.float32))))
        normed = self.op("Div", centred, std)
        gamma = self.const(np.ones(dim, np.float32), "gamma")
        beta = self.const(np.zeros(dim, np.float32), "beta")
        return self.op("Add", self.op("Mul", normed, gamma), beta)


def _sanm_layer(g: _Graph, x: str, d_in: int, s: SenseVoiceSize, mask: str, mask_bias: str) -> str:
    """One SAN-M encoder layer (FunASR's ``EncoderLayerSANM``): pre-norm
    self-attention plus FSMN memory, residual when the sizes match, then a
    pre-norm ReLU feed-forward with a residual."""
    d, heads = s.dim, s.heads
    head_dim = d // heads
    h = g.layer_norm(x, d_in)
    qkv = g.linear(h, d_in, 3 * d)
    q, k, v = g.op("Split", qkv, g.const(np.array([d, d, d], np.int64)), outputs=3, axis=-1).split(",")
    # FSMN memory block: masked values, depthwise Conv1d over time, plus the values
    v_masked = g.op("Mul", v, mask)
    conv = g.op("Conv", g.op("Transpose", v_masked, perm=[0, 2, 1]), g.weight(d, 1, s.kernel, scale=0.3 * np.sqrt(d)),
                group=d, kernel_shape=[s.kernel], pads=[s.kernel // 2, s.kernel // 2])  # fmt: skip
    memory = g.op("Mul", g.op("Add", g.op("Transpose", conv, perm=[0, 2, 1]), v_masked), mask)
    heads_shape = g.const(np.array([0, 0, heads, head_dim], np.int64))

    def split_heads(t: str) -> str:
        return g.op("Transpose", g.op("Reshape", t, heads_shape), perm=[0, 2, 1, 3])

    qh = g.op("Mul", split_heads(q), g.const(np.array(head_dim**-0.5, np.float32)))
    kh_t = g.op("Transpose", g.op("Reshape", k, heads_shape), perm=[0, 2, 3, 1])
    scores = g.op("Add", g.op("MatMul", qh, kh_t), mask_bias)
    attn = g.op("Softmax", scores, axis=-1)
    context = g.op("MatMul", attn, split_heads(v))
    merged = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), g.const(np.array([0, 0, d], np.int64)))
    att_out = g.op("Add", g.linear(merged, d, d), memory)
    x = att_out if d_in != d else g.op("Add", x, att_out)
    h = g.op("Relu", g.linear(g.layer_norm(x, d), d, s.ffn))
    return g.op("Add", x, g.linear(h, s.ffn, d, scale=0.5))


def _build_real_size(s: SenseVoiceSize) -> onnx.ModelProto:
    rng = np.random.default_rng(s.seed)
    g = _Graph(rng)
    feat = s.num_bins * s.lfr_window_size
    if s.dim % s.heads or s.layers < 1 or s.vocab < len(TOKENS):
        raise ValueError(f"bad geometry {s}")
    one = g.const(np.array(1, np.int64))
    zero = g.const(np.array(0, np.int64))
    n = g.op
    # the four queries: language, event and emotion (ids 1, 2), text norm; then the frames
    embed = g.const((rng.standard_normal((_EMBEDDINGS, feat), dtype=np.float32)), "embed")
    lang_q = n("Unsqueeze", n("Gather", embed, "language", axis=0), g.const(np.array([1], np.int64)))
    norm_q = n("Unsqueeze", n("Gather", embed, "text_norm", axis=0), g.const(np.array([1], np.int64)))
    x_shape = n("Shape", "x")
    batch = n("Gather", x_shape, g.const(np.array([0], np.int64)), axis=0)
    ee_shape = n("Concat", batch, g.const(np.array([2, feat], np.int64)), axis=0)
    event_emo = n("Expand", n("Gather", embed, g.const(np.array([[1, 2]], np.int64)), axis=0), ee_shape)
    xs = n("Concat", lang_q, event_emo, norm_q, "x", axis=1)
    # valid frames: x_length + 4
    frames = n("Add", n("Gather", x_shape, one, axis=0), g.const(np.array(4, np.int64)))
    positions = n("Range", zero, frames, one)
    lengths = n("Add", n("Cast", "x_length", to=TensorProto.INT64), g.const(np.array(4, np.int64)))
    valid = n("Cast", n("Less", positions, n("Unsqueeze", lengths, g.const(np.array([1], np.int64)))),
              to=TensorProto.FLOAT)  # fmt: skip
    mask = n("Unsqueeze", valid, g.const(np.array([2], np.int64)))  # (N, T', 1)
    key_mask = n("Unsqueeze", valid, g.const(np.array([1, 2], np.int64)))  # (N, 1, 1, T')
    mask_bias = n("Mul", n("Sub", key_mask, g.const(np.array(1.0, np.float32))), g.const(np.array(1e4, np.float32)))
    # x * sqrt(d) + sinusoidal positions (FunASR's SinusoidalPositionEncoder, 1-based)
    half = feat // 2
    inv_timescale = np.exp(np.arange(half, dtype=np.float32) * -(np.log(10000.0) / (half - 1))).astype(np.float32)
    pos_f = n("Cast", n("Range", one, n("Add", frames, one), one), to=TensorProto.FLOAT)
    scaled = n("Mul", n("Unsqueeze", pos_f, g.const(np.array([1], np.int64))), g.const(inv_timescale))
    encoding = n("Concat", n("Sin", scaled), n("Cos", scaled), axis=1)
    h = n("Add", n("Mul", xs, g.const(np.array(np.sqrt(s.dim), np.float32))), encoding)
    d_in = feat
    for i in range(s.layers):
        h = _sanm_layer(g, h, d_in, s, mask, mask_bias)
        d_in = s.dim
        if i + 1 == min(50, s.layers) or i + 1 == s.layers:
            h = g.layer_norm(h, s.dim)
    logits = g.linear(h, s.dim, s.vocab)
    # tag frames confined to their tags, language and text norm forced; text frames: blank bias, no tags
    allowed, by_language, by_norm = _prefix_tables(s.vocab)
    text_bias = np.zeros(s.vocab, np.float32)
    text_bias[0] = s.blank_bias
    text_bias[1:3] = _CLOSED
    text_bias[3 + len(_PIECES) : len(TOKENS)] = _CLOSED
    starts, ends, axis1 = (g.const(np.array([v], np.int64)) for v in (0, 4, 1))
    prefix = n("Slice", logits, starts, ends, axis1)
    text = n("Slice", logits, ends, g.const(np.array([2**62], np.int64)), axis1)
    prefix = n("Add", n("Mul", prefix, g.const(np.array(0.2, np.float32))), g.const(allowed))
    prefix = n("Add", prefix, n("Gather", g.const(by_language), "language", axis=0))
    prefix = n("Add", prefix, n("Gather", g.const(by_norm), "text_norm", axis=0))
    out = g.op("Concat", prefix, n("Add", text, g.const(text_bias)), axis=1)
    g.nodes.append(helper.make_node("Identity", [out], ["logits"]))
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    inputs = [
        helper.make_tensor_value_info("x", f32, ["N", "T", feat]),
        helper.make_tensor_value_info("x_length", i32, ["N"]),
        helper.make_tensor_value_info("language", i32, ["N"]),
        helper.make_tensor_value_info("text_norm", i32, ["N"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["N", "T_out", s.vocab])]
    spec = SenseVoiceSpec(num_bins=s.num_bins, lfr_window_size=s.lfr_window_size, lfr_window_shift=s.lfr_window_shift)
    neg_mean, inv_stddev = _cmvn(spec, rng)
    meta = _metadata(neg_mean, inv_stddev, spec, s.vocab)
    meta["comment"] = f"synthetic real-size SenseVoice fixture (trio-asr), {s.layers} SAN-M layers, random weights"
    return finish_model(
        g.nodes, "sense_voice_real_size_fixture", inputs, outputs, g.inits, opset=13, ir_version=7, meta=meta
    )
