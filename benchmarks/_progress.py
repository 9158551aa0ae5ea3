"""A tiny dependency-free progress bar for benchmarks (writes to stderr)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "label") as bar: ... bar.advance()``.

    Redraws one line in place when stderr is a terminal, otherwise prints
    nothing until the end (so logs stay clean); always ends with a newline.
    """

    def __init__(self, total: int, label: str = "", width: int = 30, stream=None):
        self.total = max(total, 1)
        self.label = label
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = time.perf_counter()

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def __exit__(self, *exc) -> None:
        self._draw(final=True)

    def advance(self, steps: int = 1) -> None:
        self.done = min(self.done + steps, self.total)
        self._draw()

    def _draw(self, final: bool = False) -> None:
        interactive = getattr(self.stream, "isatty", lambda: False)()
        if not (interactive or final):
            return
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self._start
        line = f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s"
        self.stream.write(("\r" if interactive else "") + line + ("\n" if final else ""))
        self.stream.flush()
