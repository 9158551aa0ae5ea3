"""What joins a session's tasks: sending on a bounded channel without a
checkpoint of its own, and the byte budget of the audio queued between the
reader and the decoder (see :mod:`trio_asr.serving.session`)."""

from __future__ import annotations

from typing import TypeVar

import trio

__all__ = ["ByteBudget", "send_soon"]

T = TypeVar("T")


class ByteBudget:
    """Bounds the audio bytes queued between reader and decoder (the channel
    bounds their number); one item may always pass when nothing is queued.
    One task takes (the reader); giving wakes it only when it waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = trio.Event()
        self._waiting = False

    async def take(self, size: int) -> None:
        while self.used and self.used + size > self.limit:
            self._waiting = True
            await self._freed.wait()
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        if self._waiting:
            self._waiting = False
            self._freed.set()
            self._freed = trio.Event()


async def send_soon(channel: trio.MemorySendChannel[T], item: T) -> None:
    """Send ``item``, waiting only when the channel is full (backpressure):
    a frame's hop to the next task costs no checkpoint of its own, the
    sender having just come back from one (a socket read, a model call)."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        await channel.send(item)
