"""Where the shared test data lives: ``../shared`` beside the checkout.

``TRIO_ASR_SHARED_DIR`` overrides it (e.g. when the tests run from an
installed wheel in a temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DIR = Path(
    os.environ.get("TRIO_ASR_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared"
)
AUDIO_DIR = SHARED_DIR / "audio"
MODELS_DIR = SHARED_DIR / "models"
SPEECH_FILES = sorted(AUDIO_DIR.glob("*.wav"))
