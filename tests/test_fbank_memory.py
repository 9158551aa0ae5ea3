"""FbankCore's memory: the sample buffer is given back after a large block of
samples, and calling ``__init__`` again frees what the first call allocated
and starts a fresh stream (or leaves the core unusable if it fails)."""

import math
import os
from pathlib import Path

import numpy as np
import pytest

from trio_asr._fbank import FbankCore
from trio_asr.recognition.features import FbankOptions, _mel_filters, _window

# Between calls FbankCore keeps at most this many samples allocated (or twice
# what it still holds, less than one frame, if that is more).
KEEP_BUFFER = 32768


def core_args(o: FbankOptions) -> tuple:
    """FbankCore's arguments for ``o``, as StreamingFbank passes them."""
    starts, lengths, weights = _mel_filters(o)
    return (
        o.window_size, o.window_shift, o.padded_window_size, o.snip_edges, _window(o),
        o.preemph_coeff, o.remove_dc_offset, o.dither, 0, starts, lengths, weights,
        o.use_power, o.use_energy,
        math.log(o.energy_floor) if o.energy_floor > 0 else -math.inf, None, None,
    )


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, n).astype(np.int16)


def frames_of(core: FbankCore, chunks) -> np.ndarray:
    return np.concatenate([core.accept_int16(c) for c in chunks] + [core.flush()])


@pytest.fixture(params=[True, False], ids=["snip", "nosnip"])
def options(request) -> FbankOptions:
    return FbankOptions(snip_edges=request.param)


def test_buffer_shrinks_after_a_huge_block(options):
    x = noise(16000 * 30)
    core = FbankCore(*core_args(options))
    core.accept_int16(x[:1360])
    steady = core.buffer_capacity
    assert 0 < steady <= KEEP_BUFFER
    core.accept_int16(x[1360:-1360])  # one 30 s block: its samples are consumed by the call
    assert core.buffer_capacity <= KEEP_BUFFER
    core.accept_int16(x[-1360:])
    assert core.buffer_capacity <= KEEP_BUFFER


def test_frames_are_unchanged_by_shrinking(options):
    x = noise(16000 * 10, seed=1)
    whole = frames_of(FbankCore(*core_args(options)), [x])
    small, huge = 1360, 16000 * 8
    chunks = [x[:small], x[small:huge], *np.array_split(x[huge:], 40)]
    assert np.array_equal(frames_of(FbankCore(*core_args(options)), chunks), whole)


def test_steady_streaming_does_not_reallocate(options):
    core = FbankCore(*core_args(options))
    capacities = set()
    for _ in range(200):
        core.accept_int16(noise(1360))
        capacities.add(core.buffer_capacity)
    assert len(capacities) == 1


def test_second_init_starts_a_fresh_stream(options):
    x = noise(16000, seed=2)
    core = FbankCore(*core_args(options))
    core.accept_int16(x[:5000])
    core.flush()
    core.__init__(*core_args(options))
    assert (core.num_frames_emitted, core.finished) == (0, False)
    assert np.array_equal(frames_of(core, [x]), frames_of(FbankCore(*core_args(options)), [x]))


def test_failed_init_leaves_the_core_unusable():
    o = FbankOptions()
    core = FbankCore(*core_args(o))
    core.accept_int16(noise(1000))
    bad = list(core_args(o))
    bad[9] = np.array([o.padded_window_size], np.intc)  # mel bin past the FFT bins
    with pytest.raises(ValueError, match="outside"):
        core.__init__(*bad)
    with pytest.raises(RuntimeError, match="not initialised"):
        core.accept_int16(noise(10))
    with pytest.raises(RuntimeError, match="not initialised"):
        core.flush()


def test_uninitialised_core_raises_instead_of_crashing():
    core = FbankCore.__new__(FbankCore)
    with pytest.raises(RuntimeError, match="not initialised"):
        core.accept_float32(np.zeros(10, np.float32))


def resident_bytes() -> int:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("measuring resident memory needs /proc/self/statm (Linux)")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_repeated_init_does_not_leak():
    """Each init of a 2**19-sample window touches ~13 MB of tables; re-running
    __init__ 20 times must not keep the earlier ones (which would be ~260 MB)."""
    n = 1 << 19
    args = (
        n, n // 2, n, True, np.ones(n), 0.0, False, 0.0, 0,
        np.array([1], np.intc), np.array([1], np.intc), np.ones(1),
        True, False, -np.inf, None, None,
    )
    core = FbankCore(*args)
    core.__init__(*args)
    before = resident_bytes()
    for _ in range(20):
        core.__init__(*args)
    grown = resident_bytes() - before
    assert grown < 40 * 2**20, f"resident memory grew by {grown / 2**20:.0f} MiB"
