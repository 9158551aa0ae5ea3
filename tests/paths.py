"""Where the tests' data lives: the one place that decides it.

By default the copies kept in the repository under ``tests/data``: five
speech clips in ``audio/`` and the default model's ``tokens.txt`` under
``models/`` (origins and licences in ``data/audio/SOURCE.md``). Setting
``TRIO_ASR_SHARED_DIR`` points the tests at another directory with the same
``audio/`` and ``models/`` layout instead, e.g. a larger speech set.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SHARED_DIR_ENV = "TRIO_ASR_SHARED_DIR"
SHARED_DIR = Path(os.environ.get(SHARED_DIR_ENV) or DATA_DIR)
AUDIO_DIR = SHARED_DIR / "audio"
MODELS_DIR = SHARED_DIR / "models"
SPEECH_FILES = sorted(AUDIO_DIR.glob("*.wav"))


def missing_speech_message() -> str | None:
    """Why the speech clips cannot be found, or None when they can."""
    if SPEECH_FILES:
        return None
    where = f"no speech clips (*.wav) in {AUDIO_DIR}"
    if os.environ.get(SHARED_DIR_ENV):
        return f"{where}: point {SHARED_DIR_ENV} at a directory with audio/*.wav, or unset it"
    return f"{where}: this checkout is incomplete (they are part of the repository)"
