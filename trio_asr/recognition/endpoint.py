"""Endpoint detection: where one segment of a stream ends and the next begins.

Sans-I/O: an :class:`EndpointDetector` is fed, frame by frame, whether each
output frame is *active* — on the CTC best path, a non-blank token; with a
voice activity detector, speech — and says after which frame a segment ends.
The rules are the usual ones of streaming recognizers (sherpa-onnx, WeNet):

1. ``silence_without_text``: the segment has no active frame yet and the
   trailing inactive run is at least this long (a long silence is cut off so
   that nothing grows while nobody speaks);
2. ``silence_after_text``: the segment has an active frame and the trailing
   inactive run after it is at least this long (the speaker paused);
3. ``max_segment``: the segment is at least this long, whatever it holds.

All three are seconds; rules 1 and 2 can be switched off with ``None``, rule 3
cannot (it is what bounds the work per partial result of an endless stream).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np

from trio_asr.bounds import between

__all__ = [
    "MAX_SEGMENT_SECONDS",
    "MAX_SILENCE_SECONDS",
    "MIN_SEGMENT_SECONDS",
    "MIN_SILENCE_SECONDS",
    "EndpointDetector",
    "EndpointRules",
]

#: bounds of the rules, so that a client cannot make segments unbounded
MIN_SILENCE_SECONDS = 0.1
MAX_SILENCE_SECONDS = 60.0
MIN_SEGMENT_SECONDS = 1.0
MAX_SEGMENT_SECONDS = 120.0


def _optional_float(value: Any) -> Any:
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        return value
    try:
        return float(value)
    except OverflowError:  # beyond any float: the validator refuses it
        return value


@attrs.frozen
class EndpointRules:
    """When a segment ends (see the module docstring); seconds, bounded."""

    silence_without_text: float | None = attrs.field(
        default=2.4,
        converter=_optional_float,
        validator=between(MIN_SILENCE_SECONDS, MAX_SILENCE_SECONDS, optional=True),
    )
    silence_after_text: float | None = attrs.field(
        default=1.2,
        converter=_optional_float,
        validator=between(MIN_SILENCE_SECONDS, MAX_SILENCE_SECONDS, optional=True),
    )
    max_segment: float = attrs.field(
        default=20.0, converter=_optional_float, validator=between(MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS)
    )


def _frames(seconds: float | None, frame_shift_s: float) -> float:
    """A rule in frames (at least one); infinity when it is off."""
    if seconds is None:
        return math.inf
    return max(1, math.ceil(seconds / frame_shift_s - 1e-9))


class EndpointDetector:
    """Applies :class:`EndpointRules` to a stream of per-frame activity flags.

    ``frame_shift_s`` is the duration of one frame.  The detector only counts:
    its state is three integers, whatever the stream's length.
    """

    def __init__(self, rules: EndpointRules, frame_shift_s: float) -> None:
        if not frame_shift_s > 0:
            raise ValueError(f"frame_shift_s must be positive, got {frame_shift_s}")
        self.rules = rules
        self._without_text = _frames(rules.silence_without_text, frame_shift_s)
        self._after_text = _frames(rules.silence_after_text, frame_shift_s)
        self._max_frames = _frames(rules.max_segment, frame_shift_s)
        self.reset()

    def reset(self) -> None:
        """Start a new segment."""
        self.segment_frames = 0
        self.trailing_inactive = 0
        self.has_activity = False

    def accept(self, active: np.ndarray) -> int | None:
        """Consume frames until the first endpoint.

        ``active`` is a 1-D boolean array, one entry per frame in order.
        Returns ``k`` when the segment ends after the ``k``-th given frame
        (1 <= k <= len(active)); the detector has then been reset and the
        frames after ``k`` are not consumed — pass them again.  Returns None
        when all frames were consumed without an endpoint.
        """
        for k, is_active in enumerate(np.asarray(active, dtype=bool).tolist(), 1):
            self.segment_frames += 1
            if is_active:
                self.has_activity = True
                self.trailing_inactive = 0
            else:
                self.trailing_inactive += 1
            limit = self._after_text if self.has_activity else self._without_text
            if self.trailing_inactive >= limit or self.segment_frames >= self._max_frames:
                self.reset()
                return k
        return None
