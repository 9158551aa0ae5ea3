"""The hotword automaton: an Aho-Corasick automaton over token ids whose
states carry the bonuses of :mod:`trio_asr.recognition.hotwords` (its module
docstring defines them), built in steps.

:func:`graph_steps` is a generator: every ``next()`` does a short piece of
the work (a few dozen states), so that a caller can build a large automaton
in slices interleaved with other work (see
:mod:`trio_asr.recognition.compile_queue`); :func:`run_steps` runs such a
generator to its end at once.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TypeVar

import numpy as np

from trio_asr._ctc import HotwordGraph

__all__ = ["STATES_PER_STEP", "Steps", "graph_steps", "run_steps"]

T = TypeVar("T")

#: work done in steps: each ``next()`` a short piece, the result returned at the end
Steps = Generator[None, None, T]

#: states handled per step of :func:`graph_steps` (a step: about a tenth of a millisecond)
STATES_PER_STEP = 64


def run_steps(steps: Steps[T]) -> T:
    """Run ``steps`` to the end at once; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def graph_steps(phrases: dict[tuple[int, ...], float], vocab_size: int) -> Steps[HotwordGraph]:
    """The automaton of ``phrases`` (token ids -> score per token) over a
    table of ``vocab_size`` tokens, in steps of :data:`STATES_PER_STEP` states."""
    # The trie, numbered breadth first (so every fail link points backwards).
    children: list[dict[int, int]] = [{}]
    parent, token_of, depth, score, is_end = [0], [-1], [0], [0.0], [False]
    walked = 0
    for ids, phrase_score in phrases.items():
        state = 0
        for token in ids:
            child = children[state].get(token)
            if child is None:
                child = children[state][token] = len(children)
                children.append({})
                parent.append(state)
                token_of.append(token)
                depth.append(depth[state] + 1)
                score.append(phrase_score)
                is_end.append(False)
            elif score[child] < phrase_score:
                score[child] = phrase_score
            state = child
        is_end[state] = True
        walked += len(ids)
        if walked >= STATES_PER_STEP:
            walked = 0
            yield
    order = [0]
    for n, state in enumerate(order):  # grows while iterating: breadth first
        kids = children[state]
        if len(kids) == 1:
            order.extend(kids.values())
        elif kids:
            order.extend(kids[t] for t in sorted(kids))
        if n % STATES_PER_STEP == 0:
            yield
    count = len(order)
    new_id = [0] * count
    for new, old in enumerate(order):
        new_id[old] = new

    fail = [0] * count  # by old id
    longest_end = [0] * count  # the longest phrase that is a suffix of the state (0: none)
    total = [0.0] * count  # sum of position scores along the path
    covered: list[tuple[tuple[int, int], ...]] = [()] * count  # settled positions, as intervals
    gain = [0.0] * count
    at_risk = [0.0] * count
    for n, state in enumerate(order):
        if not state:
            continue
        up = parent[state]
        token = token_of[state]
        if up:
            f = fail[up]
            while f and token not in children[f]:
                f = fail[f]
            fail[state] = children[f].get(token, 0)
        total[state] = total[up] + score[state]
        longest_end[state] = phrase = state if is_end[state] else longest_end[fail[state]]
        if phrase or covered[up]:
            covered[state], gain[state] = _settle(state, phrase, covered[up], parent, depth, total)
            at_risk[state] = total[state] - sum(
                _span(state, lo, hi, parent, depth, total) for lo, hi in covered[state]
            )
        else:
            at_risk[state] = total[state]
        if n % STATES_PER_STEP == 0:
            yield

    up_most = [0.0] * count  # most a child adds: max of gain + at_risk over the children
    bound = [0.0] * count
    child_start = [0]
    child_token: list[int] = []
    child_state: list[int] = []
    for n, state in enumerate(order):
        kids = children[state]
        if len(kids) == 1:
            [(token, child)] = kids.items()
            up_most[state] = gain[child] + at_risk[child]
            child_token.append(token)
            child_state.append(new_id[child])
        elif kids:
            up_most[state] = max(gain[c] + at_risk[c] for c in kids.values())
            for token in sorted(kids):
                child_token.append(token)
                child_state.append(new_id[kids[token]])
        child_start.append(len(child_token))
        # the chain of fail links is all earlier states
        bound[state] = max(up_most[state], bound[fail[state]] if state else 0.0)
        if n % STATES_PER_STEP == 0:
            yield
    by_new = yield from _array(order, np.intp)
    new_ids = yield from _array(new_id, np.int32)
    fails = yield from _array(fail, np.intp)
    starts = yield from _array(child_start, np.int32)
    tokens = yield from _array(child_token, np.int32)
    states = yield from _array(child_state, np.int32)
    risks = yield from _array(at_risk, np.float64)
    gains = yield from _array(gain, np.float64)
    bounds = yield from _array(bound, np.float64)
    yield
    return HotwordGraph(
        new_ids[fails[by_new]], starts, tokens, states, risks[by_new], gains[by_new], bounds[by_new], vocab_size
    )


def _array(values: Sequence[float], dtype: type[np.generic]) -> Steps[np.ndarray]:
    """``np.array(values, dtype)``, in steps."""
    size = 16 * STATES_PER_STEP
    parts = []
    for start in range(0, len(values), size):
        parts.append(np.array(values[start : start + size], dtype=dtype))
        yield
    if not parts:
        return np.array(values, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _span(state: int, lo: int, hi: int, parent: list[int], depth: list[int], total: list[float]) -> float:
    """Sum of the position scores ``lo..hi`` (1-based) of ``state``'s path."""
    node = state
    while depth[node] > hi:
        node = parent[node]
    top = node
    while depth[node] > lo - 1:
        node = parent[node]
    return total[top] - total[node]


def _settle(
    state: int,
    phrase: int,
    covered: tuple[tuple[int, int], ...],
    parent: list[int],
    depth: list[int],
    total: list[float],
) -> tuple[tuple[tuple[int, int], ...], float]:
    """``(covered, gain)`` of ``state``: its parent's settled intervals plus
    the positions of ``phrase`` (the longest phrase ending here, or 0), and
    the scores in ``phrase`` of the positions that adds."""
    if not phrase:
        return covered, 0.0
    d = depth[state]
    shift = d - depth[phrase]  # window position = phrase position + shift
    lo = start = shift + 1
    gain = total[phrase]
    merged = []
    for a, b in covered:
        if b < start - 1:
            merged.append((a, b))
            continue
        overlap_lo, overlap_hi = max(a, start), min(b, d)
        if overlap_lo <= overlap_hi:
            gain -= _span(phrase, overlap_lo - shift, overlap_hi - shift, parent, depth, total)
        lo = min(lo, a)
    merged.append((lo, d))
    return tuple(merged), gain
