"""Voice activity detection with the real Silero VAD model on real speech.

The speech clips (trimmed to their speech) are concatenated with
silences and noise inserted at known positions; the VAD must find speech in
every clip and none inside the inserted stretches (up to 0.2 s at their
edges), and VAD-based endpoints must cut exactly one segment boundary into
each inserted stretch and none elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
from paths import SPEECH_FILES

from trio_asr.audio import read_wav
from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.cli.transcribe import transcribe_samples
from trio_asr.recognition.vad import FrameSpeech, SileroVad, VadUnavailable, silero_model_path

try:
    silero_model_path()
except VadUnavailable as exc:
    pytest.skip(f"no Silero VAD model: {exc}", allow_module_level=True)

RATE = 16000
GAP_SECONDS = 1.5
TOLERANCE = 0.2


def trim(samples: np.ndarray, floor_db: float = -25.0) -> np.ndarray:
    """The clip from its first to its last 10 ms frame within ``floor_db`` of its loudest."""
    n = 160
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max() + floor_db)
    return samples[loud[0] * n : (loud[-1] + 1) * n]


@pytest.fixture(scope="module")
def speech_with_gaps() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The clips with a gap after each: digital silence, quiet noise or loud
    noise (about -50 dBFS and -30 dBFS white noise); and the gaps' spans in seconds."""
    rng = np.random.default_rng(11)
    parts, gaps, t = [], [], 0.0
    for i, path in enumerate(SPEECH_FILES):
        clip = trim(read_wav(path)[0][:, 0])
        parts.append(clip)
        t += len(clip) / RATE
        n = int(GAP_SECONDS * RATE)
        level = (0.0, 0.003, 0.03)[i % 3]
        parts.append((rng.standard_normal(n) * level).astype(np.float32))
        gaps.append((t, t + GAP_SECONDS))
        t += GAP_SECONDS
    return np.concatenate(parts), gaps


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def speech_runs(flags: np.ndarray, seconds: float) -> list[tuple[float, float]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return [(a * seconds, b * seconds) for a, b in zip(edges[::2], edges[1::2])]


def test_vad_finds_speech_in_each_clip_and_none_in_the_gaps(vad, speech_with_gaps):
    samples, gaps = speech_with_gaps
    flags = vad.create_stream().accept_waveform(samples)
    runs = speech_runs(flags, vad.window_seconds)
    for g0, g1 in gaps:
        assert not any(a < g1 - TOLERANCE and b > g0 + TOLERANCE for a, b in runs), (g0, g1, runs)
    clip_starts = [0.0] + [g1 for _, g1 in gaps[:-1]]
    for start, (end, _) in zip(clip_starts, gaps):
        assert any(a < end and b > start for a, b in runs), (start, end, runs)


def test_vad_flags_do_not_depend_on_how_audio_arrives(vad, speech_with_gaps):
    samples = speech_with_gaps[0][: 5 * RATE]
    whole = vad.create_stream().accept_waveform(samples)
    stream = vad.create_stream()
    rng = np.random.default_rng(3)
    cuts = np.sort(rng.integers(0, len(samples), 40))
    pieces = [stream.accept_waveform(piece) for piece in np.split(samples, cuts)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert whole.any() and not whole.all()


@pytest.mark.parametrize("driving", ["alone", "stepped"])
def test_vad_endpoints_cut_one_boundary_into_each_gap(zipformer2_model_dir, vad, speech_with_gaps, driving):
    """The fixture model's best path is no guide to speech (it emits tokens on
    silence too); the VAD's decisions are."""
    samples, gaps = speech_with_gaps
    model = load_model(zipformer2_model_dir)
    rules = EndpointRules(silence_without_text=2.0, silence_after_text=0.6, max_segment=30)
    recognizer = Recognizer(model, endpoint=rules, vad=vad)
    if driving == "alone":
        result = transcribe_samples(recognizer, samples, RATE)
    else:
        stream = recognizer.create_stream()
        for start in range(0, len(samples), 1360):
            stream.accept_waveform(samples[start : start + 1360])
            stream.accept_log_probs(stream.model_stream.decode_ready_chunks())
        stream.flush_input()
        stream.accept_log_probs(stream.model_stream.decode_ready_chunks())
        result = stream.result()
    # every segment but the one reaching the end of the stream (its padding included)
    boundaries = [s.end for s in result.segments if s.end < len(samples) / RATE]
    assert len(boundaries) == len(gaps)
    for boundary, (g0, g1) in zip(boundaries, gaps):
        assert g0 - TOLERANCE <= boundary <= g1 + TOLERANCE, (boundary, g0, g1)


def test_without_vad_the_fixture_cuts_elsewhere(zipformer2_model_dir, speech_with_gaps):
    """The check above can fail: CTC-blank endpoints on the fixture do not
    fall into the gaps."""
    samples, gaps = speech_with_gaps
    rules = EndpointRules(silence_without_text=2.0, silence_after_text=0.6, max_segment=30)
    result = transcribe_samples(Recognizer(load_model(zipformer2_model_dir), endpoint=rules), samples, RATE)
    boundaries = [s.end for s in result.segments if s.end < len(samples) / RATE]
    inside = [any(g0 - TOLERANCE <= b <= g1 + TOLERANCE for g0, g1 in gaps) for b in boundaries]
    assert len(boundaries) != len(gaps) or not all(inside), boundaries


def test_frame_speech_maps_windows_to_frames_by_midpoint():
    frames = FrameSpeech(window_seconds=0.032, frame_shift_s=0.04)
    frames.add(np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0], bool))  # windows of 32 ms
    # frame midpoints 20, 60, 100, 140, 180, 220, 260, 300, 340 ms -> windows 0,1,3,4,5,6,8,9,10
    got = np.concatenate([frames.take(2), frames.take(0), frames.take(7)])
    np.testing.assert_array_equal(got, [0, 1, 0, 0, 1, 1, 0, 0, 0])


def test_vad_errors_are_one_clear_line(tmp_path):
    with pytest.raises(VadUnavailable, match="cannot load the VAD model"):
        SileroVad(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="threshold"):
        SileroVad(threshold=1.5)


def test_skipping_non_speech_runs_no_model_chunk_in_long_silences(zipformer2_model_dir, vad, speech_with_gaps):
    """With ``skip_non_speech`` the chunks lying wholly in a non-speech
    stretch at least that long are not run: none in speech, most of each
    gap's chunks once the stretch is long enough; the segments (cut by the
    VAD) and the frame count stay as without skipping, in both driving modes."""
    samples, gaps = speech_with_gaps
    model = load_model(zipformer2_model_dir)
    chunk_s = model.chunk_shift * 0.01
    rules = EndpointRules(silence_without_text=2.0, silence_after_text=0.6, max_segment=30)
    plain = transcribe_samples(Recognizer(model, endpoint=rules, vad=vad), samples, RATE)
    skipping = Recognizer(model, endpoint=rules, vad=vad, skip_non_speech=0.3)

    speech_only = skipping.create_stream()
    speech_only.accept_waveform(samples[: int(gaps[0][0] * RATE)])  # the first clip, trimmed to its speech
    speech_only.decode()
    assert speech_only.chunks_skipped == 0

    results = []
    for stepped in (False, True):
        stream = skipping.create_stream()
        for start in range(0, len(samples), 1360):
            stream.accept_waveform(samples[start : start + 1360])
            if stepped:
                stream.accept_log_probs(stream.model_stream.decode_ready_chunks())
            else:
                stream.decode()
        stream.input_finished()
        results.append((stream.result(), stream.chunks_skipped))
    (result, skipped), (stepped_result, stepped_skipped) = results
    assert (result, skipped) == (stepped_result, stepped_skipped)
    # each 1.5 s gap minus the 0.3 s wait and VAD lag leaves about 1 s: several chunks
    assert len(gaps) * 0.5 / chunk_s <= skipped <= len(gaps) * GAP_SECONDS / chunk_s
    assert result.open.end == plain.open.end
    assert [round(s.end, 2) for s in result.segments] == [round(s.end, 2) for s in plain.segments]


def test_skipping_needs_a_vad(zipformer2_model_dir):
    with pytest.raises(ValueError, match="needs a vad"):
        Recognizer(load_model(zipformer2_model_dir), skip_non_speech=1.0)
