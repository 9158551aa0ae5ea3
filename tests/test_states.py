"""Batching per-stream model states: ``csrc/states.pyx`` against ``np.concatenate``.

That it holds the interpreter lock only once per batch is measured, not
asserted here: ``benchmarks/bench_states.py``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_asr._states import concatenate_states
from trio_asr.recognition.model import ModelState


@st.composite
def state_batches(draw):
    """Streams' state tensors as a model's unstack leaves them: some
    contiguous, some slices of a batched array along their batch axis, some
    transposed, reversed or broadcast (the odd layouts are copied first);
    batch axes counted from either end."""
    count = draw(st.integers(1, 4))
    batch = draw(st.integers(1, 5))
    specs = []
    for _ in range(count):
        rank = draw(st.integers(1, 4))
        shape = draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank))
        axis = draw(st.integers(0, rank - 1))
        shape[axis] = 1
        dtype = draw(st.sampled_from([np.float32, np.int64, np.float64, np.int8, np.bool_, np.complex64]))
        specs.append((tuple(shape), axis, dtype))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    streams = []
    for _ in range(batch):
        tensors = []
        for shape, axis, dtype in specs:
            layout = draw(st.sampled_from(["fresh", "slice", "reversed", "transposed", "broadcast"]))
            if layout == "slice":  # one slot of a batch of 3, as unstack leaves it
                wide = list(shape)
                wide[axis] = 3
                full = (rng.standard_normal(wide) * 100).astype(dtype)
                index = [slice(None)] * len(shape)
                index[axis] = slice(1, 2)
                tensor = full[tuple(index)]
            elif layout == "reversed":
                tensor = np.flip((rng.standard_normal(shape) * 100).astype(dtype))  # every stride negative
            elif layout == "broadcast":  # stride 0 along every axis
                tensor = np.broadcast_to(np.asarray(rng.standard_normal() * 100).astype(dtype), shape)
            elif layout == "transposed":
                tensor = np.ascontiguousarray((rng.standard_normal(shape[::-1]) * 100).astype(dtype)).T
            else:
                tensor = (rng.standard_normal(shape) * 100).astype(dtype)
            tensors.append(tensor)
        streams.append(tuple(tensors))
    axes = tuple(axis - len(shape) if draw(st.booleans()) else axis for shape, axis, _ in specs)
    return streams, axes


@settings(max_examples=300, deadline=None)
@given(state_batches())
def test_concatenate_states_equals_numpy(case):
    streams, axes = case
    got = concatenate_states(streams, axes)
    for i, axis in enumerate(axes):
        expected = np.concatenate([s[i] for s in streams], axis=axis)
        assert got[i].dtype == expected.dtype
        assert got[i].flags.c_contiguous
        np.testing.assert_array_equal(got[i], expected)


def test_concatenate_states_rejects_mismatches():
    a = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="stream 1"):
        concatenate_states([(a,), (np.zeros((2, 1, 4), np.float32),)], (1,))
    with pytest.raises(ValueError, match="stream 1"):
        concatenate_states([(a,), (a.astype(np.float64),)], (1,))
    with pytest.raises(ValueError, match="batch axis"):
        concatenate_states([(a,), (a,)], (0,))
    with pytest.raises(ValueError, match="batch axis"):
        concatenate_states([(a,), (a,)], (3,))
    with pytest.raises(ValueError, match="expected 2"):
        concatenate_states([(a, a), (a,)], (1, 1))
    with pytest.raises(ValueError, match="no states"):
        concatenate_states([], (1,))
    with pytest.raises(ValueError, match="not plain numbers"):  # copying object pointers would corrupt refcounts
        concatenate_states([(a.astype(object),), (a.astype(object),)], (1,))
    with pytest.raises(ValueError, match="not plain numbers"):
        concatenate_states([(a.astype(">f4"),), (a.astype(">f4"),)], (1,))


def test_model_state_round_trip():
    rng = np.random.default_rng(1)
    axes = (1, 0, 2)
    states = [
        ModelState(
            (rng.standard_normal((4, 1, 5)), rng.standard_normal((1, 3)), rng.standard_normal((2, 6, 1, 2))),
            axes,
        )
        for _ in range(4)
    ]
    batched = ModelState.stack(states)
    assert [t.shape for t in batched] == [(4, 4, 5), (4, 3), (2, 6, 4, 2)]
    again = ModelState.stack(ModelState.unstack(batched, axes)[::-1])
    for mine, theirs in zip(again, ModelState.stack(states[::-1])):
        np.testing.assert_array_equal(mine, theirs)
