"""The real-size SenseVoice fixture builder (benchmarks' model), at a small size.

It must have the interface sherpa-onnx loads (greedy text and tokens equal
to ours on the same file, float32 and int8 as sherpa-onnx's export makes
it), SenseVoice-Small's parameter count at full size, and the tag frames.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import sherpa_onnx

from offlineutil import ours_visible, samples_of, sherpa_decode, visible
from paths import SPEECH_FILES
from trio_asr.recognition.offline import OfflineRecognizer, load_offline_model
from trio_asr.testing.int8 import quantize_model_dir
from trio_asr.testing.sense_voice import EVENTS
from trio_asr.testing.sense_voice_real_size import (
    SENSE_VOICE_SMALL,
    SenseVoiceSize,
    real_size_tokens,
    write_real_size_sense_voice_model,
)

SMALL = SenseVoiceSize(layers=3, vocab=3000)


@pytest.fixture(scope="module", params=["float32", "int8"])
def model_dir(request, tmp_path_factory):
    float_dir = tmp_path_factory.mktemp("real-size")
    write_real_size_sense_voice_model(float_dir, SMALL)
    if request.param == "float32":
        return float_dir
    return quantize_model_dir(float_dir, tmp_path_factory.mktemp("real-size-int8"), weight_type="QUInt8")


def test_full_size_has_sense_voice_small_parameters():
    assert 230e6 < SENSE_VOICE_SMALL.parameters < 240e6
    assert len(set(real_size_tokens(25055))) == 25055


def test_parameter_count_is_the_graphs(tmp_path):
    path = write_real_size_sense_voice_model(tmp_path, SMALL)
    weights = sum(
        int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer
        if t.name.startswith(("w_", "b_", "gamma_", "beta_"))
    )  # fmt: skip
    assert weights == SMALL.parameters


@pytest.mark.parametrize("wav", SPEECH_FILES[:2], ids=lambda p: p.name)
def test_greedy_equals_sherpa_onnx(model_dir, wav):
    model = load_offline_model(model_dir, threads=1)
    ours = OfflineRecognizer(model, decoding="greedy", use_itn=True)
    model_file = next(model_dir.glob("model*.onnx"))
    sherpa = sherpa_onnx.OfflineRecognizer.from_sense_voice(
        model=str(model_file), tokens=str(model_dir / "tokens.txt"), use_itn=True, num_threads=1
    )
    samples = samples_of(wav)
    expected = sherpa_decode(sherpa, samples)
    found = ours.recognize(samples)
    shift = model.frame_shift_s
    assert ours_visible(found.result, shift, found.duration) == visible(expected.tokens, expected.timestamps, shift)
    assert found.tags is not None and found.tags.event in EVENTS and found.tags.text_norm == "withitn"
