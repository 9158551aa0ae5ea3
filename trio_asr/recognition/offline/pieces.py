"""Long audio cut into pieces that an offline model takes whole.

An offline model sees each utterance at once: its memory and time grow with
the length, and SenseVoice and NeMo's CTC models are trained on utterances
of up to about half a minute.  So audio longer than :data:`MAX_PIECE_S` is
cut into *pieces* of at most that length, each decoded as one utterance
(:mod:`~trio_asr.recognition.offline.long_audio` joins their results).

Each cut falls in the last :data:`SEARCH_WINDOW_S` before the limit, in a
silence:

- with a voice activity detector (:class:`VadSilences`, Silero VAD), in the
  middle of the latest pause of at least :data:`MIN_PAUSE_S` in that window,
  else of its longest pause;
- without one, or when the VAD hears speech all through the window, at its
  quietest point: the middle of the quietest stretch of short-time energy
  (:func:`quietest_point`).

Pieces are contiguous and cover the audio: sample ``end`` of one is sample
``start`` of the next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import numpy as np

from trio_asr.recognition.vad import SAMPLE_RATE as VAD_RATE
from trio_asr.recognition.vad import WINDOW as VAD_WINDOW
from trio_asr.recognition.vad import SileroVad

__all__ = [
    "MAX_PIECE_S",
    "MIN_PAUSE_S",
    "SEARCH_WINDOW_S",
    "Piece",
    "SilenceFinder",
    "VadSilences",
    "cut_pieces",
    "quietest_point",
]

#: the longest piece, in seconds (SenseVoice and NeMo's models are trained on up to ~30 s)
MAX_PIECE_S = 30.0
#: how far before the limit a cut is looked for, in seconds
SEARCH_WINDOW_S = 10.0
#: a pause the VAD finds this long (s) or longer is a good place to cut
MIN_PAUSE_S = 0.2
#: seconds of audio before the search window given to the VAD to settle
VAD_LEAD_S = 1.0
# short-time energy: 25 ms frames every 10 ms, averaged over 100 ms
_FRAME_S, _HOP_S, _SMOOTH_S = 0.025, 0.010, 0.1

#: what finds pauses: (samples, sample rate) -> the pauses in them, as
#: (start, end) sample ranges, in order
SilenceFinder = Callable[[np.ndarray, int], Sequence[tuple[int, int]]]


@attrs.frozen
class Piece:
    """Samples ``[start, end)`` of the audio."""

    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def cut_pieces(
    samples: np.ndarray,
    sample_rate: int,
    *,
    max_s: float = MAX_PIECE_S,
    window_s: float = SEARCH_WINDOW_S,
    silences: SilenceFinder | None = None,
) -> list[Piece]:
    """Cut mono ``samples`` into contiguous pieces of at most ``max_s``
    seconds (one piece when they are no longer), each cut in the last
    ``window_s`` seconds before the limit: in a pause that ``silences`` finds
    (see :class:`VadSilences`), else at the quietest point."""
    if max_s <= 0 or window_s <= 0:
        raise ValueError(f"max_s ({max_s}) and window_s ({window_s}) must be positive")
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected 1-D samples, got shape {samples.shape}")
    limit = max(1, int(max_s * sample_rate))
    window = min(limit, max(1, int(window_s * sample_rate)))
    lead = int(VAD_LEAD_S * sample_rate)
    pieces: list[Piece] = []
    start, total = 0, len(samples)
    while total - start > limit:
        low, high = start + limit - window + 1, start + limit  # a cut in (start, start + limit]
        cut = None
        if silences is not None:
            first = max(start, low - lead)
            pauses = [(a + first, b + first) for a, b in silences(samples[first:high], sample_rate)]
            cut = _pause_cut(pauses, low, high, int(MIN_PAUSE_S * sample_rate))
        if cut is None:
            cut = quietest_point(samples, low, high, sample_rate)
        pieces.append(Piece(start, cut))
        start = cut
    pieces.append(Piece(start, total))
    return pieces


def _pause_cut(pauses: Sequence[tuple[int, int]], low: int, high: int, min_pause: int) -> int | None:
    """The middle of the latest pause of ``min_pause`` samples or more within
    ``[low, high]``, else of the longest; None without any."""
    inside = [(max(a, low), min(b, high)) for a, b in pauses if min(b, high) > max(a, low)]
    if not inside:
        return None
    long_enough = [p for p in inside if p[1] - p[0] >= min_pause]
    a, b = long_enough[-1] if long_enough else max(inside, key=lambda p: p[1] - p[0])
    return (a + b) // 2


def quietest_point(samples: np.ndarray, low: int, high: int, sample_rate: int) -> int:
    """A sample in ``[low, high]`` at the quietest point of ``samples``
    there: the middle of the stretch of lowest short-time energy (25 ms
    frames every 10 ms, averaged over 100 ms): of the runs of frames within
    3 dB of the quietest one, the latest (so that pieces are long)."""
    frame = max(1, round(_FRAME_S * sample_rate))
    hop = max(1, round(_HOP_S * sample_rate))
    if high - low < frame:
        return high
    x = np.asarray(samples[low:high], dtype=np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
    starts = np.arange(len(frames)) * hop
    energy = np.einsum("ij,ij->i", frames, frames) / frame  # digital silence: exactly 0
    width = max(1, min(len(energy), round(_SMOOTH_S / _HOP_S)))
    smooth = np.convolve(energy, np.ones(width) / width, mode="valid")
    best = float(smooth.min())
    quiet = smooth <= 2 * best + 1e-9 * float(smooth.max())  # as quiet as the quietest, within 3 dB
    last = int(np.flatnonzero(quiet)[-1])  # the latest quiet stretch: longer pieces
    first = last
    while first > 0 and quiet[first - 1]:
        first -= 1
    middle = (first + last) // 2  # a run of `width` frames starting here is the quietest
    return low + int(starts[middle]) + (frame + (width - 1) * hop) // 2


class VadSilences:
    """A :data:`SilenceFinder` of Silero VAD's pauses: the runs of windows
    (32 ms each) it does not hear speech in, with a fresh state per call.
    Audio at another rate than the VAD's 16 kHz is resampled for it."""

    def __init__(self, vad: SileroVad) -> None:
        self.vad = vad

    def __call__(self, samples: np.ndarray, sample_rate: int) -> list[tuple[int, int]]:
        mono = np.asarray(samples, dtype=np.float32)
        if sample_rate != VAD_RATE:
            from trio_asr.recognition.resample import resample

            mono = resample(mono, sample_rate, VAD_RATE)
        speech = self.vad.create_stream().accept_waveform(mono)
        scale = VAD_WINDOW * sample_rate / VAD_RATE  # samples of the input per VAD window
        return [(round(a * scale), round(b * scale)) for a, b in _false_runs(speech)]


def _false_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of False in ``flags``."""
    padded = np.concatenate([[True], np.asarray(flags, bool), [True]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
