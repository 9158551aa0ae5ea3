"""CTC decoding of log-probability matrices: greedy and prefix beam search.

Both searches are streaming: ``accept`` takes the next ``(T, V)`` block of
per-frame log-probabilities of one stream, and results are available after
every block. Frame indices in results count output frames from the start of
the stream, across all ``accept`` calls.
"""

from __future__ import annotations

from typing import Protocol, cast

import attrs
import numpy as np

from trio_asr._ctc import MAX_BEAM, HotwordGraph, PrefixBeamCore

__all__ = ["MAX_BEAM", "GreedySearch", "Hypothesis", "PrefixBeamSearch", "Search"]

def _frame_matrix(log_probs: np.ndarray, blank_id: int) -> np.ndarray:
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must have shape (T, V), got {log_probs.shape}")
    if not 0 <= blank_id < log_probs.shape[1]:
        raise ValueError(f"blank_id {blank_id} is outside a vocabulary of {log_probs.shape[1]}")
    return log_probs


@attrs.frozen
class Hypothesis:
    """A decoded token sequence.

    ``score`` is a natural-log probability (see the search for which one);
    ``frames[i]`` is the output frame at which ``tokens[i]`` was emitted.
    """

    tokens: tuple[int, ...]
    score: float
    frames: tuple[int, ...]


class Search(Protocol):
    """What a segment's search offers (both searches below): frames in,
    the best hypotheses out."""

    def accept(self, log_probs: np.ndarray) -> None:
        """Advance by the log-probs (T, V) of the next frames."""

    def nbest(self, n: int) -> list[Hypothesis]:
        """Up to ``n`` best hypotheses, best first (none when every path has
        probability 0)."""
        ...

    @property
    def num_frames(self) -> int:
        """Frames accepted so far."""
        ...


@attrs.define
class GreedySearch:
    """Best path decoding: the arg-max token of every frame, repeats merged,
    blanks removed. ``best.score`` is the log probability of that single path,
    and a token's frame is the first frame of its run.
    """

    blank_id: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    _tokens: list[int] = attrs.field(init=False, factory=list)
    _frames: list[int] = attrs.field(init=False, factory=list)
    _score: float = attrs.field(init=False, default=0.0)
    _previous: int = attrs.field(init=False, default=-1)  # arg-max of the last frame seen
    _num_frames: int = attrs.field(init=False, default=0)

    def accept(self, log_probs: np.ndarray) -> None:
        log_probs = _frame_matrix(log_probs, self.blank_id)
        best = log_probs.argmax(axis=1)
        self._score += float(log_probs[np.arange(len(best)), best].astype(np.float64).sum())
        for t, token in enumerate(best.tolist()):
            if token != self._previous and token != self.blank_id:
                self._tokens.append(token)
                self._frames.append(self._num_frames + t)
            self._previous = token
        self._num_frames += len(best)

    @property
    def best(self) -> Hypothesis:
        return Hypothesis(tuple(self._tokens), self._score, tuple(self._frames))

    def nbest(self, n: int) -> list[Hypothesis]:
        """The best path alone: greedy search keeps no alternatives."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        return [self.best]

    @property
    def num_frames(self) -> int:
        """Frames accepted so far."""
        return self._num_frames


@attrs.define
class PrefixBeamSearch:
    """CTC prefix beam search in log space.

    After each frame the ``beam`` most probable distinct prefixes survive
    (ties broken in a fixed order, so results do not depend on how the
    stream is cut into blocks). A hypothesis' score is the log of the total
    probability, over all alignments of the frames so far, of the prefix it
    spells. With a beam at least as large as the number of possible prefixes
    the search is exact.

    Per-frame pruning trades exactness for speed and is off by default:
    ``token_top_k`` extends prefixes only by the k most probable non-blank
    tokens of a frame, ``token_threshold`` only by tokens whose log
    probability is at least that value.

    ``hotwords`` (the ``graph`` of :func:`trio_asr.recognition.hotwords.compile_hotwords`,
    shareable by any number of searches) biases the search towards phrases:
    a prefix gains the phrase's bonus per token as it spells one, loses what
    it gained if the phrase breaks off, and keeps it once the phrase is
    complete. The beam ranks prefixes with their bonus; a hypothesis' score
    is its log probability plus the bonus of its completed phrases only, so a
    half-spoken phrase never wins by its bonus.

    Every block must have the same width ``V`` (the hotwords' vocabulary,
    when given). ``beam`` is at most :data:`MAX_BEAM`.

    The per-frame work is compiled (``trio_asr._ctc``) and runs without the
    GIL; one instance must not be used by two threads at once.
    """

    beam: int = attrs.field(default=10, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_BEAM)])
    blank_id: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    token_top_k: int | None = attrs.field(
        default=None, kw_only=True, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    token_threshold: float | None = attrs.field(default=None, kw_only=True)
    hotwords: HotwordGraph | None = attrs.field(
        default=None, kw_only=True, validator=attrs.validators.optional(attrs.validators.instance_of(HotwordGraph))
    )
    _core: PrefixBeamCore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        threshold = self.token_threshold
        self._core = PrefixBeamCore(
            self.beam,
            self.blank_id,
            self.token_top_k or 0,
            threshold is not None,
            threshold or 0.0,
            self.hotwords,
        )

    def accept(self, log_probs: np.ndarray) -> None:
        log_probs = _frame_matrix(log_probs, self.blank_id)
        dtype = np.float32 if log_probs.dtype == np.float32 else np.float64
        self._core.accept(np.ascontiguousarray(log_probs, dtype=dtype))

    def nbest(self, n: int) -> list[Hypothesis]:
        """The ``min(n, surviving prefixes)`` best hypotheses, best first
        (equal scores in token order)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        scores = self._core.scores()  # best first without hotwords, beam order with
        if not len(scores):  # every path so far has probability 0
            return []
        # Read back only the rows that can be among the first n.
        nth = np.sort(scores)[::-1][min(n, len(scores)) - 1]
        rows = np.flatnonzero(scores >= nth).tolist()
        found = []
        for row in rows:
            tokens, frames = self._core.prefix(row)
            found.append(Hypothesis(tokens, float(scores[row]), frames))
        found.sort(key=lambda h: (-h.score, h.tokens))
        return found[:n]

    @property
    def best(self) -> Hypothesis:
        return self.nbest(1)[0]

    @property
    def num_frames(self) -> int:
        """Frames accepted so far."""
        return cast(int, self._core.num_frames)  # the compiled core has no stubs
