"""A loaded model keeps no copy of its ONNX file in Python memory.

onnxruntime's Python binding keeps the bytes a session was made from for as
long as the session lives: a model loaded that way costs its file's size
again, for good (nearly 1 GB for a float SenseVoice second pass)."""

from __future__ import annotations

import gc
import logging
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from trio_asr.recognition.model import find_model_file, load_model, quantization
from trio_asr.recognition.offline import load_offline_model
from trio_asr.testing import zipformer2_ctc
from trio_asr.testing.int8 import quantize_model_dir


def largest_block_kept(load: Callable[[], object]) -> tuple[object, int]:
    """What ``load`` returns, and the largest block of Python memory that
    was allocated while it ran and is still alive afterwards."""
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already tracing (PYTHONTRACEMALLOC?): the snapshot would hold older blocks")
    gc.collect()
    tracemalloc.start()
    try:
        loaded = load()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return loaded, max((trace.size for trace in snapshot.traces), default=0)


@pytest.fixture(scope="module")
def int8_model_dir(tmp_path_factory) -> Path:
    float_dir = zipformer2_ctc.write_model(tmp_path_factory.mktemp("float"))
    return quantize_model_dir(float_dir, tmp_path_factory.mktemp("int8"), op_types=("MatMul",))


@pytest.mark.parametrize("layout", ["float", "int8 rewritten per item", "int8 as it is"])
def test_streaming_model_keeps_no_copy_of_its_file(layout, zipformer2_model_dir, int8_model_dir):
    directory = zipformer2_model_dir if layout == "float" else int8_model_dir
    size = find_model_file(directory).stat().st_size
    model, largest = largest_block_kept(
        lambda: load_model(directory, per_item_quantization=layout != "int8 as it is")
    )
    assert model is not None
    assert largest < size / 4, f"a block of {largest} bytes is kept for a model file of {size}"


def test_offline_model_keeps_no_copy_of_its_file(sense_voice_dir):
    size = find_model_file(sense_voice_dir).stat().st_size
    model, largest = largest_block_kept(lambda: load_offline_model(sense_voice_dir))
    assert model is not None
    assert largest < size / 4, f"a block of {largest} bytes is kept for a model file of {size}"


@pytest.mark.parametrize("where", [0, (1 << 22) - 10, (1 << 22) - 21, 1 << 22, 3 * (1 << 22) + 5])
def test_quantizers_are_found_in_a_file_wherever_they_are(tmp_path, where):
    """The file is searched in blocks: a name across a block boundary counts."""
    marker = b"DynamicQuantizeLinear"
    data = bytearray(b"\0" * (where + len(marker) + 100))
    data[where : where + len(marker)] = marker
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(data))
    assert quantization.is_dynamically_quantized(path)
    assert quantization.is_dynamically_quantized(bytes(data))
    path.write_bytes(bytes(data).replace(marker, marker[:-1] + b"X"))
    assert not quantization.is_dynamically_quantized(path)


def test_rewritten_model_loads_without_a_temporary_file(int8_model_dir, monkeypatch, caplog):
    """Where no temporary file can be written, the rewritten graph's session
    is made from its bytes: it costs memory, but the model loads."""
    import tempfile

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_space)
    caplog.set_level(logging.DEBUG, "trio_asr.model")
    model = load_model(int8_model_dir)
    assert "no temporary file" in caplog.text
    assert model.batch_invariant
    assert model._single_stream_session is not None


def test_an_unreadable_model_file_is_a_model_error(int8_model_dir, monkeypatch):
    from trio_asr.recognition.model import ModelError

    model_file = find_model_file(int8_model_dir)
    real_open = Path.open

    def unreadable(path, *args, **kwargs):
        if path == model_file:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", unreadable)
    with pytest.raises(ModelError, match="cannot read .*Permission denied"):
        load_model(int8_model_dir)
