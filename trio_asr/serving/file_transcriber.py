"""Uploaded audio files decoded by the server's models (the HTTP API's decoding).

A :class:`FileTranscriber` decodes one file's mono samples and, as each
segment's text becomes known, hands it to a callback (a streamed response
sends it at once).  It decodes with what the server already runs, so that
uploads and live streams share the models, the batching and the bounds:

* with a second pass (``--second-pass OFFLINE_DIR``) the offline model
  decodes the file: it is cut into pieces at pauses (Silero VAD's when it is
  installed, else the quietest points; see
  :func:`~trio_asr.recognition.offline.pieces.cut_pieces`) and the pieces
  go to the server's :class:`~trio_asr.recognition.offline.service.SecondPassService`,
  batched with the streams' second passes.  At most :data:`PIECES_IN_FLIGHT`
  of a file are queued at a time, so a long upload cannot fill the queue
  ahead of the live streams' segments;
* without one, the streaming model runs over the file as over a stream that
  sends its audio as fast as the model service takes it (one model chunk of
  it queued at a time, like any stream's), and its endpoints cut the
  segments.

Nothing is decoded on the event loop: cutting and resampling run in a worker
thread, the models in the services' threads.  A file at a rate the model
does not use is resampled to the model's rate first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from functools import partial

import attrs
import numpy as np
import trio

from trio_asr.recognition.hotwords import Hotword
from trio_asr.recognition.offline.base import Conditioning
from trio_asr.recognition.offline.long_audio import file_tags, join_results
from trio_asr.recognition.offline.options import OfflineOptions
from trio_asr.recognition.offline.pieces import SilenceFinder, VadSilences, cut_pieces
from trio_asr.recognition.offline.recognizer import OfflineResult
from trio_asr.recognition.offline.service import SecondPassService, Ticket
from trio_asr.recognition.resample import resample
from trio_asr.recognition.segments import RecognitionResult
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.serving.second_pass import TwoPassRecognizer

__all__ = ["FEED_SECONDS", "PIECES_IN_FLIGHT", "FileRequest", "FileTranscriber", "FileTranscript", "SegmentSink", "vad_silences"]

#: pieces of one file queued in the second-pass service at a time
PIECES_IN_FLIGHT = 4
#: seconds of a file given to the streaming model per step
FEED_SECONDS = 4.0

#: called with each segment's text, in order, as soon as it is decoded
SegmentSink = Callable[[str], Awaitable[None]]


def _as_tuple(hotwords: Iterable[Hotword]) -> tuple[Hotword, ...]:
    return tuple(hotwords)


@attrs.frozen
class FileRequest:
    """What an upload asks of decoding: ``nbest`` alternatives, its own
    ``hotwords``, and a ``language`` (None: the server's choice; only an
    offline model that is told the language, SenseVoice, uses it)."""

    nbest: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    hotwords: tuple[Hotword, ...] = attrs.field(default=(), converter=_as_tuple)
    language: str | None = None


@attrs.frozen
class FileTranscript:
    """A decoded file: its ``result`` (segments, words, n-best), the
    ``language`` the model found (None when it does not say) and its
    ``duration`` in seconds."""

    result: RecognitionResult
    language: str | None
    duration: float


def vad_silences(threshold: float) -> SilenceFinder | None:
    """Silero VAD's pauses, or None when it is not installed (files are
    then cut at their quietest points)."""
    from trio_asr.recognition.vad import SileroVad, VadUnavailable

    try:
        return VadSilences(SileroVad(threshold=threshold))
    except VadUnavailable:
        return None


class FileTranscriber:
    """Decodes files with ``recognizer`` (its second pass when it has one)
    and, for the second pass, cuts them at ``silences``."""

    def __init__(self, recognizer: TwoPassRecognizer, silences: SilenceFinder | None = None) -> None:
        self.recognizer = recognizer
        self.silences = silences

    @property
    def offline(self) -> SecondPassService | None:
        """The offline model's service that decodes files, or None (the streaming model does)."""
        return self.recognizer.second_pass

    @property
    def sample_rate(self) -> int:
        """The rate that files are decoded at."""
        offline = self.offline
        return offline.sample_rate if offline is not None else self.recognizer.recognizer.model.sample_rate

    def check(self, request: FileRequest) -> None:
        """ValueError, saying why, if the model cannot take ``request``'s language."""
        offline = self.offline
        if offline is not None and request.language is not None:
            offline.recognizer.model.check_conditioning(Conditioning(request.language or "auto", True))

    async def transcribe(
        self,
        samples: np.ndarray,
        sample_rate: int,
        request: FileRequest,
        on_segment: SegmentSink | None = None,
        *,
        client: Hashable = None,
    ) -> FileTranscript:
        """Decode mono float ``samples`` at ``sample_rate``.  Raises ValueError
        for a rate that cannot be resampled or a language the model does not
        know, HotwordError for a hotword it cannot spell,
        :class:`~trio_asr.recognition.offline.service.SecondPassError` or
        :class:`~trio_asr.recognition.model_service.ModelServiceError` when
        the model fails, CompileQueueFull when the server is too busy to
        compile the hotwords (``client`` says whose turn it is)."""
        self.check(request)
        duration = len(samples) / sample_rate
        rate = self.sample_rate
        if sample_rate != rate:
            samples = await trio.to_thread.run_sync(resample, samples, sample_rate, rate)
        sink = on_segment if on_segment is not None else _ignore
        offline = self.offline
        if offline is not None:
            result, language = await self._offline(offline, samples, request, sink)
        else:
            result, language = await self._streaming(samples, request, sink, client), None
        return FileTranscript(result, language, duration)

    async def _offline(
        self, service: SecondPassService, samples: np.ndarray, request: FileRequest, sink: SegmentSink
    ) -> tuple[RecognitionResult, str | None]:
        rate = service.sample_rate
        pieces = await trio.to_thread.run_sync(partial(cut_pieces, samples, rate, silences=self.silences))
        options = OfflineOptions(nbest=request.nbest, sample_rate=rate, hotwords=request.hotwords,
                                 language=request.language)  # fmt: skip
        waiting = iter(pieces)
        queued: deque[Ticket] = deque()
        found: list[OfflineResult] = []

        def submit_next() -> None:
            piece = next(waiting, None)
            if piece is not None:
                piece_options = attrs.evolve(options, offset_s=piece.start / rate)
                queued.append(service.submit(samples[piece.start : piece.end], piece_options))

        try:
            for _ in range(PIECES_IN_FLIGHT):
                submit_next()
            while queued:
                piece_result = await queued[0].wait()
                queued.popleft()
                submit_next()
                found.append(piece_result)
                if piece_result.result.text:
                    await sink(piece_result.result.text)
        finally:
            for ticket in queued:
                ticket.abandon()
        result, _ = join_results(found, request.nbest)
        tags = file_tags(found)
        return result, None if tags is None else tags.lang

    async def _streaming(
        self, samples: np.ndarray, request: FileRequest, sink: SegmentSink, client: Hashable
    ) -> RecognitionResult:
        options = StreamOptions(nbest=request.nbest, sample_rate=self.sample_rate, hotwords=request.hotwords)
        stream = await self.recognizer.open_stream(options, client)
        step = max(1, round(FEED_SECONDS * self.sample_rate))
        said = 0
        for start in range(0, len(samples), step):
            result = await stream.feed(samples[start : start + step])
            said = await _say_closed(result, said, sink)
        result = await stream.finish()
        said = await _say_closed(result, said, sink)
        if result.open is not None and result.open.text:
            await sink(result.open.text)
        return result


async def _say_closed(result: RecognitionResult, said: int, sink: SegmentSink) -> int:
    """Pass the segments of ``result`` after the first ``said`` to ``sink``;
    how many it has been given now."""
    for segment in result.segments[said:]:
        await sink(segment.text)
    return len(result.segments)


async def _ignore(text: str) -> None:
    pass
