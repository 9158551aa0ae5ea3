"""sherpa-onnx's NeMo streaming fast-conformer CTC format.

Made by sherpa-onnx's ``scripts/nemo/fast-conformer-hybrid-transducer-ctc/
export-onnx-ctc.py`` (NeMo's cache-aware export of the CTC branch).  One ONNX
file; inputs, in this order::

    audio_signal            float32 (N, feat_dim, T)   channels first
    length                  int64   (N,)               frames in the window
    cache_last_channel      float32 (N, dim1, dim2, dim3)
    cache_last_time         float32 (N, dim1, dim2, dim3)
    cache_last_channel_len  int64   (N,)

and outputs: log-probs (N, T_out, V), encoded lengths (N,), then the three new
caches in the same order and layout.  Every state's batch axis is 0 (the
export moves NeMo's layer-first caches to batch-first).

Custom metadata: ``window_size`` (frames per run), ``chunk_shift`` (frames
advanced per run), ``subsampling_factor``, ``vocab_size`` (NeMo's count,
*without* the blank, which is the extra last output id),
``cache_last_channel_dim1..3``, ``cache_last_time_dim1..3`` and
``normalize_type`` (NeMo's feature normalisation; "" for none).  Initial states
are zeros, as in sherpa-onnx.

Features are what sherpa-onnx (2.x) feeds these models, i.e. NeMo's front end
as kaldi-native-fbank approximates it: 80 bins, 25 ms periodic Hann window,
10 ms shift, pre-emphasis 0.97, no DC removal, dither 0, ``snip_edges=False``,
mel filters from 0 Hz to Nyquist, samples in [-1, 1] (*not* scaled to the
int16 range), no normalisation, and librosa ("Slaney") mel filters
(``FbankOptions.is_librosa``).
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

__all__ = ["NemoCtcModel", "matches", "nemo_feature_options"]

_INPUTS = ("audio_signal", "length", "cache_last_channel", "cache_last_time",
           "cache_last_channel_len")
_SCALAR_KEYS = ("window_size", "chunk_shift", "subsampling_factor", "vocab_size",
                "cache_last_channel_dim1", "cache_last_channel_dim2", "cache_last_channel_dim3",
                "cache_last_time_dim1", "cache_last_time_dim2", "cache_last_time_dim3")
_BATCH_AXES = (0, 0, 0)
_FRAME_SHIFT_S = 0.01


def matches(session: ort.InferenceSession) -> bool:
    """Whether a loaded session looks like this format."""
    names = tuple(i.name for i in session.get_inputs())
    meta = session.get_modelmeta().custom_metadata_map
    return names == _INPUTS and "cache_last_channel_dim1" in meta


def _metadata(session: ort.InferenceSession) -> dict[str, int]:
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in _SCALAR_KEYS if k not in meta]
    if missing:
        raise ModelError(f"NeMo CTC model lacks metadata {missing}")
    values = {}
    for key in _SCALAR_KEYS:
        try:
            values[key] = int(meta[key])
        except ValueError:
            raise ModelError(f"metadata {key!r}={meta[key]!r} is not an integer") from None
        if values[key] <= 0:
            raise ModelError(f"metadata {key!r}={values[key]} must be positive")
    normalize = meta.get("normalize_type", "")
    if normalize not in ("", "NA"):
        # NeMo's per_feature / all_features normalisation uses statistics of the
        # whole utterance, which a streaming recognizer does not have.
        raise ModelError(
            f"NeMo feature normalization {normalize!r} is not supported for streaming "
            "(only models exported with normalize_type '' can be used)"
        )
    return values


class NemoCtcModel(AcousticModel):
    """A loaded NeMo streaming CTC model; see the module docstring."""

    def __init__(self, session: ort.InferenceSession, tokens: TokenTable) -> None:
        self._session = session
        self.tokens = tokens
        meta = _metadata(session)
        self.chunk_frames = meta["window_size"]
        self.chunk_shift = meta["chunk_shift"]
        if self.chunk_shift > self.chunk_frames:
            raise ModelError(
                f"chunk_shift {self.chunk_shift} exceeds window_size {self.chunk_frames}"
            )
        self.subsampling = meta["subsampling_factor"]
        self.frame_shift_s = _FRAME_SHIFT_S * self.subsampling
        self.vocab_size = meta["vocab_size"] + 1  # NeMo's count leaves out the blank

        audio = session.get_inputs()[0]
        if not isinstance(audio.shape[1], int):
            raise ModelError(f"axis 1 (features) of audio_signal must be static, got {audio.shape}")
        self.feature_dim = audio.shape[1]

        outputs = session.get_outputs()
        if len(outputs) != 5:
            raise ModelError(f"expected 5 outputs (log-probs, lengths, 3 caches), got {len(outputs)}")
        declared_vocab = outputs[0].shape[-1]
        if isinstance(declared_vocab, int) and declared_vocab != self.vocab_size:
            raise ModelError(
                f"log-probs have {declared_vocab} classes, metadata vocab_size + blank "
                f"is {self.vocab_size}"
            )
        # log-probs and the new caches; the encoded lengths are not needed
        self._output_names = [outputs[i].name for i in (0, 2, 3, 4)]

        if len(tokens) != self.vocab_size:
            raise ModelError(
                f"tokens.txt has {len(tokens)} tokens but the model outputs {self.vocab_size}"
            )
        if tokens.blank_id != self.vocab_size - 1:
            raise ModelError(
                f"NeMo's blank is the last id ({self.vocab_size - 1}) but tokens.txt puts "
                f"it at {tokens.blank_id}; it must name it <blk>"
            )

        channel = tuple(meta[f"cache_last_channel_dim{i}"] for i in (1, 2, 3))
        time = tuple(meta[f"cache_last_time_dim{i}"] for i in (1, 2, 3))
        for node, shape in zip(session.get_inputs()[2:4], (channel, time)):
            for declared, want in zip(node.shape[1:], shape):
                if isinstance(declared, int) and declared != want:
                    raise ModelError(
                        f"input {node.name} is declared {node.shape}, metadata says (N, {shape})"
                    )
        self._initial = ModelState(
            (
                np.zeros((1, *channel), np.float32),
                np.zeros((1, *time), np.float32),
                np.zeros((1,), np.int64),
            ),
            _BATCH_AXES,
        )

    @property
    def feature_options(self) -> FbankOptions:
        return nemo_feature_options(self.sample_rate, self.feature_dim)

    def initial_state(self) -> ModelState:
        return self._initial

    def feed(self, features: np.ndarray, states: Sequence[ModelState]) -> dict[str, np.ndarray]:
        features = self._check_batch(features, states)
        feed = dict(zip(_INPUTS[2:], ModelState.stack(states)))
        feed["audio_signal"] = np.ascontiguousarray(features.transpose(0, 2, 1))
        feed["length"] = np.full((len(states),), self.chunk_frames, np.int64)
        return feed

    def run(
        self, features: np.ndarray, states: Sequence[ModelState]
    ) -> tuple[np.ndarray, list[ModelState]]:
        log_probs, *new = self._run_session(len(states), self._output_names, self.feed(features, states))
        return log_probs, ModelState.unstack(new, _BATCH_AXES)


def nemo_feature_options(sample_rate: int, num_bins: int) -> FbankOptions:
    """The fbank NeMo's models are trained on (librosa's mel scale, Hann
    window, no edge snipping), streaming and offline exports alike."""
    from trio_asr.recognition.features import FbankOptions

    return FbankOptions(
        sample_rate=sample_rate, num_bins=num_bins, window_type="hann",
        preemph_coeff=0.97, remove_dc_offset=False, dither=0.0, snip_edges=False,
        low_freq=0.0, high_freq=0.0, is_librosa=True,
    )  # fmt: skip
