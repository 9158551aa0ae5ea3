"""The queue of stream starts whose hotwords must be compiled first.

A ``start`` may carry up to ``--max-stream-hotwords`` phrases, which are
compiled with the server's into the stream's automaton; a list not compiled
yet costs pure-Python work (tens of milliseconds for 100 phrases of 64
characters), and a server may be sent many at once. :class:`CompileQueue`
keeps that work from starving everyone else:

* **In short slices, at a low priority.** The work comes as steps (see
  :mod:`trio_asr.recognition.hotword_automaton`), run in a thread of its
  own ``slice_seconds`` at a time, the thread sleeping a moment after each
  slice, at the lowest CPU priority (on Linux). Pure-Python work holds the
  interpreter lock: a thread running it for long makes the event loop, and
  the threads decoding other streams, wait up to the interpreter's switch
  interval (5 ms) every time they want the lock back, many times per reply.
  (Run on the event loop instead, in slices between other tasks, it keeps
  the loop from ever letting go of the lock, with that effect on the
  decoding threads.)
* **Dropped with its client.** A caller cancelled while it waits leaves the
  queue; one cancelled while its compile runs returns at once (the thread
  is not waited for) and the thread stops after the step it is in. A
  session cancels its start when its client goes.
* **One at a time, clients taking turns.** The waiting starts are served
  round-robin by client (the server passes the peer's host), so that many
  connections from one host delay another host's start by one of their
  compiles at most.
* **Each list once.** A start whose list is being compiled for another
  waits for that compile instead of queueing (see :meth:`CompileQueue.run`).
* **Bounded.** At most ``max_waiting`` starts wait. A newcomer whose client
  has fewer waiting than the busiest client less one takes the place of the
  busiest client's newest start; otherwise it is refused. Either refused
  start gets :class:`CompileQueueFull` (the protocol core closes the
  connection with 1013, try again later).

Lists compiled before are kept (see
:meth:`trio_asr.recognition.hotwords.CompiledHotwords.merged_steps`): their
starts never queue.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

import attrs
import trio

from trio_asr.bounds import between
from trio_asr.recognition.hotword_automaton import Steps

__all__ = ["MAX_WAITING", "PAUSE_SECONDS", "SLICE_SECONDS", "CompileQueue", "CompileQueueFull"]

T = TypeVar("T")

#: starts waiting for their compile, at most, by default
MAX_WAITING = 64
#: how long a stretch of compiling holds the interpreter lock, s (at least one step: a tenth of a millisecond or two)
SLICE_SECONDS = 0.0001
#: the pause after each slice, s
PAUSE_SECONDS = 0.0001


class CompileQueueFull(Exception):
    """Too many starts are waiting for their hotwords to be compiled: the
    server is overloaded, the client should try again later."""


@attrs.define(eq=False)
class _Waiter:
    client: Hashable
    turn: trio.Event = attrs.Factory(trio.Event)
    granted: bool = False  # its turn came: it holds the queue
    refused: bool = False  # a newcomer took its place


@attrs.define(eq=False)
class CompileQueue:
    """Runs compiles one at a time, in short slices in a worker thread,
    clients taking turns (see the module docstring); one per server."""

    max_waiting: int = attrs.field(default=MAX_WAITING, validator=between(0, 1_000_000))
    slice_seconds: float = attrs.field(default=SLICE_SECONDS, validator=between(1e-5, 1.0))
    _queues: collections.OrderedDict[Hashable, collections.deque[_Waiter]] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    _flights: dict[Hashable, trio.Event] = attrs.field(init=False, factory=dict)  # work queued or running
    _waiting: int = attrs.field(init=False, default=0)
    _busy: bool = attrs.field(init=False, default=False)

    @property
    def waiting(self) -> int:
        """Starts waiting for their turn."""
        return self._waiting

    @property
    def busy(self) -> bool:
        """Whether a compile holds the queue."""
        return self._busy

    def waiting_for(self, client: Hashable) -> int:
        """Starts of ``client`` waiting for their turn."""
        return len(self._queues.get(client, ()))

    async def run(self, client: Hashable, steps: Steps[T], work: Hashable = None) -> T:
        """Run ``steps`` to its end when ``client``'s turn comes, in slices
        in a thread of its own; its result. Raises :class:`CompileQueueFull`
        when the queue has no room for it (or a newcomer took its place). A
        cancelled call returns at once: its steps stop after the one running.

        ``work`` names what ``steps`` computes (None: unknown): a call for
        work already queued or running waits for that call to end, taking
        no place in the queue, and then returns at once if the next step
        finishes its steps (the work is kept: see
        :meth:`~trio_asr.recognition.hotwords.CompiledHotwords.merged_steps`);
        otherwise (that call failed or was cancelled) it queues as usual."""
        flight: trio.Event | None = None
        try:
            try:
                if work is not None and work in self._flights:
                    while work in self._flights:
                        await self._flights[work].wait()
                    try:
                        next(steps)
                    except StopIteration as done:
                        return done.value  # type: ignore[no-any-return]
                if work is not None:
                    flight = self._flights[work] = trio.Event()
                await self._acquire(client)
            except BaseException:
                steps.close()
                raise
            try:
                return await _Slices(steps, self.slice_seconds).run()  # the thread closes the steps
            finally:
                self._release()
        finally:
            if flight is not None:
                del self._flights[work]
                flight.set()

    async def _acquire(self, client: Hashable) -> None:
        if not self._busy:
            self._busy = True
            return
        waiter = self._admit(client)
        try:
            await waiter.turn.wait()
        except BaseException:
            if waiter.granted:
                self._release()  # the turn goes on to the next
            elif not waiter.refused:
                self._remove(waiter)
            raise
        if waiter.refused:
            raise CompileQueueFull(self._full())

    def _admit(self, client: Hashable) -> _Waiter:
        if self._waiting >= self.max_waiting:
            mine = self.waiting_for(client)
            busiest = max(self._queues, key=self.waiting_for, default=None)
            if busiest is None or self.waiting_for(busiest) <= mine + 1:
                raise CompileQueueFull(self._full())
            displaced = self._queues[busiest][-1]
            self._remove(displaced)
            displaced.refused = True
            displaced.turn.set()
        waiter = _Waiter(client)
        self._queues.setdefault(client, collections.deque()).append(waiter)
        self._waiting += 1
        return waiter

    def _full(self) -> str:
        return f"{self.max_waiting} hotword lists are waiting to be compiled"

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._queues[waiter.client]
        queue.remove(waiter)
        self._waiting -= 1
        if not queue:
            del self._queues[waiter.client]

    def _release(self) -> None:
        """The running compile is done: the next client's turn."""
        if not self._queues:
            self._busy = False
            return
        client, queue = next(iter(self._queues.items()))
        waiter = queue.popleft()
        self._waiting -= 1
        if queue:
            self._queues.move_to_end(client)  # its next start waits behind the other clients'
        else:
            del self._queues[client]
        waiter.granted = True
        waiter.turn.set()


class _Abandoned(Exception):
    """Ends the thread of steps whose caller was cancelled (no one sees it)."""


class _Slices(Generic[T]):
    """Runs steps in a thread of their own, a slice at a time, the thread
    sleeping :data:`PAUSE_SECONDS` between slices: it holds the interpreter
    lock for a slice at most, and then truly lets go of it (a thread that
    only released it for a moment would mostly take it straight back, and a
    thread waiting for it would wait out the interpreter's switch interval,
    5 ms, every time). On Linux the thread also runs at the lowest CPU
    priority (nice 19, a thread's own on Linux), so that on busy CPUs the
    event loop and the decoding threads go first. Cancelled, it returns at
    once and the thread stops after the step it is in."""

    def __init__(self, steps: Steps[T], slice_seconds: float) -> None:
        self._steps = steps
        self._slice = slice_seconds
        self._abandoned = False
        self._done = trio.Event()
        self._result: tuple[T | None, BaseException | None] = (None, None)

    async def run(self) -> T:
        token = trio.lowlevel.current_trio_token()
        threading.Thread(target=self._in_thread, args=(token,), name="trio-asr hotwords", daemon=True).start()
        try:
            await self._done.wait()
        except BaseException:
            self._abandoned = True
            raise
        value, error = self._result
        if error is not None:
            raise error
        return value  # type: ignore[return-value]

    def _in_thread(self, token: trio.lowlevel.TrioToken) -> None:
        if sys.platform == "linux":
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            result: tuple[T | None, BaseException | None] = (self._run_steps(), None)
        except BaseException as exc:
            result = (None, exc)
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._deliver, result)

    def _deliver(self, result: tuple[T | None, BaseException | None]) -> None:
        self._result = result
        self._done.set()

    def _run_steps(self) -> T:
        steps = self._steps
        try:
            while True:
                deadline = time.perf_counter() + self._slice
                try:
                    while time.perf_counter() < deadline:
                        if self._abandoned:
                            raise _Abandoned
                        next(steps)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                time.sleep(PAUSE_SECONDS)
        finally:
            steps.close()
