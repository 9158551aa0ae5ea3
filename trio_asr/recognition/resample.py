"""Rational-ratio polyphase resampling with a Kaiser-windowed sinc lowpass.

For rates ``in_rate`` and ``out_rate`` with ``g = gcd(in_rate, out_rate)``,
the signal is conceptually upsampled by ``L = out_rate // g`` (zero
stuffing), lowpass filtered, and downsampled by ``M = in_rate // g``.  Only
the needed filter phases are evaluated: output sample ``k`` is

    y[k] = sum_i x[i] * h[k*M + D - i*L]

where ``h`` is a linear-phase FIR of odd length ``N`` and ``D = (N - 1) / 2``
its group delay, so the output is time-aligned with the input (output
sample ``k`` sits at input time ``k * in_rate / out_rate``).  Samples before
the start and after the end of the stream are taken as zeros.

The filter's passband ends at 90 % and its stopband starts at 100 % of the
lower of the two Nyquist frequencies; stopband attenuation is designed for
80 dB.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_RATE", "MIN_RATE", "StreamingResampler", "design_lowpass", "resample"]

MIN_RATE = 1000
MAX_RATE = 384_000
_MAX_RATIO_TERM = 2048
"""Largest reduced up/down factor accepted; bounds the filter size."""

_ATTENUATION_DB = 80.0
_PASSBAND_EDGE = 0.90  # fraction of the lower Nyquist frequency
_OUTPUTS_PER_BLOCK = 4096  # bounds the temporary (outputs x taps) arrays


def _check_rate(name: str, rate: object) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(rate).__name__}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"{name} must be between {MIN_RATE} and {MAX_RATE} Hz, got {rate}")
    return int(rate)


def design_lowpass(up: int, down: int) -> npt.NDArray[np.float64]:
    """The prototype filter ``h`` for a reduced ratio ``up/down``.

    Odd length, linear phase, DC gain ``up`` (to make up for zero stuffing),
    defined at the upsampled rate.
    """
    stop = 0.5 / max(up, down)  # lower Nyquist, in cycles per upsampled sample
    width = stop * (1.0 - _PASSBAND_EDGE)
    cutoff = stop - width / 2
    # Kaiser's formulas for the window length and shape parameter.
    length = math.ceil((_ATTENUATION_DB - 7.95) / (2.285 * 2 * math.pi * width)) + 1
    length += 1 - length % 2  # odd, so that the delay is a whole sample
    beta = 0.1102 * (_ATTENUATION_DB - 8.7)
    n = np.arange(length) - (length - 1) // 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(length, beta)
    return cast("npt.NDArray[np.float64]", h * (up / h.sum()))


def _split_phases(h: npt.NDArray[np.float64], up: int) -> npt.NDArray[np.float64]:
    """Split ``h`` into ``up`` phases, shape ``(up, taps)``.

    Row ``p`` holds ``h[p], h[p + up], h[p + 2*up], ...`` in reverse order,
    so that it lines up with a window of consecutive input samples that ends
    at the newest one.
    """
    taps = -(-h.size // up)
    padded = np.concatenate([h, np.zeros(taps * up - h.size)])
    return np.ascontiguousarray(padded.reshape(taps, up).T[:, ::-1])


class StreamingResampler:
    """Resample a mono float32 stream from ``in_rate`` to ``out_rate``.

    Feed chunks of any size to :meth:`process`; each call returns every
    output sample that can already be computed exactly.  :meth:`flush` ends
    the stream, zero-padding the input so that no audio is lost, and returns
    the rest.  Over the whole stream exactly ``ceil(n * out_rate / in_rate)``
    samples come out for ``n`` samples in, and the concatenated output equals
    :func:`resample` of the concatenated input whatever the chunking.

    Equal rates give the identity.  Rates must be ints in
    [``MIN_RATE``, ``MAX_RATE``] whose reduced ratio has terms of at most
    2048 (all common rates qualify, e.g. 44100 -> 16000 is 160/441).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = _check_rate("in_rate", in_rate)
        self.out_rate = _check_rate("out_rate", out_rate)
        g = math.gcd(self.in_rate, self.out_rate)
        self._up = self.out_rate // g
        self._down = self.in_rate // g
        if max(self._up, self._down) > _MAX_RATIO_TERM:
            raise ValueError(
                f"cannot resample {in_rate} Hz -> {out_rate} Hz: the reduced ratio "
                f"{self._up}/{self._down} is too complex"
            )
        self._finished = False
        self._samples_in = 0  # total input samples received
        self._next_out = 0  # index of the next output sample to emit
        if self._up == self._down:
            return
        h = design_lowpass(self._up, self._down)
        self._delay = (h.size - 1) // 2
        self._phases = _split_phases(h, self._up)
        taps = self._phases.shape[1]
        # Input history as float64; _buf[0] is input sample number _buf_start.
        self._buf_start = -(taps - 1)
        self._buf = np.zeros(taps - 1)

    def process(self, x: np.ndarray) -> npt.NDArray[np.float32]:
        """Consume a chunk of mono samples; return the output now complete."""
        if self._finished:
            raise RuntimeError("StreamingResampler.process() after flush()")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {x.shape}")
        self._samples_in += x.size
        if self._up == self._down:
            return cast("npt.NDArray[np.float32]", x.copy())
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        # Output k needs inputs up to (k*M + D) // L, so it is ready while
        # k*M + D < samples_in * L.
        ready = -(-(self._samples_in * self._up - self._delay) // self._down)
        return self._emit(ready)

    def flush(self) -> npt.NDArray[np.float32]:
        """End the stream and return the remaining output (zero-padded tail)."""
        if self._finished:
            raise RuntimeError("StreamingResampler.flush() called twice")
        self._finished = True
        if self._up == self._down:
            return np.zeros(0, np.float32)
        total = -(-self._samples_in * self._up // self._down)
        if total > self._next_out:
            last_input = ((total - 1) * self._down + self._delay) // self._up
            pad = last_input + 1 - (self._buf_start + self._buf.size)
            if pad > 0:
                self._buf = np.concatenate([self._buf, np.zeros(pad)])
        return self._emit(total)

    def _emit(self, end: int) -> npt.NDArray[np.float32]:
        start = self._next_out
        if end <= start:
            return np.zeros(0, np.float32)
        taps = self._phases.shape[1]
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, taps)
        out = np.empty(end - start, np.float32)
        for lo in range(start, end, _OUTPUTS_PER_BLOCK):
            k = np.arange(lo, min(lo + _OUTPUTS_PER_BLOCK, end), dtype=np.int64)
            pos = k * self._down + self._delay
            newest = pos // self._up  # newest input sample each output uses
            rows = windows[newest - (taps - 1) - self._buf_start]
            coeffs = self._phases[pos % self._up]
            out[lo - start : lo - start + k.size] = np.einsum("ij,ij->i", rows, coeffs)
        self._next_out = end
        # Keep only the history that the next output sample can reach.
        oldest = (end * self._down + self._delay) // self._up - (taps - 1)
        drop = oldest - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = oldest
        return out


def resample(x: np.ndarray, in_rate: int, out_rate: int) -> npt.NDArray[np.float32]:
    """Resample a whole mono signal; same as one :class:`StreamingResampler` pass."""
    resampler = StreamingResampler(in_rate, out_rate)
    head = resampler.process(x)
    return np.concatenate([head, resampler.flush()])
