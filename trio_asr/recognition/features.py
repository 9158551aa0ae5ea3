"""Streaming Kaldi-compatible log-mel filterbank features.

``StreamingFbank`` turns audio, fed in chunks of any size, into log-mel
frames identical to what Kaldi's ``compute-fbank-feats`` (and
kaldi-native-fbank's ``OnlineFbank``) produce for the whole signal: the
chunking never changes the result.  The per-frame work is done by the compiled
``trio_asr._fbank`` module; this module validates options, precomputes the
window and the mel filters, and reads global CMVN statistics.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Iterator
from os import PathLike
from typing import TypeVar, cast

import attrs
import numpy as np
import numpy.typing as npt

from trio_asr._fbank import FbankCore
from trio_asr.bounds import at_least, positive

__all__ = ["FbankOptions", "GlobalCmvn", "StreamingFbank", "load_global_cmvn"]

WINDOW_TYPES = ("povey", "hamming", "hanning", "hann", "rectangular", "blackman")

_F32Array = npt.NDArray[np.float32]
_MelArg = TypeVar("_MelArg", np.float32, _F32Array)
# A mel filter: (first FFT bin, weights); an empty one's weights are its (no) bins' indices.
_Triangle = tuple[int, _F32Array | npt.NDArray[np.intp]]


def _kaldi_samples(sample_rate: float, ms: float) -> int:
    # Kaldi computes this in single precision and truncates; copy that exactly
    # so that e.g. 16 kHz * 25 ms gives 400, not 399.
    f32 = np.float32
    return int(f32(sample_rate) * f32(0.001) * f32(ms))


@attrs.frozen
class FbankOptions:
    """Feature options with Kaldi's names, semantics and (fbank) defaults.

    ``high_freq <= 0`` means ``nyquist + high_freq``.  ``dither`` is the
    standard deviation of the Gaussian noise added to every sample (int16
    scale); ``dither_seed`` makes it reproducible (``None``: random seed).
    ``energy_floor`` only matters with ``use_energy``, which prepends Kaldi's
    raw log-energy as column 0.  ``window_type="hanning"`` is Kaldi's
    symmetric Hann window, ``"hann"`` the periodic one of kaldi-native-fbank
    and torch.  ``is_librosa`` swaps Kaldi's mel filters for librosa's
    (Slaney mel scale and area normalisation, as NeMo uses; the name is
    kaldi-native-fbank's).  Invalid combinations raise ``ValueError`` on
    construction.
    """

    sample_rate: int = attrs.field(default=16000, validator=positive)
    frame_length_ms: float = attrs.field(default=25.0, validator=positive)
    frame_shift_ms: float = attrs.field(default=10.0, validator=positive)
    num_bins: int = attrs.field(default=80)
    window_type: str = attrs.field(default="povey", validator=attrs.validators.in_(WINDOW_TYPES))
    preemph_coeff: float = attrs.field(default=0.97)
    remove_dc_offset: bool = True
    dither: float = attrs.field(default=0.0, validator=at_least(0))
    dither_seed: int | None = None
    snip_edges: bool = True
    low_freq: float = attrs.field(default=20.0, validator=at_least(0))
    high_freq: float = -400.0
    energy_floor: float = attrs.field(default=0.0, validator=at_least(0))
    use_energy: bool = False
    use_power: bool = True
    round_to_power_of_two: bool = True
    blackman_coeff: float = 0.42
    is_librosa: bool = False

    @num_bins.validator
    def _check_num_bins(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not value >= 3:
            raise ValueError(f"num_bins must be >= 3, got {value!r}")

    @preemph_coeff.validator
    def _check_preemph(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"preemph_coeff must be in [0, 1], got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.window_size < 2:
            raise ValueError(f"frame of {self.frame_length_ms} ms is under 2 samples")
        if self.window_shift < 1:
            raise ValueError(f"frame shift of {self.frame_shift_ms} ms is under 1 sample")
        if self.window_shift > self.window_size:
            raise ValueError("frame_shift_ms must not exceed frame_length_ms")
        padded = self.padded_window_size
        if padded & (padded - 1):
            raise ValueError(
                f"FFT size {padded} is not a power of two; use round_to_power_of_two=True"
            )
        nyquist = 0.5 * self.sample_rate
        high = self.resolved_high_freq
        if not self.low_freq < nyquist or not 0.0 < high <= nyquist or not high > self.low_freq:
            raise ValueError(
                f"bad frequency range: low_freq {self.low_freq}, high_freq {high} "
                f"(resolved), nyquist {nyquist}"
            )

    @property
    def window_size(self) -> int:
        """Frame length in samples."""
        return _kaldi_samples(self.sample_rate, self.frame_length_ms)

    @property
    def window_shift(self) -> int:
        """Frame shift in samples."""
        return _kaldi_samples(self.sample_rate, self.frame_shift_ms)

    @property
    def padded_window_size(self) -> int:
        """FFT size."""
        n = self.window_size
        return 1 << (n - 1).bit_length() if self.round_to_power_of_two else n

    @property
    def resolved_high_freq(self) -> float:
        """Upper edge of the mel filters in Hz."""
        return self.high_freq if self.high_freq > 0 else 0.5 * self.sample_rate + self.high_freq

    @property
    def feature_dim(self) -> int:
        """Columns per output frame."""
        return self.num_bins + (1 if self.use_energy else 0)


@functools.lru_cache(maxsize=16)
def _window(options: FbankOptions) -> npt.NDArray[np.float64]:
    n = options.window_size
    i = np.arange(n, dtype=np.float64)
    kind = options.window_type
    a = 2.0 * math.pi / (n if kind == "hann" else n - 1)
    if kind == "povey":
        w = (0.5 - 0.5 * np.cos(a * i)) ** 0.85
    elif kind == "hamming":
        w = 0.54 - 0.46 * np.cos(a * i)
    elif kind in ("hanning", "hann"):
        w = 0.5 - 0.5 * np.cos(a * i)
    elif kind == "rectangular":
        w = np.ones(n)
    else:
        c = options.blackman_coeff
        w = c - 0.5 * np.cos(a * i) + (0.5 - c) * np.cos(2.0 * a * i)
    # Kaldi keeps the window in single precision.
    return w.astype(np.float32).astype(np.float64)


@functools.lru_cache(maxsize=16)  # streams of one model share their filters
def _mel_filters(options: FbankOptions) -> tuple[npt.NDArray[np.intc], npt.NDArray[np.intc], npt.NDArray[np.float64]]:
    """The mel filters as (start bin, length, concatenated weights).

    Kaldi's triangles cover FFT bins 0 .. n/2 - 1, librosa's 0 .. n/2 (the
    Nyquist bin included).  Computed in single precision like Kaldi and
    kaldi-native-fbank, so bin edges agree exactly.
    """
    triangles = _librosa_triangles if options.is_librosa else _kaldi_triangles
    starts, lengths, weights = [], [], []
    for b, (first, w) in enumerate(triangles(options)):
        if w.size == 0:
            raise ValueError(f"num_bins={options.num_bins} is too large: mel bin {b} is empty")
        starts.append(first)
        lengths.append(w.size)
        weights.append(w.astype(np.float32))
    return (
        np.asarray(starts, dtype=np.intc),
        np.asarray(lengths, dtype=np.intc),
        np.concatenate(weights).astype(np.float64),
    )


def _triangle(x: _F32Array, left: np.float32, center: np.float32, right: np.float32) -> _Triangle:
    """(first index, weights) of the triangle on the points ``x`` strictly inside."""
    (inside,) = np.nonzero((x > left) & (x < right))
    if inside.size == 0:
        return 0, inside
    x = x[inside[0] : inside[-1] + 1]
    w = np.where(x <= center, (x - left) / (center - left), (right - x) / (right - center))
    return int(inside[0]), w


def _kaldi_triangles(options: FbankOptions) -> Iterator[_Triangle]:
    f32 = np.float32

    def mel(freq: _MelArg) -> _MelArg:
        return cast(_MelArg, f32(1127.0) * np.log(f32(1.0) + np.asarray(freq, f32) / f32(700.0)))

    bin_width = f32(options.sample_rate) / f32(options.padded_window_size)
    fft_mel: _F32Array = mel(bin_width * np.arange(options.padded_window_size // 2, dtype=f32))
    mel_low = mel(f32(options.low_freq))
    delta = (mel(f32(options.resolved_high_freq)) - mel_low) / f32(options.num_bins + 1)
    for b in range(options.num_bins):
        edges = [mel_low + f32(b + i) * delta for i in range(3)]
        yield _triangle(fft_mel, *edges)


def _slaney_mel(hz: np.float32) -> np.float32:
    f32 = np.float32
    if hz <= 1000:
        return cast(np.float32, hz * f32(3) / f32(200))
    return cast(np.float32, f32(15) + f32(27 / math.log(6.4)) * np.log(hz / f32(1000)))


def _slaney_hz(mel: np.float32) -> np.float32:
    f32 = np.float32
    if mel <= 15:
        return cast(np.float32, f32(200) / f32(3) * mel)
    return cast(np.float32, f32(1000) * np.exp((mel - f32(15)) * f32(math.log(6.4) / 27)))


def _librosa_triangles(options: FbankOptions) -> Iterator[_Triangle]:
    f32 = np.float32
    bin_width = f32(options.sample_rate) / f32(options.padded_window_size)
    fft_hz = bin_width * np.arange(options.padded_window_size // 2 + 1, dtype=f32)
    mel_low = _slaney_mel(f32(options.low_freq))
    delta = (_slaney_mel(f32(options.resolved_high_freq)) - mel_low) / f32(options.num_bins + 1)
    for b in range(options.num_bins):
        left, center, right = (_slaney_hz(mel_low + f32(b + i) * delta) for i in range(3))
        first, w = _triangle(fft_hz, left, center, right)
        # Slaney normalisation: every triangle has unit area.
        yield first, w * (f32(2) / (right - left))


def _vector(value: npt.ArrayLike) -> npt.NDArray[np.float64]:
    v = np.array(value, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("CMVN vectors must be non-empty, 1-D and finite")
    v.setflags(write=False)
    return v


@attrs.frozen(eq=False)
class GlobalCmvn:
    """Global mean/variance normalisation: ``(x - mean) * inv_std`` per column."""

    mean: npt.NDArray[np.float64] = attrs.field(converter=_vector)
    inv_std: npt.NDArray[np.float64] = attrs.field(converter=_vector)

    def __attrs_post_init__(self) -> None:
        if self.mean.shape != self.inv_std.shape:
            raise ValueError(
                f"CMVN mean has {self.mean.size} values but inv_std has {self.inv_std.size}"
            )

    @property
    def dim(self) -> int:
        return self.mean.size

    @classmethod
    def from_stats(cls, stats: np.ndarray, var_floor: float = 1e-20) -> GlobalCmvn:
        """From Kaldi CMVN stats ``[[sum..., count], [sum_sq..., 0]]``."""
        stats = np.asarray(stats, dtype=np.float64)
        if stats.ndim != 2 or stats.shape[0] != 2 or stats.shape[1] < 2:
            raise ValueError(f"CMVN stats must be a 2 x (dim+1) matrix, got {stats.shape}")
        count = stats[0, -1]
        if not count >= 1.0:
            raise ValueError(f"CMVN stats count must be >= 1, got {count}")
        mean = stats[0, :-1] / count
        var = np.maximum(stats[1, :-1] / count - mean * mean, var_floor)
        return cls(mean=mean, inv_std=1.0 / np.sqrt(var))


def _parse_kaldi_text_matrix(text: str) -> np.ndarray:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValueError("not a Kaldi text matrix (expected '[ ... ]')")
    rows = [r.split() for r in body[1:-1].strip().splitlines() if r.strip()]
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError("Kaldi text matrix has ragged rows")
    return np.array(rows, dtype=np.float64)


def _parse_kaldi_binary_matrix(data: bytes) -> np.ndarray:
    # "\0B" then "FM " / "DM ", then <4><int32 rows> <4><int32 cols>, then data.
    kinds = {b"FM ": "<f4", b"DM ": "<f8"}
    if data[2:5] not in kinds or len(data) < 15 or data[5] != 4 or data[10] != 4:
        raise ValueError("not a Kaldi binary float/double matrix")
    rows = int.from_bytes(data[6:10], "little", signed=True)
    cols = int.from_bytes(data[11:15], "little", signed=True)
    dtype = np.dtype(kinds[data[2:5]])
    if rows < 0 or cols < 0 or len(data) < 15 + rows * cols * dtype.itemsize:
        raise ValueError("truncated Kaldi binary matrix")
    return np.frombuffer(data, dtype=dtype, count=rows * cols, offset=15).reshape(rows, cols)


def load_global_cmvn(path: str | PathLike[str]) -> GlobalCmvn:
    """Read global CMVN from a file.

    Accepted formats:

    * Kaldi CMVN stats as written by ``compute-cmvn-stats`` (text ``[ ... ]``
      or binary), i.e. ``[[sum..., count], [sum_sq..., 0]]``;
    * ``.npz`` with arrays ``mean`` and ``inv_std``.

    Raises ``ValueError`` for anything else.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"PK\x03\x04":
        with np.load(path) as npz:
            if "mean" not in npz or "inv_std" not in npz:
                raise ValueError(f"{path}: .npz CMVN needs arrays 'mean' and 'inv_std'")
            return GlobalCmvn(mean=npz["mean"], inv_std=npz["inv_std"])
    if data[:2] == b"\0B":
        return GlobalCmvn.from_stats(_parse_kaldi_binary_matrix(data))
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: unrecognised CMVN file") from None
    return GlobalCmvn.from_stats(_parse_kaldi_text_matrix(text))


class StreamingFbank:
    """Log-mel frames from audio fed in chunks of any size.

    ``accept_waveform`` takes 1-D int16 samples (used as they are) or float
    samples in [-1, 1] (scaled by 32768, the Kaldi/sherpa convention) and
    returns every frame completed so far as float32 ``(n, feature_dim)``;
    samples that do not yet complete a frame are kept for the next call.
    ``flush`` ends the input and returns the remaining frames (with
    ``snip_edges=False`` the last frames reflect the signal's end, so they
    only come out here).  Feeding a signal in pieces gives exactly the frames
    of feeding it whole.
    """

    def __init__(self, options: FbankOptions = FbankOptions(), cmvn: GlobalCmvn | None = None):
        if cmvn is not None and cmvn.dim != options.feature_dim:
            raise ValueError(
                f"CMVN has dimension {cmvn.dim}, features have {options.feature_dim}"
            )
        self.options = options
        self.cmvn = cmvn
        starts, lengths, weights = _mel_filters(options)
        seed = options.dither_seed if options.dither_seed is not None else secrets.randbits(64)
        self._core = FbankCore(  # compiled, without stubs: the casts below give its types
            options.window_size,
            options.window_shift,
            options.padded_window_size,
            options.snip_edges,
            _window(options),
            options.preemph_coeff,
            options.remove_dc_offset,
            options.dither,
            seed & 0xFFFF_FFFF_FFFF_FFFF,
            starts,
            lengths,
            weights,
            options.use_power,
            options.use_energy,
            math.log(options.energy_floor) if options.energy_floor > 0 else -math.inf,
            None if cmvn is None else cmvn.mean,
            None if cmvn is None else cmvn.inv_std,
        )

    @property
    def feature_dim(self) -> int:
        return self.options.feature_dim

    @property
    def num_frames_emitted(self) -> int:
        """Frames returned so far by ``accept_waveform`` and ``flush``."""
        return cast(int, self._core.num_frames_emitted)

    @property
    def finished(self) -> bool:
        """True once ``flush`` was called; no more input is accepted."""
        return cast(bool, self._core.finished)

    def accept_waveform(self, samples: np.ndarray) -> _F32Array:
        samples = np.asarray(samples)
        if samples.ndim != 1:
            raise ValueError(f"expected 1-D samples, got shape {samples.shape}")
        if samples.dtype == np.int16:
            return cast("_F32Array", self._core.accept_int16(np.ascontiguousarray(samples)))
        if samples.dtype.kind == "f":
            return cast("_F32Array", self._core.accept_float32(np.ascontiguousarray(samples, dtype=np.float32)))
        raise TypeError(f"expected int16 or float samples, got {samples.dtype}")

    def flush(self) -> _F32Array:
        return cast("_F32Array", self._core.flush())
