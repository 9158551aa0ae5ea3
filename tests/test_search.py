"""CTC searches against brute force and against themselves under streaming."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_asr.recognition.search import GreedySearch, Hypothesis, PrefixBeamSearch

EXACT_BEAM = 5000  # more than the distinct label sequences of any small case below


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@st.composite
def small_cases(draw):
    """(log_probs (T<=6, V<=4) float32, blank_id)."""
    frames = draw(st.integers(1, 6))
    vocab = draw(st.integers(2, 4))
    values = draw(st.lists(st.floats(-6, 6), min_size=frames * vocab, max_size=frames * vocab))
    logits = np.array(values, dtype=np.float64).reshape(frames, vocab)
    return log_softmax(logits).astype(np.float32), draw(st.integers(0, vocab - 1))


@st.composite
def peaky_cases(draw, max_frames=60, max_vocab=30):
    """Model-like log-probs: mostly blank, sometimes one dominant token."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    frames = draw(st.integers(1, max_frames))
    vocab = draw(st.integers(2, max_vocab))
    logits = rng.normal(size=(frames, vocab))
    winners = np.where(rng.random(frames) < 0.4, rng.integers(1, vocab, size=frames), 0)
    logits[np.arange(frames), winners] += rng.uniform(0.0, 8.0, size=frames)
    return log_softmax(logits).astype(np.float32)


def brute_force(log_probs: np.ndarray, blank_id: int) -> dict[tuple[int, ...], float]:
    """Log probability of every label sequence: sum over all V**T alignments."""
    frames, vocab = log_probs.shape
    lp = log_probs.astype(np.float64)
    total: dict[tuple[int, ...], float] = defaultdict(float)
    for path in itertools.product(range(vocab), repeat=frames):
        labels = tuple(k for k, _ in itertools.groupby(path) if k != blank_id)
        total[labels] += math.exp(sum(lp[t, k] for t, k in enumerate(path)))
    return {labels: math.log(p) for labels, p in total.items()}


def argmax_collapse(log_probs: np.ndarray, blank_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    tokens, frames = [], []
    previous = None
    for t, k in enumerate(int(k) for k in log_probs.argmax(axis=1)):
        if k != previous and k != blank_id:
            tokens.append(k)
            frames.append(t)
        previous = k
    return tuple(tokens), tuple(frames)


def fed_in_pieces(search, log_probs: np.ndarray, cuts: list[int]):
    bounds = [0, *sorted(set(cuts)), len(log_probs)]
    for start, stop in itertools.pairwise(bounds):
        search.accept(log_probs[start:stop])
    return search


@settings(max_examples=150, deadline=None)
@given(small_cases(), st.integers(1, 8))
def test_exact_beam_equals_brute_force(case, n):
    log_probs, blank_id = case
    exact = brute_force(log_probs, blank_id)
    search = PrefixBeamSearch(EXACT_BEAM, blank_id)
    search.accept(log_probs)
    got = search.nbest(n)

    assert len(got) == min(n, len(exact))
    ranked = sorted(exact.values(), reverse=True)
    assert [h.score for h in got] == pytest.approx(ranked[: len(got)], abs=1e-5)
    for h in got:  # the right sequences, whatever order equal scores take
        assert h.score == pytest.approx(exact[h.tokens], abs=1e-5)


@settings(max_examples=100, deadline=None)
@given(small_cases(), st.integers(1, 3), st.integers(1, 4) | st.none(), st.floats(-4, -0.5) | st.none())
def test_narrow_or_pruned_beam_scores_never_exceed_the_truth(case, beam, top_k, threshold):
    """A narrow beam or pruning loses alignments, so it can only underestimate."""
    log_probs, blank_id = case
    exact = brute_force(log_probs, blank_id)
    search = PrefixBeamSearch(beam, blank_id, token_top_k=top_k, token_threshold=threshold)
    search.accept(log_probs)
    for h in search.nbest(beam):
        assert h.score <= exact[h.tokens] + 1e-6


@settings(max_examples=50, deadline=None)
@given(peaky_cases(), st.integers(1, 12))
def test_pruning_that_removes_nothing_changes_nothing(log_probs, beam):
    plain = PrefixBeamSearch(beam)
    plain.accept(log_probs)
    vocab = log_probs.shape[1]
    unpruned = PrefixBeamSearch(beam, token_top_k=vocab, token_threshold=-np.inf)
    unpruned.accept(log_probs)
    assert unpruned.nbest(beam) == plain.nbest(beam)


@settings(max_examples=60, deadline=None)
@given(peaky_cases(), st.lists(st.integers(0, 60), max_size=6), st.integers(1, 8))
def test_streaming_gives_the_same_nbest_as_one_block(log_probs, cuts, beam):
    whole = PrefixBeamSearch(beam)
    whole.accept(log_probs)
    split = fed_in_pieces(PrefixBeamSearch(beam), log_probs, [c for c in cuts if c < len(log_probs)])
    assert split.nbest(beam) == whole.nbest(beam)


@settings(max_examples=30, deadline=None)
@given(peaky_cases(max_frames=30), st.integers(1, 5))
def test_partial_results_match_a_search_of_the_frames_so_far(log_probs, chunk):
    streaming = PrefixBeamSearch(4)
    for stop in range(chunk, len(log_probs) + chunk, chunk):
        streaming.accept(log_probs[stop - chunk : stop])
        fresh = PrefixBeamSearch(4)
        fresh.accept(log_probs[:stop])
        assert streaming.nbest(4) == fresh.nbest(4)


@settings(max_examples=60, deadline=None)
@given(peaky_cases(), st.integers(1, 12), st.integers(1, 20))
def test_nbest_is_sorted_distinct_and_headed_by_best(log_probs, beam, n):
    search = PrefixBeamSearch(beam)
    search.accept(log_probs)
    got = search.nbest(n)
    assert 1 <= len(got) <= min(n, beam)
    assert got[0] == search.best
    assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
    assert len({h.tokens for h in got}) == len(got)
    assert all(h.score <= 1e-6 for h in got)


def test_nbest_is_as_long_as_asked_when_the_beam_allows():
    rng = np.random.default_rng(7)
    log_probs = log_softmax(rng.normal(size=(20, 6)))
    search = PrefixBeamSearch(10)
    search.accept(log_probs)
    assert [len(search.nbest(n)) for n in (1, 5, 10, 11, 50)] == [1, 5, 10, 10, 10]


@settings(max_examples=60, deadline=None)
@given(peaky_cases(), st.integers(1, 10))
def test_token_frames_are_increasing_and_inside_the_stream(log_probs, beam):
    search = PrefixBeamSearch(beam)
    search.accept(log_probs[: len(log_probs) // 2])
    search.accept(log_probs[len(log_probs) // 2 :])
    for h in search.nbest(beam):
        assert len(h.frames) == len(h.tokens)
        assert all(0 <= f < len(log_probs) for f in h.frames)
        assert all(a < b for a, b in itertools.pairwise(h.frames))
        assert all(log_probs[f, k] > -np.inf for f, k in zip(h.frames, h.tokens))


@settings(max_examples=80, deadline=None)
@given(peaky_cases(), st.lists(st.integers(0, 60), max_size=5), st.integers(0, 29))
def test_greedy_is_argmax_then_collapse(log_probs, cuts, blank_id):
    blank_id %= log_probs.shape[1]
    greedy = fed_in_pieces(GreedySearch(blank_id), log_probs, [c for c in cuts if c < len(log_probs)])
    tokens, frames = argmax_collapse(log_probs, blank_id)
    path_score = float(log_probs.astype(np.float64).max(axis=1).sum())
    assert greedy.best.tokens == tokens
    assert greedy.best.frames == frames
    assert greedy.best.score == pytest.approx(path_score, abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(small_cases())
def test_exact_best_is_at_least_as_likely_as_the_greedy_path(case):
    log_probs, blank_id = case
    greedy = GreedySearch(blank_id)
    greedy.accept(log_probs)
    search = PrefixBeamSearch(EXACT_BEAM, blank_id)
    search.accept(log_probs)
    exact = brute_force(log_probs, blank_id)
    assert exact[greedy.best.tokens] >= greedy.best.score - 1e-6
    assert search.best.score >= exact[greedy.best.tokens] - 1e-6


@settings(max_examples=60, deadline=None)
@given(peaky_cases(), st.integers(0, 2**32 - 1))
def test_beam_one_follows_greedy_when_every_frame_is_confident(log_probs, seed):
    """With an arg-max probability of at least 0.9 in every frame, the single
    surviving prefix always takes the greedy step (the other candidates hold
    at most 0.1 of the prefix's mass)."""
    rng = np.random.default_rng(seed)
    frames, vocab = log_probs.shape
    winners = log_probs.argmax(axis=1)
    rest = rng.dirichlet(np.ones(vocab - 1), size=frames) * rng.uniform(0, 0.1, size=(frames, 1))
    probs = np.empty((frames, vocab))
    for t, w in enumerate(winners):
        probs[t] = np.insert(rest[t], w, 1.0 - rest[t].sum())
    confident = np.log(probs).astype(np.float32)

    greedy = GreedySearch()
    greedy.accept(confident)
    search = PrefixBeamSearch(1)
    search.accept(confident)
    assert search.best.tokens == greedy.best.tokens
    assert search.best.frames == greedy.best.frames


def test_before_any_frame_the_only_hypothesis_is_empty_and_certain():
    search = PrefixBeamSearch(4)
    search.accept(np.zeros((0, 5), dtype=np.float32))
    assert search.nbest(3) == [Hypothesis((), 0.0, ())]
    greedy = GreedySearch()
    greedy.accept(np.zeros((0, 5), dtype=np.float32))
    assert greedy.best == Hypothesis((), 0.0, ())


@pytest.mark.parametrize("make", [GreedySearch, PrefixBeamSearch])
def test_bad_input_is_refused(make):
    search = make(blank_id=3)
    with pytest.raises(ValueError, match="shape"):
        search.accept(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="blank_id"):
        search.accept(np.zeros((2, 3), dtype=np.float32))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        PrefixBeamSearch(0)
    with pytest.raises(ValueError):
        PrefixBeamSearch(4, token_top_k=0)
    with pytest.raises(ValueError):
        PrefixBeamSearch(4).nbest(0)


@pytest.mark.parametrize("make", [GreedySearch, PrefixBeamSearch])
def test_frames_are_counted_across_calls(make):
    search = make()
    for frames in (3, 0, 5):
        search.accept(np.log(np.full((frames, 4), 0.25, dtype=np.float32)))
    assert search.num_frames == 8


def reference_beam_search(
    log_probs: np.ndarray, beam: int, bonus=None
) -> list[tuple[tuple[int, ...], float, tuple[int, ...]]]:
    """Textbook prefix beam search (blank 0, no pruning): every candidate of
    every frame in a dict, then the ``beam`` best possible ones kept. Returns
    ``(tokens, score, frames)`` best first.

    ``bonus(prefix) -> (kept, at_risk)`` (hotwords): the beam ranks by log
    probability + kept + at_risk, the result by log probability + kept."""
    bonus = bonus or (lambda prefix: (0.0, 0.0))
    lp = log_probs.astype(np.float64)
    beams = {(): (0.0, -math.inf, ())}  # prefix -> (blank-ending, token-ending, frames)
    for t, row in enumerate(lp):
        nxt: dict[tuple[int, ...], list] = defaultdict(lambda: [-math.inf, -math.inf, None])
        for prefix, (pb, pnb, frames) in beams.items():
            total = np.logaddexp(pb, pnb)
            stay = nxt[prefix]
            stay[0] = np.logaddexp(stay[0], total + row[0])
            if prefix:
                stay[1] = np.logaddexp(stay[1], pnb + row[prefix[-1]])
            stay[2] = frames
            for c in range(1, len(row)):
                grown = nxt[prefix + (c,)]
                source = pb if prefix and prefix[-1] == c else total
                grown[1] = np.logaddexp(grown[1], source + row[c])
                if grown[2] is None:
                    grown[2] = frames + (t,)
        for prefix, entry in nxt.items():  # a merged growth keeps the surviving prefix's frames
            if prefix in beams:
                entry[2] = beams[prefix][2]
        possible = [kv for kv in nxt.items() if np.logaddexp(kv[1][0], kv[1][1]) > -math.inf]
        ranked = sorted(possible, key=lambda kv: -(np.logaddexp(kv[1][0], kv[1][1]) + sum(bonus(kv[0]))))[:beam]
        beams = {p: (e[0], e[1], e[2]) for p, e in ranked}
    found = [(p, float(np.logaddexp(pb, pnb)) + bonus(p)[0], f) for p, (pb, pnb, f) in beams.items()]
    return sorted(found, key=lambda item: -item[1])


@settings(max_examples=40, deadline=None)
@given(peaky_cases(max_frames=25, max_vocab=12), st.integers(1, 6))
def test_narrow_beam_matches_a_textbook_search(log_probs, beam):
    """The compiled search scans only a frame's best tokens and stops early;
    with no ties (random inputs) it must keep exactly what a search of every
    candidate keeps."""
    search = PrefixBeamSearch(beam)
    search.accept(log_probs)
    got = search.nbest(beam)
    expected = reference_beam_search(log_probs, beam)
    assert [h.tokens for h in got] == [tokens for tokens, _, _ in expected]
    assert [h.frames for h in got] == [frames for _, _, frames in expected]
    assert [h.score for h in got] == pytest.approx([score for _, score, _ in expected], abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(peaky_cases(), st.integers(1, 8))
def test_float32_and_float64_input_agree(log_probs, beam):
    single, double = PrefixBeamSearch(beam), PrefixBeamSearch(beam)
    single.accept(log_probs)
    double.accept(log_probs.astype(np.float64))
    assert single.nbest(beam) == double.nbest(beam)


def reachable_nodes(hypotheses: list[Hypothesis]) -> int:
    """Nodes of the tree of (token, frame) paths that spells these hypotheses,
    root included: what a search must keep to read them back."""
    paths = sorted(tuple(zip(h.tokens, h.frames)) for h in hypotheses)
    count = 1 + len(paths[0])
    for a, b in itertools.pairwise(paths):
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        count += len(b) - common
    return count


def test_memory_stays_proportional_to_the_hypotheses_on_an_hour_long_stream():
    """90k frames (an hour at 40 ms) create several times as many prefixes as
    survive; unreachable ones must be dropped along the way. The bound:
    compaction runs when the tree has doubled (at least 4096 nodes), and a
    frame adds at most ``beam`` nodes."""
    beam, frames = 10, 90_000
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(frames, 20)).astype(np.float32)
    speaking = rng.random(frames) < 0.1
    logits[np.arange(frames), np.where(speaking, rng.integers(1, 20, size=frames), 0)] += 3.0
    search = PrefixBeamSearch(beam)
    for block in np.array_split(log_softmax(logits).astype(np.float32), 90):
        search.accept(block)
    hypotheses = search.nbest(beam)
    assert len(hypotheses[0].tokens) > 1000  # a long transcript: memory must grow with it
    live = reachable_nodes(hypotheses)
    assert search._core.num_nodes <= 3 * live + 4096 + beam


def test_the_search_runs_while_other_threads_hold_the_interpreter():
    """The per-frame loop releases the GIL: a Python thread keeps running
    while another thread decodes a long block."""
    import threading
    import time

    log_probs = log_softmax(np.random.default_rng(5).normal(size=(3000, 500))).astype(np.float32)
    search = PrefixBeamSearch(200)
    start = time.perf_counter()
    search.accept(log_probs[:300])
    per_frame = (time.perf_counter() - start) / 300

    ticks = []
    worker = threading.Thread(target=search.accept, args=(log_probs,))
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    duration = per_frame * len(log_probs)
    assert duration > 0.2  # long enough for a held GIL to show
    assert max(b - a for a, b in itertools.pairwise(ticks)) < duration / 3


def test_the_vocabulary_width_is_fixed_by_the_first_frames():
    """Rows narrower than the first block's would be read past their end (the
    beam's last tokens index them): a width change is refused, wider too."""
    search = PrefixBeamSearch(4)
    search.accept(log_softmax(np.random.default_rng(1).normal(size=(6, 50))).astype(np.float32))
    for width in (3, 51):
        with pytest.raises(ValueError, match="50"):
            search.accept(np.log(np.full((2, width), 1 / width, dtype=np.float32)))
    search.accept(np.zeros((0, 50), dtype=np.float32))
    search.accept(np.log(np.full((2, 50), 1 / 50, dtype=np.float32)))  # still usable
    assert search.num_frames == 8


def test_prefix_rows_are_bounds_checked():
    search = PrefixBeamSearch(4)
    search.accept(np.log(np.full((3, 5), 0.2, dtype=np.float32)))
    rows = len(search._core.scores())
    assert search._core.prefix(rows - 1)  # the last row is readable
    for row in (rows, -1, 10**9):
        with pytest.raises(IndexError):
            search._core.prefix(row)


def test_beam_width_is_bounded():
    """A beam past MAX_BEAM is refused before anything is allocated; the
    compiled core refuses it too (its ``2 * beam`` once overflowed a C int)."""
    from trio_asr._ctc import PrefixBeamCore
    from trio_asr.recognition.search import MAX_BEAM

    assert 5000 <= MAX_BEAM <= 100_000
    PrefixBeamSearch(MAX_BEAM)
    with pytest.raises(ValueError, match="beam"):
        PrefixBeamSearch(MAX_BEAM + 1)
    for beam in (2**30 + 1, 2**31 - 1, 0, -1):
        with pytest.raises(ValueError, match="beam"):
            PrefixBeamCore(beam, 0, 0, False, 0.0)
