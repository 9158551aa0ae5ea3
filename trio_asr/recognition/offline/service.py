"""The second pass of every stream: offline recognition in batched calls.

A server with a second pass (``--second-pass OFFLINE_DIR``) decodes each
closed segment of a stream again with an offline model.  Streams do not call
the model themselves: they :meth:`SecondPassService.submit` a segment's
samples and get a :class:`Ticket` at once; the service (:meth:`SecondPassService.run`,
started in the server's nursery) has ``concurrent_batches`` worker tasks, each
of which takes a batch of queued tickets and runs it in a worker thread: the
features of each utterance (:meth:`~trio_asr.recognition.offline.recognizer.OfflineRecognizer.prepare`),
one padded model call for the batch, and each utterance's search.  Nothing of
it runs on the event loop.

Batches: the oldest queued ticket, and the queued tickets whose lengths are
closest to its own, as long as the longest is at most ``max_length_ratio``
times the shortest (padding costs what the padded frames cost), the batch
holds at most ``max_batch`` utterances and its padded audio (utterances ×
the longest) at most :attr:`~SecondPassService.batch_seconds`: as much as
fits in ``max_call_seconds`` of CPU at the cost per padded audio second
measured over the recent batches (features, model and search alike), never
more than ``max_batch_seconds``.  Every ticket of a batch waits for all of
it, so the bound keeps a burst of segments (many streams ending at once)
in several batches that the workers run side by side.  Under low load a
ticket runs at once in a batch of one; under high load batches grow by
themselves.

Queue delay and admission: :attr:`SecondPassService.queue_delay` is the
longest wait among the queued tickets and those of the batches now running;
:attr:`~SecondPassService.overloaded` says whether it exceeds
``max_queue_delay`` (the server then refuses connections, as for the
streaming model's queue).

Errors: a stream's own hotword that the offline model cannot spell (its
tokens differ from the streaming model's) is left out of that utterance's
search, the others kept; an utterance that cannot be prepared or searched
otherwise fails its own ticket; a model call that raises fails the tickets of its batch; either way
:meth:`Ticket.wait` raises :class:`SecondPassError` and the service goes on.
A ticket whose stream went away is :meth:`~Ticket.abandon`\\ ed: skipped if
still queued, its result dropped if running.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs
import numpy as np
import trio

from trio_asr.bounds import positive
from trio_asr.recognition.hotwords import Hotword, HotwordError, compile_hotwords
from trio_asr.recognition.offline.options import OfflineOptions
from trio_asr.recognition.offline.recognizer import OfflineRecognizer, OfflineResult, PreparedUtterance

__all__ = ["SecondPassError", "SecondPassPolicy", "SecondPassService", "Ticket"]

#: how much of the measured cost each earlier batch keeps, per batch
_DECAY = 0.9


class SecondPassError(Exception):
    """A ticket's second pass failed (its cause is the ``__cause__``), or the
    service is not running."""


@attrs.frozen(kw_only=True)
class SecondPassPolicy:
    """How the second pass batches (see the module docstring)."""

    max_batch: int = attrs.field(default=16, validator=positive)
    max_batch_seconds: float = attrs.field(default=240.0, validator=positive)
    max_call_seconds: float = attrs.field(default=0.25, validator=positive)
    max_length_ratio: float = attrs.field(default=1.5, validator=attrs.validators.ge(1.0))
    max_queue_delay: float = attrs.field(default=0.5, validator=positive)
    concurrent_batches: int = attrs.field(default=1, validator=positive)


@attrs.define(eq=False)
class Ticket:
    """One utterance submitted to the service: ``done`` is set once
    ``result`` or ``error`` is."""

    samples: np.ndarray
    options: OfflineOptions
    duration: float
    queued_at: float
    done: trio.Event = attrs.Factory(trio.Event)
    result: OfflineResult | None = None
    error: BaseException | None = None
    abandoned: bool = False

    def abandon(self) -> None:
        """Nobody wants the result any more."""
        self.abandoned = True

    def finish(self, result: OfflineResult | None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.samples = self.samples[:0]  # the audio is not needed any more
        self.done.set()

    async def wait(self) -> OfflineResult:
        """The result; raises :class:`SecondPassError`."""
        await self.done.wait()
        return self.outcome()

    def outcome(self) -> OfflineResult:
        """The result of a ``done`` ticket; raises :class:`SecondPassError`."""
        if self.result is None:
            raise SecondPassError(f"second pass failed: {self.error!r}") from self.error
        return self.result


#: after each batch: (utterances, seconds its oldest waited, CPU seconds of its thread)
BatchObserver = Callable[[int, float, float], None]


class SecondPassService:
    """Runs ``recognizer`` for the tickets of all streams, as ``policy`` says."""

    def __init__(
        self,
        recognizer: OfflineRecognizer,
        policy: SecondPassPolicy = SecondPassPolicy(),
        *,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.policy = policy
        self.on_batch = on_batch
        self._queue: list[Ticket] = []  # in arrival order
        self._running_since: list[float] = []
        self._wake = trio.lowlevel.ParkingLot()
        self._limiter = trio.CapacityLimiter(policy.concurrent_batches)
        self._stopped = True
        self.batches = self.utterances = self.failed_batches = 0
        # CPU seconds and padded audio seconds of recent batches, each batch's share decaying by _DECAY per batch
        self._cpu = self._padded = 0.0

    @property
    def batch_seconds(self) -> float:
        """Padded audio seconds the next batch may hold (see *Batches*)."""
        if self._cpu <= 0 or self._padded <= 0:
            return self.policy.max_batch_seconds
        return min(self.policy.max_batch_seconds, self.policy.max_call_seconds * self._padded / self._cpu)

    @property
    def sample_rate(self) -> int:
        return self.recognizer.sample_rate

    @property
    def queue_delay(self) -> float:
        """Seconds the longest-waiting current ticket has waited (or waited,
        if its batch is running) for its batch to start; 0 when idle."""
        oldest = list(self._running_since) + [t.queued_at for t in self._queue[:1]]
        return trio.current_time() - min(oldest) if oldest else 0.0

    @property
    def overloaded(self) -> bool:
        return self.queue_delay > self.policy.max_queue_delay

    def submit(self, samples: np.ndarray, options: OfflineOptions) -> Ticket:
        """Queue one utterance (mono float samples at ``options.sample_rate``);
        raises :class:`SecondPassError` when the service is not running."""
        if self._stopped:
            raise SecondPassError("the second-pass service is not running")
        rate = options.sample_rate or self.sample_rate
        ticket = Ticket(np.asarray(samples, np.float32), options, len(samples) / rate, trio.current_time())
        self._queue.append(ticket)
        self._wake.unpark()
        return ticket

    # ------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve tickets until cancelled; then fail whatever is still queued."""
        self._stopped = False
        try:
            async with trio.open_nursery() as workers:
                for _ in range(self.policy.concurrent_batches):
                    workers.start_soon(self._worker)
                task_status.started()
        finally:
            self._stopped = True
            error = SecondPassError("the second-pass service stopped")
            for ticket in self._queue:
                ticket.finish(None, error)
            self._queue.clear()

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                await self._wake.park()
            batch = self.take()
            if not batch:
                continue
            since = min(t.queued_at for t in batch)
            self._running_since.append(since)
            started = trio.current_time()
            try:
                # shielded: a started batch runs to the end, so no thread outlives the service
                with trio.CancelScope(shield=True):
                    outcomes, cpu = await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
            except Exception as exc:  # the model call (or the thread) failed: every ticket of the batch
                self.failed_batches += 1
                for ticket in batch:
                    ticket.finish(None, exc)
                continue
            finally:
                self._running_since.remove(since)
            self.batches += 1
            self.utterances += len(batch)
            self._cpu = _DECAY * self._cpu + cpu
            self._padded = _DECAY * self._padded + len(batch) * max(t.duration for t in batch)
            for ticket, (result, error) in zip(batch, outcomes):
                ticket.finish(result, error)
            if self.on_batch is not None:
                self.on_batch(len(batch), started - since, cpu)
            await trio.lowlevel.checkpoint_if_cancelled()

    def take(self) -> list[Ticket]:
        """The next batch (see *Batches*), removed from the queue; abandoned
        tickets are dropped on the way."""
        self._queue = [t for t in self._queue if not t.abandoned]
        if not self._queue:
            return []
        first, policy, limit = self._queue[0], self.policy, self.batch_seconds
        floor = 1e-3  # s: an empty utterance is as long as a very short one

        def distance(t: Ticket) -> float:
            return abs(math.log(max(t.duration, floor) / max(first.duration, floor)))

        batch = [first]
        shortest = longest = max(first.duration, floor)
        for ticket in sorted(self._queue[1:], key=distance):
            if len(batch) >= policy.max_batch:
                break
            lo, hi = min(shortest, max(ticket.duration, floor)), max(longest, ticket.duration)
            if hi > policy.max_length_ratio * lo or hi * (len(batch) + 1) > limit:
                break  # sorted by distance: the rest are further still
            batch.append(ticket)
            shortest, longest = lo, hi
        taken = set(map(id, batch))
        self._queue = [t for t in self._queue if id(t) not in taken]
        return sorted(batch, key=lambda t: t.queued_at)

    def _run_batch(
        self, batch: list[Ticket]
    ) -> tuple[list[tuple[OfflineResult | None, BaseException | None]], float]:
        """In a worker thread: features, one model call, searches.  An
        utterance's own failure is its outcome; the model call's raises."""
        cpu = time.thread_time()
        recognizer = self.recognizer
        outcomes: list[tuple[OfflineResult | None, BaseException | None]] = [(None, None)] * len(batch)
        prepared = []
        for i, ticket in enumerate(batch):
            try:
                prepared.append((i, recognizer.prepare(ticket.samples, ticket.options)))
            except Exception as exc:
                outcomes[i] = (None, exc)
        log_probs = recognizer.run([u for _, u in prepared])
        for (i, utterance), lp in zip(prepared, log_probs):
            try:
                outcomes[i] = (self._decode(utterance, lp), None)
            except Exception as exc:
                outcomes[i] = (None, exc)
        return outcomes, time.thread_time() - cpu

    def _decode(self, utterance: PreparedUtterance, log_probs: np.ndarray) -> OfflineResult:
        """The search, without the utterance's own hotwords that the model cannot spell."""
        recognizer = self.recognizer
        try:
            return recognizer.decode(utterance, log_probs)
        except HotwordError:
            if not utterance.options.hotwords:
                raise
        tokens = recognizer.model.tokens

        def spelled(hotword: Hotword) -> bool:
            try:
                compile_hotwords([hotword], tokens)
            except HotwordError:
                return False
            return True

        kept = tuple(h for h in utterance.options.hotwords if spelled(h))
        options = attrs.evolve(utterance.options, hotwords=kept)
        return recognizer.decode(attrs.evolve(utterance, options=options), log_probs)
