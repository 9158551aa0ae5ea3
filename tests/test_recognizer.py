"""The whole recognizer (fbank -> chunked model -> CTC search -> text).

- ``test_greedy_matches_sherpa``: end to end, from samples to text, our
  greedy result equals sherpa-onnx's on the same model files and audio, for
  every token emitted before the audio's end can influence the output (sherpa
  has no tail flush; it is fed trailing silence instead).
- chunking invariance: 10 ms, 85 ms, 300 ms and random pieces give the same
  final n-best (texts and scores).
- n-best well-formedness, also for every streaming partial.
- other sample rates and channel counts are resampled / down-mixed on the way
  in and give (nearly) the 16 kHz mono result.
"""

from __future__ import annotations

import functools

import jiwer
import numpy as np
import pytest
from paths import SPEECH_FILES
from scipy.signal import resample_poly

from trio_asr.audio import read_wav
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.model import find_model_file, load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.resample import resample
from trio_asr.recognition.segments import join_texts
from trio_asr.cli.transcribe import transcribe_samples
from trio_asr.recognition.stream_options import StreamOptions

sherpa_onnx = pytest.importorskip("sherpa_onnx")


@pytest.fixture(scope="module")
def speech() -> dict[str, np.ndarray]:
    return {path.name: read_wav(path)[0][:, 0] for path in SPEECH_FILES}


@pytest.fixture
def model(streaming_ctc_model_dir):
    return load_model(streaming_ctc_model_dir)


def feed(stream, samples: np.ndarray, sizes) -> list:
    """Feed ``samples`` in pieces of the given sizes (cycled); partial results after each."""
    partials = []
    start, k = 0, 0
    while start < len(samples):
        size = sizes[k % len(sizes)]
        stream.accept_waveform(samples[start : start + size])
        stream.decode()
        partials.append(stream.result())
        start += size
        k += 1
    stream.input_finished()
    return partials


def sherpa_greedy(model_dir, samples: np.ndarray, tail_seconds: float = 1.0):
    recognizer = sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
        tokens=str(model_dir / "tokens.txt"), model=str(find_model_file(model_dir)), num_threads=1
    )
    stream = recognizer.create_stream()
    for start in range(0, len(samples), 1360):
        stream.accept_waveform(16000, samples[start : start + 1360])
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
    stream.accept_waveform(16000, np.zeros(int(16000 * tail_seconds), np.float32))
    stream.input_finished()
    while recognizer.is_ready(stream):
        recognizer.decode_stream(stream)
    return recognizer.get_result_all(stream)


@pytest.mark.parametrize("name", [p.name for p in SPEECH_FILES])
def test_greedy_matches_sherpa(request, streaming_ctc_model_dir, model, speech, name):
    samples = speech[name]
    stream = Recognizer(model, decoding="greedy").create_stream()
    feed(stream, samples, [1360])
    ours = stream.result()
    theirs = sherpa_greedy(streaming_ctc_model_dir, samples)

    # Output frames computed only from feature frames that lie wholly inside
    # the audio are the same for both, whatever either does after its end.
    full_frames = len(samples) // model.feature_options.window_shift - 2
    chunks = (full_frames - model.chunk_frames) // model.chunk_shift + 1
    cutoff_s = chunks * model.chunk_shift // model.subsampling * model.frame_shift_s
    our_pieces = [t.piece for t in ours.tokens if t.start < cutoff_s - 1e-6]
    assert len(our_pieces) > 5  # not vacuous
    # sherpa reports pieces (spelling the word mark "▁" as a space); map them
    # back to ids and spell them our way.
    their_ids = [
        model.tokens.id(tok.replace(" ", "\u2581")) for tok, ts in zip(theirs.tokens, theirs.timestamps)
        if ts < cutoff_s - 1e-6
    ]
    assert model.tokens.text(their_ids) == "".join(our_pieces)
    if request.node.callspec.params["streaming_ctc_model_dir"] == "real":
        assert ours.text.replace(" ", "") == theirs.text.replace(" ", "")


@pytest.mark.parametrize("name", [p.name for p in SPEECH_FILES[:3]])
def test_chunking_invariance(model, speech, name):
    samples = speech[name]
    rng = np.random.default_rng(len(name))
    feeds = {
        "10ms": [160],
        "85ms": [1360],
        "300ms": [4800],
        "random": list(rng.integers(1, 9000, size=64)),
    }
    results = {}
    for label, sizes in feeds.items():
        stream = Recognizer(model, beam=8).create_stream(StreamOptions(nbest=4))
        feed(stream, samples, sizes)
        results[label] = stream.result()
    reference = results.pop("85ms")
    assert reference.text
    for label, result in results.items():
        assert [t for t, _ in result.nbest] == [t for t, _ in reference.nbest], label
        np.testing.assert_allclose(
            [s for _, s in result.nbest], [s for _, s in reference.nbest], rtol=1e-5, err_msg=label
        )
        assert result.tokens == reference.tokens and result.times == reference.times, label


def test_nbest_is_sorted_distinct_and_led_by_the_best(model, speech):
    samples = speech[SPEECH_FILES[0].name]
    stream = Recognizer(model, beam=10).create_stream(StreamOptions(nbest=5))
    partials = feed(stream, samples, [4800])
    final = stream.result()
    for result in [*partials[len(partials) // 2 :], final]:
        texts = [t for t, _ in result.nbest]
        scores = [s for _, s in result.nbest]
        assert result.text == texts[0]
        assert len(set(texts)) == len(texts)
        assert scores == sorted(scores, reverse=True)
    assert len(final.nbest) == 5
    times = [t.start for t in final.times]
    assert times == sorted(times) and times[-1] <= len(samples) / 16000 + 0.5


def test_beam_is_at_least_as_likely_as_greedy(model, speech):
    samples = speech[SPEECH_FILES[-1].name]
    results = {}
    for decoding in ("greedy", "beam"):
        stream = Recognizer(model, decoding=decoding).create_stream()
        feed(stream, samples, [1360])
        results[decoding] = stream.result()
    # The beam's score sums all alignments of its text; greedy's is one path.
    assert results["beam"].nbest[0][1] >= results["greedy"].nbest[0][1] - 1e-4


def cer(reference: str, hypothesis: str) -> float:
    return jiwer.cer(reference, hypothesis) if reference else float(bool(hypothesis))


@pytest.mark.parametrize("name", [p.name for p in SPEECH_FILES[:3]])
def test_48khz_stereo_matches_16khz_mono(model, speech, name):
    """The fixture's arg-max reacts to tiny feature changes, so a few tokens
    may flip; a resampling or down-mix bug changes nearly all of them."""
    mono = speech[name]
    reference = transcribe_samples(Recognizer(model), mono, 16000).text
    upsampled = resample_poly(mono, 3, 1).astype(np.float32)
    stereo = np.stack([upsampled * 1.1, upsampled * 0.9], axis=1)
    result = transcribe_samples(Recognizer(model), stereo, 48000).text
    assert cer(reference, result) <= 0.1


@pytest.mark.parametrize("name", [p.name for p in SPEECH_FILES[:3]])
def test_8khz_matches_band_limited_16khz(model, speech, name):
    """8 kHz audio lacks everything above 4 kHz, so compare it with the 16 kHz
    signal upsampled from the same 8 kHz audio in one shot.  (The fixture's
    log-mel bins above 4 kHz hold log(~0), which any two different
    anti-imaging filters make differ wildly, so the same filter is used; what
    this checks is the stream's rate plumbing: chunked resampling, carry-over
    and tail flush.)"""
    narrow = resample_poly(speech[name], 1, 2).astype(np.float32)
    band_limited = resample(narrow, 8000, 16000)
    reference = transcribe_samples(Recognizer(model), band_limited, 16000).text
    result = transcribe_samples(Recognizer(model), narrow, 8000).text
    assert cer(reference, result) <= 0.1


def test_stream_rejects_misuse(model):
    stream = Recognizer(model).create_stream()
    with pytest.raises(ValueError):
        stream.accept_waveform(np.zeros((10, 2), np.float32))
    stream.input_finished()
    with pytest.raises(RuntimeError):
        stream.accept_waveform(np.zeros(10, np.float32))
    with pytest.raises(ValueError):
        Recognizer(model).create_stream(StreamOptions(nbest=0))


@pytest.mark.parametrize("decoding", ["beam", "greedy"])
def test_no_surviving_path_gives_an_empty_result(model, decoding):
    """Frames where every token has probability 0 leave no path: the result
    is empty, not an IndexError (stepped mode, as the batched server drives it)."""
    stream = Recognizer(model, decoding=decoding).create_stream(StreamOptions(nbest=3))
    stream.accept_log_probs(np.full((6, model.vocab_size), -np.inf, np.float32))
    partial = stream.result()
    assert partial.text == ""
    stream.flush_input()
    stream.accept_log_probs(stream.model_stream.decode_ready_chunks())
    final = stream.result()
    assert final.text == "" and final.segments == () and final.times == ()
    if decoding == "beam":
        assert partial.nbest == () and final.nbest == ()


def test_segments_are_the_same_decoded_alone_or_stepped(model, speech):
    """Short rules so that the fixture's best path has endpoints: the stream
    decoding by itself and the stream stepped as the batched server drives it
    (model chunks run outside, log-probs handed in) cut the same segments."""
    samples = np.concatenate([speech[p.name] for p in SPEECH_FILES])
    rules = EndpointRules(silence_without_text=0.2, silence_after_text=0.1, max_segment=1.0)
    recognizer = Recognizer(model, beam=4)
    alone = recognizer.create_stream(StreamOptions(nbest=2, endpoint=rules))
    stepped = recognizer.create_stream(StreamOptions(nbest=2, endpoint=rules))
    for start in range(0, len(samples), 1360):
        piece = samples[start : start + 1360]
        alone.accept_waveform(piece)
        alone.decode()
        stepped.accept_waveform(piece)
        stepped.accept_log_probs(stepped.model_stream.decode_ready_chunks())
        assert stepped.result() == alone.result()
    alone.input_finished()
    stepped.flush_input()
    stepped.accept_log_probs(stepped.model_stream.decode_ready_chunks())
    final = alone.result()
    assert stepped.result() == final
    assert len(final.segments) > 10
    assert final.open.text == ""
    assert final.text == functools.reduce(join_texts, [s.text for s in final.segments])
    ends = [s.end for s in final.segments]
    assert ends == sorted(ends) and all(s.end - s.start <= 1.0 + 1e-9 for s in final.segments)
    words = final.times
    assert [w.start for w in words] == sorted(w.start for w in words)
    end = len(samples) / 16000  # a word heard only in the padded tail is cut to nothing there
    assert all(w.start < w.end or w.start == w.end == end for w in words)


def test_cheap_work_is_judged_by_the_open_text_also_after_the_end(model):
    """What a server may do on its event loop: short searches while the
    open segment's text is short, the tail's search included (flushing
    resets the cached result, not what the text cost)."""
    recognizer = Recognizer(model, endpoint=None)
    stream = recognizer.create_stream(StreamOptions(nbest=2))
    assert stream.cheap_to_search(16) and stream.cheap_to_flush()
    assert not stream.cheap_to_search(10_000)
    vocab = model.vocab_size
    spoken = np.full((1200, vocab), -30.0, np.float32)
    spoken[np.arange(1200), 1 + np.arange(1200) % (vocab - 1)] = 0.0  # a new token every frame
    stream.accept_log_probs(spoken)
    assert len(stream.result().text) * 2 > 2048
    assert not stream.cheap_to_search(16)
    assert stream.cheap_to_search(0)  # a frame that ran no chunk: the result is cached
    stream.flush_input()
    assert not stream.cheap_to_search(16) and not stream.cheap_to_search(0)
    short = recognizer.create_stream(StreamOptions(nbest=1))
    short.accept_log_probs(spoken[:8])
    short.result()
    short.flush_input()
    assert short.cheap_to_search(32)
    # the final result times every word: a shorter text than a partial's is cheap
    medium = recognizer.create_stream(StreamOptions(nbest=1))
    medium.accept_log_probs(spoken[:400])
    assert 256 < len(medium.result().text) <= 2048 and medium.cheap_to_search(32)
    medium.flush_input()
    assert not medium.cheap_to_search(32)
    wide = Recognizer(model, beam=256, endpoint=None).create_stream(StreamOptions(nbest=1))
    assert wide.cheap_to_search(1) and not wide.cheap_to_search(32)
    resampling = recognizer.create_stream(StreamOptions(nbest=1, sample_rate=8000))
    assert not resampling.cheap_to_flush() and not resampling.cheap_to_accept(100)


@pytest.mark.parametrize("rate", [16000, 8000])
@pytest.mark.parametrize("stepped", [False, True], ids=["alone", "stepped"])
def test_no_time_runs_past_the_audio(model, speech, rate, stepped):
    """The model's last chunk is padded past the end of the audio; no word,
    token or segment time (segments closed in the padded tail included) is
    later than the end of the samples received, at any rate, decoded alone or
    stepped as the batched server drives it."""
    rules = EndpointRules(silence_without_text=0.2, silence_after_text=0.1, max_segment=1.0)
    recognizer = Recognizer(model, beam=4)
    for name, samples in speech.items():
        samples = samples if rate == 16000 else resample_poly(samples, 1, 2).astype(np.float32)
        duration = len(samples) / rate
        stream = recognizer.create_stream(StreamOptions(sample_rate=rate, endpoint=rules))
        for start in range(0, len(samples), 1360):
            stream.accept_waveform(samples[start : start + 1360])
            if stepped:
                stream.accept_log_probs(stream.model_stream.decode_ready_chunks())
            else:
                stream.decode()
        if stepped:
            stream.flush_input()
            stream.accept_log_probs(stream.model_stream.decode_ready_chunks())
        else:
            stream.input_finished()
        final = stream.result()
        assert final.text and final.segments, name
        times = [*final.times, *final.tokens, *(w for s in final.segments for w in (*s.words, *s.tokens))]
        ends = [t.end for t in times] + [s.end for s in final.segments] + [final.open.start, final.open.end]
        assert max(ends) <= duration, (name, max(ends), duration)
        assert max(ends) > duration - 0.2, name  # the tail is still timed, not dropped
        assert all(t.start <= t.end for t in times)
