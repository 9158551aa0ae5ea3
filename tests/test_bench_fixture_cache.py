"""The benchmarks' cached fixture models are rebuilt when their builder changes.

A cache kept only by existence once measured a fixture that an older builder
had written (without the convolutions the builder had gained since), while
the benchmark notes described the new one."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

if not (Path(__file__).resolve().parents[1] / "benchmarks" / "common.py").is_file():
    pytest.skip(f"no benchmarks/ beside {Path(__file__).parent}", allow_module_level=True)

# benchmarks/ is on the import path by pytest's `pythonpath` (pyproject.toml)
import common  # noqa: E402


def test_a_fixture_is_built_once_and_again_when_its_fingerprint_changes(tmp_path, capsys):
    builds: list[Path] = []

    def build(directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "model.onnx").write_text(f"build {len(builds)}")
        builds.append(directory)

    target = tmp_path / "fixture"
    assert common._cached(target, "one", build, "a test fixture") == target
    assert common._cached(target, "one", build, "a test fixture") == target
    assert len(builds) == 1
    (target / "stale-leftover").write_text("from the old builder")
    common._cached(target, "two", build, "a test fixture")
    assert len(builds) == 2
    assert (target / "model.onnx").read_text() == "build 1"
    assert not (target / "stale-leftover").exists(), "the old directory's files must go"
    assert capsys.readouterr().err.count("writing a test fixture") == 2


def test_the_fingerprint_follows_the_builder_source_and_options(tmp_path, monkeypatch):
    module = tmp_path / "fake_builder.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = common._fingerprint(["fake_builder"])
    assert common._fingerprint(["fake_builder"]) == first
    assert common._fingerprint(["fake_builder"], weight_type="QUInt8") != first
    module.write_text("X = 2\n")
    assert common._fingerprint(["fake_builder"]) != first


def test_a_fixture_from_an_older_builder_is_replaced(tmp_path, monkeypatch):
    """The real builders (at the tiny geometry, to be quick): a cached int8
    model without the stamp (as every cache before the stamps) is rebuilt,
    and gets today's convolutions."""
    from trio_asr.testing import zipformer2_ctc

    monkeypatch.setattr(zipformer2_ctc, "REAL_SIZE", zipformer2_ctc.TINY)
    stale = tmp_path / "zipformer2-ctc-real-size-int8-matmul"
    stale.mkdir()
    (stale / "model.int8.onnx").write_bytes(b"not a model")
    directory = common.fixture_model("int8", cache_dir=tmp_path)
    assert directory == stale
    ops = {node.op_type for node in onnx.load(str(directory / "model.int8.onnx")).graph.node}
    assert {"Conv", "MatMulInteger"} <= ops
    stamp = (directory / "fixture.sha256").read_text()
    assert common.fixture_model("int8", cache_dir=tmp_path) == directory
    assert (directory / "fixture.sha256").read_text() == stamp


def test_the_whole_model_fixture_quantizes_the_convolutions_too(tmp_path, monkeypatch):
    """``int8-whole`` is quantized as sherpa-onnx's NeMo export scripts do
    theirs (every op type, QUInt8 weights), beside the MatMul-only file."""
    from trio_asr.testing import zipformer2_ctc

    monkeypatch.setattr(zipformer2_ctc, "REAL_SIZE", zipformer2_ctc.TINY)
    whole = common.fixture_model("int8-whole", cache_dir=tmp_path)
    matmul = common.fixture_model("int8", cache_dir=tmp_path)
    assert whole != matmul
    graph = onnx.load(str(whole / "model.int8.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert {"ConvInteger", "MatMulInteger"} <= ops
    assert "Conv" not in ops
    weights = {t.name: t for t in graph.initializer}
    conv_weights = [weights[n.input[1]] for n in graph.node if n.op_type == "ConvInteger"]
    assert conv_weights and all(w.data_type == onnx.TensorProto.UINT8 for w in conv_weights)
    with pytest.raises(ValueError, match="int8-whole"):
        common.fixture_model("int4", cache_dir=tmp_path)
