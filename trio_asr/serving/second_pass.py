"""Two-pass final text: each closed segment of a stream decoded again offline.

With ``second_pass`` (``trio-asr serve --second-pass OFFLINE_DIR``) the
server loads an offline model (:func:`open_second_pass`) and runs one
:class:`~trio_asr.recognition.offline.service.SecondPassService` for all
connections.  Each stream's replies come from a :class:`StreamReplies`:

* it keeps the stream's samples (at the client's rate) from the start of the
  open segment, so its memory is bounded by the longest segment;
* when a reply's result shows segments newly closed (an endpoint, or the end
  of the stream), it submits each one's samples (its ``bg``..``ed`` times
  the client's rate) with the stream's n-best and hotwords, and the
  server's ``second_pass_language`` and ``second_pass_itn``;
* :class:`~trio_asr.protocol.two_pass.TwoPassReplies` announces each segment
  in the first reply after its second pass is in, in order, with the second
  pass's text, words, n-best and tags; the final reply waits for all of them.

A stream whose ``start`` says ``"secondPass": false``, a server without a
second pass, and a recognizer without segments get the first pass's
:class:`~trio_asr.protocol.replies.ReplyBuilder` replies.

A segment whose second pass fails (an utterance the offline model cannot
take, a failed model call, the service stopping) is announced with its
first-pass text: the stream goes on, the failure is logged and counted
(``trio_asr_second_pass_failures_total``).
"""

from __future__ import annotations

import logging
from typing import TypeVar

import attrs
import numpy as np
import trio

from trio_asr.protocol.messages import FinalResult, PartialResult, StartStream
from trio_asr.protocol.replies import ReplyBuilder
from trio_asr.protocol.two_pass import SecondPassText, TwoPassReplies
from trio_asr.recognition.batched import BatchedRecognizer
from trio_asr.recognition.offline import ModelError, OfflineOptions, OfflineRecognizer, OfflineResult, load_offline_model
from trio_asr.recognition.offline.service import SecondPassError, SecondPassPolicy, SecondPassService, Ticket
from trio_asr.recognition.segments import RecognitionResult, Segment
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.metrics import ServerMetrics

__all__ = ["StreamReplies", "TwoPassRecognizer", "open_second_pass", "second_pass_text"]

log = logging.getLogger("trio_asr.server")

_Reply = TypeVar("_Reply", PartialResult, FinalResult)


class TwoPassRecognizer(BatchedRecognizer):
    """The server's :class:`BatchedRecognizer`, and its second pass (None: none)."""

    second_pass: SecondPassService | None = None


def _load(config: ServerConfig) -> OfflineRecognizer:
    """The offline recognizer, with the server's hotwords that its model can
    spell (the others are named in a warning: the first pass keeps them)."""
    from trio_asr.recognition.hotwords import HotwordError, compile_hotwords, read_hotwords_file

    assert config.second_pass is not None
    model = load_offline_model(config.second_pass, threads=config.threads)
    hotwords = read_hotwords_file(config.hotwords_file) if config.hotwords_file is not None else ()
    kept = []
    for hotword in hotwords:
        try:
            compile_hotwords([hotword], model.tokens)
            kept.append(hotword)
        except HotwordError as exc:
            log.warning("second pass: %s (left out of the second pass)", exc)
    compiled = compile_hotwords(kept, model.tokens, default_score=config.hotwords_score) if kept else None
    return OfflineRecognizer(
        model, beam=config.beam, hotwords=compiled, language=config.second_pass_language,
        use_itn=config.second_pass_itn,
    )  # fmt: skip


async def open_second_pass(config: ServerConfig, metrics: ServerMetrics) -> SecondPassService | None:
    """The second-pass service ``config`` asks for (None without
    ``second_pass``); the model is loaded in a worker thread.  Raises
    ValueError (a ModelError or HotwordError among them) naming what is wrong."""
    if config.second_pass is None:
        return None
    try:
        recognizer = await trio.to_thread.run_sync(_load, config)
    except (ModelError, OSError, ValueError) as exc:
        raise ValueError(f"second pass {config.second_pass}: {exc}") from None
    policy = SecondPassPolicy(max_queue_delay=config.max_queue_delay, concurrent_batches=config.concurrent_batches)
    service = SecondPassService(recognizer, policy, on_batch=metrics.second_pass_batch)
    metrics.track_second_pass_queue_delay(lambda: service.queue_delay)
    return service


def second_pass_text(found: OfflineResult) -> SecondPassText:
    """What a segment is announced with, from its offline result."""
    result, tags = found.result, found.tags
    pairs = () if tags is None else (("lang", tags.lang), ("emotion", tags.emotion), ("event", tags.event))
    return SecondPassText(result.text, result.nbest, result.times, pairs)


class _Samples:
    """A stream's samples from ``start`` (a sample index) on, kept as received."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self.start = self.end = 0

    def append(self, samples: np.ndarray) -> None:
        if samples.size:
            self._chunks.append(samples)
            self.end += samples.size

    def take(self, first: int, last: int) -> np.ndarray:
        """Samples ``first``..``last`` (those still kept)."""
        kept = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        return kept[max(first - self.start, 0) : max(last - self.start, 0)]

    def trim(self, before: int) -> None:
        """Forget the chunks that end before sample ``before``."""
        while self._chunks and self.start + self._chunks[0].size <= before:
            self.start += self._chunks.pop(0).size


@attrs.define(eq=False)
class _Pending:
    segment: Segment
    ticket: Ticket | None  # None: could not be submitted (first-pass text)
    closed_at: float


class StreamReplies:
    """The replies of one stream (see the module docstring); one caller at a time."""

    def __init__(self, start: StartStream, service: SecondPassService | None, metrics: ServerMetrics) -> None:
        self._service = service if start.second_pass else None
        self._metrics = metrics
        self._plain = ReplyBuilder(start)
        self._replies = TwoPassReplies(start)
        self._rate = start.sample_rate
        self._options = OfflineOptions(nbest=start.nbest, sample_rate=self._rate, hotwords=start.options.hotwords)
        self._samples = _Samples()
        self._pending: list[_Pending] = []
        self._submitted = 0  # segments submitted
        self._closed_at: dict[int, float] = {}  # segment index -> when it closed, until announced

    @classmethod
    def of(cls, start: StartStream, recognizer: BatchedRecognizer, metrics: ServerMetrics) -> StreamReplies:
        service = recognizer.second_pass if isinstance(recognizer, TwoPassRecognizer) else None
        return cls(start, service, metrics)

    @property
    def second_pass(self) -> bool:
        """Whether this stream's segments get a second pass."""
        return self._service is not None

    def partial(self, samples: np.ndarray, result: RecognitionResult) -> PartialResult:
        """The reply to an audio frame (its ``samples``) that gave ``result``."""
        if self._service is None or result.open is None:
            return self._plain.partial(result)
        self._samples.append(samples)
        self._submit(result)
        self._collect()
        return self._observed(self._replies.partial(result))

    async def final(self, result: RecognitionResult) -> FinalResult:
        """The final reply, once every segment's second pass is in."""
        if self._service is None or result.open is None:
            return self._plain.final(result)
        self._submit(result)
        for pending in self._pending:
            if pending.ticket is not None:
                await pending.ticket.done.wait()
        self._collect()
        return self._observed(self._replies.final(result))

    def close(self) -> None:
        """The stream is gone: its second passes are not wanted any more."""
        for pending in self._pending:
            if pending.ticket is not None:
                pending.ticket.abandon()
        self._pending.clear()

    # ------------------------------------------------------------ internals

    def _submit(self, result: RecognitionResult) -> None:
        assert self._service is not None and result.open is not None
        now = trio.current_time()
        for segment in result.segments[self._submitted :]:
            samples = self._samples.take(round(segment.start * self._rate), round(segment.end * self._rate))
            try:
                ticket: Ticket | None = self._service.submit(samples, attrs.evolve(self._options, offset_s=segment.start))
            except SecondPassError as exc:
                self._failed(segment, exc)
                ticket = None
            self._pending.append(_Pending(segment, ticket, now))
            self._closed_at[segment.index] = now
        self._submitted = len(result.segments)
        self._samples.trim(round(result.open.start * self._rate))

    def _collect(self) -> None:
        """Hand the second passes that are in to the replies."""
        still = []
        for pending in self._pending:
            ticket, segment = pending.ticket, pending.segment
            if ticket is None:
                self._replies.resolve(segment.index, SecondPassText.first_pass(segment))
            elif not ticket.done.is_set():
                still.append(pending)
            else:
                try:
                    text = second_pass_text(ticket.outcome())
                except SecondPassError as exc:
                    self._failed(segment, exc)
                    text = SecondPassText.first_pass(segment)
                self._replies.resolve(segment.index, text)
        self._pending = still

    def _failed(self, segment: Segment, exc: Exception) -> None:
        log.warning("second pass of segment %d failed (first-pass text kept): %s", segment.index, exc.__cause__ or exc)
        self._metrics.second_pass_failed()

    def _observed(self, reply: _Reply) -> _Reply:
        now = trio.current_time()
        for announced in reply.segments:
            closed = self._closed_at.pop(announced.index, None)
            if closed is not None:
                self._metrics.second_pass_announced(now - closed)
        return reply
