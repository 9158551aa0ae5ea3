"""One task that runs the acoustic model for every stream, batching their chunks.

Connections do not call the model themselves: their decoder tasks hand the
:class:`~trio_asr.model.ModelStream` whose chunks they want run to
:meth:`ModelService.decode`, which queues one request per chunk.
The service task (:meth:`ModelService.run`, started in the server's nursery)
takes the oldest requests queued right now (see *Order*), up to
``max_batch``, stacks their chunks and states along the batch axis, runs one
``model.run`` in a worker thread and wakes each decoder with its log-probs
and new state, which the decoder records in its stream
(``ModelStream.advance``) as it wakes.  Requests that arrive while a batch
runs wait for the next one.
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

Queue delay and admission: every request records when it was queued.
:attr:`ModelService.queue_delay` is the longest wait among the requests
waiting now and those of the batch now running (0 while the service is
idle); :attr:`ModelService.overloaded` says whether it exceeds
``max_queue_delay``.  The server refuses new connections while overloaded, so
that existing streams keep their pace instead of all of them slowing down.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence

import attrs
import numpy as np
import trio

from trio_asr.model import AcousticModel, ModelState, ModelStream, is_batch_invariant

__all__ = ["ModelService", "ModelServiceError", "ServiceStats"]

log = logging.getLogger("trio_asr.server")

#: chunks of one decode that queue with the time the decode began
_CHUNKS_KEEPING_PLACE = 2


class ModelServiceError(Exception):
    """The batch a chunk belonged to failed, or the service is not running.
    The original error is the ``__cause__``."""


@attrs.define(eq=False)
class _Request:
    """One chunk of one stream, queued for the next batch."""

    stream: ModelStream
    #: when its decode call began: the queue's order
    since: float
    queued_at: float
    done: trio.Event = attrs.Factory(trio.Event)
    log_probs: np.ndarray | None = None
    state: ModelState | None = None
    error: BaseException | None = None
    #: the requester is gone: skip the request if it is still queued
    abandoned: bool = False

    def finish(
        self, log_probs: np.ndarray | None = None, state: ModelState | None = None, error: BaseException | None = None
    ) -> None:
        """Complete the request; safe whether or not anybody still waits
        (the service never touches the stream: the requester records the
        result in it, or nobody does)."""
        self.log_probs, self.state, self.error = log_probs, state, error
        self.done.set()


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


class ModelService:
    """Runs ``model`` for many streams in batched calls.

    ``max_batch`` bounds the chunks per model call; with ``exact`` it is 1
    for a model that is not batch-invariant (see
    :func:`~trio_asr.model.is_batch_invariant`), so a stream's
    results never depend on which streams share its batch; ``concurrent_batches``
    how many calls run at once (each in its own worker thread: a second call
    lets a second core work while the first call's results are handed out);
    ``max_queue_delay`` (s) is the queue delay above which :attr:`overloaded`
    is true.

    Contracts:

    * One :meth:`decode` at a time per stream, and nobody else touches the
      stream while it runs.
    * Each chunk either runs and is recorded (``stream.advance``, by the
      caller's task as it wakes) with its log-probs returned, or leaves the
      stream as it was: a caller cancelled while its chunk is queued is
      skipped, one cancelled while its chunk runs has that result dropped.
      Other streams of the batch are not affected either way.
    * If ``model.run`` raises, every caller in that batch gets
      :class:`ModelServiceError` (their streams are left as they were) and the
      service goes on with the next batch.
    """

    def __init__(
        self,
        model: AcousticModel,
        *,
        max_batch: int = 32,
        max_queue_delay: float = 0.5,
        concurrent_batches: int = 1,
        exact: bool = True,
        on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        if concurrent_batches < 1:
            raise ValueError(f"concurrent_batches must be >= 1, not {concurrent_batches}")
        if max_queue_delay <= 0:
            raise ValueError(f"max_queue_delay must be positive, not {max_queue_delay}")
        self.model = model
        if exact and max_batch > 1 and not is_batch_invariant(model):
            log.warning(
                "the model's outputs depend on the batch (dynamically quantized activations): "
                "one stream per model call, so results never depend on other streams"
            )
            max_batch = 1
        self.max_batch = max_batch
        self.max_queue_delay = max_queue_delay
        #: called after each successful model call with (chunks, seconds the
        #: oldest waited, CPU seconds of the call's thread)
        self.on_batch = on_batch
        # waiting requests, a heap by (since, arrival number)
        self._queue: list[tuple[float, int, _Request]] = []
        self._arrivals = itertools.count()
        self._queued = trio.Event()  # set while the queue is not empty
        self._stopped = False
        # queued_at of the oldest request of each running batch
        self._running_since: list[float] = []
        # Batches in flight at once: the next batch gathers while all run.
        self._slots = trio.Semaphore(concurrent_batches)
        self._batches = self._chunks = self._largest = self._failed = 0

    @property
    def stats(self) -> ServiceStats:
        return ServiceStats(self._batches, self._chunks, self._largest, self._failed)

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
        since = trio.current_time()
        outputs: list[np.ndarray] = []
        while stream.next_chunk() is not None:
            if len(outputs) >= _CHUNKS_KEEPING_PLACE:
                since = trio.current_time()
            outputs.append(await self._run_chunk(stream, since))
        if not outputs:
            await trio.lowlevel.checkpoint()
            return np.zeros((0, self.model.vocab_size), np.float32)
        return np.concatenate(outputs)

    async def _run_chunk(self, stream: ModelStream, since: float) -> np.ndarray:
        if self._stopped:
            raise ModelServiceError("the model service is not running")
        request = _Request(stream, since, trio.current_time())
        heapq.heappush(self._queue, (since, next(self._arrivals), request))
        self._queued.set()
        try:
            await request.done.wait()
        except BaseException:
            request.abandoned = True
            raise
        if request.error is not None:
            raise ModelServiceError(f"model run failed: {request.error!r}") from request.error
        assert request.log_probs is not None and request.state is not None
        stream.advance(request.state)
        return request.log_probs

    # ------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve requests until cancelled; then fail whatever is still queued."""
        self._stopped = False
        try:
            async with trio.open_nursery() as batches:
                task_status.started()
                while True:
                    await self._slots.acquire()
                    batch = await self._gather()
                    if batch:
                        batches.start_soon(self._run_batch, batch)
                    else:
                        self._slots.release()
        finally:
            self._stopped = True
            self._fail_queued()

    async def _gather(self) -> list[tuple[_Request, np.ndarray]]:
        """Wait for a request, then take the oldest queued now, up to max_batch."""
        await self._queued.wait()
        requests: list[_Request] = []
        while self._queue and len(requests) < self.max_batch:
            requests.append(heapq.heappop(self._queue)[2])
        if not self._queue:
            self._queued = trio.Event()
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

    async def _run_batch(self, batch: list[tuple[_Request, np.ndarray]]) -> None:
        requests = [r for r, _ in batch]
        since = min(r.queued_at for r in requests)
        self._running_since.append(since)
        self._batches += 1
        self._chunks += len(batch)
        self._largest = max(self._largest, len(batch))
        waited = trio.current_time() - since
        try:
            chunks = [c for _, c in batch]
            states = [r.stream.state for r in requests]
            log_probs, new_states, cpu = await trio.to_thread.run_sync(self._call_model, chunks, states)
        except BaseException as exc:  # the service's own cancellation too: nobody is left hanging
            self._failed += 1
            for request in requests:
                request.finish(error=exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._running_since.remove(since)
            self._slots.release()
        for request, lp, state in zip(requests, log_probs, new_states):
            request.finish(lp, state)
        if self.on_batch is not None:
            self.on_batch(len(batch), waited, cpu)

    def _call_model(
        self, chunks: list[np.ndarray], states: Sequence[ModelState]
    ) -> tuple[np.ndarray, list[ModelState], float]:
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
