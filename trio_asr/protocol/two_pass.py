"""The replies of a stream whose closed segments get a second pass.

Sans-I/O, like :class:`~trio_asr.protocol.replies.ReplyBuilder`, whose reply
shapes it keeps; what differs is *when* a segment is announced and with
*what*:

* partial results (the open segment) stay first-pass;
* a closed segment is announced in the first reply after its second pass is
  in (:meth:`TwoPassReplies.resolve`), in order: segment ``i + 1`` never
  before ``i``.  It carries the second pass's text, words, n-best (when the
  stream asked for more than one) and tags (``lang``, ``emotion``,
  ``event``), with the first pass's time span (the samples decoded again);
* the default ``result`` (the whole transcript) is the second-pass text of
  the announced segments, then the first-pass text of the closed segments
  still waiting, then the open segment; ``compact`` replies as before;
* the final reply needs every segment resolved (the caller waits for them):
  it announces the rest, and its ``result`` and ``times`` are second-pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

import attrs

from trio_asr.protocol.messages import FinalResult, PartialResult, SegmentFinal, StartStream
from trio_asr.protocol.replies import ReplyBuilder
from trio_asr.recognition.segments import RecognitionResult, Segment, TokenTime, join_texts

__all__ = ["SecondPassText", "TwoPassReplies"]

NBest = tuple[tuple[str, float], ...]
Times = tuple[tuple[str, float, float], ...]


@attrs.frozen
class SecondPassText:
    """What a second pass made of one closed segment: its ``text``, ``nbest``
    and ``words`` (times from the stream's start) and its tags as
    ``(name, value)`` pairs (e.g. ``("lang", "en")``)."""

    text: str
    nbest: NBest = ()
    words: tuple[TokenTime, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    @classmethod
    def first_pass(cls, segment: Segment) -> SecondPassText:
        """A segment's own first-pass text (when its second pass failed)."""
        return cls(segment.text, segment.nbest, segment.words)


def _times(words: Sequence[TokenTime]) -> Times:
    return tuple((str(t.piece), float(t.start), float(t.end)) for t in words)


def _join(texts: Sequence[str]) -> str:
    return reduce(join_texts, texts, "")


class TwoPassReplies:
    """The replies of one stream opened by ``start`` (see the module docstring)."""

    def __init__(self, start: StartStream) -> None:
        self.start = start
        self._plain = ReplyBuilder(start)  # a result without segments: the first pass's replies
        self._resolved: dict[int, SecondPassText] = {}
        self._announced: list[SecondPassText] = []
        self._resolutions = 0  # resolve() calls so far
        # the last partial reply, its result and resolutions: a frame that moved
        # no search and brought no second pass gets the same reply object (as
        # ReplyBuilder's, whose text the protocol core keeps)
        self._last: tuple[RecognitionResult, int, PartialResult] | None = None

    @property
    def announced(self) -> int:
        """Segments announced so far."""
        return len(self._announced)

    def resolve(self, index: int, text: SecondPassText) -> None:
        """Segment ``index``'s second pass is in."""
        self._resolved[index] = text
        self._resolutions += 1

    def _announce(self, segments: Sequence[Segment], upto: int | None = None) -> tuple[SegmentFinal, ...]:
        """Announce the resolved segments that are next in order."""
        out = []
        n = self.start.nbest
        while len(self._announced) < len(segments) and len(self._announced) in self._resolved:
            segment = segments[len(self._announced)]
            second = self._resolved.pop(segment.index)
            nbest = tuple((str(t), float(s)) for t, s in second.nbest[:n]) if n > 1 else ()
            out.append(SegmentFinal(segment.index, second.text, segment.start, segment.end, _times(second.words),
                                    nbest=nbest, tags=second.tags))  # fmt: skip
            self._announced.append(second)
        return tuple(out)

    def _transcript(self, segments: Sequence[Segment]) -> str:
        """Second-pass texts of the announced segments, then the first pass's of the others."""
        done = [s.text for s in self._announced]
        return _join(done + [s.text for s in segments[len(done) :]])

    def partial(self, result: RecognitionResult) -> PartialResult:
        if result.open is None:
            return self._plain.partial(result)
        last = self._last
        if last is not None and last[0] is result and last[1] == self._resolutions:
            return last[2]
        reply = self._partial(result)
        # a reply announcing segments is not repeated: the next one for the same result announces none
        self._last = None if reply.segments else (result, self._resolutions, reply)
        return reply

    def _partial(self, result: RecognitionResult) -> PartialResult:
        assert result.open is not None
        n, open_ = self.start.nbest, result.open
        segments = self._announce(result.segments)
        alternatives = tuple((str(t), float(s)) for t, s in open_.nbest[:n]) if n > 1 else ()
        if self.start.compact:
            return PartialResult(open_.text, alternatives, open_.index, segments)
        prefix = self._transcript(result.segments)
        scores = [s for _, s in result.nbest]
        if open_.nbest:
            nbest = tuple((join_texts(prefix, t), float(s)) for (t, _), s in zip(open_.nbest, scores))
        else:
            nbest = ((prefix, float(scores[0])),) if prefix and scores else ()
        text = join_texts(prefix, open_.text)
        return PartialResult(text, nbest[:n] if n > 1 else (), open_.index if segments else None, segments)

    def final(self, result: RecognitionResult) -> FinalResult:
        """The final reply; every closed segment must be resolved."""
        if result.open is None:
            return self._plain.final(result)
        missing = [s.index for s in result.segments[self.announced :] if s.index not in self._resolved]
        if missing:
            raise RuntimeError(f"segments {missing} have no second pass yet")
        name, n, open_ = self.start.name, self.start.nbest, result.open
        segments = self._announce(result.segments)
        if self.start.compact:
            return FinalResult(name, open_.text, (), (), open_.index, segments)
        text = _join([s.text for s in self._announced])
        nbest: NBest = ()
        if n > 1 and self._announced:
            prefix = _join([s.text for s in self._announced[:-1]])
            nbest = tuple((join_texts(prefix, str(t)), float(s)) for t, s in self._announced[-1].nbest[:n])
        times = tuple(w for s in self._announced for w in _times(s.words))
        return FinalResult(name, text, nbest, times, open_.index if segments else None, segments)
