"""A model whose weights are in an external data file loads in every layout.

ONNX files over protobuf's 2 GB limit, and some exporters' output at any
size, keep their tensors in a file beside the ``.onnx`` (``location`` in each
tensor).  Such a model must give what the same model with inline weights
gives, rewritten per item or not."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from trio_asr.recognition.model import find_model_file, load_model
from trio_asr.recognition.offline import load_offline_model
from trio_asr.recognition.offline.base import Conditioning
from trio_asr.testing import zipformer2_ctc
from trio_asr.testing.int8 import quantize_model_dir


@pytest.fixture(scope="module")
def int8_model_dir(tmp_path_factory) -> Path:
    float_dir = zipformer2_ctc.write_model(tmp_path_factory.mktemp("float"))
    return quantize_model_dir(float_dir, tmp_path_factory.mktemp("int8"), op_types=("MatMul",))


def with_external_data(model_dir: Path, out_dir: Path) -> Path:
    """A copy of ``model_dir`` whose ONNX file keeps its tensors in ``weights.bin``."""
    out_dir.mkdir()
    model_file = find_model_file(model_dir)
    for other in model_dir.iterdir():
        if other != model_file:
            shutil.copy(other, out_dir / other.name)
    onnx.save_model(
        onnx.load(str(model_file)), str(out_dir / model_file.name),
        save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=256,
    )  # fmt: skip
    kept = onnx.load(str(out_dir / model_file.name), load_external_data=False)
    inline = sum(len(t.raw_data) for t in kept.graph.initializer)
    assert (out_dir / "weights.bin").stat().st_size > 10 * inline, "the weights did not move out"
    return out_dir


@pytest.mark.parametrize("layout", ["float", "int8 rewritten per item", "int8 as it is"])
def test_model_with_external_data_gives_what_the_inline_model_gives(
    layout, zipformer2_model_dir, int8_model_dir, tmp_path
):
    source = zipformer2_model_dir if layout == "float" else int8_model_dir
    external = with_external_data(source, tmp_path / "external")
    per_item = layout != "int8 as it is"
    inline_model = load_model(source, per_item_quantization=per_item)
    external_model = load_model(external, per_item_quantization=per_item)
    assert external_model.batch_invariant == inline_model.batch_invariant

    rng = np.random.default_rng(1)
    features = rng.standard_normal((3, inline_model.chunk_frames, inline_model.feature_dim)).astype(np.float32)
    features *= np.array([0.5, 2.0, 8.0], np.float32)[:, None, None]  # unlike ranges: per-item quantization matters
    states = [inline_model.initial_state()] * 3
    expected, expected_states = inline_model.run(features, states)
    got, got_states = external_model.run(features, states)
    np.testing.assert_array_equal(got, expected)
    for mine, theirs in zip(got_states, expected_states, strict=True):
        for a, b in zip(mine.tensors, theirs.tensors, strict=True):
            np.testing.assert_array_equal(a, b)


def test_offline_model_with_external_data_gives_what_the_inline_model_gives(sense_voice_dir, tmp_path):
    external = with_external_data(sense_voice_dir, tmp_path / "external")
    inline_model, external_model = load_offline_model(sense_voice_dir), load_offline_model(external)
    rng = np.random.default_rng(2)
    samples = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 12000)]
    features = [inline_model.features(s) for s in samples]
    conditioning = [Conditioning(), Conditioning(language="en", use_itn=True)]
    expected = inline_model.run(features, conditioning)
    got = external_model.run(features, conditioning)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
