"""The graph pieces of per-item quantization (see :mod:`trio_asr.recognition.model.quantization`).

- :func:`quantize_per_item` replaces one ``DynamicQuantizeLinear``;
- :func:`rewrite_matmul` replaces a ``MatMulInteger`` that takes a per-item
  quantized input, by :func:`extended_weight` or an int32 correction;
- :func:`rewrite_conv` replaces a ``ConvInteger`` that takes one: the
  input padded explicitly (in float, by zeros, which quantize to the item's
  zero point, as the original kernel pads), zero point 0 and an int32
  correction;
- :func:`without_extra_columns` gives a ``Transpose`` of such an input
  (``quantize_dynamic`` quantizes Transposes) the values as they were;
- :func:`fuse_scaling` then merges each extended-weight matmul with the
  ``Cast`` and per-item ``Mul`` after it into one ``MatMulIntegerToFloat``
  (the int32-correction ones keep theirs);
- :class:`Builder` makes uniquely named nodes and initializers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trio_asr.recognition.model.kernel_probes import kernel_sums_exactly

__all__ = [
    "Builder",
    "extended_weight",
    "extra_columns_needed",
    "fuse_scaling",
    "quantize_per_item",
    "rewrite_conv",
    "rewrite_matmul",
    "without_extra_columns",
]

_PREFIX = "per_item/"

#: The attribute values this module gives ``helper.make_node``.
AttributeValue: TypeAlias = "int | float | str | Sequence[int]"
#: Each tensor name's users: (node, index of the input it is).
Consumers: TypeAlias = "Mapping[str, Sequence[tuple[onnx.NodeProto, int]]]"


class Builder:
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

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes: AttributeValue) -> str:
        out = out or self.name(op_type.lower())
        node = helper.make_node(op_type, list(inputs), [out])
        # sorted, as make_node orders its keyword attributes
        node.attribute.extend(helper.make_attribute(k, v) for k, v in sorted(attributes.items()))
        self.nodes.append(node)
        return out

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        # axes became an input in opset 18 (ReduceSum: 13)
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, x, self.const(np.array(axes, np.int64), "axes"), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)


_FLT_MIN = np.finfo(np.float32).tiny


def quantize_per_item(
    b: Builder, node: onnx.NodeProto, axis: int, rank: int, extra_columns: int
) -> tuple[str, str | None]:
    """Replace one ``DynamicQuantizeLinear`` by per-item quantization.

    Its outputs keep their names: the quantized values; the scale, now shaped
    like the input with every axis but ``axis`` reduced to 1 (so that it
    broadcasts over the MatMul output as the scalar did); the zero point, now
    a vector (N,).  With ``extra_columns``, the quantized values get that many
    more columns, each holding the item's zero point (see
    :func:`extended_weight`).  Returns the names of the scale as a vector and
    of the zero point as int32 in the input's shape (for the corrections;
    None with extra columns, which need none)."""
    x = node.input[0]
    q_out, scale_out, zp_out = node.output
    others = [a for a in range(rank) if a != axis]
    if extra_columns:
        # zeros appended to x quantize to the item's zero point: the columns
        # extended_weight needs.  They also bring 0 into the item's range, as
        # onnxruntime's kernel does with its min and max.
        pads = np.zeros(2 * rank, np.int64)
        pads[2 * rank - 1] = extra_columns
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
    keep = b.const(np.array([-1 if a == axis else 1 for a in range(rank)], np.int64), "keep")
    b.op("QuantizeLinear", x, scale, zp, axis=axis, out=q_out)
    b.op("Reshape", scale, keep, out=scale_out)
    return scale, None if extra_columns else b.op("Reshape", _int32(b, zp), keep)


# onnxruntime's (MLAS's) uint8 x int8 kernels without VNNI (AVX2, AVX-512BW)
# multiply with vpmaddubsw: the products of input columns 2j and 2j+1 are
# added in int16, saturating, before the int32 sum (VNNI and AMX kernels sum
# exactly, see kernel_probes.kernel_sums_exactly; uint8 x uint8 ones widen
# first).  The original file's matmul saturates so on such a machine, so the
# rows appended to a weight must change neither which columns pair up nor any
# pair's sum: they start at an even row, and each is within +-64, so that two
# of them times any input zero point (<= 255) fit in int16.  On a kernel that
# sums exactly, any int8 will do: half as many rows.
_PAIR_SAFE = 64


def extended_weight(wq: np.ndarray, w_zp: np.ndarray | None, *, exact_sums: bool = False) -> np.ndarray | None:
    """``wq`` (K, M) with rows appended whose sum, less the weight zero point,
    is ``-colsum(wq - w_zp)``; None if the weight zero point leaves no room.
    ``exact_sums``: the machine's kernel sums int8 products exactly (see
    :func:`~trio_asr.recognition.model.kernel_probes.kernel_sums_exactly`),
    so the appended entries may take the whole int8 range.

    Multiplied by an input with as many extra columns, each the item's zero
    point zp, they add ``-zp * colsum(wq - w_zp)``: the integer matmul then
    comes out as ``(xq - zp) @ (wq - w_zp)`` with input zero point 0, as
    onnxruntime computes it for the original, saturating kernels included:
    an odd K first gets a row of zeros (the kernel's own padding), and
    (without ``exact_sums``) every pair of appended int8 entries times any
    zero point fits in int16.
    """
    zp = 0 if w_zp is None else int(w_zp)
    if wq.dtype != np.int8:
        lo, hi = 0, 255
    else:
        lo, hi = (-128, 127) if exact_sums else (-_PAIR_SAFE, _PAIR_SAFE)
    bound = min(hi - zp, zp - lo)  # |entry - zp| that stays in range
    if bound <= 0:
        return None
    pad = np.zeros((len(wq) % 2, wq.shape[1]), wq.dtype)
    need = -(np.concatenate([wq, pad]).astype(np.int64) - zp).sum(axis=0)
    rows = max(1, -(-int(np.abs(need).max()) // bound))
    base = np.floor_divide(need, rows)
    extra = base + (np.arange(rows)[:, None] < (need - base * rows)[None, :])
    assert np.array_equal(extra.sum(axis=0), need) and np.abs(extra).max() <= bound
    return np.concatenate([wq, pad, (extra + zp).astype(wq.dtype)])


def extra_columns_needed(
    node: onnx.NodeProto, consumers: Consumers, weights: Mapping[str, np.ndarray]
) -> int:
    """Extra columns for a quantizer whose values feed MatMulIntegers as the
    left side, with 2-D weights and scalar weight zero points (the usual
    case), and otherwise only Transposes (which get the values without the
    extra columns, see :func:`without_extra_columns`): the most any of the
    matmuls needs; 0 otherwise."""
    columns = 0
    for user, i in consumers[node.output[0]]:
        if user.op_type == "Transpose":
            continue
        w, w_zp = (list(user.input) + [""] * 4)[1:4:2]
        if user.op_type != "MatMulInteger" or i != 0 or w not in weights or weights[w].ndim != 2:
            return 0
        if w_zp and (w_zp not in weights or weights[w_zp].size != 1):
            return 0
        extended = extended_weight(weights[w], weights[w_zp].reshape(()) if w_zp else None,
                                   exact_sums=kernel_sums_exactly())
        if extended is None:
            return 0
        columns = max(columns, len(extended) - len(weights[w]))
    return columns


def without_extra_columns(b: Builder, node: onnx.NodeProto, columns: int, rank: int) -> None:
    """``node`` (a Transpose of quantized values that have extra columns,
    see :func:`quantize_per_item`) on the values' first ``columns`` columns
    only: what it transposed before the rewrite."""
    kept = b.op("Slice", node.input[0], b.const(np.array([0], np.int64), "starts"),
                b.const(np.array([columns], np.int64), "ends"), b.const(np.array([rank - 1], np.int64), "axes"))  # fmt: skip
    transpose = onnx.NodeProto()
    transpose.CopyFrom(node)
    transpose.input[0] = kept
    b.nodes.append(transpose)


def _int32(b: Builder, x: str) -> str:
    return b.op("Cast", x, to=TensorProto.INT32)


def rewrite_matmul(
    b: Builder,
    node: onnx.NodeProto,
    zp_int32: Mapping[str, str],
    extra_columns: Mapping[str, int],
    weights: Mapping[str, np.ndarray],
) -> bool:
    """``MatMulInteger`` with per-item zero points on its rewritten inputs:
    run with zero point 0 there, and take the zero-point terms off in int32:
    by extended weights if the left side has extra columns (``extra_columns``,
    by quantized input), else subtracted afterwards (``zp_int32`` maps each
    per-item zero point to its int32 form).  Returns whether it was the
    former: one ``MatMulInteger`` whose output is the exact int32 result."""
    a, w, a_zp, w_zp = (list(node.input) + [""] * 4)[:4]
    zero_u8 = b.const(np.uint8(0), "zp0")
    if a in extra_columns:  # the zero-point term comes out of the matmul itself
        zp = weights[w_zp].reshape(()) if w_zp else None
        wq = extended_weight(weights[w], zp, exact_sums=kernel_sums_exactly())
        assert wq is not None  # extra_columns_needed checked it
        rows = len(weights[w]) + extra_columns[a]
        wq = np.concatenate([wq, np.full((rows - len(wq), wq.shape[1]), 0 if zp is None else zp, wq.dtype)])
        b.op("MatMulInteger", a, b.const(wq, "w_ext"), zero_u8, w_zp, out=node.output[0])
        return True
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
    return False


def rewrite_conv(
    b: Builder,
    node: onnx.NodeProto,
    source: tuple[str, str, str],
    zp_int32: Mapping[str, str],
    weights: Mapping[str, np.ndarray],
) -> None:
    """``ConvInteger`` whose input is quantized per item (batch axis 0) and
    whose weight is a constant (in ``weights``): ``source`` is the
    quantizer's float input, per-item scale vector and zero point vector,
    ``zp_int32`` maps the zero point to its int32 form (input-shaped).

    The original kernel (im2col, then an integer GEMM) fills the padding
    with the input's zero point, so that it contributes nothing.  Here the
    float input is padded with zeros, which quantize to the item's zero point
    exactly, and the convolution runs unpadded with input zero point 0: its
    im2col matrix is the original's, element for element, so the kernel's
    sums are the original's, saturating kernels included, and the zero-point
    term, now the same at every output position, comes off in int32::

        conv(xq_padded - zp[b], wq - w_zp) = conv(xq_padded, wq - w_zp) - zp[b] * sum(wq[m] - w_zp)

    (the sum over each output channel's weights, groups included)."""
    x, scale, zp = source
    q, w, _, w_zp = (list(node.input) + [""] * 4)[:4]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attributes.pop("auto_pad", None)  # NOTSET or VALID: the pads say it all
    pads = [int(p) for p in attributes.pop("pads", [])]
    if any(pads):
        spatial = len(pads) // 2
        full = [0, 0, *pads[:spatial], 0, 0, *pads[spatial:]]
        padded = b.op("Pad", x, b.const(np.array(full, np.int64), "pads"))
        q = b.op("QuantizeLinear", padded, scale, zp, axis=0)
    zero_u8 = b.const(np.uint8(0), "zp0")
    raw = b.op("ConvInteger", q, w, zero_u8, *([w_zp] if w_zp else []), **attributes)
    wq = weights[w].astype(np.int64)  # (M, C / group, kernel...)
    if w_zp:  # a scalar, or one per output channel
        wq = wq - weights[w_zp].astype(np.int64).reshape([-1] + [1] * (wq.ndim - 1))
    total = b.const(wq.sum(axis=tuple(range(1, wq.ndim))).reshape([-1] + [1] * (wq.ndim - 2)).astype(np.int32), "wsum")
    b.op("Sub", raw, b.op("Mul", zp_int32[node.input[2]], total), out=node.output[0])


def fuse_scaling(
    b: Builder,
    nodes: Sequence[onnx.NodeProto],
    matmuls: set[str],
    per_item_scales: set[str],
    kept: set[str],
) -> list[onnx.NodeProto]:
    """Merge ``MatMulInteger -> Cast(float) -> Mul(m)`` into one
    ``com.microsoft.MatMulIntegerToFloat`` where the matmul's output is in
    ``matmuls`` (exact int32 results, see :func:`rewrite_matmul`) and ``m`` is
    made by a ``Mul`` of one of ``per_item_scales`` (the rewritten
    quantizers' scales): the scale product per item.  Names in ``kept`` (graph
    outputs, names used inside subgraphs) are never removed.

    The kernel gets ``m`` as its input scale and 1 as the weight's, so it
    computes ``float(acc) * m`` as the ``Cast`` and ``Mul`` did, bit for bit
    (onnxruntime's own fusion passes the two scales apart, and multiplies in
    another order).  onnxruntime documents that scale as a scalar or a
    vector; its CPU kernel takes any shape that broadcasts over the output
    and multiplies the output by it in a pass of its own, which
    :func:`~trio_asr.recognition.model.kernel_probes.kernel_scales_per_item`
    checks before anything is fused.
    Returns the nodes, in an order that is still topological.
    """
    users: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node

    def only_user(name: str, op_type: str) -> onnx.NodeProto | None:
        found = users.get(name, [])
        if name in kept or len(found) != 1:
            return None
        user = found[0]
        return user if user.op_type == op_type and user.domain in ("", "ai.onnx") else None

    def scale_product(name: str) -> bool:
        made_by = producer.get(name)
        return made_by is not None and made_by.op_type == "Mul" and bool(per_item_scales & set(made_by.input))

    one = ""
    fused: dict[int, onnx.NodeProto] = {}  # id of the Mul -> its replacement
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type != "MatMulInteger" or node.output[0] not in matmuls:
            continue
        cast = only_user(node.output[0], "Cast")
        if cast is None or next((a.i for a in cast.attribute if a.name == "to"), None) != TensorProto.FLOAT:
            continue
        mul = only_user(cast.output[0], "Mul")
        if mul is None:
            continue
        scale = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        if not scale_product(scale):
            continue
        one = one or b.const(np.ones(1, np.float32), "one")
        a, w, a_zp, w_zp = (list(node.input) + [""])[:4]
        inputs = [a, w, scale, one, a_zp] + ([w_zp] if w_zp else [])
        fused[id(mul)] = helper.make_node("MatMulIntegerToFloat", inputs, [mul.output[0]], domain="com.microsoft")
        dropped.update((id(node), id(cast)))
    return [fused.get(id(n), n) for n in nodes if id(n) not in dropped]
