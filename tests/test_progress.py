"""The progress bar on a terminal: lines printed while it is shown start clean.

A fake terminal (a text stream that says it is a TTY) records what is
written, and :func:`screen` replays it as a terminal shows it: ``\\r`` goes
back to the start of the line and what follows overwrites it.
"""

from __future__ import annotations

import io
import sys

from paths import SPEECH_FILES

from trio_asr.cli.progress import Progress
from trio_asr.cli.transcribe import run_batch
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(output: str) -> list[str]:
    """The lines a terminal shows for ``output`` (trailing blanks dropped)."""
    lines: list[str] = []
    line: list[str] = []
    column = 0
    for ch in output:
        if ch == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        elif ch == "\r":
            column = 0
        else:
            if column < len(line):
                line[column] = ch
            else:
                line.append(ch)
            column += 1
    if line:
        lines.append("".join(line).rstrip())
    return lines


def test_clear_erases_the_bar_and_the_next_update_draws_it_again():
    terminal = FakeTerminal()
    bar = Progress(4, "working", stream=terminal)
    bar.advance()
    assert screen(terminal.getvalue())[-1].startswith("working [")
    bar.clear()
    assert screen(terminal.getvalue()) == [""]
    terminal.write("a result\n")
    bar.advance()  # at once, not throttled: the bar is not on the screen
    bar.close()
    lines = screen(terminal.getvalue())
    assert lines[0] == "a result"
    assert lines[1].startswith("working [") and "4/4" not in lines[1] and "2/4" in lines[1]
    bar.clear()  # after close: nothing to erase
    assert screen(terminal.getvalue()) == lines


def test_clear_without_a_terminal_writes_nothing():
    stream = io.StringIO()
    bar = Progress(2, "working", stream=stream)
    bar.advance()
    bar.clear()
    assert stream.getvalue() == ""
    Progress(2, stream=None).clear()


def test_transcribe_results_and_errors_do_not_run_into_the_bar(zipformer2_model_dir, tmp_path, monkeypatch):
    """stdout and stderr on one terminal, as in a shell: every result and
    error line is whole, and the bar's summary is the last line."""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # where errors go
    missing = tmp_path / "missing.wav"
    paths = [str(SPEECH_FILES[0]), str(missing), *map(str, SPEECH_FILES[1:3])]
    recognizer = Recognizer(load_model(zipformer2_model_dir))
    failures = run_batch(
        recognizer, paths, nbest=1, timestamps=False, as_json=False, out=terminal, progress=terminal
    )
    assert failures == 1
    lines = screen(terminal.getvalue())
    assert len(lines) == len(paths) + 1, lines
    for line, path in zip(lines, paths):
        if path == str(missing):
            assert line.startswith("trio-asr transcribe: ") and str(missing) in line
        else:
            assert line.startswith(f"{path}\t"), line
    assert lines[-1].startswith("transcribing [") and lines[-1].split("]")[1].split()[0] == f"{len(paths)}/{len(paths)}"
