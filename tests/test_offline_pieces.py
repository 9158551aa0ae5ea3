"""Long audio for offline models: cutting into pieces (in pauses, else at
the quietest point), decoding them in batches, joining their results."""

from __future__ import annotations

import numpy as np
import pytest

from offlineutil import noise, read_wav
from paths import SPEECH_FILES

from trio_asr.recognition.offline import OfflineOptions, OfflineRecognizer, load_offline_model
from trio_asr.recognition.offline.base import UtteranceTags
from trio_asr.recognition.offline.long_audio import file_tags, join_results, recognize_long
from trio_asr.recognition.offline.pieces import (
    MAX_PIECE_S,
    Piece,
    VadSilences,
    cut_pieces,
    quietest_point,
)
from trio_asr.recognition.offline.recognizer import OfflineResult
from trio_asr.recognition.segments import RecognitionResult, Segment
from trio_asr.recognition.vad import SileroVad
from trio_asr.testing.sense_voice import write_sense_voice_model

RATE = 16000
GAP_S = 0.8


def spoken(minimum_s: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The speech clips one after another, each followed by GAP_S of digital
    silence, repeated to at least ``minimum_s``; and the silences' sample ranges."""
    clips = [read_wav(p) for p in SPEECH_FILES]
    parts, gaps, at = [], [], 0
    while at < minimum_s * RATE:
        for clip in clips:
            parts += [clip, np.zeros(int(GAP_S * RATE), np.float32)]
            at += len(clip)
            gaps.append((at, at + int(GAP_S * RATE)))
            at += int(GAP_S * RATE)
    return np.concatenate(parts), gaps


def check_cover(pieces: list[Piece], total: int, limit_s: float = MAX_PIECE_S, rate: int = RATE) -> None:
    assert pieces[0].start == 0 and pieces[-1].end == total
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    assert all(0 < len(p) <= limit_s * rate for p in pieces)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def sense_voice(tmp_path_factory) -> OfflineRecognizer:
    directory = tmp_path_factory.mktemp("sense-voice")
    write_sense_voice_model(directory)
    return OfflineRecognizer(load_offline_model(directory), beam=4)


@pytest.mark.parametrize("seconds", [0.0, 0.5, 12.0, MAX_PIECE_S])
def test_audio_no_longer_than_a_piece_is_one_piece(seconds):
    samples = noise(seconds) if seconds else np.zeros(0, np.float32)
    assert cut_pieces(samples, RATE) == [Piece(0, len(samples))]


def test_long_audio_is_cut_into_pieces_under_the_limit():
    samples = noise(95.0, seed=3)
    pieces = cut_pieces(samples, RATE)
    check_cover(pieces, len(samples))
    assert len(pieces) == 4
    assert all(len(p) > (MAX_PIECE_S - 10) * RATE for p in pieces[:-1])  # cut in the last 10 s


def test_the_quietest_point_is_the_middle_of_a_quiet_stretch():
    samples = noise(20.0, seed=1)
    samples[8 * RATE : 9 * RATE] *= 0.01  # a quiet second
    samples[14 * RATE : 14 * RATE + RATE // 2] *= 0.05  # a louder, later one
    cut = quietest_point(samples, 5 * RATE, 19 * RATE, RATE)
    assert abs(cut - 8.5 * RATE) < 0.05 * RATE


def test_of_equally_silent_stretches_the_latest_is_cut_in_its_middle():
    samples = noise(20.0, seed=2)
    samples[6 * RATE : 7 * RATE] = 0
    samples[12 * RATE : 13 * RATE] = 0
    assert abs(quietest_point(samples, 0, 19 * RATE, RATE) - 12.5 * RATE) < 0.02 * RATE
    assert abs(quietest_point(samples, 0, 10 * RATE, RATE) - 6.5 * RATE) < 0.02 * RATE


def test_without_a_vad_cuts_fall_in_the_silences():
    samples, gaps = spoken(70.0)
    pieces = cut_pieces(samples, RATE)
    check_cover(pieces, len(samples))
    assert len(pieces) >= 3
    for piece in pieces[:-1]:
        assert any(a < piece.end < b for a, b in gaps), piece.end / RATE


def test_a_cut_is_the_middle_of_the_latest_long_enough_pause():
    samples = noise(45.0, seed=5)
    seen = []

    def silences(window: np.ndarray, rate: int):
        seen.append(len(window))
        first = 30 * rate - len(window)  # the window ends at the limit, 30 s
        pauses = [(21.0, 21.6), (24.0, 24.1), (27.0, 27.4), (29.5, 29.6)]  # the last two: 0.4 s, 0.1 s
        return [(int(a * rate) - first, int(b * rate) - first) for a, b in pauses]

    pieces = cut_pieces(samples, RATE, silences=silences)
    assert len(pieces) == 2 and pieces[0].end == int(27.2 * RATE)
    assert seen == [11 * RATE - 1]  # the cut in (20 s, 30 s], and 1 s before for the VAD to settle


def test_of_short_pauses_the_longest_is_taken_and_without_pauses_the_quietest_point():
    samples = noise(40.0, seed=6)
    samples[25 * RATE : 25 * RATE + RATE // 2] = 0
    short = cut_pieces(samples, RATE, silences=lambda w, r: [(len(w) - 4 * r, len(w) - 4 * r + 1000),
                                                              (len(w) - 2 * r, len(w) - 2 * r + 3000)])
    assert short[0].end == 28 * RATE + 1500
    none = cut_pieces(samples, RATE, silences=lambda w, r: [])
    assert abs(none[0].end - 25.25 * RATE) < 0.02 * RATE


def test_vad_pauses_hold_the_silences_between_clips(vad):
    samples, gaps = spoken(20.0)
    pauses = VadSilences(vad)(samples, RATE)
    for a, b in gaps:  # each inserted silence lies (mostly) in a pause
        assert any(p < a + 0.2 * RATE and b - 0.2 * RATE < q for p, q in pauses), (a / RATE, b / RATE)
    assert all(p < q for p, q in pauses)


def test_vad_pauses_of_audio_at_another_rate_are_in_its_samples(vad):
    samples, gaps = spoken(10.0)
    from trio_asr.recognition.resample import resample

    pauses = VadSilences(vad)(resample(samples, RATE, 48000), 48000)
    for a, b in gaps:
        assert any(p < 3 * (a + 0.2 * RATE) and 3 * (b - 0.2 * RATE) < q for p, q in pauses), (a / RATE, b / RATE)


def test_with_the_vad_cuts_fall_in_pauses(vad):
    samples, _ = spoken(70.0)
    pieces = cut_pieces(samples, RATE, silences=VadSilences(vad))
    check_cover(pieces, len(samples))
    for piece in pieces[:-1]:  # quiet around the cut
        around = samples[piece.end - RATE // 20 : piece.end + RATE // 20]
        assert np.sqrt(np.mean(around**2)) < 0.1 * np.sqrt(np.mean(samples**2)), piece.end / RATE


def test_short_audio_gives_what_recognize_gives(sense_voice):
    samples = read_wav(SPEECH_FILES[0])
    options = OfflineOptions(nbest=3)
    long = recognize_long(sense_voice, samples, options)
    alone = sense_voice.recognize(samples, options)
    assert long.result == alone.result and long.tags == alone.tags
    assert long.segment_tags == (alone.tags,) * len(alone.result.segments)
    assert long.pieces == (Piece(0, len(samples)),)


def test_long_audio_gives_each_piece_what_it_gives_alone(sense_voice):
    samples, _ = spoken(65.0)
    options = OfflineOptions(nbest=2)
    long = recognize_long(sense_voice, samples, options, batch_size=2)
    assert len(long.pieces) >= 3
    alone = [
        sense_voice.recognize(samples[p.start : p.end], OfflineOptions(nbest=2, offset_s=p.start / RATE))
        for p in long.pieces
    ]
    segments = [s for r in alone for s in r.result.segments]
    assert [s.text for s in long.result.segments] == [s.text for s in segments]
    for ours, theirs in zip(long.result.segments, segments):
        assert ours.start == pytest.approx(theirs.start) and ours.end == pytest.approx(theirs.end)
        assert [w.piece for w in ours.words] == [w.piece for w in theirs.words]
        np.testing.assert_allclose([w.start for w in ours.words], [w.start for w in theirs.words], atol=1e-6)
    assert [s.index for s in long.result.segments] == list(range(len(segments)))
    spans = [(s.start, s.end) for s in long.result.segments]
    assert all(a < b for a, b in spans) and all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert 0 <= spans[0][0] and spans[-1][1] <= len(samples) / RATE
    assert long.result.text == long.result.nbest[0][0]
    assert long.segment_tags == tuple(r.tags for r in alone if r.result.segments)
    assert long.duration == len(samples) / RATE


def _piece(texts_scores, start, end, tags=None) -> OfflineResult:
    nbest = tuple(texts_scores)
    text = nbest[0][0] if nbest else ""
    segments = (Segment(0, text, nbest, start, end, True),) if text else ()
    result = RecognitionResult(text, nbest, segments=segments, open=Segment(len(segments), "", (), end, end, False))
    return OfflineResult(result, tags, end - start)


def test_joined_nbest_adds_the_pieces_scores():
    joined, tags = join_results(
        [
            _piece([("a", -1.0), ("b", -1.5)], 0, 1),
            _piece([("", -0.2)], 1, 2),
            _piece([("c", -2.0), ("d", -2.1)], 2, 3),
        ],
        nbest=3,
    )
    assert joined.nbest == (("a c", -3.2), ("a d", -3.3), ("b c", -3.7))
    assert joined.text == "a c" and [s.text for s in joined.segments] == ["a", "c"]
    assert [s.index for s in joined.segments] == [0, 1] and tags == (None, None)
    assert joined.open == Segment(2, "", (), 3, 3, False)


def test_file_tags_are_what_most_of_the_audio_says():
    def tags(lang, emotion, event):
        return UtteranceTags(lang, emotion, event, "woitn")

    pieces = [
        _piece([("a", -1.0)], 0, 10, tags("en", "HAPPY", "Speech")),
        _piece([("b", -1.0)], 10, 35, tags("nospeech", "NEUTRAL", "BGM")),
        _piece([("c", -1.0)], 35, 50, tags("zh", "NEUTRAL", "Speech")),
    ]
    assert file_tags(pieces) == tags("zh", "NEUTRAL", "Speech")
    assert file_tags(pieces[1:2]) == tags("nospeech", "NEUTRAL", "BGM")
    assert file_tags([_piece([("a", -1.0)], 0, 1)]) is None
