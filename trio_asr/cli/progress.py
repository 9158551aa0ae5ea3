"""A small progress bar on one terminal line (no dependencies).

On a terminal the line is redrawn in place at most ten times a second; on
anything else (logs, pipes, CI) it stays silent until the end and then prints
one summary line, so captured output is not flooded with redraws.  Whoever
prints to the same terminal while a bar is shown calls :meth:`Progress.clear`
first (the next update draws the bar again, below what was printed).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress", "count_units", "megabytes"]


def count_units(value: float) -> str:
    return f"{int(value)}"


def megabytes(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


class Progress:
    """``with Progress(total, "label") as bar: ...; bar.advance(n)``.

    ``stream=None`` makes it silent; ``fmt`` formats the done/total figures
    (:func:`count_units` or :func:`megabytes`).
    """

    def __init__(
        self,
        total: float,
        label: str = "",
        *,
        stream: TextIO | None = sys.stderr,
        fmt: Callable[[float], str] = count_units,
        width: int = 30,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0.0
        self._stream = stream
        self._fmt = fmt
        self._width = width
        self._start = time.monotonic()
        self._last_draw = -1.0
        self._shown = 0  # characters of the bar on the terminal's line (0: none)
        self._interactive = stream is not None and getattr(stream, "isatty", lambda: False)()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def advance(self, amount: float = 1) -> None:
        self.update(self.done + amount)

    def update(self, done: float) -> None:
        self.done = done
        now = time.monotonic()
        if self._interactive and (not self._shown or now - self._last_draw >= 0.1):
            self._last_draw = now
            self._shown = self._draw("\r", "")

    def clear(self) -> None:
        """Erase the bar from the terminal's line (the cursor stays at its
        start), so that what is printed next starts a clean line."""
        if self._stream is not None and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0

    def close(self) -> None:
        if self._stream is not None:
            self._draw("\r" if self._interactive else "", "\n")
            self._shown = 0

    def _draw(self, prefix: str, suffix: str) -> int:
        """Write the bar; the number of its characters on the line."""
        if self._stream is None:
            return 0
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(self._width * fraction)
        bar = "#" * filled + "-" * (self._width - filled)
        elapsed = time.monotonic() - self._start
        text = (
            f"{self.label} [{bar}] {self._fmt(self.done)}/{self._fmt(self.total)}"
            f" {100 * fraction:3.0f}% {elapsed:5.1f}s"
        )
        self._stream.write(prefix + text + suffix)
        self._stream.flush()
        return len(text)
