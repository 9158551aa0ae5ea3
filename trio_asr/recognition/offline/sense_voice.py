"""sherpa-onnx's SenseVoice format (FunASR's SenseVoiceSmall, offline CTC).

Made by sherpa-onnx's ``scripts/sense-voice/export-onnx.py``
(``sherpa-onnx-sense-voice-zh-en-ja-ko-yue-*``: ``model.onnx`` and
``model.int8.onnx`` plus ``tokens.txt``).  One ONNX file; inputs::

    x          float32 (N, T, 80 * lfr_window_size)  LFR-stacked, CMVN'd fbank
    x_length   int32   (N,)                           valid frames of each item
    language   int32   (N,)                           lang_auto, lang_zh, ...
    text_norm  int32   (N,)                           with_itn or without_itn

and one output, raw CTC logits (N, T + 4, V): the first four frames answer
four queries the model prepends (language, emotion, audio event, text
normalisation), the text's frames follow.  Blank is id 0 (``<unk>``).

Custom metadata: ``lfr_window_size``, ``lfr_window_shift`` (7 and 6),
``normalize_samples`` (0: the fbank sees samples in the int16 range),
``neg_mean`` and ``inv_stddev`` (CMVN of the stacked features, comma
separated), ``vocab_size``, ``lang_auto``, ``lang_zh``, ``lang_en``,
``lang_yue``, ``lang_ja``, ``lang_ko`` (and ``lang_nospeech``), ``with_itn``,
``without_itn``.

Features are what sherpa-onnx computes for it (``offline-recognizer-sense-
voice-impl.h``): 80-bin Kaldi fbank with a Hamming window, ``snip_edges``,
mel filters from 20 Hz to Nyquist (``high_freq`` 0), DC removal, pre-emphasis
0.97, no dither; then LFR (:mod:`~trio_asr.recognition.offline.lfr`) and
CMVN ``(x + neg_mean) * inv_stddev``.  A batch is padded with zeros after
CMVN, as sherpa-onnx pads it.  An output frame is ``lfr_window_shift`` x 10 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from trio_asr.recognition.model.base import ModelError
from trio_asr.recognition.offline.base import (
    Conditioning,
    OfflineModel,
    UtteranceTags,
    log_softmax,
    pad_batch,
)
from trio_asr.recognition.offline.lfr import apply_lfr

if TYPE_CHECKING:
    from trio_asr.recognition.features import FbankOptions
    from trio_asr.recognition.tokens import TokenTable

__all__ = ["SenseVoiceModel", "matches"]

_INPUTS = ("x", "x_length", "language", "text_norm")
_INT_KEYS = ("lfr_window_size", "lfr_window_shift", "normalize_samples", "vocab_size",
             "with_itn", "without_itn")
#: the languages sherpa-onnx takes (metadata lang_<name>), "auto" first
LANGUAGES = ("auto", "zh", "en", "yue", "ja", "ko")
_TAG_FRAMES = 4
_FRAME_SHIFT_S = 0.01


def matches(session: ort.InferenceSession) -> bool:
    """Whether a loaded session looks like this format."""
    names = tuple(i.name for i in session.get_inputs())
    meta = session.get_modelmeta().custom_metadata_map
    return names == _INPUTS and "lfr_window_size" in meta


def _integer(meta: dict[str, str], key: str) -> int:
    if key not in meta:
        raise ModelError(f"SenseVoice model lacks metadata {key!r}")
    try:
        return int(meta[key])
    except ValueError:
        raise ModelError(f"metadata {key!r}={meta[key]!r} is not an integer") from None


def _vector(meta: dict[str, str], key: str, size: int) -> np.ndarray:
    if key not in meta:
        raise ModelError(f"SenseVoice model lacks metadata {key!r}")
    try:
        values = np.array([float(v) for v in meta[key].split(",")], np.float32)
    except ValueError:
        raise ModelError(f"metadata {key!r} is not a list of numbers") from None
    if values.shape != (size,) or not np.all(np.isfinite(values)):
        raise ModelError(f"metadata {key!r} has {values.size} values, the model takes {size} features")
    return values


class SenseVoiceModel(OfflineModel):
    """A loaded SenseVoice model; see the module docstring."""

    tag_frames = _TAG_FRAMES

    def __init__(self, session: ort.InferenceSession, tokens: TokenTable) -> None:
        self._session = session
        self.tokens = tokens
        meta = dict(session.get_modelmeta().custom_metadata_map)
        if "Nano" in meta.get("comment", ""):
            raise ModelError("FunASR-Nano models (a SenseVoice encoder with an LLM) are not supported")
        ints = {key: _integer(meta, key) for key in _INT_KEYS}
        self.window_size, self.window_shift = ints["lfr_window_size"], ints["lfr_window_shift"]
        if self.window_size < 1 or self.window_shift < 1:
            raise ModelError(f"LFR window {self.window_size} and shift {self.window_shift} must be positive")
        self.sample_scale = 1.0 if ints["normalize_samples"] else 32768.0
        self.frame_shift_s = _FRAME_SHIFT_S * self.window_shift
        x = session.get_inputs()[0]
        if not isinstance(x.shape[-1], int) or x.shape[-1] % self.window_size:
            raise ModelError(f"input x is declared {x.shape}: its last axis must be a multiple of {self.window_size}")
        self.feature_dim = x.shape[-1]
        self.num_bins = self.feature_dim // self.window_size
        self._neg_mean = _vector(meta, "neg_mean", self.feature_dim)
        self._inv_stddev = _vector(meta, "inv_stddev", self.feature_dim)
        self._languages = {name: _integer(meta, f"lang_{name}") for name in LANGUAGES}
        self._text_norm = (ints["without_itn"], ints["with_itn"])
        self.vocab_size = len(tokens)
        if ints["vocab_size"] != self.vocab_size:
            raise ModelError(f"tokens.txt has {len(tokens)} tokens but the model's vocab_size is {ints['vocab_size']}")
        declared = session.get_outputs()[0].shape[-1]
        if isinstance(declared, int) and declared != self.vocab_size:
            raise ModelError(f"logits have {declared} classes, tokens.txt {self.vocab_size}")
        blank = int(meta.get("blank_id", "0"))
        if tokens.blank_id != blank:
            raise ModelError(f"the model's blank is id {blank}, tokens.txt's {tokens.blank_id}")
        self._output = session.get_outputs()[0].name

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages :class:`Conditioning` may name."""
        return tuple(self._languages)

    @property
    def feature_options(self) -> FbankOptions:
        from trio_asr.recognition.features import FbankOptions

        return FbankOptions(
            sample_rate=self.sample_rate, num_bins=self.num_bins, window_type="hamming",
            dither=0.0, snip_edges=True, high_freq=0.0,
        )

    def normalize(self, fbank: np.ndarray) -> np.ndarray:
        stacked = apply_lfr(fbank, self.window_size, self.window_shift)
        normalized: np.ndarray = (stacked + self._neg_mean) * self._inv_stddev
        return normalized

    def check_conditioning(self, conditioning: Conditioning) -> None:
        if conditioning.language not in self._languages:
            raise ValueError(
                f"SenseVoice knows no language {conditioning.language!r} "
                f"(one of {', '.join(self._languages)})"
            )

    def run(self, features: Sequence[np.ndarray], conditioning: Sequence[Conditioning]) -> list[np.ndarray]:
        if len(features) != len(conditioning):
            raise ValueError(f"{len(features)} utterances but {len(conditioning)} conditionings")
        for c in conditioning:
            self.check_conditioning(c)
        x, lengths = pad_batch(features, 0.0)  # sherpa-onnx pads with 0, not log(eps)
        feed = {
            "x": x,
            "x_length": lengths.astype(np.int32),
            "language": np.array([self._languages[c.language] for c in conditioning], np.int32),
            "text_norm": np.array([self._text_norm[c.use_itn] for c in conditioning], np.int32),
        }
        try:
            (logits,) = self._session.run([self._output], feed)
        except Exception as exc:  # onnxruntime raises its own, undocumented classes
            raise ModelError(f"the SenseVoice model failed on a batch of {len(features)}: {exc}") from exc
        return [log_softmax(logits[i, : n + _TAG_FRAMES]) for i, n in enumerate(lengths.tolist())]

    def tags(self, log_probs: np.ndarray) -> UtteranceTags | None:
        if len(log_probs) < _TAG_FRAMES:
            return None
        pieces = [UtteranceTags.name(self.tokens.piece(int(t))) for t in log_probs[:_TAG_FRAMES].argmax(axis=1)]
        return UtteranceTags(*pieces)
