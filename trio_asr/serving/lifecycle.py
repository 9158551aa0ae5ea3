"""Server-wide shutdown state that every connection watches."""

from __future__ import annotations

import trio

__all__ = ["Lifecycle"]


class Lifecycle:
    """Running, then *draining* (no new streams: connections without an open
    stream close, open streams may finish), then *stopping* (every connection
    is cut, its audio saved).  Each step only ever goes forward.
    """

    def __init__(self) -> None:
        self.draining = False
        self.stopping = False
        self._changed = trio.Event()

    def drain(self) -> None:
        if not self.draining:
            self.draining = True
            self._notify()

    def stop(self) -> None:
        self.draining = True
        if not self.stopping:
            self.stopping = True
            self._notify()

    async def wait_changed(self) -> None:
        """Return at the next step (immediately never: call, then check)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
