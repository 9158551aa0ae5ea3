"""Segmented CTC decoding: a stream's log-probs cut into segments at endpoints.

A :class:`SegmentedSearch` runs one CTC search per *segment*.  At an endpoint
(see :mod:`trio_asr.recognition.endpoint`) the open segment is finalised — its text,
n-best and token and word time spans are computed once and kept — and a fresh
search starts for the next one, so the work per partial result and the
memory of the search depend on the open segment only, not on the stream's
length.  The text of the whole stream is built from the kept segment texts.

Times are seconds from the stream's start: output frame ``t`` spans
``[t, t + 1) * frame_shift_s``, and none is later than the end of the audio
once it is known (:meth:`SegmentedSearch.end_of_audio`): the frames of the
padded tail after it are cut off.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain

import attrs
import numpy as np

from trio_asr.recognition.endpoint import EndpointDetector, EndpointRules
from trio_asr.recognition.search import Hypothesis, Search
from trio_asr.recognition.timestamps import token_spans, word_spans
from trio_asr.recognition.tokens import TextMemo, TokenTable, is_unspaced

__all__ = ["RecognitionResult", "Segment", "SegmentedSearch", "TokenTime", "join_texts"]

NBest = tuple[tuple[str, float], ...]


@attrs.frozen
class TokenTime:
    """A token or word of a result with its time span in seconds from the stream's start."""

    piece: str
    start: float
    end: float


@attrs.frozen
class Segment:
    """One segment of a stream.

    ``nbest`` holds ``(text, log score)`` pairs, best first, distinct texts;
    ``text`` is the best one ("" when no path survives).  ``start``/``end``
    are the segment's time span.  ``words`` and ``tokens`` (the best
    hypothesis' visible tokens) are timed only in a finalised segment; they
    are empty while it is open.
    """

    index: int
    text: str
    nbest: NBest
    start: float
    end: float
    final: bool
    words: tuple[TokenTime, ...] = ()
    tokens: tuple[TokenTime, ...] = ()


@attrs.frozen
class RecognitionResult:
    """The recognizer's view of a stream so far.

    ``text`` is the whole stream's transcript (the finalised segments' texts,
    then the open one's) and ``nbest`` its alternatives: the finalised text
    followed by each of the open segment's, scored by the sum of the
    segments' scores; ``text == nbest[0][0]`` whenever ``nbest`` is not empty.
    ``segments`` are the finalised segments with text, in order; ``open`` is
    the segment being decoded (after the end of the stream: an empty one).

    ``times`` (words, PaddleSpeech's ``times``) and ``tokens`` (the visible
    tokens) span the whole stream once it is finished; before that they are
    empty, as timing is computed per segment when it closes (see each
    segment's ``words`` and ``tokens``).
    """

    text: str
    nbest: NBest
    times: tuple[TokenTime, ...] = ()
    tokens: tuple[TokenTime, ...] = attrs.field(default=(), kw_only=True)
    segments: tuple[Segment, ...] = attrs.field(default=(), kw_only=True)
    open: Segment | None = attrs.field(default=None, kw_only=True)


def join_texts(left: str, right: str) -> str:
    """Two texts as one, with a space between them unless either side is
    writing without spaces (the rule of :meth:`TokenTable.text`)."""
    if not left or not right:
        return left or right
    if is_unspaced(left[-1]) or is_unspaced(right[0]):
        return left + right
    return left + " " + right


class SegmentedSearch:
    """Searches a stream's log-probs segment by segment.

    ``new_search()`` makes the search of each segment (frames count from the
    segment's start); ``nbest`` alternatives are kept per result;
    ``endpoint`` None makes the whole stream one segment.  Endpoints are
    found on the best path unless a voice activity detector says which frames
    hold speech (see :meth:`accept`); time spans always follow the best path.
    """

    def __init__(
        self,
        tokens: TokenTable,
        new_search: Callable[[], Search],
        nbest: int,
        frame_shift_s: float,
        endpoint: EndpointRules | None,
    ) -> None:
        self._tokens = tokens
        self._new_search = new_search
        self._nbest = nbest
        self._shift = frame_shift_s
        self._detector = None if endpoint is None else EndpointDetector(endpoint, frame_shift_s)
        self._segments: tuple[Segment, ...] = ()
        self._finalised_text = ""
        self._finalised_score = 0.0
        self._start_frame = 0  # of the open segment, from the stream's start
        self._end_s = float("inf")  # the end of the audio, s, once known
        self._begin_segment()

    def _begin_segment(self) -> None:
        self._search = self._new_search()
        self._texts = [TextMemo(self._tokens) for _ in range(self._nbest)]  # one per rank
        self._active = bytearray()  # per frame of the open segment

    def end_of_audio(self, seconds: float) -> None:
        """The audio ends ``seconds`` from the stream's start: no time given
        from now on (segment ends, word and token times) is later, although
        frames of the model's padded tail may follow."""
        self._end_s = seconds

    @property
    def num_frames(self) -> int:
        """Frames accepted so far, over all segments."""
        return self._start_frame + len(self._active)

    def accept(self, log_probs: np.ndarray, speech: np.ndarray | None = None) -> None:
        """Decode the next frames (T, V).

        Endpoints are found on the best path (non-blank frames are active)
        unless ``speech`` (T,) says which frames are active instead."""
        if not len(log_probs):
            return
        active = np.asarray(log_probs).argmax(axis=1) != self._tokens.blank_id
        speech = active if speech is None else np.asarray(speech, dtype=bool)
        if speech.shape != (len(log_probs),):
            raise ValueError(f"{len(log_probs)} frames but speech flags of shape {speech.shape}")
        while len(log_probs):
            k = None if self._detector is None else self._detector.accept(speech)
            if k is None:
                self._take(log_probs, active)
                return
            self._take(log_probs[:k], active[:k])
            self._close_segment()
            log_probs, active, speech = log_probs[k:], active[k:], speech[k:]

    def _take(self, log_probs: np.ndarray, active: np.ndarray) -> None:
        self._search.accept(log_probs)
        self._active += active.astype(np.uint8).tobytes()

    def _close_segment(self) -> None:
        segment = self._segment(final=True)
        if segment.text:
            self._segments += (segment,)
            self._finalised_text = join_texts(self._finalised_text, segment.text)
            self._finalised_score += segment.nbest[0][1]
        self._start_frame += len(self._active)
        self._begin_segment()

    def result(self, final: bool = False) -> RecognitionResult:
        """The stream so far; with ``final`` the open segment is given as
        finalised (without closing it: later frames may still come)."""
        segment = self._segment(final)
        prefix, score = self._finalised_text, self._finalised_score
        if segment.nbest:
            nbest = tuple((join_texts(prefix, text), score + s) for text, s in segment.nbest)
        else:
            nbest = ((prefix, score),) if prefix else ()
        text = nbest[0][0] if nbest else prefix
        if not final:
            return RecognitionResult(text, nbest, segments=self._segments, open=segment)
        segments = self._segments + ((segment,) if segment.text else ())
        return RecognitionResult(
            text,
            nbest,
            tuple(chain.from_iterable(s.words for s in segments)),
            tokens=tuple(chain.from_iterable(s.tokens for s in segments)),
            segments=segments,
            open=Segment(len(segments), "", (), segment.end, segment.end, False),
        )

    def _segment(self, final: bool) -> Segment:
        hypotheses = self._search.nbest(self._nbest)
        nbest = tuple((memo.text(h.tokens), h.score) for memo, h in zip(self._texts, hypotheses))
        start = min(self._start_frame * self._shift, self._end_s)
        end = min(self.num_frames * self._shift, self._end_s)
        index = len(self._segments)
        if not nbest:  # every path has probability 0
            return Segment(index, "", (), start, end, final)
        segment = Segment(index, nbest[0][0], nbest, start, end, final)
        if final:
            tokens, words = self._times(hypotheses[0])
            segment = attrs.evolve(segment, words=words, tokens=tokens)
        return segment

    def _times(self, best: Hypothesis) -> tuple[tuple[TokenTime, ...], tuple[TokenTime, ...]]:
        pieces = self._tokens.pieces(best.tokens)
        visible = [(piece, frame) for piece, frame in zip(pieces, best.frames) if piece.strip()]
        spans = token_spans([frame for _, frame in visible], self._active, len(self._active))
        offset, shift, limit = self._start_frame, self._shift, self._end_s

        def timed(text: str, first: int, last: int) -> TokenTime:
            return TokenTime(text, min((offset + first) * shift, limit), min((offset + last + 1) * shift, limit))

        tokens = tuple(timed(piece.strip(), *span) for (piece, _), span in zip(visible, spans))
        # A word that is one token (every CJK character) shares its object: kept segments cost half.
        same = {(t.piece, span): t for t, span in zip(tokens, spans)}
        words = tuple(
            same.get((word, (first, last))) or timed(word, first, last)
            for word, first, last in word_spans([p for p, _ in visible], spans)
        )
        return tokens, words
