"""Low frame rate (LFR) stacking of feature frames, as FunASR and sherpa-onnx do it.

"Lower Frame Rate Neural Network Acoustic Models" (Pundak and Sainath, 2016):
output frame ``i`` is the concatenation of the ``window_size`` input frames
centred on input frame ``i * window_shift`` (``(window_size - 1) // 2`` on its
left), the first input frame repeated before the start and the last one after
the end, so that every output frame is complete and there are
``ceil(T / window_shift)`` of them.  This is FunASR's ``apply_lfr`` and
sherpa-onnx's ``ApplyLfr`` (``lfr.cc``); older sherpa-onnx code padded
nothing and gave ``(T - window_size) // window_shift + 1`` frames.
"""

from __future__ import annotations

import numpy as np

__all__ = ["apply_lfr", "lfr_frames"]


def lfr_frames(num_frames: int, window_shift: int) -> int:
    """Output frames of :func:`apply_lfr` for ``num_frames`` input frames."""
    return -(-num_frames // window_shift) if num_frames > 0 else 0


def apply_lfr(frames: np.ndarray, window_size: int, window_shift: int) -> np.ndarray:
    """Stack ``frames`` (T, D) into (ceil(T / window_shift), window_size * D)."""
    if window_size < 1 or window_shift < 1:
        raise ValueError(f"LFR window {window_size} and shift {window_shift} must be positive")
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2:
        raise ValueError(f"frames must have shape (T, D), got {frames.shape}")
    count, dim = frames.shape
    out = lfr_frames(count, window_shift)
    if out == 0:
        return np.zeros((0, window_size * dim), np.float32)
    left = (window_size - 1) // 2
    # input frame of slot j of output frame i, clamped to the utterance
    index = np.arange(out)[:, None] * window_shift - left + np.arange(window_size)[None, :]
    np.clip(index, 0, count - 1, out=index)
    stacked: np.ndarray = frames[index].reshape(out, window_size * dim)
    return stacked
