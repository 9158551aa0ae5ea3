"""Audio of any length through an offline model: cut, decoded in batches, joined.

:func:`recognize_long` cuts the audio into pieces the model takes
(:func:`~trio_asr.recognition.offline.pieces.cut_pieces`: at most
:data:`~trio_asr.recognition.offline.pieces.MAX_PIECE_S` each, cut in
pauses), decodes them in batches of similar lengths
(:meth:`~trio_asr.recognition.offline.recognizer.OfflineRecognizer.prepare`,
``run``, ``decode``), each with its times moved by its start, and joins their
results into one: each piece with text is one segment.  Audio no longer
than a piece is decoded as it is, so its result is exactly what
:meth:`~trio_asr.recognition.offline.recognizer.OfflineRecognizer.recognize`
gives.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from itertools import chain

import attrs
import numpy as np

from trio_asr.recognition.offline.base import UtteranceTags
from trio_asr.recognition.offline.options import OfflineOptions
from trio_asr.recognition.offline.pieces import MAX_PIECE_S, Piece, SilenceFinder, cut_pieces
from trio_asr.recognition.offline.recognizer import OfflineRecognizer, OfflineResult
from trio_asr.recognition.segments import RecognitionResult, Segment, join_texts

__all__ = ["BATCH_PIECES", "LongResult", "join_results", "recognize_long"]

#: pieces decoded in one model call (at most)
BATCH_PIECES = 4

NBest = tuple[tuple[str, float], ...]


@attrs.frozen
class LongResult:
    """Audio decoded in pieces: the joined ``result`` (one segment per piece
    with text, in order), the tags of the whole (see :func:`file_tags`) and
    of each of ``result.segments`` (``segment_tags``; None for a model
    without tags), the ``pieces`` it was cut into and its ``duration`` (s)."""

    result: RecognitionResult
    tags: UtteranceTags | None
    segment_tags: tuple[UtteranceTags | None, ...]
    pieces: tuple[Piece, ...]
    duration: float


def recognize_long(
    recognizer: OfflineRecognizer,
    samples: np.ndarray,
    options: OfflineOptions = OfflineOptions(),
    *,
    silences: SilenceFinder | None = None,
    max_s: float = MAX_PIECE_S,
    batch_size: int = BATCH_PIECES,
) -> LongResult:
    """Decode mono float ``samples`` at ``options.sample_rate`` (None: the
    model's) of any length; ``silences`` finds the pauses to cut in (see
    :class:`~trio_asr.recognition.offline.pieces.VadSilences`; None: cut at
    the quietest points).  Batches hold up to ``batch_size`` pieces, the
    longest together, so that little of a batch is padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    samples = np.asarray(samples, dtype=np.float32)
    rate = recognizer.sample_rate if options.sample_rate is None else options.sample_rate
    pieces = cut_pieces(samples, rate, max_s=max_s, silences=silences)
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))
    results: list[OfflineResult | None] = [None] * len(pieces)
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        prepared = [
            recognizer.prepare(
                samples[pieces[i].start : pieces[i].end],
                attrs.evolve(options, sample_rate=rate, offset_s=options.offset_s + pieces[i].start / rate),
            )
            for i in batch
        ]
        for i, utterance, log_probs in zip(batch, prepared, recognizer.run(prepared)):
            results[i] = recognizer.decode(utterance, log_probs)
    done = [r for r in results if r is not None]
    result, segment_tags = join_results(done, options.nbest)
    return LongResult(result, file_tags(done), segment_tags, tuple(pieces), len(samples) / rate)


def join_results(
    results: Sequence[OfflineResult], nbest: int
) -> tuple[RecognitionResult, tuple[UtteranceTags | None, ...]]:
    """Consecutive pieces' results as one, and the tags of its segments:
    each piece's segment (if it has text) renumbered in order; the text
    joined; the ``nbest`` best joined alternatives (a piece's scores add up);
    times and tokens one after another."""
    if len(results) == 1:  # as it is, exactly
        (only,) = results
        return only.result, tuple(only.tags for _ in only.result.segments)
    segments: list[Segment] = []
    tags: list[UtteranceTags | None] = []
    for r in results:
        for segment in r.result.segments:
            segments.append(attrs.evolve(segment, index=len(segments)))
            tags.append(r.tags)
    alternatives: NBest = (("", 0.0),)
    for r in results:
        alternatives = _combine(alternatives, r.result.nbest, nbest)
    text = functools.reduce(join_texts, (s.text for s in segments), "")
    end = results[-1].result.open.end if results and results[-1].result.open else 0.0
    result = RecognitionResult(
        text,
        alternatives if any(r.result.nbest for r in results) else (),
        tuple(chain.from_iterable(r.result.times for r in results)),
        tokens=tuple(chain.from_iterable(r.result.tokens for r in results)),
        segments=tuple(segments),
        open=Segment(len(segments), "", (), end, end, False),
    )
    return result, tuple(tags)


def _combine(left: NBest, right: NBest, count: int) -> NBest:
    """The ``count`` best of every left text joined with every right one
    (scores added; a text kept once, with its best score); ``right`` empty
    (no path survived): ``left``."""
    if not right:
        return left
    joined = [(join_texts(a, b), sa + sb) for a, sa in left for b, sb in right]
    best: dict[str, float] = {}
    for text, score in sorted(joined, key=lambda item: -item[1]):  # stable: best with best first
        best.setdefault(text, score)
    return tuple(best.items())[:count]


def file_tags(results: Sequence[OfflineResult]) -> UtteranceTags | None:
    """The tags of pieces as one: each field's value held over the most
    audio (a piece's language ``nospeech`` counted only if every piece's
    is), the first piece's ``text_norm``; None when no piece has tags."""
    tagged = [(r.tags, r.duration) for r in results if r.tags is not None]
    if not tagged:
        return None
    spoken = [(t, d) for t, d in tagged if t.lang != "nospeech"] or tagged

    def vote(items: Sequence[tuple[UtteranceTags, float]], field: str) -> str:
        weight: dict[str, float] = defaultdict(float)
        for t, duration in items:
            weight[getattr(t, field)] += duration
        return max(weight, key=lambda value: weight[value])  # ties: the first piece's

    return UtteranceTags(vote(spoken, "lang"), vote(tagged, "emotion"), vote(tagged, "event"), tagged[0][0].text_norm)
