"""The package's types are complete and honest: ``mypy`` finds nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean() -> None:
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "trio_asr").is_dir():
        pytest.skip("no source checkout beside the tests (testing an installed wheel)")
    pytest.importorskip("mypy")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "trio_asr"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
