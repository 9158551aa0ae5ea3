"""The replies of one stream, built from the recognizer's segmented results.

Sans-I/O: :class:`ReplyBuilder` remembers which of the stream's segments
were announced and turns each :class:`~trio_asr.recognition.recognizer.RecognitionResult`
into the reply due (see :mod:`trio_asr.protocol.messages`):

* ``result`` is the whole transcript (finalised segments, then the open one)
  by default, as PaddleSpeech's clients expect; with ``compact`` it is the
  open segment only, so a reply's size is bounded by a segment's length;
* ``segments`` lists the segments that closed since the previous reply, each
  once, with its final text and word times;
* ``segment`` is the index of the open segment: in every compact reply, and
  in a default reply only when it closes segments (so that a client that
  asks for nothing new gets the spec's replies until a segment closes);
* the final reply's ``times`` are the words of the whole stream (none in
  compact mode, where every segment's words came with its announcement).

A result without segment information (``open`` is None: a recognizer that
does not segment) gives the spec's replies with no additive fields.
"""

from __future__ import annotations

from collections.abc import Sequence

from trio_asr.protocol.messages import FinalResult, PartialResult, SegmentFinal, StartStream
from trio_asr.recognition.recognizer import RecognitionResult, Segment, TokenTime

__all__ = ["ReplyBuilder"]

NBest = tuple[tuple[str, float], ...]


def _times(times: Sequence[TokenTime]) -> tuple[tuple[str, float, float], ...]:
    return tuple((str(t.piece), float(t.start), float(t.end)) for t in times)


def _nbest(nbest: NBest, n: int) -> NBest:
    if n <= 1:
        return ()
    return tuple((str(text), float(score)) for text, score in list(nbest)[:n])


def _announce(segment: Segment) -> SegmentFinal:
    return SegmentFinal(segment.index, segment.text, segment.start, segment.end, _times(segment.words))


class ReplyBuilder:
    """The replies of one stream, opened by ``start``."""

    def __init__(self, start: StartStream) -> None:
        self.start = start
        self._announced = 0  # segments already sent
        # the last partial reply and its result: a frame that moved no search
        # gets the same reply object (whose text the protocol core keeps)
        self._last: tuple[RecognitionResult, PartialResult] | None = None

    def _new_segments(self, result: RecognitionResult) -> tuple[SegmentFinal, ...]:
        new = result.segments[self._announced :]
        self._announced += len(new)
        return tuple(_announce(segment) for segment in new)

    def partial(self, result: RecognitionResult) -> PartialResult:
        if self._last is not None and self._last[0] is result:
            return self._last[1]
        reply = self._partial(result)
        # a reply announcing segments is not repeated: the next one for the same result announces none
        self._last = None if reply.segments else (result, reply)
        return reply

    def _partial(self, result: RecognitionResult) -> PartialResult:
        n, segments = self.start.nbest, self._new_segments(result)
        if result.open is None:
            return PartialResult(result.text, _nbest(result.nbest, n), segments=segments)
        if self.start.compact:
            return PartialResult(result.open.text, _nbest(result.open.nbest, n), result.open.index, segments)
        index = result.open.index if segments else None
        return PartialResult(result.text, _nbest(result.nbest, n), index, segments)

    def final(self, result: RecognitionResult) -> FinalResult:
        name, n, segments = self.start.name, self.start.nbest, self._new_segments(result)
        if result.open is None:
            return FinalResult(name, result.text, _nbest(result.nbest, n), _times(result.times), segments=segments)
        if self.start.compact:
            return FinalResult(name, result.open.text, _nbest(result.open.nbest, n), (), result.open.index, segments)
        index = result.open.index if segments else None
        return FinalResult(name, result.text, _nbest(result.nbest, n), _times(result.times), index, segments)
