"""CTC decoding of log-probability matrices: greedy and prefix beam search.

Both searches are streaming: ``accept`` takes the next ``(T, V)`` block of
per-frame log-probabilities of one stream, and results are available after
every block. Frame indices in results count output frames from the start of
the stream, across all ``accept`` calls.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

__all__ = ["GreedySearch", "Hypothesis", "PrefixBeamSearch"]

NEG_INF = -math.inf


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

    @property
    def num_frames(self) -> int:
        """Frames accepted so far."""
        return self._num_frames


@attrs.define
class _Beam:
    """The surviving prefixes and, per prefix, the log probability of all
    alignments so far that spell it and end in blank (``blank``) or in its
    last token (``token``)."""

    prefixes: list[tuple[int, ...]]
    frames: list[tuple[int, ...]]
    blank: np.ndarray
    token: np.ndarray
    last: np.ndarray  # last token of each prefix, -1 for the empty one
    # Pairs (parent row, child row) where one surviving prefix extends another
    # by one token: that extension adds to the child instead of making a new prefix.
    merge_parent: np.ndarray
    merge_child: np.ndarray

    @classmethod
    def build(cls, prefixes, frames, blank, token) -> _Beam:
        row = {p: i for i, p in enumerate(prefixes)}
        pairs = np.array(
            [(row[p[:-1]], i) for i, p in enumerate(prefixes) if p and p[:-1] in row], dtype=np.intp
        ).reshape(-1, 2)
        last = np.array([p[-1] if p else -1 for p in prefixes], dtype=np.intp)
        return cls(prefixes, frames, blank, token, last, pairs[:, 0], pairs[:, 1])

    @property
    def total(self) -> np.ndarray:
        return np.logaddexp(self.blank, self.token)


@attrs.define
class PrefixBeamSearch:
    """CTC prefix beam search in log space.

    After each frame the ``beam`` most probable distinct prefixes survive.
    A hypothesis' score is the log of the total probability, over all
    alignments of the frames so far, of the prefix it spells. With a beam at
    least as large as the number of possible prefixes the search is exact.

    Per-frame pruning trades exactness for speed and is off by default:
    ``token_top_k`` extends prefixes only by the k most probable non-blank
    tokens of a frame, ``token_threshold`` only by tokens whose log
    probability is at least that value.
    """

    beam: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    blank_id: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    token_top_k: int | None = attrs.field(
        default=None, kw_only=True, validator=attrs.validators.optional(attrs.validators.ge(1))
    )
    token_threshold: float | None = attrs.field(default=None, kw_only=True)
    _beam: _Beam = attrs.field(init=False)
    _num_frames: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._beam = _Beam.build([()], [()], np.zeros(1), np.full(1, NEG_INF))

    def accept(self, log_probs: np.ndarray) -> None:
        log_probs = _frame_matrix(log_probs, self.blank_id)
        for row in log_probs.astype(np.float64):
            self._beam = self._step(self._beam, row, self._num_frames)
            self._num_frames += 1

    def _candidate_tokens(self, row: np.ndarray) -> np.ndarray | None:
        """Non-blank tokens that may extend a prefix at this frame (None: all)."""
        if self.token_top_k is None and self.token_threshold is None:
            return None
        candidates = np.delete(np.arange(len(row)), self.blank_id)
        if self.token_threshold is not None:
            candidates = candidates[row[candidates] >= self.token_threshold]
        if self.token_top_k is not None and len(candidates) > self.token_top_k:
            top = np.argpartition(row[candidates], -self.token_top_k)[-self.token_top_k :]
            candidates = np.sort(candidates[top])
        return candidates

    def _step(self, beam: _Beam, row: np.ndarray, t: int) -> _Beam:
        total = beam.total
        has_last = beam.last >= 0
        last = np.where(has_last, beam.last, 0)

        # The prefix stays: a blank, or a repeat of its last token, is read.
        stay_blank = total + row[self.blank_id]
        stay_token = np.where(has_last, beam.token + row[last], NEG_INF)

        # The prefix grows by token c. After its own last token, c must be
        # separated by a blank, so only the blank-ending paths count.
        tokens = self._candidate_tokens(row)
        columns = row if tokens is None else row[tokens]
        grow = total[:, None] + columns[None, :]
        if tokens is None:
            grow[:, self.blank_id] = NEG_INF
            repeat_rows = np.flatnonzero(has_last)
            grow[repeat_rows, last[repeat_rows]] = beam.blank[repeat_rows] + row[last[repeat_rows]]
        else:
            rows, cols = np.nonzero(tokens[None, :] == beam.last[:, None])
            grow[rows, cols] = beam.blank[rows] + columns[cols]

        # Growing into a prefix that already survives merges into it.
        if len(beam.merge_child) and len(columns):
            child_last = beam.last[beam.merge_child]
            if tokens is None:
                cols = child_last
                into = np.ones(len(cols), dtype=bool)
            else:
                cols = np.searchsorted(tokens, child_last).clip(max=len(tokens) - 1)
                into = tokens[cols] == child_last
            parent, child, cols = beam.merge_parent[into], beam.merge_child[into], cols[into]
            stay_token[child] = np.logaddexp(stay_token[child], grow[parent, cols])
            grow[parent, cols] = NEG_INF

        stay_total = np.logaddexp(stay_blank, stay_token)
        scores = np.concatenate([stay_total, grow.ravel()])
        keep = np.flatnonzero(scores > NEG_INF)
        if len(keep) > self.beam:
            keep = keep[np.argpartition(scores[keep], -self.beam)[-self.beam :]]
        keep = keep[np.argsort(-scores[keep], kind="stable")]

        prefixes, frames, blank, token = [], [], [], []
        stays = len(stay_total)
        width = grow.shape[1]
        for index in keep.tolist():
            if index < stays:
                prefixes.append(beam.prefixes[index])
                frames.append(beam.frames[index])
                blank.append(stay_blank[index])
                token.append(stay_token[index])
            else:
                parent, col = divmod(index - stays, width)
                c = col if tokens is None else int(tokens[col])
                prefixes.append(beam.prefixes[parent] + (c,))
                frames.append(beam.frames[parent] + (t,))
                blank.append(NEG_INF)
                token.append(scores[index])
        return _Beam.build(prefixes, frames, np.array(blank), np.array(token))

    def nbest(self, n: int) -> list[Hypothesis]:
        """The ``min(n, surviving prefixes)`` best hypotheses, best first."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        beam = self._beam
        total = beam.total
        order = sorted(range(len(total)), key=lambda i: (-total[i], beam.prefixes[i]))
        return [Hypothesis(beam.prefixes[i], float(total[i]), beam.frames[i]) for i in order[:n]]

    @property
    def best(self) -> Hypothesis:
        return self.nbest(1)[0]

    @property
    def num_frames(self) -> int:
        """Frames accepted so far."""
        return self._num_frames
