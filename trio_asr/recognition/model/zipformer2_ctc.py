"""sherpa-onnx's streaming Zipformer2 CTC format (icefall ``export-onnx-streaming-ctc.py``).

One ONNX file.  Inputs, in this order: ``x`` (N, T, feat_dim) float32; for every
encoder layer i (all stacks, in order) ``cached_key_i`` (L_s, N, key_dim),
``cached_nonlin_attn_i`` (1, N, L_s, 3*D_s/4), ``cached_val1_i`` and
``cached_val2_i`` (L_s, N, value_dim), ``cached_conv1_i`` and ``cached_conv2_i``
(N, D_s, kernel_s // 2); then ``embed_states`` (N, 128, 3, 19 for 80 bins) and
``processed_lens`` (N,) int64.  Outputs: ``log_probs`` (N, T_out, V), then
``new_<input>`` for every state input.  Note the batch axis is 1 for the four
attention caches and 0 for the others.

Geometry comes from the model's custom metadata (comma-separated per encoder
stack): ``encoder_dims``, ``num_encoder_layers``, ``cnn_module_kernels``,
``left_context_len``, ``query_head_dims``, ``value_head_dims``, ``num_heads``;
and scalars ``T`` (frames per run) and ``decode_chunk_len`` (frames advanced).
Initial states are zeros, as in sherpa-onnx.

Features: 80-bin Kaldi fbank as sherpa-onnx computes it for these models:
dither 0, ``snip_edges=False``, ``high_freq=-400``, samples in [-1, 1]
(*not* scaled to the int16 range).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from trio_asr.recognition.model.base import AcousticModel, ModelError, ModelState

if TYPE_CHECKING:
    from trio_asr.recognition.features import FbankOptions
    from trio_asr.recognition.tokens import TokenTable

__all__ = ["Zipformer2CtcModel"]

_LAYER_STATES = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2",
                 "cached_conv1", "cached_conv2")
_BATCH_AXIS = {"cached_key": 1, "cached_nonlin_attn": 1, "cached_val1": 1, "cached_val2": 1,
               "cached_conv1": 0, "cached_conv2": 0, "embed_states": 0, "processed_lens": 0}
_PER_STACK_KEYS = ("encoder_dims", "num_encoder_layers", "cnn_module_kernels",
                   "left_context_len", "query_head_dims", "value_head_dims", "num_heads")


def matches(session: ort.InferenceSession) -> bool:
    """Whether a loaded session looks like this format."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    return (
        bool(inputs) and inputs[0] == "x" and "cached_key_0" in inputs
        and bool(outputs) and outputs[0] == "log_probs"
    )


def _int_list(meta: dict[str, str], key: str) -> list[int]:
    try:
        return [int(v) for v in meta[key].split(",")]
    except KeyError:
        raise ModelError(f"zipformer2 CTC model lacks metadata {key!r}") from None
    except ValueError:
        raise ModelError(f"metadata {key!r}={meta[key]!r} is not a list of integers") from None


class Zipformer2CtcModel(AcousticModel):
    """A loaded streaming Zipformer2 CTC model; see the module docstring."""

    def __init__(self, session: ort.InferenceSession, tokens: TokenTable) -> None:
        self._session = session
        self.tokens = tokens
        meta = session.get_modelmeta().custom_metadata_map
        per_stack = {k: _int_list(meta, k) for k in _PER_STACK_KEYS}
        stacks = {len(v) for v in per_stack.values()}
        if len(stacks) != 1:
            raise ModelError(f"per-stack metadata lists differ in length: {per_stack}")
        self.chunk_frames = _int_list(meta, "T")[0]
        self.chunk_shift = _int_list(meta, "decode_chunk_len")[0]
        self.geometry = per_stack

        inputs = session.get_inputs()
        outputs = session.get_outputs()
        x = inputs[0]
        self.feature_dim = _static(x.shape[2], "x", 2)
        log_probs = outputs[0]
        self.vocab_size = _static(log_probs.shape[2], "log_probs", 2)

        self._state_names = self._expected_state_names()
        got = [i.name for i in inputs[1:]]
        if got != self._state_names:
            raise ModelError(
                f"state inputs {got} do not match the metadata's layers {self._state_names}"
            )
        self._output_names = ["log_probs"] + [f"new_{n}" for n in self._state_names]
        missing = set(self._output_names) - {o.name for o in outputs}
        if missing:
            raise ModelError(f"model lacks outputs {sorted(missing)}")
        self._batch_axes = tuple(_batch_axis(n) for n in self._state_names)
        self._initial = self._make_initial_state(inputs[1:])

        t_out = log_probs.shape[1]
        if isinstance(t_out, int):
            self.subsampling = self.chunk_shift // t_out
        else:  # icefall's export: output rate is the 50 Hz embed rate halved
            self.subsampling = 4
        self.frame_shift_s = 0.01 * self.subsampling
        if len(tokens) != self.vocab_size:
            raise ModelError(
                f"tokens.txt has {len(tokens)} tokens but the model outputs {self.vocab_size}"
            )

    @property
    def feature_options(self) -> FbankOptions:
        from trio_asr.recognition.features import FbankOptions

        return FbankOptions(
            sample_rate=self.sample_rate, num_bins=self.feature_dim, dither=0.0,
            snip_edges=False, high_freq=-400.0, low_freq=20.0,
        )

    def _expected_state_names(self) -> list[str]:
        layers = sum(self.geometry["num_encoder_layers"])
        names = [f"{kind}_{i}" for i in range(layers) for kind in _LAYER_STATES]
        return names + ["embed_states", "processed_lens"]

    def _layer_shapes(self) -> list[tuple[int, ...]]:
        g = self.geometry
        shapes = []
        for s, layers in enumerate(g["num_encoder_layers"]):
            left, dim = g["left_context_len"][s], g["encoder_dims"][s]
            key_dim = g["query_head_dims"][s] * g["num_heads"][s]
            value_dim = g["value_head_dims"][s] * g["num_heads"][s]
            conv = g["cnn_module_kernels"][s] // 2
            shapes += [
                (left, 1, key_dim), (1, 1, left, 3 * dim // 4),
                (left, 1, value_dim), (left, 1, value_dim),
                (1, dim, conv), (1, dim, conv),
            ] * layers
        return shapes

    def _make_initial_state(self, inputs: Sequence[ort.NodeArg]) -> ModelState:
        shapes = self._layer_shapes()
        embed = inputs[-2]
        embed_shape = tuple(1 if i == 0 else _static(d, embed.name, i)
                            for i, d in enumerate(embed.shape))
        shapes += [embed_shape, (1,)]
        tensors = []
        for meta, shape in zip(inputs, shapes):
            declared = meta.shape
            for axis, (d, want) in enumerate(zip(declared, shape)):
                if isinstance(d, int) and axis != _batch_axis(meta.name) and d != want:
                    raise ModelError(
                        f"input {meta.name} is declared {declared}, metadata implies {shape}"
                    )
            dtype = np.int64 if meta.name == "processed_lens" else np.float32
            tensors.append(np.zeros(shape, dtype))
        return ModelState(tuple(tensors), self._batch_axes)

    def initial_state(self) -> ModelState:
        return self._initial

    def feed(self, features: np.ndarray, states: Sequence[ModelState]) -> dict[str, np.ndarray]:
        features = self._check_batch(features, states)
        feed = {"x": features}
        feed.update(zip(self._state_names, ModelState.stack(states)))
        return feed

    def run(
        self, features: np.ndarray, states: Sequence[ModelState]
    ) -> tuple[np.ndarray, list[ModelState]]:
        log_probs, *new = self._run_session(len(states), self._output_names, self.feed(features, states))
        return log_probs, ModelState.unstack(new, self._batch_axes)


def _batch_axis(state_name: str) -> int:
    return _BATCH_AXIS[state_name.rstrip("0123456789").rstrip("_")]


def _static(dim: int | str | None, name: str, axis: int) -> int:
    if not isinstance(dim, int):
        raise ModelError(f"axis {axis} of {name} must be static, got {dim!r}")
    return dim
