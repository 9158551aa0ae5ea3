"""Format-independent parts of the acoustic-model layer.

An :class:`AcousticModel` turns fixed-size chunks of feature frames into CTC
log-probabilities, carrying per-stream recurrent state (:class:`ModelState`)
from one chunk to the next.  :class:`ModelStream` sits on top of it and turns
a stream of feature frames of arbitrary sizes into chunks.

Chunking convention (the one sherpa-onnx uses for streaming CTC models): a run
consumes ``chunk_frames`` feature frames and advances by ``chunk_shift``
frames; the frames beyond ``chunk_shift`` are right context only and are fed
again, at the start of the next chunk.  The output frames of a run therefore
cover exactly the ``chunk_shift`` frames the run advanced by.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, cast

import attrs
import numpy as np
import onnxruntime as ort

from trio_asr._states import concatenate_states

if TYPE_CHECKING:
    from trio_asr.recognition.features import FbankOptions
    from trio_asr.recognition.tokens import TokenTable

__all__ = [
    "AcousticModel",
    "ModelError",
    "ModelState",
    "ModelStream",
    "is_batch_invariant",
    "make_session_options",
]

_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ModelError(Exception):
    """A model directory is incomplete, unsupported or inconsistent."""


def make_session_options(
    *, threads: int = 1, inter_op_threads: int = 1, optimization: str = "all"
) -> ort.SessionOptions:
    """Build onnxruntime session options.

    ``threads`` is the intra-op thread count (the one that matters for a
    sequential model), ``optimization`` one of ``disable``, ``basic``,
    ``extended``, ``all``.
    """
    if threads < 1 or inter_op_threads < 1:
        raise ValueError("thread counts must be >= 1")
    try:
        level = _OPTIMIZATION_LEVELS[optimization]
    except KeyError:
        raise ValueError(
            f"optimization must be one of {sorted(_OPTIMIZATION_LEVELS)}, not {optimization!r}"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    options.graph_optimization_level = level
    options.log_severity_level = 3
    return options


def _tensor_tuple(tensors: Iterable[np.ndarray]) -> tuple[np.ndarray, ...]:
    return tuple(tensors)


def _axis_tuple(axes: Iterable[int]) -> tuple[int, ...]:
    return tuple(axes)


@attrs.frozen(eq=False)
class ModelState:
    """The recurrent state of one stream: a tuple of arrays, each of which has
    batch size 1 along its own ``batch_axes[i]``.

    States are immutable values: :meth:`AcousticModel.run` returns new ones.
    """

    tensors: tuple[np.ndarray, ...] = attrs.field(converter=_tensor_tuple)
    batch_axes: tuple[int, ...] = attrs.field(converter=_axis_tuple)

    @batch_axes.validator
    def _check(self, _attribute: attrs.Attribute[tuple[int, ...]], axes: tuple[int, ...]) -> None:
        if len(axes) != len(self.tensors):
            raise ValueError("one batch axis per tensor is needed")
        for tensor, axis in zip(self.tensors, axes):
            if tensor.shape[axis] != 1:
                raise ValueError(f"batch axis {axis} of a {tensor.shape} state is not 1")

    @staticmethod
    def stack(states: Sequence[ModelState]) -> list[np.ndarray]:
        """Concatenate per-stream states into batched tensors, in stream order.

        Safe to call from a worker thread while the event loop is busy: all
        the copying happens in one stretch without the interpreter lock (see
        ``csrc/states.pyx``)."""
        if not states:
            raise ValueError("no states to stack")
        if len(states) == 1:
            return list(states[0].tensors)  # a batch of one needs no copy
        return cast("list[np.ndarray]", concatenate_states([s.tensors for s in states], states[0].batch_axes))

    @classmethod
    def unstack(cls, tensors: Sequence[np.ndarray], batch_axes: Sequence[int]) -> list[ModelState]:
        """Split batched tensors (as :meth:`stack` made them) into per-stream states."""
        batch = tensors[0].shape[batch_axes[0]]
        if batch == 1:
            return [cls(tuple(tensors), batch_axes)]
        # Views, one batch slot each (np.split is slow for ~100 small tensors).
        return [
            cls(tuple(t[(slice(None),) * a + (slice(n, n + 1),)] for t, a in zip(tensors, batch_axes)), batch_axes)
            for n in range(batch)
        ]


class AcousticModel(abc.ABC):
    """A streaming CTC acoustic model.

    Attributes every format sets (``sample_rate``, ``feature_pad_value`` and
    ``sample_scale`` have defaults that fit sherpa-onnx's exports):

    - ``sample_rate``: audio rate the features are computed at;
    - ``feature_options``: the fbank options this model was trained with;
    - ``chunk_frames``: feature frames per run, ``chunk_shift``: frames advanced per run;
    - ``subsampling``: feature frames per output frame;
    - ``frame_shift_s``: seconds per output frame;
    - ``vocab_size``, ``tokens``;
    - ``feature_pad_value``: the feature value of digital silence, used to pad
      the last chunk of a stream (see :meth:`ModelStream.input_finished`);
    - ``sample_scale``: the amplitude the model's fbank expects for full-scale
      audio: 1.0 when features are computed on samples in [-1, 1] (icefall /
      sherpa-onnx zipformer models), 32768.0 for the int16 range (Kaldi, WeNet).
    """

    sample_rate: int = 16000
    chunk_frames: int
    chunk_shift: int
    subsampling: int
    frame_shift_s: float
    vocab_size: int
    feature_dim: int
    # log(FLT_EPSILON): the fbank floors mel energies at float epsilon, so
    # this is the feature of zero samples in every bin.
    feature_pad_value: float = math.log(np.finfo(np.float32).eps)
    sample_scale: float = 1.0  # sherpa-onnx's normalize_samples=True
    tokens: TokenTable

    @property
    @abc.abstractmethod
    def feature_options(self) -> FbankOptions:
        """Fbank options the model expects."""

    @abc.abstractmethod
    def initial_state(self) -> ModelState:
        """The state of a fresh stream."""

    def feed(self, features: np.ndarray, states: Sequence[ModelState]) -> dict[str, np.ndarray]:
        """The ONNX session's inputs for one chunk of B streams (as :meth:`run`
        takes them); the ONNX formats have it (loading an int8 model probes
        its graph with it), other models need not."""
        raise NotImplementedError(f"{type(self).__name__} has no ONNX session to feed")

    @abc.abstractmethod
    def run(
        self, features: np.ndarray, states: Sequence[ModelState]
    ) -> tuple[np.ndarray, list[ModelState]]:
        """Run one chunk for each of B streams.

        ``features`` is float32 (B, chunk_frames, feature_dim), ``states`` the B
        streams' states.  Returns float32 log-probs (B, T_out, vocab_size) and
        the B new states, in the same order.
        """

    _session: ort.InferenceSession  # the ONNX formats' session

    #: known by construction (True for an int8 model rewritten for per-item
    #: quantization); None: unknown, :func:`is_batch_invariant` probes
    batch_invariant: bool | None = None

    #: runs batches of one instead of the model's own session, if set
    _single_stream_session: ort.InferenceSession | None = None

    def set_single_stream_session(self, session: ort.InferenceSession) -> None:
        """Run batches of one on ``session``, a model with the same interface
        that gives the same results for one stream (the int8 file as exported,
        whose fused kernels are faster than the per-item rewrite, which only
        batches need)."""
        self._single_stream_session = session

    def _run_session(
        self, batch: int, output_names: list[str], feed: dict[str, np.ndarray]
    ) -> list[np.ndarray]:
        """``session.run`` for a batch of ``batch`` streams.  Skips the Python
        wrapper's check of the feed's names (quadratic in the ~75 inputs, and
        the feed is ours); onnxruntime's own checks still apply."""
        session = self._session
        if batch == 1 and self._single_stream_session is not None:
            session = self._single_stream_session
        inner = getattr(session, "_sess", None)
        if inner is None:
            return cast("list[np.ndarray]", session.run(output_names, feed))
        return cast("list[np.ndarray]", inner.run(output_names, feed, None))

    def create_stream(self) -> ModelStream:
        """A fresh per-stream chunker bound to this model."""
        return ModelStream(self)

    def _check_batch(self, features: np.ndarray, states: Sequence[ModelState]) -> np.ndarray:
        features = np.ascontiguousarray(features, dtype=np.float32)
        expected = (len(states), self.chunk_frames, self.feature_dim)
        if features.shape != expected:
            raise ValueError(f"features of shape {features.shape}, expected {expected}")
        return features


class ModelStream:
    """Cuts one stream's feature frames into model chunks and carries its state.

    Not thread-safe; one stream is fed by one task.
    """

    def __init__(self, model: AcousticModel) -> None:
        self.model = model
        self.state = model.initial_state()
        self._buffer = np.zeros((0, model.feature_dim), np.float32)
        self._finalized = False
        self.chunks_run = 0

    @property
    def finalized(self) -> bool:
        return self._finalized

    def accept_features(self, frames: np.ndarray) -> None:
        """Append feature frames (n, feature_dim)."""
        if self._finalized:
            raise RuntimeError("stream is finalized")
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim != 2 or frames.shape[1] != self.model.feature_dim:
            raise ValueError(
                f"frames of shape {frames.shape}, expected (n, {self.model.feature_dim})"
            )
        self._buffer = np.concatenate([self._buffer, frames])

    def has_chunk(self) -> bool:
        """Whether :meth:`next_chunk` would return a chunk (without building it)."""
        return len(self._buffer) >= self.model.chunk_frames or (self._finalized and len(self._buffer) > 0)

    def next_chunk(self) -> np.ndarray | None:
        """The next chunk's features if one is complete, else None.

        After :meth:`input_finished`, incomplete chunks are completed with
        ``feature_pad_value`` as long as accepted frames remain.
        """
        if not self.has_chunk():
            return None
        size = self.model.chunk_frames
        if len(self._buffer) >= size:
            return self._buffer[:size]
        pad = np.full((size - len(self._buffer), self.model.feature_dim), self.model.feature_pad_value, np.float32)
        return np.concatenate([self._buffer, pad])

    def advance(self, state: ModelState) -> None:
        """Record that :meth:`next_chunk` was run and produced ``state``."""
        self.state = state
        self._buffer = self._buffer[self.model.chunk_shift :]
        self.chunks_run += 1

    def decode_ready_chunks(self) -> np.ndarray:
        """Run every complete chunk; log-probs (t, V) of all of them."""
        outputs = []
        while (chunk := self.next_chunk()) is not None:
            log_probs, (state,) = self.model.run(chunk[None], [self.state])
            self.advance(state)
            outputs.append(log_probs[0])
        return self._concat(outputs)

    def input_finished(self) -> None:
        """Mark the end of input without running anything: from now on
        :meth:`next_chunk` pads the tail with ``feature_pad_value`` (the fbank
        of zero samples: the result is what sherpa-onnx gives with tail
        padding), and chunks are run until every accepted frame lies within
        the ``chunk_shift`` part of some chunk, so no frame's output is lost.
        The tail chunks can be batched like any other."""
        self._finalized = True

    def _concat(self, outputs: list[np.ndarray]) -> np.ndarray:
        if len(outputs) == 1:
            return outputs[0]
        if not outputs:
            return np.zeros((0, self.model.vocab_size), np.float32)
        return np.concatenate(outputs)


def is_batch_invariant(model: AcousticModel, tolerance: float = 1e-3) -> bool:
    """Whether a stream's log-probs are the same in a batch as alone.

    Float models differ only by rounding (~1e-5).  Models with dynamically
    quantized activations (the usual int8 exports) do not: one scale is
    computed over the whole batch, so each stream's output depends on the
    others'.  Probed with two runs: two streams of different loudness
    batched, and the first alone, unless the model knows
    (:attr:`AcousticModel.batch_invariant`: a rewritten int8 model is exact up
    to float rounding, which can move one quantization step now and then, more
    than this probe's tolerance).
    """
    known: bool | None = getattr(model, "batch_invariant", None)
    if known is not None:
        return known
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, model.chunk_frames, model.feature_dim)).astype(np.float32)
    features[1] *= 4.0
    states = [model.initial_state(), model.initial_state()]
    batched, _ = model.run(features, states)
    alone, _ = model.run(features[:1], states[:1])
    return float(np.abs(batched[0] - alone[0]).max()) <= tolerance
