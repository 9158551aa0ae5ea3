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
onnxruntime's kernel) and is quantized with them (per-axis
``QuantizeLinear``: the same rounding).  The integer matmul stays exact
although ``MatMulInteger`` takes only a scalar zero point: the rewritten
input enters it with zero point 0, and the item's zero point term

    (Xq - zp[b]) @ (Wq - w_zp) = Xq @ (Wq - w_zp) - zp[b] * colsum(Wq - w_zp)

comes out of the matmul itself when Wq is a weight: the input gets a few
extra columns holding zp[b] (zeros appended to the float input, which
quantize to it) and the weight as many extra int8 rows summing to
``-colsum(Wq - w_zp)`` (:func:`~trio_asr.recognition.model.quantized_ops.extended_weight`); otherwise (activation x
activation, per-channel weight zero points) it is subtracted in int32, with
the mirror term ``rowsum`` when the right-hand side is per-item too.  A
``ConvInteger`` (``quantize_dynamic`` of all op types makes one of each Conv,
as sherpa-onnx's NeMo exports have) pads its input with the input zero point,
so that padding contributes nothing; its input is padded explicitly instead,
in float with zeros, which quantize to the item's own zero point, and the
unpadded convolution runs with zero point 0, the term ``zp[b] * sum(Wq[m] -
w_zp)`` (the same at every output position now) subtracted in int32
(:func:`~trio_asr.recognition.model.quantized_ops.rewrite_conv`).  A
quantized tensor that is only transposed and dequantized (``quantize_dynamic``
does that to Transposes) is dequantized per item; where the same values
feed matmuls with extended weights, the Transpose gets them without the
extra columns.  The scales multiply per
item, for extended-weight matmuls in the matmul's own kernel
(:func:`~trio_asr.recognition.model.quantized_ops.fuse_scaling`).  Each item's integers
are therefore those of running it alone through the original file on the
same machine, whatever its kernel computes: onnxruntime's uint8 x int8
kernels without VNNI (AVX2, AVX-512BW) add pairs of adjacent products in
int16 with saturation, so there the original's sums are not the exact ones
(VNNI and AMX kernels sum exactly); either way a sum is a function of the
item's row and the weight alone, and the rewrite keeps every input column
where it was and appends only what cannot saturate on this machine's kernel
(:func:`~trio_asr.recognition.model.quantized_ops.extended_weight`,
:func:`~trio_asr.recognition.model.kernel_probes.kernel_sums_exactly`); a
convolution's im2col matrix is the original's, element for element.  What
differs in a batch is float rounding in the float parts of the model (a GEMM
over many rows may round differently from one over a single row), which now
and then moves one quantization step.

Which axis of each quantized tensor is the batch is not written in the
graph; :func:`batch_axes` finds it from the tensor's shapes at two batch
sizes (see :func:`with_probe_outputs`).  A quantized tensor whose batch is
merged into another axis, or whose quantized values feed anything else (a
``ConvInteger`` padded implicitly, ``auto_pad`` SAME_*, among them), is
left as it was and reported, so callers can tell that the model is still
not batch-invariant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from trio_asr.recognition.model.base import ModelError
from trio_asr.recognition.model.kernel_probes import kernel_scales_per_item
from trio_asr.recognition.model.quantized_ops import (
    Builder,
    Consumers,
    extra_columns_needed,
    fuse_scaling,
    quantize_per_item,
    rewrite_conv,
    rewrite_matmul,
    without_extra_columns,
)

__all__ = [
    "batch_axes",
    "is_dynamically_quantized",
    "per_item_quantization",
    "rewrite_model",
    "with_probe_outputs",
]

_DQL = "DynamicQuantizeLinear"


def is_dynamically_quantized(model: bytes | Path) -> bool:
    """Whether a serialized model, or the ONNX file at a path, (probably)
    contains ``DynamicQuantizeLinear``; a file is read in blocks, not whole
    (:class:`ModelError` if it cannot be read)."""
    marker = _DQL.encode()
    if not isinstance(model, Path):
        return marker in model
    try:
        with model.open("rb") as file:
            tail = b""
            while block := file.read(1 << 22):
                if marker in tail + block[: len(marker)] or marker in block:
                    return True
                tail = (tail + block)[-len(marker) + 1 :]
    except OSError as exc:
        raise ModelError(f"cannot read {model}: {exc.strerror or exc}") from None
    return False


def _quantizers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == _DQL and n.domain in ("", "ai.onnx")]


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs of ``graph``'s nodes (If branches, Loop and Scan bodies), at any depth."""
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield sub
                yield from _subgraphs(sub)


def _nested_quantizers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The quantizers inside the subgraphs of ``graph``'s nodes (any depth)."""
    return [n for sub in _subgraphs(graph) for n in sub.node if n.op_type == _DQL]


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
    data: bytes | onnx.ModelProto,
    feed: Callable[[int], Mapping[str, np.ndarray]],
    session: Callable[[bytes], ort.InferenceSession],
) -> tuple[bytes, list[str]]:
    """Probe and rewrite a dynamically quantized model, serialized or parsed
    (with any external data read in: the probe and the result are bytes).

    ``feed(batch)`` gives valid inputs for a batch of that size, ``session``
    makes an onnxruntime session from serialized bytes.  Returns the
    rewritten model, serialized, and the quantized tensors that could not be
    rewritten (see :func:`per_item_quantization`).
    """
    model = data if isinstance(data, onnx.ModelProto) else onnx.load_from_string(data)
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
    skipped: list[str] = [n.input[0] for n in _nested_quantizers(graph)]  # inside If/Loop/Scan: left alone
    dequantize_axes: dict[str, int] = {}  # DequantizeLinear output -> batch axis of its input
    for node in _quantizers(model):
        x = node.input[0]
        axis = axes.get(x, -1)
        if axis is None:
            continue  # does not depend on the batch: nothing to do
        dequantizers = None if axis < 0 else _rewritable(node, axis, len(shapes[x]), consumers, graph_outputs, weights)
        if dequantizers is None:
            skipped.append(x)
            continue
        rewrite[node.output[0]] = axis
        dequantize_axes.update(dequantizers)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    b = Builder(opset)
    zp_int32: dict[str, str] = {}  # per-item zero point -> its int32 form, input-shaped
    scale_vector: dict[str, str] = {}  # per-item scale output -> the scale as a vector
    extra_columns: dict[str, int] = {}  # quantized values -> zero-point columns appended
    exact_matmuls: set[str] = set()  # outputs of rewritten matmuls that are the exact int32 result
    sources: dict[str, tuple[str, str, str]] = {}  # quantized values -> (float input, scale vector, zp)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        b.nodes = []
        if node.op_type == _DQL and node.output[0] in rewrite:
            columns = extra_columns_needed(node, consumers, weights)
            scale, zp = quantize_per_item(b, node, rewrite[node.output[0]], len(shapes[node.input[0]]), columns)
            scale_vector[node.output[1]] = scale
            sources[node.output[0]] = (node.input[0], scale, node.output[2])
            if zp is None:
                extra_columns[node.output[0]] = columns
            else:
                zp_int32[node.output[2]] = zp
        elif node.op_type == "MatMulInteger" and (
            node.input[0] in extra_columns or zp_int32.keys() & set(node.input[2:4])
        ):
            if rewrite_matmul(b, node, zp_int32, extra_columns, weights):
                exact_matmuls.add(node.output[0])
        elif node.op_type == "Transpose" and node.input[0] in extra_columns:
            shape = shapes[sources[node.input[0]][0]]
            without_extra_columns(b, node, shape[-1], len(shape))
        elif node.op_type == "ConvInteger" and node.input[0] in sources:
            rewrite_conv(b, node, sources[node.input[0]], zp_int32, weights)
        elif node.op_type == "DequantizeLinear" and node.output[0] in dequantize_axes:
            q, q_scale, q_zp = node.input
            b.op("DequantizeLinear", q, scale_vector[q_scale], q_zp, axis=dequantize_axes[node.output[0]],
                 out=node.output[0])  # fmt: skip
        else:
            b.nodes = [node]
        nodes.extend(b.nodes)

    in_subgraphs = {name for sub in _subgraphs(graph) for n in sub.node for name in n.input}  # outer names too
    if exact_matmuls and kernel_scales_per_item():
        nodes = fuse_scaling(b, nodes, exact_matmuls, set(scale_vector), graph_outputs | in_subgraphs)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input} | in_subgraphs
    kept = [t for t in out.graph.initializer if t.name in used]  # weights replaced by extended ones go
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + [t for t in b.initializers if t.name in used])
    if any(n.domain == "com.microsoft" for n in nodes) and not any(
        o.domain == "com.microsoft" for o in out.opset_import
    ):
        out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if opset < 13:  # per-axis QuantizeLinear
        for o in out.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 13
    return out, skipped


def _rewritable(
    node: onnx.NodeProto, axis: int, rank: int, consumers: Consumers, graph_outputs: set[str],
    weights: Mapping[str, np.ndarray],
) -> dict[str, int] | None:
    """Whether a quantizer's outputs are used only the way the rewrite
    handles: by ``MatMulInteger``, by ``ConvInteger`` (as its input, batch
    first, with a constant weight and explicit pads), by ``Mul`` (the scale)
    and by ``DequantizeLinear``, directly or after a ``Transpose`` of the
    quantized values (``quantize_dynamic`` quantizes a Transpose of a
    quantized tensor).
    Returns, for each such DequantizeLinear node's output, the batch axis of
    its input; None if the quantizer cannot be rewritten."""
    q_out, scale_out, zp_out = node.output
    if {q_out, scale_out, zp_out} & graph_outputs:
        return None
    dequantizers: dict[str, int] = {}

    def dequantizer(user: onnx.NodeProto, at_axis: int) -> bool:
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
        elif user.op_type == "ConvInteger":
            auto_pad = next((a.s for a in user.attribute if a.name == "auto_pad"), b"NOTSET")
            if (i, axis) != (0, 0) or list(user.input[2:3]) != [zp_out] or user.input[1] not in weights \
                    or auto_pad not in (b"NOTSET", b"VALID"):  # fmt: skip
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
        if user.op_type in ("MatMulInteger", "ConvInteger"):
            if i not in (2, 3) or user.input[i - 2] != q_out:
                return None
        elif user.output[0] not in dequantizers:
            return None
    for user, _ in consumers[scale_out]:
        if user.op_type != "Mul" and user.output[0] not in dequantizers:
            return None
    return dequantizers
