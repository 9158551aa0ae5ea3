"""Shared fixtures: synthetic model directories written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trio_asr.testing import zipformer2_ctc
from trio_asr.testing.sense_voice import write_sense_voice_model
from paths import missing_speech_message

REAL_MODEL_ENV = "TRIO_ASR_TEST_MODEL_DIR"


def pytest_configure(config) -> None:
    """Stop at once, in one line, when the speech clips cannot be found."""
    message = missing_speech_message()
    if message:
        raise pytest.UsageError(message)


@pytest.fixture(scope="session")
def zipformer2_model_dir(tmp_path_factory) -> Path:
    """A tiny model in sherpa-onnx's streaming zipformer2-CTC format (+ tokens.txt)."""
    return zipformer2_ctc.write_model(tmp_path_factory.mktemp("zipformer2_ctc"))


@pytest.fixture(scope="session")
def sense_voice_dir(tmp_path_factory) -> Path:
    """A tiny offline model in sherpa-onnx's SenseVoice format (+ tokens.txt)."""
    directory = tmp_path_factory.mktemp("sense-voice")
    write_sense_voice_model(directory)
    return directory


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The real model directory named by $TRIO_ASR_TEST_MODEL_DIR (skips if unset)."""
    value = os.environ.get(REAL_MODEL_ENV)
    if not value:
        pytest.skip(f"{REAL_MODEL_ENV} is not set: no real model to test")
    return Path(value)


@pytest.fixture(params=["fixture", "real"])
def streaming_ctc_model_dir(request) -> Path:
    """Every streaming zipformer2-CTC model directory available: the synthetic
    fixture always, the real model when $TRIO_ASR_TEST_MODEL_DIR is set."""
    if request.param == "fixture":
        return request.getfixturevalue("zipformer2_model_dir")
    return request.getfixturevalue("real_model_dir")
