"""What the fixture-model builders of this package share: named constants,
the finished model (opset, IR version, metadata, checked) and its writing
with a ``tokens.txt`` into a model directory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["const", "finish_model", "write_model_dir"]


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    """The initializer ``name`` holding ``value`` (its dtype kept)."""
    return numpy_helper.from_array(value, name)


def finish_model(
    nodes: Sequence[onnx.NodeProto],
    name: str,
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto],
    *,
    opset: int,
    ir_version: int,
    meta: Mapping[str, object],
) -> onnx.ModelProto:
    """The checked model of the graph, with the metadata ``meta`` (values as
    ``str`` gives them) and the producer name of this package's fixtures."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="trio-asr-tests"
    )
    model.ir_version = ir_version
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def write_model_dir(
    model_dir: Path, model: onnx.ModelProto, write_tokens: Callable[[Path], None], filename: str
) -> Path:
    """Write ``model`` as ``filename`` and ``tokens.txt`` (by ``write_tokens``)
    into ``model_dir``; return the model path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    write_tokens(model_dir / "tokens.txt")
    path = model_dir / filename
    onnx.save(model, str(path))
    return path
