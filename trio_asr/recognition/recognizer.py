"""A streaming recognizer: features, acoustic model, CTC search and text, per stream.

:class:`Recognizer` holds what streams share (the loaded model, the decoding
settings); :class:`RecognizerStream` is one utterance being decoded.  Nothing
here knows about sockets or trio: the server calls these methods from a worker
thread, one thread per stream at a time.

A stream can decode by itself (:meth:`RecognizerStream.decode` runs its model
chunks one by one) or be driven in steps so that the model runs elsewhere,
batched with other streams (see :mod:`trio_asr.recognition.model_service`):
:meth:`~RecognizerStream.accept_waveform` and :meth:`~RecognizerStream.flush_input`
only compute features, the caller runs the chunks of
:attr:`~RecognizerStream.model_stream` and hands their log-probs to
:meth:`~RecognizerStream.accept_log_probs`.  Both ways give the same results.

A stream is decoded in segments cut at endpoints (:mod:`trio_asr.recognition.segments`):
the acoustic model's state and the features carry on across segments, the
search and everything else that grows restart, so a stream of any length
costs the same per partial result.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np

from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.features import StreamingFbank
from trio_asr._ctc import HotwordGraph
from trio_asr.bounds import between
from trio_asr.recognition.hotword_automaton import Steps
from trio_asr.recognition.hotwords import CompiledHotwords, empty_hotwords, stream_graph
from trio_asr.recognition.model import AcousticModel, ModelStream
from trio_asr.recognition.resample import StreamingResampler
from trio_asr.recognition.search import GreedySearch, PrefixBeamSearch, Search
from trio_asr.recognition.segments import RecognitionResult, Segment, SegmentedSearch, TokenTime
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.recognition.vad import FrameSpeech, SileroVad

__all__ = [
    "MAX_BEAM_WIDTH",
    "SKIP_NON_SPEECH_SECONDS",
    "RecognitionResult",
    "Recognizer",
    "RecognizerStream",
    "Segment",
    "StreamOptions",
    "TokenTime",
]

#: the widest beam a recognizer searches with (the compiled search takes up
#: to :data:`~trio_asr.recognition.search.MAX_BEAM`; past a few hundred a
#: wider beam costs a lot and changes almost nothing)
MAX_BEAM_WIDTH = 256
#: bounds of ``skip_non_speech``, s
SKIP_NON_SPEECH_SECONDS = (0.1, 60.0)

# Log-probability of every non-blank token in a chunk skipped as non-speech.
_NOT_SPOKEN = -1e4

# StreamingFbank scales float input by this (the int16 range).
_FBANK_FLOAT_SCALE = 32768.0

# Work small enough to do on a server's event loop, where it costs less than
# a worker-thread round trip (an idle hop: ~0.09 ms; under load the hop waits
# for a worker, tens of ms). Measured: features ~0.15 ms per 4096 samples; a
# beam-10 search step plus its partial result ~0.2 ms for 32 frames (the
# padded tail of a stream's end; the step's cost grows with the beam); a
# partial result ~0.05 us per character of the open segment and hypothesis
# (its tokens are read back whole; only the new ones are converted to text,
# see TextMemo); the final result, which times every word of the open
# segment, ~1.4 us per token.
_CHEAP_SAMPLES = 4096
_CHEAP_SEARCH = 320  # frames x beam width
_CHEAP_TEXT = 2048  # characters x n-best, partial results
_CHEAP_FINAL_TEXT = 256  # characters x n-best, the final result


@attrs.frozen
class Recognizer:
    """Creates streams over one acoustic model.

    ``decoding`` is ``"beam"`` (CTC prefix beam search of width ``beam``) or
    ``"greedy"`` (best path; n-best then has one entry).  ``hotwords``
    (compiled for this model's tokens, see :mod:`trio_asr.recognition.hotwords`) bias
    every stream's beam search; a stream may add its own.  ``endpoint`` gives
    the rules that cut streams into segments (None: one segment per stream,
    whose cost then grows with its length).  With a ``vad`` the rules apply
    to its speech / non-speech decisions instead of the CTC best path's
    non-blank / blank frames.

    ``skip_non_speech`` (seconds; needs ``vad``; off by default) saves the
    acoustic model's work on long non-speech stretches: a model chunk whose
    audio lies wholly after at least that much non-speech is not run and
    counts as all blank, and the model's state goes on from the last chunk
    run.  Tokens the model would have found in that noise are lost, and the
    first chunk after the stretch sees the state of before it, so the text
    can change: measure before turning it on.
    """

    model: AcousticModel
    beam: int = attrs.field(default=10, validator=between(1, MAX_BEAM_WIDTH))
    decoding: Literal["beam", "greedy"] = attrs.field(
        default="beam", validator=attrs.validators.in_(("beam", "greedy"))
    )
    endpoint: EndpointRules | None = attrs.field(
        factory=EndpointRules, validator=attrs.validators.optional(attrs.validators.instance_of(EndpointRules))
    )
    hotwords: CompiledHotwords | None = attrs.field(default=None, kw_only=True)
    vad: SileroVad | None = attrs.field(default=None, kw_only=True)
    skip_non_speech: float | None = attrs.field(default=None, kw_only=True)

    @vad.validator
    def _check_vad(self, _attribute: object, vad: SileroVad | None) -> None:
        if vad is not None and vad.sample_rate != self.model.sample_rate:
            raise ValueError(f"the VAD takes {vad.sample_rate} Hz audio, the model {self.model.sample_rate} Hz")

    @skip_non_speech.validator
    def _check_skip(self, _attribute: object, seconds: float | None) -> None:
        if seconds is None:
            return
        if self.vad is None:
            raise ValueError("skip_non_speech needs a vad")
        low, high = SKIP_NON_SPEECH_SECONDS
        if not low <= seconds <= high:
            raise ValueError(f"skip_non_speech must be between {low:g} and {high:g} seconds, got {seconds}")
        if self.model.chunk_shift % self.model.subsampling:
            raise ValueError("skip_non_speech needs a model whose chunk is a whole number of output frames")

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def create_stream(self, options: StreamOptions = StreamOptions()) -> RecognizerStream:
        """A new stream as ``options`` ask; the stream's own hotwords are
        compiled here (:class:`~trio_asr.recognition.hotwords.HotwordError`
        if the model cannot spell one)."""
        return RecognizerStream(self, options)

    def create_stream_steps(self, options: StreamOptions = StreamOptions()) -> Steps[RecognizerStream]:
        """:meth:`create_stream` in steps: the stream's own hotwords are
        compiled a small piece at a time
        (:meth:`~trio_asr.recognition.hotwords.CompiledHotwords.merged_steps`);
        without any, or with a list compiled before, the stream comes at
        the first ``next()``."""
        if options.hotwords and self.decoding == "beam":  # (greedy: refused at once)
            base = self.hotwords if self.hotwords is not None else empty_hotwords(self.model.tokens)
            yield from base.merged_steps(options.hotwords)  # kept compiled: the stream finds it
        return RecognizerStream(self, options)

    def new_search(self, nbest: int = 1, hotwords: HotwordGraph | None = None) -> Search:
        """The search of one segment of a stream keeping ``nbest`` alternatives,
        biased by ``hotwords`` (a stream's graph, see :func:`~trio_asr.recognition.hotwords.stream_graph`)."""
        blank = self.model.tokens.blank_id
        if self.decoding == "greedy":
            if hotwords is not None:
                raise ValueError("hotwords need beam decoding, not greedy")
            return GreedySearch(blank_id=blank)
        return PrefixBeamSearch(beam=max(self.beam, nbest), blank_id=blank, hotwords=hotwords)


class RecognizerStream:
    """One stream: accepts mono audio, decodes it chunk by chunk, in segments.

    Audio at another rate than the model's is resampled on the way in
    (streaming polyphase resampler; see :mod:`trio_asr.recognition.resample`).

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

    def __init__(self, recognizer: Recognizer, options: StreamOptions = StreamOptions()) -> None:
        model = recognizer.model
        nbest = self.nbest = options.nbest
        self.sample_rate = model.sample_rate if options.sample_rate is None else options.sample_rate
        self._resampler = (
            None
            if self.sample_rate == model.sample_rate
            else StreamingResampler(self.sample_rate, model.sample_rate)
        )
        self._model = model
        self._fbank = StreamingFbank(model.feature_options)
        self._input_scale = model.sample_scale / _FBANK_FLOAT_SCALE
        self._chunks = model.create_stream()
        graph = stream_graph(recognizer.hotwords, options.hotwords, model.tokens)
        self._search_width = max(recognizer.beam, nbest) if recognizer.decoding == "beam" else 1
        self._search = SegmentedSearch(
            model.tokens,
            lambda: recognizer.new_search(nbest, graph),
            nbest,
            model.frame_shift_s,
            recognizer.endpoint if options.endpoint is None else options.endpoint,
        )
        self._vad = None if recognizer.vad is None else recognizer.vad.create_stream()
        self._speech = FrameSpeech(SileroVad.window_seconds, model.frame_shift_s)
        self._skip_after = recognizer.skip_non_speech
        self._skipped_frames = 0  # output frames of skipped chunks not yet searched
        #: model chunks not run because they held no speech
        self.chunks_skipped = 0
        self._finished = False
        self._samples_received = 0  # at the stream's rate
        self._result: RecognitionResult | None = None  # valid until the search moves
        self._open_chars = 0  # length of the open segment's text at the last result

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
        self._samples_received += samples.size
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        self._accept_model_rate(samples)

    def _accept_model_rate(self, samples: np.ndarray) -> None:
        if self._vad is not None:
            self._speech.add(self._vad.accept_waveform(samples))
        frames = self._fbank.accept_waveform(samples * np.float32(self._input_scale))
        if len(frames):
            self._chunks.accept_features(frames)
            if self._skip_after is not None:
                self._skip_non_speech_chunks(self._skip_after)

    def _skip_non_speech_chunks(self, after: float) -> None:
        """Drop the complete chunks at the front whose audio lies wholly in a
        non-speech stretch already ``after`` seconds long (see :class:`Recognizer`)."""
        assert self._vad is not None
        model, chunks = self._model, self._chunks
        shift_s = model.feature_options.frame_shift_ms / 1000
        while not self._finished and chunks.has_chunk():
            start = chunks.chunks_run * model.chunk_shift * shift_s
            end = start + model.chunk_frames * shift_s + model.feature_options.frame_length_ms / 1000
            if end > self._vad.covered or start - after < self._vad.speech_end:
                return
            chunks.advance(chunks.state)
            self._skipped_frames += model.chunk_shift // model.subsampling
            self.chunks_skipped += 1

    def decode(self) -> None:
        """Run every complete model chunk and advance the search."""
        self.accept_log_probs(self._chunks.decode_ready_chunks())

    def accept_log_probs(self, log_probs: np.ndarray) -> None:
        """Advance the search by the log-probs (t, V) of the next chunks of
        :attr:`model_stream`, run elsewhere (t may be 0)."""
        if self._skipped_frames:
            # finite, so the search's scan of a frame stays quick (an all -inf row is its slow case)
            blank = np.full((self._skipped_frames, self._model.vocab_size), _NOT_SPOKEN, np.float32)
            blank[:, self._model.tokens.blank_id] = 0.0
            log_probs = np.concatenate([blank, log_probs]) if len(log_probs) else blank
            self._skipped_frames = 0
        if len(log_probs):
            speech = None if self._vad is None else self._speech.take(len(log_probs))
            self._search.accept(log_probs, speech)
            self._result = None

    def flush_input(self) -> None:
        """End of audio, without running the model: flush the resampler and
        the features and let :attr:`model_stream` pad its last chunk.  No
        time in the results is later than the audio received (the padding's
        frames are cut off)."""
        if self._finished:
            return
        self._finished = True
        self._result = None
        self._search.end_of_audio(self._samples_received / self.sample_rate)
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
        enough for an event loop (no resampling, a frame's worth of features,
        no voice activity model to run)."""
        return samples <= _CHEAP_SAMPLES and self._resampler is None and self._vad is None

    def cheap_to_flush(self) -> bool:
        """Whether :meth:`flush_input` is cheap enough for an event loop: the
        last frames' features, with no resampler or voice activity model to flush."""
        return self._resampler is None and self._vad is None

    def cheap_to_search(self, frames: int) -> bool:
        """Whether :meth:`accept_log_probs` of this many frames followed by
        :meth:`result` is cheap enough for an event loop: a short search with
        a narrow beam while the open segment's n-best texts are short (the
        finalised segments' text is cached), judged by the text of the last
        result."""
        frames += self._skipped_frames
        if frames == 0 and self._result is not None:
            return True  # nothing to search, the result is cached
        text = _CHEAP_FINAL_TEXT if self._finished else _CHEAP_TEXT
        return frames * self._search_width <= _CHEAP_SEARCH and self._open_chars * self.nbest <= text

    def result(self) -> RecognitionResult:
        """The stream so far (computed once per search step, then cached).

        Once the input is finished and every chunk decoded, the last segment
        is given as finalised."""
        if self._result is None:
            final = self._finished and not self._chunks.has_chunk()
            result = self._result = self._search.result(final)
            self._open_chars = len(result.text if result.open is None else result.open.text)
        return self._result
