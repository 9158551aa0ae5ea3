"""The one decode path from received samples to results, shared by all connections.

A server has one :class:`BatchedRecognizer`; each open stream gets a
:class:`BatchedStream` from it and awaits :meth:`BatchedStream.feed` for
every frame and :meth:`BatchedStream.finish` at the end.  Every stream runs
the same way: features in a worker thread (or on the event loop when the
stream says that is cheaper than a thread hop), the model's chunks through
the :class:`~trio_asr.recognition.model_service.ModelService` (batched with other
streams' chunks, or one per call when batching is off), then the search.

:class:`SteppedRecognizer` and :class:`SteppedStream` state what this needs
of a recognizer driven in steps; :class:`trio_asr.recognition.recognizer.Recognizer`
is the real one, and a test double must provide the same (including a model
the service can run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Protocol, TypeVar

import numpy as np
import trio

from trio_asr.recognition.compile_queue import CompileQueue
from trio_asr.recognition.hotword_automaton import Steps
from trio_asr.recognition.model import AcousticModel, ModelStream
from trio_asr.recognition.model_service import ModelService
from trio_asr.recognition.recognizer import RecognitionResult
from trio_asr.recognition.stream_options import StreamOptions

__all__ = ["BatchedRecognizer", "BatchedStream", "SteppedRecognizer", "SteppedStream"]

T = TypeVar("T")


class SteppedStream(Protocol):
    """One stream of a recognizer, driven in steps (see
    :class:`trio_asr.recognition.recognizer.RecognizerStream`); one caller at a time."""

    @property
    def model_stream(self) -> ModelStream: ...

    def accept_waveform(self, samples: np.ndarray) -> None: ...

    def flush_input(self) -> None: ...

    def accept_log_probs(self, log_probs: np.ndarray) -> None: ...

    def result(self) -> RecognitionResult: ...

    def cheap_to_accept(self, samples: int) -> bool:
        """Whether accepting this many samples costs less than a worker-thread hop."""
        ...

    def cheap_to_search(self, frames: int) -> bool:
        """Whether searching this many log-prob frames and the result after them
        cost less than a worker-thread hop."""
        ...

    def cheap_to_flush(self) -> bool:
        """Whether :meth:`flush_input` costs less than a worker-thread hop."""
        ...


class SteppedRecognizer(Protocol):
    @property
    def model(self) -> AcousticModel: ...

    def create_stream_steps(self, options: StreamOptions) -> Steps[SteppedStream]:
        """A stream taking float32 mono samples as ``options`` say, made in
        steps of well under a millisecond each (see
        :mod:`trio_asr.recognition.hotword_automaton`): the stream comes at
        the first ``next()`` when making it is cheap, else that first
        ``next()`` yields before any work. Raises ValueError for a rate it
        cannot take, HotwordError (a ValueError) for a phrase it cannot spell."""
        ...


class BatchedRecognizer:
    """Decodes the streams of every connection of a server.

    ``service`` runs ``recognizer.model``; ``limiter`` bounds the worker
    threads doing feature and search work at once.
    """

    def __init__(
        self,
        recognizer: SteppedRecognizer,
        service: ModelService,
        limiter: trio.CapacityLimiter,
        compiling: CompileQueue | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.service = service
        self.limiter = limiter
        #: where starts wait whose hotwords must be compiled first
        self.compiling = CompileQueue() if compiling is None else compiling
        #: the log-probs of no frame, (0, V), for a feed that completes no chunk
        self.no_log_probs = np.zeros((0, recognizer.model.vocab_size), np.float32)
        self.no_log_probs.flags.writeable = False

    async def open_stream(self, options: StreamOptions, client: Hashable = None) -> BatchedStream:
        """A stream as ``options`` ask.  When its own hotwords must be
        compiled first (with the server's: a list not compiled before), it
        waits its turn in :attr:`compiling` (``client`` says whose turn:
        see :mod:`trio_asr.recognition.compile_queue`) and is compiled in
        short slices in a thread of its own; a cancelled call drops that
        work.  Raises
        ValueError for a rate the recognizer cannot take, HotwordError (a
        ValueError) for a phrase the model cannot spell, CompileQueueFull
        when too many starts wait already."""
        steps = self.recognizer.create_stream_steps(options)
        try:
            next(steps)
        except StopIteration as done:
            return BatchedStream(self, done.value)
        work = frozenset(options.hotwords)  # the same list: the same work, whatever else the start asks
        return BatchedStream(self, await self.compiling.run(client, steps, work))


class BatchedStream:
    """One stream on its way through the decode path; one call at a time.

    A call cancelled half-way leaves the stream unusable: discard it.
    """

    def __init__(self, recognizer: BatchedRecognizer, stream: SteppedStream) -> None:
        self._recognizer = recognizer
        self._stream = stream
        #: wall time spent in :meth:`feed` and :meth:`finish`, s
        self.decode_seconds = 0.0
        #: CPU time of this stream's feature and search work (not the model's), s
        self.cpu_seconds = 0.0

    async def feed(self, samples: np.ndarray) -> RecognitionResult:
        """Decode the next samples (possibly none); the result so far.

        A checkpoint only when a model chunk runs or work goes to a thread:
        most frames complete no chunk, and the caller has just come back
        from one (its channel's receive), so a frame costs one task switch
        fewer."""
        started = time.perf_counter()
        stream = self._stream
        if samples.size:
            if stream.cheap_to_accept(samples.size):
                self._timed(stream.accept_waveform, samples)
            else:
                await self._in_thread(self._timed, stream.accept_waveform, samples)
        result = await self._run_model_and_search()
        self.decode_seconds += time.perf_counter() - started
        return result

    async def finish(self) -> RecognitionResult:
        """End of the stream: decode the padded tail; the final result."""
        started = time.perf_counter()
        if self._stream.cheap_to_flush():
            self._timed(self._stream.flush_input)
        else:
            await self._in_thread(self._timed, self._stream.flush_input)
        result = await self._run_model_and_search()
        self.decode_seconds += time.perf_counter() - started
        return result

    async def _run_model_and_search(self) -> RecognitionResult:
        stream = self._stream
        if stream.model_stream.has_chunk():
            log_probs = await self._recognizer.service.decode(stream.model_stream)
        else:
            log_probs = self._recognizer.no_log_probs
        if stream.cheap_to_search(len(log_probs)):
            return self._timed(self._search, log_probs)
        return await self._in_thread(self._timed, self._search, log_probs)

    def _search(self, log_probs: np.ndarray) -> RecognitionResult:
        self._stream.accept_log_probs(log_probs)
        return self._stream.result()

    def _timed(self, fn: Callable[..., T], *args: object) -> T:
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.cpu_seconds += time.thread_time() - started

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._recognizer.limiter)
