"""Tests for trio_asr.recognition.resample: exactness of streaming, filter quality, alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
from paths import SPEECH_FILES
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_asr.audio import read_wav
from trio_asr.recognition.resample import StreamingResampler, design_lowpass, resample

SPEECH = SPEECH_FILES
PAIRS = [
    (48000, 16000),
    (44100, 16000),
    (8000, 16000),
    (22050, 16000),
    (24000, 16000),
    (32000, 16000),
    (16000, 48000),
    (16000, 44100),
    (11025, 16000),
]


def _speech(max_seconds: float = 3.0) -> np.ndarray:
    x, rate = read_wav(SPEECH[0])
    assert rate == 16000
    return x[: int(max_seconds * rate), 0]


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = reference - estimate.astype(np.float64)
    return 10 * math.log10(np.sum(reference**2) / np.sum(noise**2))


def _tone(freq: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def _level_db(y: np.ndarray, rate: int) -> float:
    """RMS level of a sine relative to full-scale amplitude, edges excluded."""
    core = y[rate // 20 : -rate // 20].astype(np.float64)
    return 10 * math.log10(2 * np.mean(core**2) + 1e-30)


# -- streaming contract ---------------------------------------------------------


@given(
    pair=st.sampled_from(PAIRS),
    n=st.integers(0, 3000),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=80, deadline=None)
def test_chunked_output_equals_one_shot(pair: tuple[int, int], n: int, cuts: list[int], seed: int) -> None:
    in_rate, out_rate = pair
    x = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    whole = resample(x, in_rate, out_rate)
    assert whole.size == math.ceil(n * out_rate / in_rate)
    resampler = StreamingResampler(in_rate, out_rate)
    bounds = [0, *sorted(min(c, n) for c in cuts), n]
    pieces = [resampler.process(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    pieces.append(resampler.flush())
    assert all(p.dtype == np.float32 for p in pieces)
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-6)


def test_output_is_emitted_as_soon_as_possible() -> None:
    """Latency check: streaming holds back at most the filter's look-ahead."""
    resampler = StreamingResampler(48000, 16000)
    x = _tone(440, 48000, 1.0)
    emitted = sum(resampler.process(x[i : i + 480]).size for i in range(0, x.size, 480))
    remaining = resampler.flush().size
    assert emitted + remaining == 16000
    # The look-ahead of the 48k->16k filter is ~150 input samples = 50 outputs.
    assert remaining <= 60


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 440, 441, 1001])
def test_length_contract(in_rate: int, out_rate: int, n: int) -> None:
    y = resample(np.zeros(n, np.float32), in_rate, out_rate)
    assert y.size == math.ceil(n * out_rate / in_rate)


def test_identity_when_rates_are_equal() -> None:
    x = np.random.default_rng(1).uniform(-1, 1, 1234).astype(np.float32)
    resampler = StreamingResampler(16000, 16000)
    out = np.concatenate([resampler.process(x[:100]), resampler.process(x[100:]), resampler.flush()])
    np.testing.assert_array_equal(out, x)


def test_lifecycle_and_validation() -> None:
    resampler = StreamingResampler(8000, 16000)
    resampler.flush()
    with pytest.raises(RuntimeError):
        resampler.process(np.zeros(3, np.float32))
    with pytest.raises(RuntimeError):
        resampler.flush()
    with pytest.raises(ValueError, match="mono"):
        StreamingResampler(8000, 16000).process(np.zeros((4, 2), np.float32))
    for bad in [0, -16000, 999, 384001, 10**9]:
        with pytest.raises(ValueError):
            StreamingResampler(bad, 16000)
        with pytest.raises(ValueError):
            StreamingResampler(16000, bad)
    for wrong_type in [16000.0, "16000", True, None]:
        with pytest.raises(TypeError):
            StreamingResampler(wrong_type, 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too complex"):
        StreamingResampler(44101, 16000)


# -- against an independent implementation --------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_matches_scipy_resample_poly_with_same_filter(in_rate: int, out_rate: int) -> None:
    """scipy's polyphase convolution with our filter must give our output."""
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(2).uniform(-1, 1, in_rate // 5).astype(np.float32)
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    h = design_lowpass(up, down)
    # resample_poly scales the given window by `up` itself.
    expected = signal.resample_poly(x.astype(np.float64), up, down, window=h / up)
    np.testing.assert_allclose(resample(x, in_rate, out_rate), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16000, 48000), (16000, 44100), (16000, 22050)])
def test_close_to_scipy_default_filter_on_speech(in_rate: int, out_rate: int) -> None:
    """Upsampled speech agrees with scipy's own (different) filter design."""
    signal = pytest.importorskip("scipy.signal")
    x = _speech()
    g = math.gcd(in_rate, out_rate)
    reference = signal.resample_poly(x.astype(np.float64), out_rate // g, in_rate // g)
    assert _snr_db(reference, resample(x, in_rate, out_rate)) > 30


# -- filter quality and alignment ---------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_passband_is_flat_at_1khz(in_rate: int, out_rate: int) -> None:
    y = resample(_tone(1000, in_rate), in_rate, out_rate)
    assert abs(_level_db(y, out_rate)) < 0.1


@pytest.mark.parametrize(("in_rate", "out_rate"), [p for p in PAIRS if p[0] > p[1]])
def test_tones_above_output_nyquist_are_suppressed(in_rate: int, out_rate: int) -> None:
    nyquist = out_rate / 2
    for freq in (1.06 * nyquist, 1.5 * nyquist, 0.95 * in_rate / 2):
        y = resample(_tone(freq, in_rate), in_rate, out_rate)
        assert _level_db(y, out_rate) < -60, freq


@pytest.mark.parametrize(("in_rate", "out_rate"), [p for p in PAIRS if p[0] < p[1]])
def test_upsampling_images_are_suppressed(in_rate: int, out_rate: int) -> None:
    """A 3 kHz tone upsampled must not show images at in_rate -/+ 3 kHz."""
    y = resample(_tone(3000, in_rate), in_rate, out_rate).astype(np.float64)
    core = y[out_rate // 20 : -out_rate // 20]
    spectrum = np.abs(np.fft.rfft(core * np.hanning(core.size)))
    freqs = np.fft.rfftfreq(core.size, 1 / out_rate)
    peak = spectrum.max()
    images = spectrum[freqs > in_rate / 2 + 100]
    assert 20 * np.log10(images.max() / peak) < -60


def test_round_trip_on_speech_is_aligned_and_accurate() -> None:
    x = _speech()
    up = resample(x, 16000, 48000)
    # Output sample 3k sits at input time k: no delay, no shift.
    assert _snr_db(x, up[::3]) > 30
    back = resample(up, 48000, 16000)
    assert back.size == x.size
    assert _snr_db(x, back) > 30
    lags = np.arange(-20, 21)
    scores = [np.dot(x[100:-100], back[100 + lag : back.size - 100 + lag]) for lag in lags]
    assert lags[int(np.argmax(scores))] == 0


@pytest.mark.parametrize(("in_rate", "out_rate"), [(44100, 16000), (8000, 16000), (22050, 16000)])
def test_impulse_lands_at_its_own_time(in_rate: int, out_rate: int) -> None:
    x = np.zeros(in_rate // 10, np.float32)
    spike = in_rate // 20
    x[spike] = 1.0
    y = resample(x, in_rate, out_rate)
    assert abs(int(np.argmax(y)) - spike * out_rate / in_rate) <= 0.5 + 1e-9
