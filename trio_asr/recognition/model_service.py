"""The acoustic model run for every stream, in batched calls.

Connections do not call the model themselves: their decoder tasks hand the
:class:`~trio_asr.recognition.model.ModelStream` whose chunks they want run to
:meth:`ModelService.decode`, which queues their chunks one at a time.
The service (:meth:`ModelService.run`, started in the server's nursery) has
``concurrent_batches`` worker tasks.  Each takes the oldest requests queued
right now (see *Order*), as many as the batch limit allows (see *Batch
size*), stacks their chunks and states along the batch axis and runs one
``model.run`` in a worker thread.  When
the call returns, the worker records each new state in its stream
(``ModelStream.advance``), queues the next chunk of every decode that has
one, wakes the decoders whose chunks are all done, and starts the next batch
before any of them runs: they search and reply on the event loop, which
takes a while after a full batch, and a core would idle meanwhile.
Requests that arrive while a batch runs wait for the next one.
There is no timer: under low load a request runs at once in a batch of one,
under high load batches grow by themselves.  The CTC search stays with the
stream's owner; only the model call is shared.

Order: the oldest *decode* first.  The first two chunks of one :meth:`decode`
call (all that the padded tail at a stream's end takes) queue with the time
the call began, so the second tail chunk goes ahead of chunks that other
streams asked for later, instead of queuing behind all of them: when many
streams end together, each final result waits for about its own share of the
burst, not for the whole of it.  Further chunks of a decode (a client that
sent seconds of audio at once) queue as they come, so one such client cannot
hold up the others.  A decode of one chunk (the usual case) is served first
come, first served.

Batch size: a bigger call costs less per chunk, but every chunk of a call
waits for all of it.  A call takes as many chunks as fit in
``max_call_seconds`` of CPU at the model's cost per chunk, measured over the
recent calls (weighted by their chunks), and never more than ``max_batch``;
until a call has been measured, ``max_batch``.  The default model's
geometry costs about 4 ms of CPU per chunk in an int8 call of 16, so the
default 0.075 s gives calls of a dozen to twenty chunks (0.05 s and 0.15 s
did no better side by side; see ``benchmarks/README.md``).

Queue delay and admission: every request records when it was queued.
:attr:`ModelService.queue_delay` is the longest wait among the requests
waiting now and those of the batches now running (0 while the service is
idle); :attr:`ModelService.overloaded` says whether it exceeds
``max_queue_delay``.  The server refuses new connections while overloaded, so
that existing streams keep their pace instead of all of them slowing down.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import attrs
import numpy as np
import outcome
import trio

from trio_asr.bounds import positive
from trio_asr.recognition.model import AcousticModel, ModelState, ModelStream, is_batch_invariant

__all__ = ["BatchingPolicy", "ModelService", "ModelServiceError", "ServiceStats"]

log = logging.getLogger("trio_asr.server")

#: chunks of one decode that queue with the time the decode began
_CHUNKS_KEEPING_PLACE = 2
#: how much of the measured cost per chunk each earlier call keeps, per call
_DECAY = 0.9

#: what one model call returns: log-probs (B, T_out, V), the B new states,
#: and the thread's CPU seconds
_CallResult = tuple[np.ndarray, list[ModelState], float]


class ModelServiceError(Exception):
    """The batch a chunk belonged to failed, or the service is not running.
    The original error is the ``__cause__``."""


@attrs.define(eq=False)
class _Request:
    """One :meth:`ModelService.decode`: its stream's ready chunks, queued
    one at a time (the next as soon as the one before has run)."""

    stream: ModelStream
    #: the queue's order: when the decode began, for its first chunks
    since: float
    queued_at: float
    done: trio.Event = attrs.Factory(trio.Event)
    #: log-probs of the chunks run so far
    outputs: list[np.ndarray] = attrs.Factory(list)
    error: BaseException | None = None
    #: the requester is gone: skip the request if it is still queued, drop its result if it runs
    abandoned: bool = False

    def finish(self, error: BaseException | None = None) -> None:
        """Complete the request; safe whether or not anybody still waits."""
        self.error = error
        self.done.set()


class _BatchCall:
    """One batch's ``model.run`` in a worker thread.  :meth:`start` starts the
    thread at once (no checkpoint: ``trio.to_thread.run_sync`` takes one,
    and every caller woken by the previous batch would run first);
    :meth:`result` waits for it.  A started call always runs to the end: a
    cancelled waiter still waits for it, so no thread outlives the service."""

    def __init__(self, requests: list[_Request], now: float) -> None:
        self.requests = requests
        #: queued_at of its oldest request, and when it started
        self.since = min(r.queued_at for r in requests)
        self.started = now
        self._done = trio.Event()
        self._result: outcome.Outcome[_CallResult] | None = None

    def start(self, fn: Callable[[], _CallResult]) -> None:
        """Run ``fn`` in a thread; a thread that cannot start fails this call."""
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[_CallResult]) -> None:  # in the worker thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._store, result)

        try:
            trio.lowlevel.start_thread_soon(fn, deliver, name="trio-asr model call")
        except Exception as exc:  # e.g. "can't start new thread"
            self._store(outcome.Error(exc))

    def _store(self, result: outcome.Outcome[_CallResult]) -> None:
        self._result = result
        self._done.set()

    async def result(self) -> outcome.Outcome[_CallResult]:
        with trio.CancelScope(shield=True):
            await self._done.wait()
        assert self._result is not None
        return self._result


@attrs.frozen
class ServiceStats:
    """Counters since the service was created."""

    batches: int
    chunks: int
    largest_batch: int
    failed_batches: int

    @property
    def mean_batch(self) -> float:
        return self.chunks / self.batches if self.batches else 0.0


@attrs.frozen(kw_only=True)
class BatchingPolicy:
    """How the service batches: see :class:`ModelService` for each field;
    ``max_queue_delay`` is where the server starts refusing connections."""

    max_batch: int = attrs.field(default=64, validator=positive)
    max_call_seconds: float = attrs.field(default=0.075, validator=positive)
    max_queue_delay: float = attrs.field(default=0.5, validator=positive)
    concurrent_batches: int = attrs.field(default=1, validator=positive)
    exact: bool = True


class ModelService:
    """Runs ``model`` for many streams in batched calls, as ``policy`` says.

    ``max_batch`` bounds the chunks per model call, and ``max_call_seconds``
    (CPU s) bounds them by the measured cost per chunk; with ``exact`` it is 1
    for a model that is not batch-invariant (see
    :func:`~trio_asr.recognition.model.is_batch_invariant`), so a stream's
    results never depend on which streams share its batch; ``concurrent_batches``
    how many calls run at once (each in its own worker thread, one per core:
    a call uses one core);
    ``max_queue_delay`` (s) is the queue delay above which :attr:`overloaded`
    is true.

    Contracts:

    * One :meth:`decode` at a time per stream, and nobody else touches the
      stream while it runs.
    * Each chunk either runs and is recorded (``stream.advance``, by the
      service as its batch returns; the decode's next chunk then queues at
      once) with its log-probs returned, or leaves the stream as it was: a
      caller cancelled while its chunk is queued is skipped, one cancelled
      while its chunk runs has that result dropped.  Other streams of the
      batch are not affected either way.
    * If ``model.run`` raises, every caller in that batch gets
      :class:`ModelServiceError` (their streams are left as they were) and the
      service goes on with the next batch.
    """

    def __init__(
        self,
        model: AcousticModel,
        policy: BatchingPolicy = BatchingPolicy(),
        *,
        on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        max_batch = policy.max_batch
        self.model = model
        if policy.exact and max_batch > 1 and not is_batch_invariant(model):
            log.warning(
                "the model's outputs depend on the batch (dynamically quantized activations): "
                "one stream per model call, so results never depend on other streams"
            )
            max_batch = 1
        self.max_batch = max_batch
        self.max_call_seconds = policy.max_call_seconds
        # CPU seconds and chunks of recent calls, each call's share decaying by _DECAY per call
        self._cpu_seconds = self._cpu_chunks = 0.0
        self.max_queue_delay = policy.max_queue_delay
        #: called after each successful model call with (chunks, seconds the
        #: oldest waited, CPU seconds of the call's thread)
        self.on_batch = on_batch
        # waiting requests, a heap by (since, arrival number)
        self._queue: list[tuple[float, int, _Request]] = []
        self._arrivals = itertools.count()
        self._idle_workers = trio.lowlevel.ParkingLot()
        self._stopped = False
        # queued_at of the oldest request of each running batch
        self._running_since: list[float] = []
        self._concurrent = policy.concurrent_batches  # worker tasks, each with one call in flight
        self._batches = self._chunks = self._largest = self._failed = 0

    @property
    def stats(self) -> ServiceStats:
        return ServiceStats(self._batches, self._chunks, self._largest, self._failed)

    @property
    def batch_limit(self) -> int:
        """Chunks the next call may take (see *Batch size* above)."""
        if self._cpu_seconds <= 0:
            return self.max_batch
        per_chunk = self._cpu_seconds / self._cpu_chunks
        return max(1, min(self.max_batch, int(self.max_call_seconds / per_chunk)))

    @property
    def queue_delay(self) -> float:
        """Seconds the longest-waiting current request has waited (or waited,
        if its batch is running) for its batch to start; 0 when idle."""
        oldest = list(self._running_since)
        if self._queue:
            oldest.append(min(request.queued_at for _, _, request in self._queue))
        return trio.current_time() - min(oldest) if oldest else 0.0

    @property
    def overloaded(self) -> bool:
        return self.queue_delay > self.max_queue_delay

    # ------------------------------------------------------------ clients

    async def decode(self, stream: ModelStream) -> np.ndarray:
        """Run every ready chunk of ``stream`` (one per batch, in order) and
        return their log-probs (t, V), as ``stream.decode_ready_chunks()``.

        If cancelled, the chunks that already ran are recorded in ``stream``
        but their log-probs are lost with the call: a stream whose decode was
        cancelled should be discarded."""
        if not stream.has_chunk():
            await trio.lowlevel.checkpoint()
            return np.zeros((0, self.model.vocab_size), np.float32)
        if self._stopped:
            raise ModelServiceError("the model service is not running")
        now = trio.current_time()
        request = _Request(stream, now, now)
        self._push(request)
        try:
            await request.done.wait()
        except BaseException:
            request.abandoned = True
            raise
        if request.error is not None:
            raise ModelServiceError(f"model run failed: {request.error!r}") from request.error
        return request.outputs[0] if len(request.outputs) == 1 else np.concatenate(request.outputs)

    def _push(self, request: _Request) -> None:
        heapq.heappush(self._queue, (request.since, next(self._arrivals), request))
        self._idle_workers.unpark()  # one is enough: a busy worker looks at the queue when it is done

    # ------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests until cancelled; then fail whatever is still queued."""
        self._stopped = False
        try:
            async with trio.open_nursery() as workers:
                for _ in range(self._concurrent):
                    workers.start_soon(self._worker)
                task_status.started()
        finally:
            self._stopped = True
            self._fail_queued()

    async def _worker(self) -> None:
        """Run batches one after another.  When a call returns, its results
        are recorded, the decodes with more chunks queue their next one, and
        the next batch starts, all before the finished callers run: their
        searches and replies take the event loop for a while, and a core
        would idle until they were done."""
        while True:
            while not self._queue:
                await self._idle_workers.park()
            call = self._start(self._take())
            while call is not None:
                self._deliver(call, await call.result())
                await trio.lowlevel.checkpoint_if_cancelled()  # (no checkpoint otherwise)
                call = self._start(self._take())

    def _take(self) -> list[tuple[_Request, np.ndarray]]:
        """The oldest requests queued now, up to the batch limit, with their chunks."""
        requests: list[_Request] = []
        limit = self.batch_limit
        while self._queue and len(requests) < limit:
            requests.append(heapq.heappop(self._queue)[2])
        batch = []
        for request in requests:
            if request.abandoned:
                continue
            chunk = request.stream.next_chunk()
            if chunk is None:  # nothing to run after all: complete it empty
                request.finish(error=RuntimeError("no chunk ready: two decodes of one stream at once?"))
            else:
                batch.append((request, chunk))
        return batch

    def _start(self, batch: list[tuple[_Request, np.ndarray]]) -> _BatchCall | None:
        if not batch:
            return None
        call = _BatchCall([r for r, _ in batch], trio.current_time())
        self._running_since.append(call.since)
        self._batches += 1
        self._chunks += len(batch)
        self._largest = max(self._largest, len(batch))
        chunks = [c for _, c in batch]
        states = [r.stream.state for r in call.requests]
        call.start(functools.partial(self._call_model, chunks, states))
        return call

    def _deliver(self, call: _BatchCall, result: outcome.Outcome[_CallResult]) -> None:
        self._running_since.remove(call.since)
        try:
            log_probs, new_states, cpu = result.unwrap()
        except BaseException as exc:  # nobody is left hanging
            self._failed += 1
            for request in call.requests:
                request.finish(error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._cpu_seconds = _DECAY * self._cpu_seconds + cpu
        self._cpu_chunks = _DECAY * self._cpu_chunks + len(call.requests)
        for request, lp, state in zip(call.requests, log_probs, new_states):
            if request.abandoned:
                continue
            try:
                request.stream.advance(state)
                request.outputs.append(lp)
                more = request.stream.has_chunk()
            except Exception as exc:  # this stream's alone
                request.finish(error=exc)
                continue
            if not more:
                request.finish()
                continue
            now = trio.current_time()
            if len(request.outputs) >= _CHUNKS_KEEPING_PLACE:
                request.since = now
            request.queued_at = now
            self._push(request)
        if self.on_batch is not None:
            self.on_batch(len(call.requests), call.started - call.since, cpu)

    def _call_model(
        self, chunks: list[np.ndarray], states: Sequence[ModelState]
    ) -> _CallResult:
        started = time.thread_time()
        log_probs, new_states = self.model.run(np.stack(chunks), states)
        if len(log_probs) != len(chunks) or len(new_states) != len(chunks):
            raise ValueError(f"model returned {len(log_probs)} outputs for {len(chunks)} chunks")
        return log_probs, new_states, time.thread_time() - started

    def _fail_queued(self) -> None:
        error = ModelServiceError("the model service stopped")
        for _, _, request in self._queue:
            request.finish(error=error)
        self._queue.clear()
