"""The package's types are complete and honest: ``mypy --strict`` finds nothing.

The strictness comes from pyproject.toml (``[tool.mypy]`` sets ``strict =
true``), so a plain ``mypy`` in the checkout checks what this test checks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


@pytest.fixture(scope="module", autouse=True)
def _source_checkout() -> None:
    if not PYPROJECT.is_file() or not (ROOT / "trio_asr").is_dir():
        pytest.skip("no source checkout beside the tests (testing an installed wheel)")
    pytest.importorskip("mypy")


def _mypy(*targets: str) -> subprocess.CompletedProcess[str]:
    """mypy with the project's configuration, which is named explicitly so that
    no other configuration file can take its place."""
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--config-file", str(PYPROJECT), *targets],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_configuration_is_strict() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config.get("strict") is True


def test_mypy_reports_strict_errors(tmp_path: Path) -> None:
    """The check can fail: with the project's configuration, a module with an
    unannotated function (an error only under ``--strict``) and a wrong
    return type is rejected."""
    probe = tmp_path / "typing_probe.py"
    probe.write_text("def untyped(x):\n    return x\n\n\ndef wrong() -> int:\n    return 'text'\n")
    proc = _mypy(str(probe))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[no-untyped-def]" in proc.stdout, proc.stdout
    assert "[return-value]" in proc.stdout, proc.stdout


def test_mypy_is_clean() -> None:
    proc = _mypy("trio_asr")
    assert proc.returncode == 0, proc.stdout + proc.stderr
