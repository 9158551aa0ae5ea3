# cython: language_level=3
"""Compiled core of the streaming Kaldi-compatible log-mel filterbank.

``FbankCore`` holds everything that is fixed per option set (window, FFT
tables, sparse mel weights, CMVN vectors) and the streaming state (sample
buffer, frame counter, dither RNG).  All per-frame work runs without the GIL
on preallocated C buffers; Python objects are only created per *call* (the
output array), never per frame.

Option validation and the computation of the window and mel weights live in
``trio_asr.recognition.features``; this module trusts its arguments.

Memory is bounded by the stream, not by its history: between calls the sample
buffer holds fewer samples than one frame, and its allocation is given
back after a call that brought a large block of samples.
"""

from libc.math cimport cos, sin, log, sqrt, M_PI
from libc.stdint cimport int16_t, int64_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memmove, memcpy

import numpy as np

cdef extern from "<float.h>":
    const float FLT_EPSILON

# Sample buffer capacities (in samples): the smallest allocation, and the
# largest one kept between calls (2 s at 16 kHz; typical frames never shrink
# it, so steady streaming does not reallocate).
cdef int64_t MIN_BUFFER = 4096
cdef int64_t KEEP_BUFFER = 32768

ctypedef struct Rng:
    uint64_t state
    double spare
    bint has_spare


cdef inline uint64_t _splitmix64(Rng* rng) noexcept nogil:
    rng.state += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = rng.state
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline double _uniform_open(Rng* rng) noexcept nogil:
    # 53 random bits mapped into (0, 1]: never 0, so log() below is finite.
    return ((_splitmix64(rng) >> 11) + 1) * (1.0 / 9007199254740992.0)


cdef inline double _gauss(Rng* rng) noexcept nogil:
    """Standard normal deviate (Box-Muller, second value cached)."""
    cdef double r, theta
    if rng.has_spare:
        rng.has_spare = False
        return rng.spare
    r = sqrt(-2.0 * log(_uniform_open(rng)))
    theta = 2.0 * M_PI * _uniform_open(rng)
    rng.spare = r * sin(theta)
    rng.has_spare = True
    return r * cos(theta)


cdef class FbankCore:
    """Streaming fbank state machine; see ``trio_asr.recognition.features.StreamingFbank``.

    Samples are kept in ``buf`` (absolute index ``buf_start`` at ``buf[0]``),
    in int16 scale.  Frame ``f`` starts at ``f * shift + first_offset`` where
    ``first_offset`` is 0 for snip_edges and ``shift/2 - length/2`` otherwise.
    """

    cdef int length, shift, padded, half, log2_half, dim, num_bins
    cdef int64_t first_offset
    cdef bint snip_edges, remove_dc, use_power, use_energy, has_cmvn, done, ready
    cdef double preemph, dither, log_energy_floor
    cdef Rng rng

    cdef double* buf
    cdef int64_t buf_start, buf_len, buf_cap, total
    cdef int64_t next_frame

    cdef double* window
    cdef double* frame
    cdef double* re
    cdef double* im
    cdef double* power
    cdef double* tw_re
    cdef double* tw_im
    cdef double* split_re
    cdef double* split_im
    cdef int* bitrev
    cdef int power_lo, power_hi
    cdef int* mel_start
    cdef int* mel_len
    cdef int* mel_pos
    cdef double* mel_w
    cdef double* cmvn_mean
    cdef double* cmvn_scale

    # No __cinit__: Cython zero-initialises C attributes (every pointer
    # NULL, ``ready`` false) before __init__ runs; _release() restores that.

    def __init__(
        self,
        int length,
        int shift,
        int padded,
        bint snip_edges,
        const double[::1] window not None,
        double preemph,
        bint remove_dc,
        double dither,
        uint64_t seed,
        const int[::1] mel_start not None,
        const int[::1] mel_len not None,
        const double[::1] mel_weights not None,
        bint use_power,
        bint use_energy,
        double log_energy_floor,
        cmvn_mean=None,
        cmvn_scale=None,
    ):
        cdef int i, j, bits, r, total_weights
        cdef const double[::1] mean_view
        cdef const double[::1] scale_view
        # A second __init__ starts a fresh stream: free what the first one
        # allocated, and stay unusable unless this one completes.
        self.ready = False
        self._release()
        self.length = length
        self.shift = shift
        self.padded = padded
        self.half = padded // 2
        self.snip_edges = snip_edges
        self.first_offset = 0 if snip_edges else shift // 2 - length // 2
        self.preemph = preemph
        self.remove_dc = remove_dc
        self.dither = dither
        self.rng.state = seed
        self.rng.has_spare = False
        self.use_power = use_power
        self.use_energy = use_energy
        self.log_energy_floor = log_energy_floor
        self.num_bins = mel_start.shape[0]
        self.dim = self.num_bins + (1 if use_energy else 0)
        self.done = False
        self.buf_start = 0
        self.buf_len = 0
        self.buf_cap = 0
        self.total = 0
        self.next_frame = 0

        self.window = <double*>malloc(length * sizeof(double))
        self.frame = <double*>malloc(length * sizeof(double))
        self.re = <double*>malloc(self.half * sizeof(double))
        self.im = <double*>malloc(self.half * sizeof(double))
        # bins 0 .. half: the Nyquist bin too (librosa-style filters use it)
        self.power = <double*>malloc((self.half + 1) * sizeof(double))
        self.tw_re = <double*>malloc(self.half * sizeof(double))
        self.tw_im = <double*>malloc(self.half * sizeof(double))
        self.split_re = <double*>malloc(self.half * sizeof(double))
        self.split_im = <double*>malloc(self.half * sizeof(double))
        self.bitrev = <int*>malloc(self.half * sizeof(int))
        self.mel_start = <int*>malloc(self.num_bins * sizeof(int))
        self.mel_len = <int*>malloc(self.num_bins * sizeof(int))
        self.mel_pos = <int*>malloc(self.num_bins * sizeof(int))
        total_weights = mel_weights.shape[0]
        self.mel_w = <double*>malloc((total_weights + 1) * sizeof(double))
        if (self.window == NULL or self.frame == NULL or self.re == NULL
                or self.im == NULL or self.power == NULL or self.tw_re == NULL
                or self.tw_im == NULL or self.split_re == NULL
                or self.split_im == NULL or self.bitrev == NULL
                or self.mel_start == NULL or self.mel_len == NULL
                or self.mel_pos == NULL or self.mel_w == NULL):
            raise MemoryError()

        for i in range(length):
            self.window[i] = window[i]

        # Complex FFT of size `half` on the even/odd-packed real input.
        self.log2_half = 0
        while (1 << self.log2_half) < self.half:
            self.log2_half += 1
        for i in range(self.half):
            r = 0
            bits = i
            for j in range(self.log2_half):
                r = (r << 1) | (bits & 1)
                bits >>= 1
            self.bitrev[i] = r
            self.tw_re[i] = cos(2.0 * M_PI * i / self.half)
            self.tw_im[i] = -sin(2.0 * M_PI * i / self.half)
            self.split_re[i] = cos(2.0 * M_PI * i / padded)
            self.split_im[i] = -sin(2.0 * M_PI * i / padded)

        self.power_lo = self.half
        self.power_hi = 0
        j = 0
        for i in range(self.num_bins):
            if mel_start[i] < 0 or mel_len[i] < 1 or mel_start[i] + mel_len[i] > self.half + 1:
                raise ValueError(f"mel bin {i} lies outside FFT bins 0..{self.half}")
            self.mel_start[i] = mel_start[i]
            self.mel_len[i] = mel_len[i]
            self.mel_pos[i] = j
            j += mel_len[i]
            self.power_lo = min(self.power_lo, mel_start[i])
            self.power_hi = max(self.power_hi, mel_start[i] + mel_len[i])
        for i in range(total_weights):
            self.mel_w[i] = mel_weights[i]

        self.has_cmvn = cmvn_mean is not None
        if self.has_cmvn:
            mean_view = cmvn_mean
            scale_view = cmvn_scale
            self.cmvn_mean = <double*>malloc(self.dim * sizeof(double))
            self.cmvn_scale = <double*>malloc(self.dim * sizeof(double))
            if self.cmvn_mean == NULL or self.cmvn_scale == NULL:
                raise MemoryError()
            for i in range(self.dim):
                self.cmvn_mean[i] = mean_view[i]
                self.cmvn_scale[i] = scale_view[i]
        self.ready = True

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        """Free every buffer; pointers become NULL so this can run twice."""
        free(self.buf)
        free(self.window)
        free(self.frame)
        free(self.re)
        free(self.im)
        free(self.power)
        free(self.tw_re)
        free(self.tw_im)
        free(self.split_re)
        free(self.split_im)
        free(self.bitrev)
        free(self.mel_start)
        free(self.mel_len)
        free(self.mel_pos)
        free(self.mel_w)
        free(self.cmvn_mean)
        free(self.cmvn_scale)
        self.buf = NULL
        self.buf_cap = 0
        self.buf_len = 0
        self.window = NULL
        self.frame = NULL
        self.re = NULL
        self.im = NULL
        self.power = NULL
        self.tw_re = NULL
        self.tw_im = NULL
        self.split_re = NULL
        self.split_im = NULL
        self.bitrev = NULL
        self.mel_start = NULL
        self.mel_len = NULL
        self.mel_pos = NULL
        self.mel_w = NULL
        self.cmvn_mean = NULL
        self.cmvn_scale = NULL

    @property
    def num_frames_emitted(self):
        return self.next_frame

    @property
    def finished(self):
        return self.done

    @property
    def buffer_capacity(self):
        """Samples the buffer has room for now (its allocation, not its content)."""
        return self.buf_cap

    # ---- streaming -------------------------------------------------------

    cdef int _reserve(self, int64_t n) except -1:
        """Make room for ``n`` more samples at the end of the buffer."""
        cdef double* grown
        cdef int64_t cap
        if self.buf_len + n > self.buf_cap:
            cap = max(2 * self.buf_cap, self.buf_len + n, MIN_BUFFER)
            grown = <double*>realloc(self.buf, cap * sizeof(double))
            if grown == NULL:
                raise MemoryError()
            self.buf = grown
            self.buf_cap = cap
        return 0

    cdef void _shrink(self) noexcept:
        """Give back a large allocation once the samples it held are consumed."""
        cdef double* shrunk
        cdef int64_t cap = max(2 * self.buf_len, MIN_BUFFER)
        if self.buf_cap <= KEEP_BUFFER or cap >= self.buf_cap:
            return
        shrunk = <double*>realloc(self.buf, cap * sizeof(double))
        if shrunk != NULL:  # on failure the larger buffer simply stays
            self.buf = shrunk
            self.buf_cap = cap

    def accept_int16(self, const int16_t[::1] samples not None):
        """Append int16 samples (used as-is); return the new frames."""
        cdef int64_t i, n = samples.shape[0]
        cdef double* dst
        self._check_open()
        self._reserve(n)
        dst = self.buf + self.buf_len
        with nogil:
            for i in range(n):
                dst[i] = samples[i]
        self.buf_len += n
        self.total += n
        return self._emit(False)

    def accept_float32(self, const float[::1] samples not None):
        """Append float samples in [-1, 1] (scaled by 32768); return the new frames."""
        cdef int64_t i, n = samples.shape[0]
        cdef double* dst
        self._check_open()
        self._reserve(n)
        dst = self.buf + self.buf_len
        with nogil:
            for i in range(n):
                dst[i] = samples[i] * 32768.0
        self.buf_len += n
        self.total += n
        return self._emit(False)

    def flush(self):
        """Mark the input finished; return the frames that needed to know it."""
        self._check_open()
        self.done = True
        return self._emit(True)

    cdef _check_open(self):
        if not self.ready:
            raise RuntimeError("FbankCore is not initialised: its __init__ failed or was never called")
        if self.done:
            raise RuntimeError("fbank stream already flushed")

    cdef int64_t _frames_available(self, bint flush) noexcept:
        cdef int64_t n = self.total
        if self.snip_edges:
            if n < self.length:
                return 0
            return 1 + (n - self.length) // self.shift
        if flush:
            return (n + self.shift // 2) // self.shift
        # Without the end of input, a frame may not reach past the last sample.
        if n - self.first_offset < self.length:
            return 0
        return 1 + (n - self.first_offset - self.length) // self.shift

    cdef _emit(self, bint flush):
        cdef int64_t end = self._frames_available(flush)
        cdef int64_t count = end - self.next_frame
        cdef int64_t f, keep_from, drop
        if count < 0:
            count = 0
        out = np.empty((count, self.dim), dtype=np.float32)
        cdef float[:, ::1] view = out
        with nogil:
            for f in range(count):
                self._compute_frame(self.next_frame + f, &view[f, 0])
        self.next_frame += count
        keep_from = self.next_frame * self.shift + self.first_offset
        drop = keep_from - self.buf_start
        if drop > self.buf_len:
            drop = self.buf_len
        if drop > 0:
            self.buf_len -= drop
            memmove(self.buf, self.buf + drop, self.buf_len * sizeof(double))
            self.buf_start += drop
        self._shrink()
        return out

    # ---- per-frame pipeline (no GIL) ---------------------------------------

    cdef void _load_frame(self, int64_t f) noexcept nogil:
        cdef int64_t start = f * self.shift + self.first_offset
        cdef int64_t i, s, n = self.total
        if start >= self.buf_start and start + self.length <= n:
            memcpy(self.frame, self.buf + (start - self.buf_start),
                   self.length * sizeof(double))
            return
        # Kaldi reflects the signal at both ends (only with snip_edges=false).
        for i in range(self.length):
            s = start + i
            while s < 0 or s >= n:
                if s < 0:
                    s = -s - 1
                else:
                    s = 2 * n - 1 - s
            self.frame[i] = self.buf[s - self.buf_start]

    cdef void _fft(self) noexcept nogil:
        """In-place radix-2 DIT FFT of (re, im), input already bit-reversed."""
        cdef double* re = self.re
        cdef double* im = self.im
        cdef int n = self.half
        cdef int size, hs, step, base, j, a, b
        cdef double wr, wi, tr, ti
        # size-2 butterflies need no twiddles
        for j in range(n >> 1):
            a = 2 * j
            tr = re[a + 1]
            ti = im[a + 1]
            re[a + 1] = re[a] - tr
            im[a + 1] = im[a] - ti
            re[a] += tr
            im[a] += ti
        size = 4
        while size <= n:
            hs = size >> 1
            step = n // size
            for j in range(hs):
                wr = self.tw_re[j * step]
                wi = self.tw_im[j * step]
                for base in range(step):
                    a = base * size + j
                    b = a + hs
                    tr = re[b] * wr - im[b] * wi
                    ti = re[b] * wi + im[b] * wr
                    re[b] = re[a] - tr
                    im[b] = im[a] - ti
                    re[a] += tr
                    im[a] += ti
            size <<= 1

    cdef void _compute_frame(self, int64_t f, float* out) noexcept nogil:
        cdef double* x = self.frame
        cdef int n = self.length
        cdef int i, k, m, b
        cdef double acc, coef, log_energy = 0.0
        cdef double zr, zi, cr, ci, er, ei, orr, oi, xr, xi
        self._load_frame(f)

        if self.dither != 0.0:
            for i in range(n):
                x[i] += _gauss(&self.rng) * self.dither
        if self.remove_dc:
            acc = 0.0
            for i in range(n):
                acc += x[i]
            acc /= n
            for i in range(n):
                x[i] -= acc
        if self.use_energy:
            acc = 0.0
            for i in range(n):
                acc += x[i] * x[i]
            log_energy = log(max(acc, <double>FLT_EPSILON))
            if log_energy < self.log_energy_floor:
                log_energy = self.log_energy_floor
        if self.preemph != 0.0:
            coef = self.preemph
            for i in range(n - 1, 0, -1):
                x[i] -= coef * x[i - 1]
            x[0] -= coef * x[0]

        # Window, zero-pad and pack even/odd samples as one complex signal,
        # scattered to bit-reversed positions for the FFT.
        for i in range(self.half):
            b = self.bitrev[i]
            k = 2 * i
            self.re[b] = x[k] * self.window[k] if k < n else 0.0
            self.im[b] = x[k + 1] * self.window[k + 1] if k + 1 < n else 0.0
        self._fft()

        # Untangle the real spectrum; only the bins the filters use.  Bins 0
        # and half (Nyquist) are the sum and difference of the packed DC terms.
        k = self.power_lo
        if k == 0:
            xr = self.re[0] + self.im[0]
            self.power[0] = xr * xr
            k = 1
        if self.power_hi > self.half:
            xr = self.re[0] - self.im[0]
            self.power[self.half] = xr * xr
        for k in range(k, min(self.power_hi, self.half)):
            m = self.half - k
            zr = self.re[k]
            zi = self.im[k]
            cr = self.re[m]
            ci = -self.im[m]
            er = 0.5 * (zr + cr)
            ei = 0.5 * (zi + ci)
            # (Z[k] - conj Z[N/2-k]) / 2i
            orr = 0.5 * (zi - ci)
            oi = -0.5 * (zr - cr)
            xr = er + self.split_re[k] * orr - self.split_im[k] * oi
            xi = ei + self.split_re[k] * oi + self.split_im[k] * orr
            self.power[k] = xr * xr + xi * xi
        if not self.use_power:
            for k in range(self.power_lo, self.power_hi):
                self.power[k] = sqrt(self.power[k])

        b = 1 if self.use_energy else 0
        if self.use_energy:
            out[0] = <float>log_energy
        for m in range(self.num_bins):
            acc = 0.0
            coef = 0.0
            k = self.mel_start[m]
            for i in range(self.mel_pos[m], self.mel_pos[m] + self.mel_len[m]):
                acc += self.mel_w[i] * self.power[k]
                k += 1
            out[b + m] = <float>log(max(acc, <double>FLT_EPSILON))
        if self.has_cmvn:
            for m in range(self.dim):
                out[m] = <float>((out[m] - self.cmvn_mean[m]) * self.cmvn_scale[m])
