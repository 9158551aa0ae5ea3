"""Format-independent parts of the offline (non-streaming) model layer.

An :class:`OfflineModel` turns the samples of one whole utterance into its
input features (:meth:`~OfflineModel.features`), and the features of a batch
of utterances of different lengths, padded, into each one's CTC
log-probabilities (:meth:`~OfflineModel.run`).  Unlike a streaming model it
keeps no state: each call sees its utterances whole.

A model may prefix the text's frames with *tag* frames (SenseVoice's four:
language, emotion, audio event, text normalisation): ``tag_frames`` of them
come first in the log-probs, and :meth:`~OfflineModel.tags` reads them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import attrs
import numpy as np
import onnxruntime as ort

from trio_asr.recognition.features import StreamingFbank

if TYPE_CHECKING:
    from trio_asr.recognition.features import FbankOptions
    from trio_asr.recognition.tokens import TokenTable

__all__ = ["Conditioning", "OfflineModel", "UtteranceTags", "log_softmax", "pad_batch"]

# StreamingFbank scales float input by this (the int16 range).
_FBANK_FLOAT_SCALE = 32768.0


@attrs.frozen
class Conditioning:
    """What a model is told about an utterance besides its audio (SenseVoice:
    its ``language``, ``"auto"`` to detect it, and whether to write
    punctuation and inverse text normalisation, ``use_itn``); models that
    take neither ignore it."""

    language: str = "auto"
    use_itn: bool = False


@attrs.frozen
class UtteranceTags:
    """What SenseVoice says about an utterance besides its text: the tokens
    of its first four output frames, without their ``<|`` ``|>``: ``lang``
    (``zh``, ``en``, ``yue``, ``ja``, ``ko``, ``nospeech``), ``emotion``
    (``NEUTRAL``, ``HAPPY``, ``SAD``, ``ANGRY``, ... ``EMO_UNKNOWN``),
    ``event`` (``Speech``, ``BGM``, ``Applause``, ``Laughter``, ``Cry``, ...)
    and ``text_norm`` (``withitn`` or ``woitn``, echoing what was asked)."""

    lang: str
    emotion: str
    event: str
    text_norm: str

    @staticmethod
    def name(piece: str) -> str:
        """``<|zh|>`` -> ``zh``; another piece as it is."""
        return piece[2:-2] if piece.startswith("<|") and piece.endswith("|>") and len(piece) > 4 else piece


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities (float32) of logits along the last axis."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return cast(np.ndarray, shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def pad_batch(features: Sequence[np.ndarray], pad_value: float) -> tuple[np.ndarray, np.ndarray]:
    """Utterances' features (T_i, D) as one float32 (N, max T_i, D) batch
    padded with ``pad_value``, and their lengths (N,) as int64."""
    if not features:
        raise ValueError("no utterances to batch")
    dim = features[0].shape[1]
    lengths = np.array([len(f) for f in features], np.int64)
    batch = np.full((len(features), int(lengths.max()), dim), pad_value, np.float32)
    for i, f in enumerate(features):
        if f.ndim != 2 or f.shape[1] != dim:
            raise ValueError(f"features of shape {f.shape}, expected (T, {dim})")
        batch[i, : len(f)] = f
    return batch, lengths


class OfflineModel(abc.ABC):
    """A non-streaming CTC acoustic model.

    Attributes every format sets:

    - ``sample_rate``: audio rate the features are computed at;
    - ``sample_scale``: the amplitude the model's fbank expects for
      full-scale audio (1.0: samples in [-1, 1]; 32768.0: the int16 range);
    - ``feature_dim``: columns of :meth:`features` (SenseVoice: 80 x 7);
    - ``frame_shift_s``: seconds per output frame;
    - ``vocab_size``, ``tokens``;
    - ``tag_frames``: output frames before the text's (see :meth:`tags`);
    - ``batch_invariant``: whether an utterance's log-probs are the same in
      any batch as alone (up to float rounding): true of float models; the
      usual int8 exports quantize activations with one scale per batch, so
      they are not.
    """

    sample_rate: int = 16000
    sample_scale: float = 1.0
    feature_dim: int
    frame_shift_s: float
    vocab_size: int
    tokens: TokenTable
    tag_frames: int = 0
    batch_invariant: bool = True
    _session: ort.InferenceSession

    @property
    @abc.abstractmethod
    def feature_options(self) -> FbankOptions:
        """Fbank options the model expects."""

    @abc.abstractmethod
    def normalize(self, fbank: np.ndarray) -> np.ndarray:
        """The model's input features (T', feature_dim) from an utterance's
        fbank frames (T, num_bins): stacking, normalisation."""

    @abc.abstractmethod
    def run(self, features: Sequence[np.ndarray], conditioning: Sequence[Conditioning]) -> list[np.ndarray]:
        """Run a batch: each utterance's float32 log-probs (frames, vocab_size),
        its valid frames only, the tag frames first."""

    def fbank(self, samples: np.ndarray) -> np.ndarray:
        """All fbank frames (T, num_bins) of one utterance's mono float
        samples in [-1, 1] at :attr:`sample_rate`."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected 1-D samples, got shape {samples.shape}")
        fbank = StreamingFbank(self.feature_options)
        scaled = samples * np.float32(self.sample_scale / _FBANK_FLOAT_SCALE)
        head, tail = fbank.accept_waveform(scaled), fbank.flush()
        return np.concatenate([head, tail]) if len(tail) else head

    def features(self, samples: np.ndarray) -> np.ndarray:
        """The model's input features (T, feature_dim) of one utterance's
        mono float samples in [-1, 1] at :attr:`sample_rate`."""
        return self.normalize(self.fbank(samples))

    def tags(self, log_probs: np.ndarray) -> UtteranceTags | None:
        """What the tag frames (the first :attr:`tag_frames` of an
        utterance's log-probs) say; None for a model without them."""
        return None

    def check_conditioning(self, conditioning: Conditioning) -> None:
        """ValueError if the model cannot take ``conditioning`` (a language it
        does not know); a model that ignores it takes anything."""
