"""Helpers of the offline-model tests: audio, sherpa-onnx's offline decode,
the CTC score of a text, and the real model named by $TRIO_ASR_TEST_MODEL_DIR."""

from __future__ import annotations

import os
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from paths import SPEECH_FILES

from trio_asr.recognition.model import ModelError, find_model_file
from trio_asr.recognition.offline import OfflineModel, load_offline_model

REAL_MODEL_ENV = "TRIO_ASR_TEST_MODEL_DIR"
CONTROL = re.compile(r"^<[^<>\s]+>$")


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def noise(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)


def utterances() -> list:
    """The speech clips and a noise clip, as pytest parameters (name, samples)."""
    return [pytest.param(p, id=p.stem) for p in SPEECH_FILES] + [pytest.param(None, id="noise")]


def samples_of(wav: Path | None) -> np.ndarray:
    return read_wav(wav) if wav is not None else noise()


def real_model(kind: type[OfflineModel]) -> Path:
    """The directory $TRIO_ASR_TEST_MODEL_DIR names, if it holds a ``kind``
    model; skips otherwise."""
    value = os.environ.get(REAL_MODEL_ENV)
    if not value:
        pytest.skip(f"{REAL_MODEL_ENV} is not set (no real {kind.__name__} to check)")
    try:
        model = load_offline_model(value)
    except ModelError as exc:
        pytest.skip(f"{REAL_MODEL_ENV}={value} is not an offline model: {exc}")
    if not isinstance(model, kind):
        pytest.skip(f"{REAL_MODEL_ENV}={value} is a {type(model).__name__}, not a {kind.__name__}")
    return Path(value)


def model_files(path: Path) -> tuple[Path, Path]:
    """(ONNX file, tokens.txt) of a model directory, or of an ONNX file in
    one (to choose e.g. model.onnx over model.int8.onnx), as we load them."""
    if path.suffix == ".onnx":
        return path, path.parent / "tokens.txt"
    return find_model_file(path), path / "tokens.txt"


def sherpa_decode(recognizer, samples: np.ndarray):
    """sherpa-onnx's offline result for one utterance."""
    stream = recognizer.create_stream()
    stream.accept_waveform(16000, samples)
    recognizer.decode_stream(stream)
    return stream.result


def visible(tokens, timestamps, frame_shift_s: float) -> list[tuple[str, int]]:
    """sherpa-onnx's tokens as (piece, output frame), without blanks of
    display (whitespace-only pieces) and control pieces (``<unk>``), which
    our results leave out."""
    return [
        (piece.strip(), round(t / frame_shift_s))
        for piece, t in zip(tokens, timestamps)
        if piece.strip() and not CONTROL.match(piece.strip())
    ]


def ours_visible(result, frame_shift_s: float, duration: float) -> list[tuple[str, int]]:
    """Our result's tokens as (piece, output frame); a token whose start was
    clamped to the end of the audio is left out (its frame is unknown)."""
    return [(t.piece, round(t.start / frame_shift_s)) for t in result.tokens if t.start < duration]
