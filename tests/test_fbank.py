"""StreamingFbank: Kaldi compatibility (against kaldi-native-fbank), chunking
invariance, CMVN and option validation."""

import wave
from pathlib import Path

import attrs
import kaldi_native_fbank as knf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paths import SPEECH_FILES
from trio_asr._fbank import FbankCore
from trio_asr.recognition.features import (
    FbankOptions,
    GlobalCmvn,
    StreamingFbank,
    _mel_filters,
    load_global_cmvn,
)

KNF_TOL = 1e-3
# What sherpa-onnx feeds NeMo models: librosa mel filters over 0 Hz .. Nyquist,
# applied to samples in [-1, 1] (NEMO_AMPLITUDE times the int16 scale).
NEMO = FbankOptions(
    window_type="hann", remove_dc_offset=False, snip_edges=False,
    low_freq=0.0, high_freq=0.0, is_librosa=True,
)
NEMO_AMPLITUDE = 2.0**-15

OPTION_SETS = {
    "default": FbankOptions(),
    "40-bins-hamming-band": FbankOptions(
        num_bins=40, window_type="hamming", low_freq=60.0, high_freq=7000.0
    ),
    "hann-highcut": FbankOptions(window_type="hann", high_freq=-200.0),
    "hanning-nyquist": FbankOptions(window_type="hanning", num_bins=64, low_freq=0.0, high_freq=0.0),
    "rectangular-no-dc-no-preemph": FbankOptions(
        window_type="rectangular", remove_dc_offset=False, preemph_coeff=0.0
    ),
    "blackman-23": FbankOptions(window_type="blackman", num_bins=23),
    "energy-magnitude": FbankOptions(use_energy=True, energy_floor=1.0, use_power=False),
    "32ms-unpadded": FbankOptions(frame_length_ms=32.0, round_to_power_of_two=False),
    "librosa-band": FbankOptions(is_librosa=True, num_bins=40, low_freq=60.0, high_freq=7000.0),
    "librosa-nyquist": FbankOptions(is_librosa=True, low_freq=0.0, high_freq=0.0),
}


def read_wav_int16(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getsampwidth(), w.getnchannels(), w.getframerate()) == (2, 1, 16000)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def speech_like(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """Deterministic voiced/unvoiced/silent segments at speech-like levels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    pitch = 120 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = np.abs(np.sin(2 * np.pi * 2 * t))
    x = 4000 * envelope * voiced + 300 * rng.standard_normal(t.size) * (envelope < 0.3)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def knf_options(o: FbankOptions) -> knf.FbankOptions:
    k = knf.FbankOptions()
    fo = k.frame_opts
    fo.samp_freq = o.sample_rate
    fo.frame_length_ms = o.frame_length_ms
    fo.frame_shift_ms = o.frame_shift_ms
    fo.dither = o.dither
    fo.preemph_coeff = o.preemph_coeff
    fo.remove_dc_offset = o.remove_dc_offset
    fo.window_type = o.window_type
    fo.round_to_power_of_two = o.round_to_power_of_two
    fo.blackman_coeff = o.blackman_coeff
    fo.snip_edges = o.snip_edges
    k.mel_opts.num_bins = o.num_bins
    k.mel_opts.low_freq = o.low_freq
    k.mel_opts.high_freq = o.high_freq
    k.mel_opts.is_librosa = o.is_librosa
    k.use_energy = o.use_energy
    k.energy_floor = o.energy_floor
    k.use_power = o.use_power
    return k


def knf_frames(x: np.ndarray, o: FbankOptions) -> np.ndarray:
    fb = knf.OnlineFbank(knf_options(o))
    fb.accept_waveform(o.sample_rate, x.astype(np.float32))
    fb.input_finished()
    return np.array(
        [fb.get_frame(i) for i in range(fb.num_frames_ready)], dtype=np.float32
    ).reshape(-1, o.feature_dim)


def ours(x: np.ndarray, o: FbankOptions, chunks=None, cmvn=None) -> np.ndarray:
    """All frames, feeding ``x`` split at the given chunk sizes (whole if None)."""
    fb = StreamingFbank(o, cmvn)
    out, pos = [], 0
    for size in chunks if chunks is not None else [x.size]:
        out.append(fb.accept_waveform(x[pos : pos + size]))
        pos += size
    out.append(fb.accept_waveform(x[pos:]))
    out.append(fb.flush())
    frames = np.concatenate(out)
    assert frames.dtype == np.float32 and frames.shape[1] == o.feature_dim
    assert fb.num_frames_emitted == len(frames)
    return frames


def reference_frames(x: np.ndarray, o: FbankOptions) -> np.ndarray:
    """Straightforward float64 numpy version of Kaldi's fbank (whole signal),
    with librosa's mel filters when ``o.is_librosa``."""
    n, shift, nfft = o.window_size, o.window_shift, o.padded_window_size
    x = x.astype(np.float64)
    if o.snip_edges:
        count = 0 if x.size < n else 1 + (x.size - n) // shift
        starts = np.arange(count) * shift
    else:
        count = (x.size + shift // 2) // shift
        starts = np.arange(count) * shift + shift // 2 - n // 2
    idx = starts[:, None] + np.arange(n)[None, :]
    while np.any((idx < 0) | (idx >= x.size)):
        idx = np.where(idx < 0, -idx - 1, idx)
        idx = np.where(idx >= x.size, 2 * x.size - 1 - idx, idx)
    frames = x[idx] if count else np.zeros((0, n))
    if o.remove_dc_offset:
        frames = frames - frames.mean(axis=1, keepdims=True)
    log_energy = np.log(np.maximum((frames**2).sum(axis=1), np.finfo(np.float32).eps))
    if o.energy_floor > 0:
        log_energy = np.maximum(log_energy, np.log(o.energy_floor))
    frames = np.concatenate(
        [frames[:, :1] * (1 - o.preemph_coeff), frames[:, 1:] - o.preemph_coeff * frames[:, :-1]],
        axis=1,
    )
    i = np.arange(n)
    a = 2 * np.pi / (n if o.window_type == "hann" else n - 1)
    window = {
        "povey": (0.5 - 0.5 * np.cos(a * i)) ** 0.85,
        "hamming": 0.54 - 0.46 * np.cos(a * i),
        "hanning": 0.5 - 0.5 * np.cos(a * i),
        "hann": 0.5 - 0.5 * np.cos(a * i),
        "rectangular": np.ones(n),
        "blackman": o.blackman_coeff - 0.5 * np.cos(a * i) + (0.5 - o.blackman_coeff) * np.cos(2 * a * i),
    }[o.window_type].astype(np.float32)  # Kaldi keeps the window in single precision
    spectrum = np.abs(np.fft.rfft(frames * window, nfft, axis=1))
    if o.use_power:
        spectrum = spectrum**2
    if o.is_librosa:
        weights = librosa_weights(o)
    else:
        spectrum = spectrum[:, : nfft // 2]
        weights = kaldi_weights(o)
    fbank = np.log(np.maximum(spectrum @ weights.T.astype(np.float64), np.finfo(np.float32).eps))
    if o.use_energy:
        fbank = np.concatenate([log_energy[:, None], fbank], axis=1)
    return fbank


def kaldi_weights(o: FbankOptions) -> np.ndarray:
    """Kaldi's triangular filters, computed in single precision as Kaldi does."""
    nfft = o.padded_window_size
    f32 = np.float32
    mel = lambda f: f32(1127) * np.log(f32(1) + np.asarray(f, f32) / f32(700))  # noqa: E731
    fft_mel = mel(f32(o.sample_rate) / f32(nfft) * np.arange(nfft // 2, dtype=f32))
    lo, hi = mel(o.low_freq), mel(o.resolved_high_freq)
    delta = (hi - lo) / f32(o.num_bins + 1)
    b = np.arange(o.num_bins, dtype=f32)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    return np.where((fft_mel > left) & (fft_mel < right), np.where(fft_mel <= center, up, down), 0)


def librosa_weights(o: FbankOptions) -> np.ndarray:
    """librosa.filters.mel(htk=False, norm="slaney") in float64: Slaney mel
    scale, triangles in Hz over FFT bins 0 .. n/2, each of unit area."""

    def to_mel(hz):
        hz = np.asarray(hz, np.float64)
        log_part = 15 + 27 * np.log(np.maximum(hz, 1e-9) / 1000) / np.log(6.4)
        return np.where(hz <= 1000, 3 * hz / 200, log_part)

    def to_hz(mel):
        return np.where(mel <= 15, 200 * mel / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))

    nfft = o.padded_window_size
    fft_hz = np.arange(nfft // 2 + 1) * o.sample_rate / nfft
    edges = to_hz(np.linspace(to_mel(o.low_freq), to_mel(o.resolved_high_freq), o.num_bins + 2))
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - left) / (center - left)
    falling = (right - fft_hz) / (right - center)
    return np.maximum(0, np.minimum(rising, falling)) * 2 / (right - left)


def assert_matches_knf(x: np.ndarray, o: FbankOptions, amplitude: float = 1.0) -> None:
    """Within KNF_TOL of kaldi-native-fbank, except where knf's own single
    precision FFT is off from the exact (float64) value by more than that,
    which must be rare (under 0.1% of the values).

    ``x`` (int16) is scaled by ``amplitude`` (a power of two, so exactly) for
    knf and the reference; ours gets the same samples as floats in
    ``[-1, 1]`` scale, or ``x`` itself when ``amplitude == 1``.
    """
    samples = x.astype(np.float32) * np.float32(amplitude)
    expected = knf_frames(samples, o)
    exact = reference_frames(samples, o)
    got = ours(x if amplitude == 1 else samples / np.float32(32768), o)
    assert got.shape == expected.shape == exact.shape
    if not got.size:
        return
    # The reference's librosa filters are float64, ours (like knf's) float32,
    # which costs a little at the triangles' small-weight ends.
    assert np.abs(got - exact).max() <= (2e-4 if o.is_librosa else 1e-4)
    knf_error = np.abs(expected - exact)
    diff = np.abs(got - expected)
    assert diff[knf_error <= KNF_TOL].max(initial=0.0) <= KNF_TOL
    assert np.count_nonzero(knf_error > KNF_TOL) <= max(1, diff.size // 1000)


@pytest.fixture(params=[True, False], ids=["snip", "nosnip"])
def snip_edges(request):
    return request.param


# ---- compatibility with kaldi-native-fbank -----------------------------------


@pytest.mark.parametrize("name", OPTION_SETS)
def test_matches_knf_on_real_speech(name, snip_edges):
    o = attrs.evolve(OPTION_SETS[name], snip_edges=snip_edges)
    for path in SPEECH_FILES:
        assert_matches_knf(read_wav_int16(path), o)


def test_nemo_options_match_knf_on_real_speech(snip_edges):
    o = attrs.evolve(NEMO, snip_edges=snip_edges)
    for path in SPEECH_FILES:
        assert_matches_knf(read_wav_int16(path), o, amplitude=NEMO_AMPLITUDE)


def filter_matrix(o: FbankOptions) -> np.ndarray:
    """Our mel filters as a dense (num_bins, n/2 + 1) matrix."""
    starts, lengths, weights = _mel_filters(o)
    matrix = np.zeros((o.num_bins, o.padded_window_size // 2 + 1))
    ends = np.cumsum(lengths)
    for b, (start, length, end) in enumerate(zip(starts, lengths, ends)):
        matrix[b, start : start + length] = weights[end - length : end]
    return matrix


# At 8050 Hz the single-precision round trip of Nyquist through the mel scale
# lands just above it, so the last triangle reaches the Nyquist bin (in knf too).
LIBROSA_FILTER_CASES = {
    "nemo": NEMO,
    "band": OPTION_SETS["librosa-band"],
    "8k": attrs.evolve(NEMO, sample_rate=8000, num_bins=64),
    "8050-nyquist": attrs.evolve(NEMO, sample_rate=8050, num_bins=40),
}


@pytest.mark.parametrize("o", LIBROSA_FILTER_CASES.values(), ids=LIBROSA_FILTER_CASES)
def test_librosa_filters_equal_knf_matrix(o):
    k = knf_options(o)
    expected = knf.MelBanks(k.mel_opts, k.frame_opts, 1.0).get_matrix()
    got = filter_matrix(o)
    assert got.shape == expected.shape
    assert np.array_equal(got != 0, expected != 0)
    # float32 rounding differs a little (expf, operation order): compare
    # each weight relative to its filter's peak.
    peak = expected.max(axis=1, keepdims=True)
    np.testing.assert_allclose(got / peak, expected / peak, rtol=0, atol=1e-5)


def test_librosa_filters_can_reach_the_nyquist_bin():
    assert filter_matrix(LIBROSA_FILTER_CASES["8050-nyquist"])[:, -1].any()
    assert not filter_matrix(NEMO)[:, -1].any()


def test_core_computes_dc_and_nyquist_bins():
    """Filters picking single FFT bins (0, 1, n/2 - 1, n/2) give the exact power there."""
    length, shift, padded = 400, 160, 512
    half = padded // 2
    t = np.arange(16000)
    x = 3000 * np.cos(np.pi * t) + 1000 * np.sin(0.3 * t) + 500.0  # Nyquist tone, another, DC
    x = x.astype(np.int16)
    bins = np.array([0, 1, half - 1, half], dtype=np.intc)
    core = FbankCore(
        length, shift, padded, True, np.ones(length), 0.0, False, 0.0, 0,
        bins, np.ones(4, np.intc), np.ones(4), True, False, -np.inf, None, None,
    )
    got = np.concatenate([core.accept_int16(x), core.flush()])
    count = 1 + (x.size - length) // shift
    frames = x[np.arange(count)[:, None] * shift + np.arange(length)].astype(np.float64)
    power = np.abs(np.fft.rfft(frames, padded, axis=1)[:, bins]) ** 2
    np.testing.assert_allclose(got, np.log(power), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="outside"):
        FbankCore(
            length, shift, padded, True, np.ones(length), 0.0, False, 0.0, 0,
            np.array([half], np.intc), np.array([2], np.intc), np.ones(2), True, False,
            -np.inf, None, None,
        )


@pytest.mark.parametrize("name", OPTION_SETS)
def test_matches_knf_on_synthetic_speech(name, snip_edges):
    o = attrs.evolve(OPTION_SETS[name], snip_edges=snip_edges)
    assert_matches_knf(speech_like(1.3), o)


@pytest.mark.parametrize(
    "signal",
    [
        np.zeros(8000, np.int16),
        np.full(8000, 1234, np.int16),  # pure DC: zero after DC removal
        np.where(np.arange(8000) % 40 < 20, 32767, -32768).astype(np.int16),
        np.clip(speech_like(0.5) * 20.0, -32768, 32767).astype(np.int16),
    ],
    ids=["silence", "dc", "full-scale-square", "clipped-speech"],
)
def test_matches_knf_on_edge_signals(signal, snip_edges):
    assert_matches_knf(signal, FbankOptions(snip_edges=snip_edges))


@pytest.mark.parametrize("n", [0, 1, 2, 79, 80, 81, 120, 121, 239, 240, 241, 399, 400, 401, 559, 560, 561])
def test_matches_knf_on_very_short_inputs(n, snip_edges):
    assert_matches_knf(speech_like(0.05, seed=n)[:n], FbankOptions(snip_edges=snip_edges))


def test_frames_become_ready_when_knf_says_so(snip_edges):
    o = FbankOptions(snip_edges=snip_edges)
    x = speech_like(0.7)
    fb, ref = StreamingFbank(o), knf.OnlineFbank(knf_options(o))
    rng = np.random.default_rng(1)
    pos = 0
    while pos < x.size:
        size = int(rng.integers(1, 700))
        chunk = x[pos : pos + size]
        pos += size
        got = fb.accept_waveform(chunk)
        before = ref.num_frames_ready
        ref.accept_waveform(16000, chunk.astype(np.float32))
        assert len(got) == ref.num_frames_ready - before
        assert fb.num_frames_emitted == ref.num_frames_ready
    before = ref.num_frames_ready
    ref.input_finished()
    assert len(fb.flush()) == ref.num_frames_ready - before


def test_dither_statistics_match_knf():
    o = FbankOptions(dither=1.0, dither_seed=7)
    silence = np.zeros(16000 * 10, np.int16)
    ours_mean = ours(silence, o).mean(axis=0)
    knf_mean = knf_frames(silence, o).mean(axis=0)
    assert np.abs(ours_mean - knf_mean).max() < 0.25
    assert abs(ours_mean.mean() - knf_mean.mean()) < 0.03
    assert np.abs(ours_mean - knf_frames(silence, attrs.evolve(o, dither=0.0)).mean(0)).min() > 5


# ---- streaming: chunking never changes the frames -------------------------------


def test_one_sample_chunks_equal_whole(snip_edges):
    o = FbankOptions(snip_edges=snip_edges)
    x = speech_like(0.3)
    assert np.array_equal(ours(x, o, [1] * x.size), ours(x, o))


@pytest.mark.parametrize("size", [7, 159, 160, 161, 399, 401, 1360])
def test_fixed_odd_chunks_equal_whole(size, snip_edges):
    o = FbankOptions(snip_edges=snip_edges)
    x = speech_like(1.0)
    assert np.array_equal(ours(x, o, [size] * (x.size // size)), ours(x, o))


@pytest.mark.parametrize("base", [FbankOptions(), NEMO], ids=["kaldi", "nemo"])
def test_real_speech_in_random_chunks_equals_whole(base, snip_edges):
    o = attrs.evolve(base, snip_edges=snip_edges)
    rng = np.random.default_rng(2)
    for path in SPEECH_FILES:
        x = read_wav_int16(path)
        chunks = rng.integers(0, 3000, size=x.size // 1000).tolist()
        assert np.array_equal(ours(x, o, chunks), ours(x, o))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 4000),
    cuts=st.lists(st.integers(0, 4000), max_size=12),
    snip=st.booleans(),
    as_float=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_any_split_equals_whole(n, cuts, snip, as_float, seed):
    x = np.random.default_rng(seed).integers(-3000, 3000, n).astype(np.int16)
    if as_float:
        x = x.astype(np.float32) / 32768
    o = FbankOptions(snip_edges=snip, dither=0.5, dither_seed=seed)
    points = sorted(min(c, n) for c in cuts)
    chunks = np.diff([0, *points]).tolist()
    assert np.array_equal(ours(x, o, chunks), ours(x, o))


def test_float_input_is_int16_scale_divided_by_32768():
    x = speech_like(0.5)
    o = FbankOptions()
    assert np.array_equal(ours(x.astype(np.float32) / 32768, o), ours(x, o))
    assert np.array_equal(ours(x.astype(np.float64) / 32768, o), ours(x, o))


def test_dither_is_seeded():
    x = speech_like(0.3)
    o = FbankOptions(dither=1.0, dither_seed=3)
    assert np.array_equal(ours(x, o), ours(x, o))
    assert not np.array_equal(ours(x, o), ours(x, attrs.evolve(o, dither_seed=4)))
    assert not np.array_equal(ours(x, o), ours(x, attrs.evolve(o, dither=0.0)))


def test_flush_ends_the_stream():
    fb = StreamingFbank()
    fb.accept_waveform(np.zeros(1000, np.int16))
    fb.flush()
    assert fb.finished
    with pytest.raises(RuntimeError):
        fb.accept_waveform(np.zeros(10, np.int16))
    with pytest.raises(RuntimeError):
        fb.flush()


def test_rejects_bad_sample_arrays():
    fb = StreamingFbank()
    with pytest.raises(TypeError):
        fb.accept_waveform(np.zeros(10, np.int32))
    with pytest.raises(ValueError):
        fb.accept_waveform(np.zeros((10, 2), np.int16))


# ---- CMVN -------------------------------------------------------------------------


def kaldi_stats(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(np.float64)
    return np.array(
        [[*f.sum(0), len(f)], [*(f * f).sum(0), 0.0]]
    )


def write_kaldi_text(path: Path, m: np.ndarray) -> None:
    rows = ["  " + " ".join(repr(float(v)) for v in row) for row in m]
    path.write_text("[\n" + "\n".join(rows) + " ]\n")


def write_kaldi_binary(path: Path, m: np.ndarray) -> None:
    header = b"\0BDM " + b"\4" + np.int32(m.shape[0]).tobytes() + b"\4" + np.int32(m.shape[1]).tobytes()
    path.write_bytes(header + m.astype("<f8").tobytes())


@pytest.mark.parametrize("fmt", ["kaldi-text", "kaldi-binary", "npz"])
def test_global_cmvn_normalises(tmp_path, fmt):
    o = FbankOptions(num_bins=40)
    x = speech_like(2.0)
    plain = ours(x, o)
    stats = kaldi_stats(plain)
    path = tmp_path / f"cmvn.{fmt}"
    if fmt == "kaldi-text":
        write_kaldi_text(path, stats)
    elif fmt == "kaldi-binary":
        write_kaldi_binary(path, stats)
    else:
        mean = plain.astype(np.float64).mean(0)
        path = tmp_path / "cmvn.npz"
        np.savez(path, mean=mean, inv_std=1 / plain.astype(np.float64).std(0))
    cmvn = load_global_cmvn(path)
    normalised = ours(x, o, cmvn=cmvn)
    assert np.allclose(normalised, (plain - cmvn.mean) * cmvn.inv_std, atol=1e-5)
    assert np.abs(normalised.mean(0)).max() < 1e-3
    assert np.abs(normalised.std(0) - 1).max() < 1e-3


def test_cmvn_from_stats_matches_kaldi_formula():
    stats = np.array([[2.0, 4.0, 2.0], [4.0, 10.0, 0.0]])
    cmvn = GlobalCmvn.from_stats(stats)
    assert np.allclose(cmvn.mean, [1.0, 2.0])
    assert np.allclose(cmvn.inv_std, [1 / np.sqrt(2 - 1), 1 / np.sqrt(5 - 4)])


def test_cmvn_errors(tmp_path):
    with pytest.raises(ValueError):
        StreamingFbank(FbankOptions(num_bins=40), GlobalCmvn(mean=np.zeros(80), inv_std=np.ones(80)))
    with pytest.raises(ValueError):
        GlobalCmvn(mean=np.zeros(3), inv_std=np.ones(4))
    bad = tmp_path / "bad.txt"
    bad.write_text("not a matrix")
    with pytest.raises(ValueError):
        load_global_cmvn(bad)
    zero_count = tmp_path / "zero.txt"
    write_kaldi_text(zero_count, np.array([[1.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError):
        load_global_cmvn(zero_count)


# ---- option validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_bins": 0},
        {"num_bins": 2},
        {"num_bins": 200},  # more mel bins than FFT bins can fill
        {"window_type": "triangle"},
        {"frame_length_ms": 10.0, "frame_shift_ms": 25.0},
        {"frame_length_ms": 0.0},
        {"frame_shift_ms": -1.0},
        {"sample_rate": 0},
        {"low_freq": 8000.0},
        {"low_freq": 3000.0, "high_freq": 2000.0},
        {"high_freq": 9000.0},
        {"high_freq": -8000.0},
        {"dither": -1.0},
        {"preemph_coeff": 1.5},
        {"energy_floor": -1.0},
        {"round_to_power_of_two": False},  # 400-point FFT: not supported
    ],
)
def test_bad_options_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        StreamingFbank(FbankOptions(**kwargs))


def test_derived_sizes():
    o = FbankOptions()
    assert (o.window_size, o.window_shift, o.padded_window_size) == (400, 160, 512)
    assert o.resolved_high_freq == 7600.0
    assert FbankOptions(sample_rate=8000).padded_window_size == 256
