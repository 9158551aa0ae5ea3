"""Per-item dynamic quantization: batched int8 that stays exact.

The usual int8 exports (onnxruntime's ``quantize_dynamic``, as icefall and
sherpa-onnx use it) quantize each MatMul's float input at run time::

    X -> DynamicQuantizeLinear -> (Xq uint8, scale, zp)      one scale for all of X
    MatMulInteger(Xq, Wq, zp, w_zp) -> Cast -> Mul(scale * w_scale)

Because one scale and zero point cover the whole tensor, batch included, a
stream's result depends on the other streams of its batch.
:func:`per_item_quantization` rewrites every such ``DynamicQuantizeLinear``
so that each batch item gets the scale and zero point it would get alone
(min/max over the item's own elements, the same float formula as
onnxruntime's kernel), quantizes with them (per-axis ``QuantizeLinear``,
the same rounding), and keeps the integer matmul exact: ``MatMulInteger``
takes only a scalar zero point, so the rewritten input enters it with zero
point 0 and the item's zero point is taken off afterwards in int32::

    (Xq - zp[b]) @ (Wq - w_zp) = Xq @ (Wq - w_zp) - zp[b] * colsum(Wq - w_zp)

(and the mirror term ``rowsum`` when the right-hand side is a quantized
activation too).  The scales then multiply per item.  Each item's integers
are therefore those of running it alone; what differs is only float
rounding in the float parts of the model (a GEMM over a batch of rows may
round differently from one over a single row).

Which axis of each quantized tensor is the batch is not written in the
graph; :func:`batch_axes` finds it from the tensor's shapes at two batch
sizes (see :func:`with_probe_outputs`).  A quantized tensor whose batch is
merged into another axis, or whose quantized values feed anything but
``MatMulInteger``, is left as it was and reported, so callers can tell that
the model is still not batch-invariant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "batch_axes",
    "is_dynamically_quantized",
    "per_item_quantization",
    "rewrite_model",
    "with_probe_outputs",
]

_DQL = "DynamicQuantizeLinear"
_PREFIX = "per_item/"


def is_dynamically_quantized(model_bytes: bytes) -> bool:
    """Whether a serialized model (probably) contains ``DynamicQuantizeLinear``."""
    return _DQL.encode() in model_bytes


def _quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == _DQL and n.domain in ("", "ai.onnx")]


def with_probe_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` that also outputs the input of every
    ``DynamicQuantizeLinear``; returns it and those tensors' names."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(dict.fromkeys(n.input[0] for n in _quantizers(model)))
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    return probe, names


def rewrite_model(
    data: bytes,
    feed: Callable[[int], Mapping[str, np.ndarray]],
    session: Callable[[bytes], object],
) -> tuple[bytes, list[str]]:
    """Probe and rewrite a serialized dynamically quantized model.

    ``feed(batch)`` gives valid inputs for a batch of that size, ``session``
    makes an onnxruntime session from serialized bytes.  Returns the
    rewritten model, serialized, and the quantized tensors that could not be
    rewritten (see :func:`per_item_quantization`).
    """
    model = onnx.load_from_string(data)
    probe, names = with_probe_outputs(model)
    probe_session = session(probe.SerializeToString())
    del probe
    shapes = {b: [v.shape for v in probe_session.run(names, dict(feed(b)))] for b in (1, 3)}
    del probe_session
    axes = batch_axes(names, shapes[1], shapes[3])
    rewritten, skipped = per_item_quantization(model, axes, dict(zip(names, shapes[1])))
    return rewritten.SerializeToString(), skipped


def batch_axes(
    names: Sequence[str], shapes_1: Sequence[tuple[int, ...]], shapes_3: Sequence[tuple[int, ...]]
) -> dict[str, int | None]:
    """The batch axis of each tensor from its shapes at batch sizes 1 and 3.

    ``None``: the shape does not depend on the batch (a tensor computed from
    constants only); ``-1``: the batch is not one axis of its own (merged
    into another, or the shape changes otherwise).
    """
    axes: dict[str, int | None] = {}
    for name, one, three in zip(names, shapes_1, shapes_3):
        if tuple(one) == tuple(three):
            axes[name] = None
            continue
        changed = [a for a, (x, y) in enumerate(zip(one, three)) if x != y]
        ok = len(one) == len(three) and len(changed) == 1 and one[changed[0]] == 1 and three[changed[0]] == 3
        axes[name] = changed[0] if ok else -1
    return axes


class _Builder:
    """New nodes and initializers with unique names."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{_PREFIX}{stem}_{self._count}"

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attributes))
        return out

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        # axes became an input in opset 18 (ReduceSum: 13)
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.const(np.array(axes, np.int64), "axes"), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)


_FLT_MIN = np.finfo(np.float32).tiny


def _quantize_per_item(
    b: _Builder, node: onnx.NodeProto, axis: int, rank: int, extra_columns: int
) -> tuple[str, str | None]:
    """Replace one ``DynamicQuantizeLinear`` by per-item quantization.

    Its outputs keep their names: the quantized values; the scale, now shaped
    like the input with every axis but ``axis`` reduced to 1 (so that it
    broadcasts over the MatMul output as the scalar did); the zero point, now
    a vector (N,).  With ``extra_columns``, the quantized values get that many
    more columns, each holding the item's zero point (see
    :func:`_extended_weight`).  Returns the names of the scale as a vector and
    of the zero point as int32 in the input's shape (for the corrections;
    None with extra columns, which need none)."""
    x = node.input[0]
    q_out, scale_out, zp_out = node.output
    others = [a for a in range(rank) if a != axis]
    if extra_columns:
        # zeros appended to x quantize to the zero point, and make min <= 0 <= max
        pads = np.zeros(2 * rank, np.int64)
        pads[-1] = extra_columns
        x = b.op("Pad", x, b.const(pads, "pads"))
        lo = b.reduce("ReduceMin", x, others, keepdims=0)
        hi = b.reduce("ReduceMax", x, others, keepdims=0)
    else:
        zero = b.const(np.float32(0.0), "zero")
        lo = b.op("Min", b.reduce("ReduceMin", x, others, keepdims=0), zero)
        hi = b.op("Max", b.reduce("ReduceMax", x, others, keepdims=0), zero)
    # onnxruntime's GetQuantizationParameter, per item: scale = (max - min) / 255,
    # or 1 when max == min (== 0: all zeros, which quantize to zero point 0 with
    # any positive scale, so the smallest normal float serves as well).
    spread = b.op("Div", b.op("Sub", hi, lo), b.const(np.float32(255.0), "qrange"))
    scale = b.op("Max", spread, b.const(np.float32(_FLT_MIN), "tiny"))
    # zp = round(clamp(0 - min / scale, 0, 255)): what QuantizeLinear computes for -min
    zp = b.op("QuantizeLinear", b.op("Neg", lo), scale, axis=0, out=zp_out)
    b.op("QuantizeLinear", x, scale, zp, axis=axis, out=q_out)
    keep = b.const(np.array([-1 if a == axis else 1 for a in range(rank)], np.int64), "keep")
    b.op("Reshape", scale, keep, out=scale_out)
    return scale, None if extra_columns else b.op("Reshape", _int32(b, zp), keep)


def _extended_weight(wq: np.ndarray, w_zp: np.ndarray | None) -> np.ndarray:
    """``wq`` (K, M) with rows appended whose sum, less the weight zero point,
    is ``-colsum(wq - w_zp)``, each entry within the weight's integer range.

    Multiplied by an input with as many extra columns, each the item's zero
    point zp, they add ``-zp * colsum(wq - w_zp)``: the integer matmul then
    comes out as ``(xq - zp) @ (wq - w_zp)`` exactly, with input zero point 0.
    """
    zp = 0 if w_zp is None else int(w_zp)
    lo, hi = (-128, 127) if wq.dtype == np.int8 else (0, 255)
    bound = min(hi - zp, zp - lo)  # |entry - zp| that stays in range
    need = -(wq.astype(np.int64) - zp).sum(axis=0)
    rows = max(1, -(-int(np.abs(need).max()) // bound))
    base = np.floor_divide(need, rows)
    extra = base + (np.arange(rows)[:, None] < (need - base * rows)[None, :])
    assert np.array_equal(extra.sum(axis=0), need) and np.abs(extra).max() <= bound
    return np.concatenate([wq, (extra + zp).astype(wq.dtype)])


def _extra_columns(node: onnx.NodeProto, consumers, weights) -> int:
    """Extra columns for a quantizer whose values feed only MatMulIntegers
    as the left side, with 2-D weights and scalar weight zero points (the
    usual case): the most any of them needs; 0 otherwise."""
    columns = 0
    for user, i in consumers[node.output[0]]:
        w, w_zp = (list(user.input) + [""] * 4)[1:4:2]
        if user.op_type != "MatMulInteger" or i != 0 or w not in weights or weights[w].ndim != 2:
            return 0
        if w_zp and (w_zp not in weights or weights[w_zp].size != 1):
            return 0
        zp = weights[w_zp].reshape(()) if w_zp else None
        columns = max(columns, len(_extended_weight(weights[w], zp)) - len(weights[w]))
    return columns


def _int32(b: _Builder, x: str) -> str:
    return b.op("Cast", x, to=TensorProto.INT32)


def _rewrite_matmul(
    b: _Builder,
    node: onnx.NodeProto,
    zp_int32: Mapping[str, str],
    extra_columns: Mapping[str, int],
    weights: Mapping[str, np.ndarray],
) -> None:
    """``MatMulInteger`` with per-item zero points on its rewritten inputs:
    run with zero point 0 there, and take the zero-point terms off in int32:
    by extended weights if the left side has extra columns (``extra_columns``,
    by quantized input), else subtracted afterwards (``zp_int32`` maps each
    per-item zero point to its int32 form)."""
    a, w, a_zp, w_zp = (list(node.input) + [""] * 4)[:4]
    zero_u8 = b.const(np.uint8(0), "zp0")
    if a in extra_columns:  # the zero-point term comes out of the matmul itself
        zp = weights[w_zp].reshape(()) if w_zp else None
        wq = _extended_weight(weights[w], zp)
        rows = len(weights[w]) + extra_columns[a]
        wq = np.concatenate([wq, np.full((rows - len(wq), wq.shape[1]), 0 if zp is None else zp, wq.dtype)])
        b.op("MatMulInteger", a, b.const(wq, "w_ext"), zero_u8, w_zp, out=node.output[0])
        return
    a_item, w_item = a_zp in zp_int32, w_zp in zp_int32
    inputs = [a, w, zero_u8 if a_item else a_zp, zero_u8 if w_item else w_zp]
    raw = b.op("MatMulInteger", *inputs)

    def centred(t: str, zp: str) -> str:  # t - zp in int32
        if not zp:
            return _int32(b, t)
        return b.op("Sub", _int32(b, t), zp_int32[zp] if zp in zp_int32 else _int32(b, zp))

    terms = []
    if a_item:
        # za[b] * colsum(Wq - w_zp): a constant when Wq is a weight
        if w in weights and not w_item:
            wq = weights[w].astype(np.int32)
            if w_zp:
                wq = wq - weights[w_zp].astype(np.int32)
            colsum = b.const(wq.sum(axis=-2, keepdims=wq.ndim > 2).astype(np.int32), "colsum")
        else:
            colsum = b.reduce("ReduceSum", centred(w, w_zp), [-2])
        terms.append(b.op("Mul", zp_int32[a_zp], colsum))
    if w_item:
        # zb[b] * rowsum(Aq - a_zp), where a_zp is 0 if A is per-item too
        rowsum = b.reduce("ReduceSum", centred(a, "" if a_item else a_zp), [-1])
        terms.append(b.op("Mul", zp_int32[w_zp], rowsum))
    total = raw
    for i, term in enumerate(terms):
        total = b.op("Sub", total, term, out=node.output[0] if i == len(terms) - 1 else None)


def per_item_quantization(
    model: onnx.ModelProto, axes: Mapping[str, int | None], shapes: Mapping[str, Sequence[int]]
) -> tuple[onnx.ModelProto, list[str]]:
    """Rewrite ``model`` so that each batch item is quantized on its own.

    ``axes`` maps each ``DynamicQuantizeLinear`` input to its batch axis as
    :func:`batch_axes` found it, ``shapes`` to its shape at some batch size.  Returns the new model
    and the names of the quantized tensors left as they were because they
    could not be rewritten (empty: the model is batch-invariant up to float
    rounding).
    """
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer
               if t.data_type in (TensorProto.INT8, TensorProto.UINT8)}  # fmt: skip
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))
    graph_outputs = {o.name for o in graph.output}

    rewrite: dict[str, int] = {}  # DynamicQuantizeLinear output 0 -> batch axis
    skipped: list[str] = []
    dequantize_axes: dict[str, int] = {}  # DequantizeLinear output -> batch axis of its input
    for node in _quantizers(model):
        x = node.input[0]
        axis = axes.get(x, -1)
        if axis is None:
            continue  # does not depend on the batch: nothing to do
        dequantizers = None if axis < 0 else _rewritable(node, axis, len(shapes[x]), consumers, graph_outputs)
        if dequantizers is None:
            skipped.append(x)
            continue
        rewrite[node.output[0]] = axis
        dequantize_axes.update(dequantizers)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    b = _Builder(opset)
    zp_int32: dict[str, str] = {}  # per-item zero point -> its int32 form, input-shaped
    scale_vector: dict[str, str] = {}  # per-item scale output -> the scale as a vector
    extra_columns: dict[str, int] = {}  # quantized values -> zero-point columns appended
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        b.nodes = []
        if node.op_type == _DQL and node.output[0] in rewrite:
            columns = _extra_columns(node, consumers, weights)
            scale, zp = _quantize_per_item(b, node, rewrite[node.output[0]], len(shapes[node.input[0]]), columns)
            scale_vector[node.output[1]] = scale
            if columns:
                extra_columns[node.output[0]] = columns
            else:
                zp_int32[node.output[2]] = zp
        elif node.op_type == "MatMulInteger" and (
            node.input[0] in extra_columns or zp_int32.keys() & set(node.input[2:4])
        ):
            _rewrite_matmul(b, node, zp_int32, extra_columns, weights)
        elif node.op_type == "DequantizeLinear" and node.output[0] in dequantize_axes:
            q, scale, zp = node.input
            b.op("DequantizeLinear", q, scale_vector[scale], zp, axis=dequantize_axes[node.output[0]],
                 out=node.output[0])  # fmt: skip
        else:
            b.nodes = [node]
        nodes.extend(b.nodes)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [t for t in out.graph.initializer if t.name in used]  # weights replaced by extended ones go
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + b.initializers)
    if opset < 13:  # per-axis QuantizeLinear
        for o in out.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 13
    return out, skipped


def _rewritable(node, axis: int, rank: int, consumers, graph_outputs) -> dict[str, int] | None:
    """Whether a quantizer's outputs are used only the way the rewrite
    handles: by ``MatMulInteger``, by ``Mul`` (the scale) and by
    ``DequantizeLinear``, directly or after a ``Transpose`` of the quantized
    values (``quantize_dynamic`` quantizes a Transpose of a quantized tensor).
    Returns, for each such DequantizeLinear node's output, the batch axis of
    its input; None if the quantizer cannot be rewritten."""
    q_out, scale_out, zp_out = node.output
    if {q_out, scale_out, zp_out} & graph_outputs:
        return None
    dequantizers: dict[str, int] = {}

    def dequantizer(user, at_axis: int) -> bool:
        ok = user.op_type == "DequantizeLinear" and list(user.input[1:]) == [scale_out, zp_out]
        if ok:
            dequantizers[user.output[0]] = at_axis
        return ok

    for user, i in consumers[q_out]:
        if user.op_type == "MatMulInteger":
            if i not in (0, 1) or len(user.input) <= i + 2 or user.input[i + 2] != zp_out:
                return None
            # the batch must not be the contracted axis nor, for the right-hand
            # side, the output-column axis
            if (i == 0 and axis == rank - 1) or (i == 1 and axis >= rank - 2):
                return None
        elif user.op_type == "Transpose":
            perm = next((list(a.ints) for a in user.attribute if a.name == "perm"), None)
            moved = perm.index(axis) if perm else rank - 1 - axis
            if user.output[0] in graph_outputs or not all(
                dequantizer(u, moved) for u, _ in consumers[user.output[0]]
            ):
                return None
        elif not (i == 0 and dequantizer(user, axis)):
            return None
    for user, i in consumers[zp_out]:
        if user.op_type == "MatMulInteger":
            if i not in (2, 3) or user.input[i - 2] != q_out:
                return None
        elif user.output[0] not in dequantizers:
            return None
    for user, _ in consumers[scale_out]:
        if user.op_type != "Mul" and user.output[0] not in dequantizers:
            return None
    return dequantizers
