"""The offline recognizer: whole utterances to text, with n-best, hotwords and tags.

:class:`OfflineRecognizer` decodes an utterance (or a batch of them, of
different lengths) with an :class:`~trio_asr.recognition.offline.base.OfflineModel`
and the same CTC search and result shapes as the streaming recognizer: a
:class:`~trio_asr.recognition.segments.RecognitionResult` holding one final
segment (the whole utterance), its n-best, and its token and word times,
plus SenseVoice's :class:`~trio_asr.recognition.offline.base.UtteranceTags`.

In three steps, for a caller that batches the model across requests (a
server's second pass): :meth:`~OfflineRecognizer.prepare` (resampling and
features: a worker thread's work), :meth:`~OfflineRecognizer.run` (the model,
on any number of prepared utterances at once) and
:meth:`~OfflineRecognizer.decode` (the search, per utterance).
:meth:`~OfflineRecognizer.recognize` and
:meth:`~OfflineRecognizer.recognize_batch` do all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs
import numpy as np

from trio_asr._ctc import HotwordGraph
from trio_asr.bounds import between
from trio_asr.recognition.hotwords import CompiledHotwords, stream_graph
from trio_asr.recognition.offline.base import Conditioning, OfflineModel, UtteranceTags
from trio_asr.recognition.offline.options import OfflineOptions
from trio_asr.recognition.recognizer import MAX_BEAM_WIDTH
from trio_asr.recognition.resample import StreamingResampler
from trio_asr.recognition.search import GreedySearch, PrefixBeamSearch, Search
from trio_asr.recognition.segments import RecognitionResult, Segment, SegmentedSearch, TokenTime

__all__ = ["OfflineRecognizer", "OfflineResult", "PreparedUtterance", "shift_times"]


@attrs.frozen
class OfflineResult:
    """One utterance decoded: ``result`` as the streaming recognizer gives a
    finished stream's (one final segment, unless nothing was recognised),
    SenseVoice's ``tags`` (None for other models, or audio too short for a
    frame), and the utterance's ``duration`` in seconds."""

    result: RecognitionResult
    tags: UtteranceTags | None
    duration: float


@attrs.frozen(eq=False)
class PreparedUtterance:
    """An utterance ready for the model: its ``features``, ``duration`` (s),
    the ``options`` it was prepared with and what the model is told about it."""

    features: np.ndarray
    duration: float
    options: OfflineOptions
    conditioning: Conditioning


def shift_times(result: RecognitionResult, seconds: float) -> RecognitionResult:
    """``result`` with every time ``seconds`` later."""
    if not seconds:
        return result

    def token(t: TokenTime) -> TokenTime:
        return TokenTime(t.piece, t.start + seconds, t.end + seconds)

    def segment(s: Segment) -> Segment:
        return attrs.evolve(
            s, start=s.start + seconds, end=s.end + seconds,
            words=tuple(map(token, s.words)), tokens=tuple(map(token, s.tokens)),
        )

    return attrs.evolve(
        result,
        times=tuple(map(token, result.times)),
        tokens=tuple(map(token, result.tokens)),
        segments=tuple(map(segment, result.segments)),
        open=None if result.open is None else segment(result.open),
    )


def _auto(language: str) -> str:
    return language or "auto"  # sherpa-onnx's spelling of auto: ""


@attrs.frozen
class OfflineRecognizer:
    """Decodes whole utterances with one offline model.

    ``decoding`` is ``"beam"`` (CTC prefix beam search of width ``beam``) or
    ``"greedy"`` (best path, as sherpa-onnx decodes; n-best then has one
    entry).  ``hotwords`` (compiled for this model's tokens) bias every
    utterance's beam search; an utterance may add its own.  ``language`` and
    ``use_itn`` are SenseVoice's defaults, which an utterance's options may
    override (other models ignore them).
    """

    model: OfflineModel
    beam: int = attrs.field(default=10, validator=between(1, MAX_BEAM_WIDTH))
    decoding: Literal["beam", "greedy"] = attrs.field(
        default="beam", validator=attrs.validators.in_(("beam", "greedy"))
    )
    hotwords: CompiledHotwords | None = attrs.field(default=None, kw_only=True)
    language: str = attrs.field(default="auto", kw_only=True, converter=_auto)
    use_itn: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        self.model.check_conditioning(Conditioning(self.language, self.use_itn))

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def conditioning(self, options: OfflineOptions) -> Conditioning:
        """What the model is told about an utterance with ``options``;
        ValueError for a language the model does not know."""
        language = self.language if options.language is None else _auto(options.language)
        use_itn = self.use_itn if options.use_itn is None else options.use_itn
        conditioning = Conditioning(language, use_itn)
        self.model.check_conditioning(conditioning)
        return conditioning

    def prepare(self, samples: np.ndarray, options: OfflineOptions = OfflineOptions()) -> PreparedUtterance:
        """Resample (to the model's rate) and compute the features of one
        utterance: mono float samples in [-1, 1] at ``options.sample_rate``."""
        conditioning = self.conditioning(options)
        if options.hotwords and self.decoding == "greedy":
            raise ValueError("hotwords need beam decoding, not greedy")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected 1-D samples, got shape {samples.shape}")
        rate = self.sample_rate if options.sample_rate is None else options.sample_rate
        duration = len(samples) / rate
        if rate != self.sample_rate:
            resampler = StreamingResampler(rate, self.sample_rate)
            samples = np.concatenate([resampler.process(samples), resampler.flush()])
        return PreparedUtterance(self.model.features(samples), duration, options, conditioning)

    def run(self, utterances: Sequence[PreparedUtterance]) -> list[np.ndarray]:
        """Each utterance's log-probs: one model call for the batch when the
        model is batch invariant, else one call per utterance (so that an
        int8 model gives each the result it gives alone).  Utterances without
        a feature frame are not run: their log-probs are empty."""
        empty = np.zeros((0, self.model.vocab_size), np.float32)
        out: list[np.ndarray] = [empty] * len(utterances)
        todo = [i for i, u in enumerate(utterances) if len(u.features)]
        groups = [todo] if self.model.batch_invariant else [[i] for i in todo]
        for group in groups:
            if not group:
                continue
            found = self.model.run(
                [utterances[i].features for i in group], [utterances[i].conditioning for i in group]
            )
            for i, log_probs in zip(group, found):
                out[i] = log_probs
        return out

    def decode(self, utterance: PreparedUtterance, log_probs: np.ndarray) -> OfflineResult:
        """The search over one utterance's log-probs (as :meth:`run` gave them)."""
        options, model = utterance.options, self.model
        tags = model.tags(log_probs) if model.tag_frames else None
        text_frames = log_probs[model.tag_frames :]
        graph = stream_graph(self.hotwords, options.hotwords, model.tokens) if self.decoding == "beam" else None
        search = SegmentedSearch(
            model.tokens, lambda: self._new_search(options.nbest, graph), options.nbest, model.frame_shift_s, None
        )
        search.end_of_audio(utterance.duration)
        search.accept(text_frames)
        result = shift_times(search.result(final=True), options.offset_s)
        return OfflineResult(result, tags, utterance.duration)

    def recognize(self, samples: np.ndarray, options: OfflineOptions = OfflineOptions()) -> OfflineResult:
        """Decode one utterance."""
        (result,) = self.recognize_batch([samples], options)
        return result

    def recognize_batch(
        self, utterances: Sequence[np.ndarray], options: OfflineOptions | Sequence[OfflineOptions] = OfflineOptions()
    ) -> list[OfflineResult]:
        """Decode several utterances (of any lengths) at once; ``options``:
        one for all, or one per utterance."""
        if isinstance(options, OfflineOptions):
            options = [options] * len(utterances)
        if len(options) != len(utterances):
            raise ValueError(f"{len(utterances)} utterances but {len(options)} options")
        prepared = [self.prepare(samples, o) for samples, o in zip(utterances, options)]
        return [self.decode(u, lp) for u, lp in zip(prepared, self.run(prepared))]

    def _new_search(self, nbest: int, hotwords: HotwordGraph | None) -> Search:
        blank = self.model.tokens.blank_id
        if self.decoding == "greedy":
            return GreedySearch(blank_id=blank)
        return PrefixBeamSearch(beam=max(self.beam, nbest), blank_id=blank, hotwords=hotwords)
