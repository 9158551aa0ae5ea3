"""sherpa-onnx's NeMo offline CTC format (``nemo_ctc``).

NeMo's own ``model.export`` of an ``EncDecCTCModel(BPE)`` or of the CTC branch
of a hybrid transducer/CTC model, with metadata added by sherpa-onnx's scripts
(``scripts/nemo/*/export-onnx-ctc-non-streaming.py``; the
``sherpa-onnx-nemo-ctc-*`` and ``sherpa-onnx-nemo-fast-conformer-ctc-*``
archives).  One ONNX file; inputs::

    audio_signal  float32 (N, num_bins, T)   features, channels first
    length        int64   (N,)               valid frames of each item

and first output log-probs (N, T', V) (NeMo's ``logprobs``; more outputs, if
any, are ignored).  Blank is the last id, ``<blk>`` in ``tokens.txt``.

Custom metadata: ``vocab_size`` (NeMo's count, *without* the blank),
``subsampling_factor`` (4 or 8), ``normalize_type`` (``per_feature`` or ""/
``NA``), ``model_type``.  ``is_giga_am`` models (GigaAM's other front end) are
not supported.

Features are what sherpa-onnx computes for these models
(``offline-recognizer-ctc-impl.h``), NeMo's front end as kaldi-native-fbank
approximates it: the same fbank as the streaming NeMo format's (periodic Hann
window, librosa mel filters from 0 Hz to Nyquist, pre-emphasis 0.97, no DC
removal, ``snip_edges=False``, samples in [-1, 1]).  With ``normalize_type``
``per_feature`` the log is NeMo's, ``log(mel + 2^-24)`` instead of Kaldi's
``log(max(mel, FLT_EPSILON))`` (what sherpa-onnx 2.x computes, found by
probing it: its source of 1.13 did not), and each bin is normalised over the
utterance to mean 0 and (biased) standard deviation 1 (``(x - mean) / (std +
1e-5)``, as sherpa-onnx's ``NemoNormalizePerFeature``).  A batch is padded with
log(1e-10) after normalisation, as sherpa-onnx pads it.

Output frames: sherpa-onnx decodes ``T // subsampling_factor`` of them (its
own count, not the model's: the last, partial frame is dropped when the
utterance is not a whole number of output frames); so do we.  An output
frame is ``subsampling_factor`` x 10 ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from trio_asr.recognition.model.base import ModelError
from trio_asr.recognition.model.nemo_ctc import nemo_feature_options
from trio_asr.recognition.offline.base import Conditioning, OfflineModel, pad_batch

if TYPE_CHECKING:
    from trio_asr.recognition.features import FbankOptions
    from trio_asr.recognition.tokens import TokenTable

__all__ = ["NemoCtcOfflineModel", "matches", "normalize_per_feature"]

_INPUTS = ("audio_signal", "length")
_FRAME_SHIFT_S = 0.01
_DEFAULT_BINS = 80
_PAD = math.log(1e-10)
# NeMo's log zero guard: log(mel + 2^-24), which sherpa-onnx 2.x computes for
# models normalised per feature; and the gain that recovers mel energies that
# small from the fbank (whose floor, FLT_EPSILON, is 2^-23): samples x 2^12
# put the floor at 2^-47 of the energy of the unscaled samples.
_LOG_GUARD = 2.0**-24
_GAIN = 4096.0


def matches(session: ort.InferenceSession) -> bool:
    """Whether a loaded session looks like this format (the streaming NeMo
    format has three more inputs: its caches)."""
    names = tuple(i.name for i in session.get_inputs())
    meta = session.get_modelmeta().custom_metadata_map
    return names == _INPUTS and "vocab_size" in meta and "subsampling_factor" in meta


def normalize_per_feature(frames: np.ndarray) -> np.ndarray:
    """Each column to mean 0 and standard deviation 1 over the frames, as
    sherpa-onnx's ``NemoNormalizePerFeature``: the biased variance, and
    ``1e-5`` added to the standard deviation."""
    x = np.asarray(frames, dtype=np.float64)
    if not len(x):
        return np.asarray(frames, dtype=np.float32)
    mean = x.mean(axis=0)
    var = np.maximum((x * x).mean(axis=0) - mean * mean, 0.0)
    normalized: np.ndarray = ((x - mean) / (np.sqrt(var) + 1e-5)).astype(np.float32)
    return normalized


def _positive(meta: dict[str, str], key: str) -> int:
    if key not in meta:
        raise ModelError(f"NeMo CTC model lacks metadata {key!r}")
    try:
        value = int(meta[key])
    except ValueError:
        raise ModelError(f"metadata {key!r}={meta[key]!r} is not an integer") from None
    if value <= 0:
        raise ModelError(f"metadata {key!r}={value} must be positive")
    return value


class NemoCtcOfflineModel(OfflineModel):
    """A loaded NeMo offline CTC model; see the module docstring."""

    def __init__(self, session: ort.InferenceSession, tokens: TokenTable) -> None:
        self._session = session
        self.tokens = tokens
        meta = dict(session.get_modelmeta().custom_metadata_map)
        if meta.get("is_giga_am", "0") not in ("", "0"):
            raise ModelError("GigaAM models (another front end: 64 bins, a 400-point FFT) are not supported")
        self.subsampling = _positive(meta, "subsampling_factor")
        self.frame_shift_s = _FRAME_SHIFT_S * self.subsampling
        self.vocab_size = _positive(meta, "vocab_size") + 1  # NeMo's count leaves out the blank
        normalize = meta.get("normalize_type", "")
        if normalize not in ("", "NA", "per_feature"):
            raise ModelError(f"NeMo feature normalization {normalize!r} is not supported (per_feature or none)")
        self.per_feature = normalize == "per_feature"
        bins = session.get_inputs()[0].shape[1]
        self.feature_dim = bins if isinstance(bins, int) else _DEFAULT_BINS
        output = session.get_outputs()[0]
        declared = output.shape[-1]
        if isinstance(declared, int) and declared != self.vocab_size:
            raise ModelError(f"log-probs have {declared} classes, metadata vocab_size + blank is {self.vocab_size}")
        self._output = output.name
        if len(tokens) != self.vocab_size:
            raise ModelError(f"tokens.txt has {len(tokens)} tokens but the model outputs {self.vocab_size}")
        if tokens.blank_id != self.vocab_size - 1:
            raise ModelError(
                f"NeMo's blank is the last id ({self.vocab_size - 1}) but tokens.txt puts "
                f"it at {tokens.blank_id}; it must name it <blk>"
            )

    @property
    def feature_options(self) -> FbankOptions:
        return nemo_feature_options(self.sample_rate, self.feature_dim)

    def fbank(self, samples: np.ndarray) -> np.ndarray:
        if not self.per_feature:
            return super().fbank(samples)
        loud = super().fbank(np.asarray(samples, dtype=np.float32) * np.float32(_GAIN))
        energies = np.exp(loud.astype(np.float64)) / (_GAIN * _GAIN)
        guarded: np.ndarray = np.log(energies + _LOG_GUARD).astype(np.float32)
        return guarded

    def normalize(self, fbank: np.ndarray) -> np.ndarray:
        fbank = np.asarray(fbank, dtype=np.float32)
        return normalize_per_feature(fbank) if self.per_feature else fbank

    def run(self, features: Sequence[np.ndarray], conditioning: Sequence[Conditioning]) -> list[np.ndarray]:
        x, lengths = pad_batch(features, _PAD)
        feed = {"audio_signal": np.ascontiguousarray(x.transpose(0, 2, 1)), "length": lengths}
        try:
            (log_probs,) = self._session.run([self._output], feed)
        except Exception as exc:  # onnxruntime raises its own, undocumented classes
            raise ModelError(f"the NeMo CTC model failed on a batch of {len(features)}: {exc}") from exc
        log_probs = np.asarray(log_probs, dtype=np.float32)
        return [log_probs[i, : n // self.subsampling] for i, n in enumerate(lengths.tolist())]
