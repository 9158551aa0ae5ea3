"""The benchmarks keep their results when matplotlib is missing: the JSON is
written first, the plot is skipped with a one-line message."""

import json
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if not (REPO_ROOT / "benchmarks" / "common.py").is_file():
    pytest.skip(f"no benchmarks/ beside {Path(__file__).parent}", allow_module_level=True)

# benchmarks/ is on the import path by pytest's `pythonpath` (pyproject.toml)
from common import plotting_unavailable, write_results_and_plot  # noqa: E402

RECORD = {"servers": {"trio-asr": {"max_n": 4}}}


def test_without_matplotlib_the_json_is_written_and_the_plot_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    plotted = []
    written = write_results_and_plot("server", RECORD, plotted.append, results_dir=tmp_path)
    assert written == [tmp_path / "server.json"]
    assert json.loads(written[0].read_text()) == RECORD
    assert plotted == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib" in err and "[bench]" in err


def test_with_matplotlib_the_plot_is_drawn_after_the_json(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
    order = []

    def plot(png: Path) -> None:
        order.append(("plot", (tmp_path / "server.json").is_file()))
        png.write_bytes(b"png")

    written = write_results_and_plot("server", RECORD, plot, results_dir=tmp_path)
    assert written == [tmp_path / "server.json", tmp_path / "server.png"]
    assert order == [("plot", True)]
    assert plotting_unavailable() is None
