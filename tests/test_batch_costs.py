"""BatchCosts: the running cost per chunk, and when a batch runs as single calls."""

from __future__ import annotations

import pytest

from trio_asr.recognition.batch_costs import BatchCosts


def test_the_overall_cost_per_chunk_weighs_calls_by_their_chunks() -> None:
    costs = BatchCosts()
    assert costs.per_chunk is None
    costs.record(4, 0.008)
    assert costs.per_chunk == pytest.approx(0.002)
    costs.record(1, 0.004, split=False)
    # (0.9 * 0.008 + 0.004) / (0.9 * 4 + 1)
    assert costs.per_chunk == pytest.approx(0.0112 / 4.6)


def test_a_size_is_measured_batched_first_then_single_calls() -> None:
    costs = BatchCosts()
    assert not costs.split(3)  # nothing known: batched
    costs.record(3, 0.015)
    assert costs.split(3)  # single calls not measured yet: try them
    costs.record(3, 0.006, split=True)
    assert costs.per_chunk_at(1) == pytest.approx(0.002)
    assert costs.per_chunk_at(3) == pytest.approx(0.005)


def test_batches_that_cost_more_per_chunk_than_single_calls_run_split() -> None:
    costs = BatchCosts(remeasure_every=4)
    costs.record(1, 0.002)
    costs.record(2, 0.006)
    decisions = [costs.split(2) for _ in range(4)]
    # every fourth one runs batched, to measure again (until it is measured)
    assert decisions == [True, True, True, False] and not costs.split(2)
    costs.record(2, 0.006)
    assert [costs.split(2) for _ in range(4)] == [True, True, True, False]
    costs.record(2, 0.003)  # batches got cheaper: (0.003 + 0.0015) / 2
    assert costs.per_chunk_at(2) == pytest.approx(0.00225)
    costs.record(2, 0.002)
    assert costs.per_chunk_at(2) < 0.002
    assert not costs.split(2)


def test_batches_that_cost_less_per_chunk_stay_batched() -> None:
    costs = BatchCosts()
    costs.record(1, 0.005)
    costs.record(4, 0.008)
    assert not any(costs.split(4) for _ in range(20))


def test_single_chunks_and_untracked_sizes_never_split() -> None:
    costs = BatchCosts(max_tracked=4)
    costs.record(1, 0.001)
    costs.record(5, 0.5)
    assert costs.per_chunk_at(5) is None
    assert not costs.split(1) and not costs.split(5)


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        BatchCosts(max_tracked=0)
    with pytest.raises(ValueError):
        BatchCosts(remeasure_every=0)
