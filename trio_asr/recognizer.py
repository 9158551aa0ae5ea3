"""A streaming recognizer: features, acoustic model, CTC search and text, per stream.

:class:`Recognizer` holds what streams share (the loaded model, the decoding
settings); :class:`RecognizerStream` is one utterance being decoded.  Nothing
here knows about sockets or trio: the server calls these methods from a worker
thread, one thread per stream at a time.

A stream can decode by itself (:meth:`RecognizerStream.decode` runs its model
chunks one by one) or be driven in steps so that the model runs elsewhere,
batched with other streams (see :mod:`trio_asr.model_service`):
:meth:`~RecognizerStream.accept_waveform` and :meth:`~RecognizerStream.flush_input`
only compute features, the caller runs the chunks of
:attr:`~RecognizerStream.model_stream` and hands their log-probs to
:meth:`~RecognizerStream.accept_log_probs`.  Both ways give the same results.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np

from trio_asr.features import StreamingFbank
from trio_asr.model import AcousticModel, ModelStream
from trio_asr.resample import StreamingResampler
from trio_asr.search import GreedySearch, Hypothesis, PrefixBeamSearch

__all__ = ["RecognitionResult", "Recognizer", "RecognizerStream", "TokenTime"]

# StreamingFbank scales float input by this (the int16 range).
_FBANK_FLOAT_SCALE = 32768.0

# Work small enough to do on a server's event loop, where it costs less than
# a worker-thread round trip (measured: features ~0.15 ms per 4096 samples;
# texts ~1 us per token and hypothesis).
_CHEAP_SAMPLES = 4096
_CHEAP_FRAMES = 16
_CHEAP_TEXT = 256


@attrs.frozen
class TokenTime:
    """One token of a result with its time span in seconds from the stream's start."""

    piece: str
    start: float
    end: float


@attrs.frozen
class RecognitionResult:
    """The recognizer's view of a stream so far.

    ``nbest`` holds ``(text, log score)`` pairs, best first, distinct texts
    (at most the number of hypotheses asked for); ``text == nbest[0][0]``.
    ``times`` covers the best hypothesis' tokens that produce visible text.
    """

    text: str
    nbest: tuple[tuple[str, float], ...]
    times: tuple[TokenTime, ...]


@attrs.frozen
class Recognizer:
    """Creates streams over one acoustic model.

    ``decoding`` is ``"beam"`` (CTC prefix beam search of width ``beam``) or
    ``"greedy"`` (best path; n-best then has one entry).
    """

    model: AcousticModel
    beam: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    decoding: Literal["beam", "greedy"] = attrs.field(
        default="beam", validator=attrs.validators.in_(("beam", "greedy"))
    )

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def create_stream(self, nbest: int = 1, sample_rate: int | None = None) -> RecognizerStream:
        """A new stream taking audio at ``sample_rate`` (default: the model's)."""
        return RecognizerStream(self, nbest, sample_rate)


class RecognizerStream:
    """One utterance: accepts mono audio, decodes it chunk by chunk.

    Audio at another rate than the model's is resampled on the way in
    (streaming polyphase resampler; see :mod:`trio_asr.resample`).

    Call :meth:`accept_waveform` as audio arrives, :meth:`decode` to run every
    model chunk that is complete, :meth:`input_finished` once at the end (it
    decodes the padded tail, so no audio is lost), and :meth:`result` at any
    time.  Not thread-safe: one caller at a time.

    Driven in steps instead (the model run by someone else): replace
    :meth:`decode` by running the chunks of :attr:`model_stream`
    (``next_chunk`` / ``advance``) and passing their log-probs, in order, to
    :meth:`accept_log_probs`; replace :meth:`input_finished` by
    :meth:`flush_input` followed by the same.
    """

    def __init__(
        self, recognizer: Recognizer, nbest: int = 1, sample_rate: int | None = None
    ) -> None:
        if nbest < 1:
            raise ValueError(f"nbest must be >= 1, not {nbest}")
        model = recognizer.model
        self.nbest = nbest
        self.sample_rate = model.sample_rate if sample_rate is None else sample_rate
        self._resampler = (
            None
            if self.sample_rate == model.sample_rate
            else StreamingResampler(self.sample_rate, model.sample_rate)
        )
        self._model = model
        self._fbank = StreamingFbank(model.feature_options)
        self._input_scale = model.sample_scale / _FBANK_FLOAT_SCALE
        self._chunks = model.create_stream()
        blank = model.tokens.blank_id
        if recognizer.decoding == "greedy":
            self._search: GreedySearch | PrefixBeamSearch = GreedySearch(blank_id=blank)
        else:
            self._search = PrefixBeamSearch(beam=max(recognizer.beam, nbest), blank_id=blank)
        self.samples_accepted = 0
        self._finished = False
        self._result: RecognitionResult | None = None  # valid until the search moves

    @property
    def seconds_accepted(self) -> float:
        return self.samples_accepted / self.sample_rate

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def model_stream(self) -> ModelStream:
        """The chunker holding this stream's features and model state."""
        return self._chunks

    def accept_waveform(self, samples: np.ndarray) -> None:
        """Append mono float samples in [-1, 1] at the stream's sample rate.

        Only computes features; the model runs in :meth:`decode` (or wherever
        the chunks of :attr:`model_stream` are run)."""
        if self._finished:
            raise RuntimeError("input already finished")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected 1-D samples, got shape {samples.shape}")
        self.samples_accepted += len(samples)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._accept_model_rate(samples)

    def _accept_model_rate(self, samples: np.ndarray) -> None:
        frames = self._fbank.accept_waveform(samples * np.float32(self._input_scale))
        if len(frames):
            self._chunks.accept_features(frames)

    def decode(self) -> None:
        """Run every complete model chunk and advance the search."""
        self.accept_log_probs(self._chunks.decode_ready_chunks())

    def accept_log_probs(self, log_probs: np.ndarray) -> None:
        """Advance the search by the log-probs (t, V) of the next chunks of
        :attr:`model_stream`, run elsewhere (t may be 0)."""
        if len(log_probs):
            self._search.accept(log_probs)
            self._result = None

    def flush_input(self) -> None:
        """End of audio, without running the model: flush the resampler and
        the features and let :attr:`model_stream` pad its last chunk."""
        if self._finished:
            return
        self._finished = True
        if self._resampler is not None:
            self._accept_model_rate(self._resampler.flush())
        tail = self._fbank.flush()
        if len(tail):
            self._chunks.accept_features(tail)
        self._chunks.input_finished()

    def input_finished(self) -> None:
        """End of audio: flush the features, decode everything left (padded)."""
        self.flush_input()
        self.decode()

    def cheap_to_accept(self, samples: int) -> bool:
        """Whether :meth:`accept_waveform` of this many samples is cheap
        enough for an event loop (no resampling, a frame's worth of features)."""
        return samples <= _CHEAP_SAMPLES and self._resampler is None

    def cheap_to_search(self, frames: int) -> bool:
        """Whether :meth:`accept_log_probs` of this many frames followed by
        :meth:`result` is cheap enough for an event loop: a short search while
        the n-best texts are short."""
        cached = self._result
        if cached is None:
            return False
        if frames == 0:
            return True
        return frames <= _CHEAP_FRAMES and len(cached.text) * self.nbest <= _CHEAP_TEXT

    def result(self) -> RecognitionResult:
        """The n-best so far (computed once per search step, then cached)."""
        if self._result is None:
            self._result = self._compute_result()
        return self._result

    def _compute_result(self) -> RecognitionResult:
        if isinstance(self._search, GreedySearch):
            hypotheses = [self._search.best]
        else:
            hypotheses = self._search.nbest(self.nbest)
        tokens = self._model.tokens
        nbest = tuple((tokens.text(h.tokens), h.score) for h in hypotheses)
        return RecognitionResult(nbest[0][0], nbest, self._times(hypotheses[0]))

    def _times(self, hypothesis: Hypothesis) -> tuple[TokenTime, ...]:
        shift = self._model.frame_shift_s
        pieces = self._model.tokens.pieces(hypothesis.tokens)
        return tuple(
            TokenTime(piece.strip() or piece, frame * shift, (frame + 1) * shift)
            for piece, frame in zip(pieces, hypothesis.frames)
            if piece.strip()
        )
