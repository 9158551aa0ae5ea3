"""Segmented decoding on synthetic log-probs with a known best path.

A frame's log-probs put (nearly) all mass on one token, so the best path,
where each endpoint rule fires, and every time span are known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.search import GreedySearch, PrefixBeamSearch
from trio_asr.recognition.segments import SegmentedSearch, join_texts
from trio_asr.recognition.tokens import TokenTable

SHIFT = 0.04
PIECES = ["<blk>", "\u2581he", "llo", "\u2581wor", "ld", "你", "好", "\u2581a"]
TABLE = TokenTable(PIECES)
ID = {p.lstrip("\u2581"): i for i, p in enumerate(PIECES)}
ID["_"] = 0
RULES = EndpointRules(silence_without_text=1.0, silence_after_text=0.4, max_segment=4.0)


def frames(spec: str) -> np.ndarray:
    """Log-probs for a space-separated best path, e.g. ``"he he llo _ _"``;
    ``_`` is blank, ``x*3`` repeats a frame."""
    labels = []
    for word in spec.split():
        label, _, count = word.partition("*")
        labels += [ID[label]] * int(count or 1)
    probs = np.full((len(labels), len(PIECES)), 1e-6)
    probs[np.arange(len(labels)), labels] = 1.0
    return np.log(probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def segmented(kind: str = "beam", rules: EndpointRules | None = RULES, nbest: int = 3) -> SegmentedSearch:
    if kind == "beam":
        new_search = lambda: PrefixBeamSearch(beam=8)  # noqa: E731
    else:
        new_search = GreedySearch
    return SegmentedSearch(TABLE, new_search, nbest, SHIFT, rules)


@pytest.mark.parametrize("kind", ["beam", "greedy"])
def test_segments_end_where_the_rules_fire(kind):
    d = segmented(kind)
    # "hello", a 10-frame pause (rule 2 at 0.4 s), "world" and the pause
    # again, then 25 blank frames (rule 1 at 1.0 s: an empty segment, dropped)
    # and "a" left open.
    d.accept(frames("he*2 llo*2 _*10 wor _ ld*2 _*10 _*25 a _*3"))
    result = d.result()
    assert [s.text for s in result.segments] == ["hello", "world"]
    assert [s.index for s in result.segments] == [0, 1]
    assert all(s.final for s in result.segments)
    assert [(s.start, s.end) for s in result.segments] == [
        pytest.approx((0.0, 14 * SHIFT)),
        pytest.approx((14 * SHIFT, 28 * SHIFT)),
    ]
    assert result.open.index == 2 and result.open.text == "a" and not result.open.final
    assert result.open.start == pytest.approx(53 * SHIFT)
    assert result.text == "hello world a"


def test_word_and_token_times():
    d = segmented("greedy")
    d.accept(frames("_ he*2 llo*2 _*2 wor _ ld*2 _*10"))
    (segment,) = d.result().segments
    assert [(t.piece, round(t.start / SHIFT), round(t.end / SHIFT)) for t in segment.tokens] == [
        ("he", 1, 3), ("llo", 3, 5), ("wor", 7, 8), ("ld", 9, 11),
    ]
    # a word ends where its last token's run ends (at the blank run), not
    # one frame after its start
    assert [(w.piece, round(w.start / SHIFT), round(w.end / SHIFT)) for w in segment.words] == [
        ("hello", 1, 5), ("world", 7, 11),
    ]


def test_cjk_characters_are_words_and_times_count_from_the_stream_start():
    d = segmented("greedy")
    d.accept(frames("a _*10 你*3 好 _ a he llo _*12"))
    first, second = d.result().segments
    assert first.text == "a"
    assert second.text == "你好a hello"
    assert [(w.piece, round(w.start / SHIFT), round(w.end / SHIFT)) for w in second.words] == [
        ("你", 11, 14), ("好", 14, 15), ("a", 16, 17), ("hello", 17, 19),
    ]


def test_rule3_cuts_a_segment_that_never_pauses():
    d = segmented("greedy")
    d.accept(frames(" ".join(["he llo wor ld"] * 30)))  # 120 frames = 4.8 s
    result = d.result()
    assert [round(s.end / SHIFT) for s in result.segments] == [100]
    assert result.text == " ".join(["hello world"] * 30)


def test_a_long_silence_restarts_the_search_without_a_segment():
    d = segmented()
    d.accept(frames("_*200"))
    result = d.result()
    assert result.segments == () and result.text == ""
    assert result.open.start == pytest.approx(200 * SHIFT)  # cut at 25, 50, ..., 200 frames


@pytest.mark.parametrize("kind", ["beam", "greedy"])
def test_results_do_not_depend_on_how_frames_arrive(kind):
    spec = "he*2 llo _*11 " * 7 + "wor ld " * 40 + "_*30 你 好 _*3"
    whole = segmented(kind)
    whole.accept(frames(spec))
    pieces = segmented(kind)
    log_probs = frames(spec)
    for piece in np.array_split(log_probs, 37):
        pieces.accept(piece)
    for final in (False, True):
        assert pieces.result(final) == whole.result(final)
    assert len(whole.result().segments) == 8


def test_final_result_closes_the_open_segment_without_closing_it():
    d = segmented()
    d.accept(frames("he llo _*12 wor ld _*3"))
    partial, final = d.result(), d.result(final=True)
    assert [s.text for s in partial.segments] == ["hello"]
    assert [s.text for s in final.segments] == ["hello", "world"]
    assert final.segments[1].words and final.text == partial.text == "hello world"
    assert final.open.text == "" and final.open.index == 2
    assert [w.piece for w in final.times] == ["hello", "world"]
    assert [t.piece for t in final.tokens] == ["he", "llo", "wor", "ld"] and partial.times == ()
    # more frames may still come: the open segment goes on
    d.accept(frames("a"))
    assert d.result().text == "hello world a" and len(d.result().segments) == 1


def test_full_nbest_is_the_finalised_text_then_the_open_alternatives():
    d = segmented(nbest=3)
    d.accept(frames("he llo _*12"))
    log_probs = np.log(np.array([[0.3, 0.0, 0.0, 0.4, 0.0, 0.0, 0.0, 0.3]]) + 1e-9).astype(np.float32)
    d.accept(log_probs)
    result = d.result()
    texts = [t for t, _ in result.nbest]
    assert texts[0] == result.text
    assert set(texts) == {"hello", "hello wor", "hello a"}
    closed = result.segments[0].nbest[0][1]
    for (_, score), (_, open_score) in zip(result.nbest, result.open.nbest):
        assert score == pytest.approx(closed + open_score)


def test_one_segment_without_rules():
    d = segmented(rules=None)
    d.accept(frames("he _*100 llo _*100"))
    assert d.result().segments == () and d.result().open.text == "hello"


def test_an_hour_keeps_the_open_segment_bounded():
    """90,000 frames (an hour at 40 ms): the search only ever holds the open
    segment, whose span rule 3 bounds."""
    d = segmented(rules=EndpointRules(silence_without_text=1.0, silence_after_text=0.4, max_segment=10.0))
    block = frames("he llo _*3 wor ld " * 10 + "_*50")  # 130 frames: speech, then a pause
    longest = 0.0
    for _ in range(90_000 // len(block)):
        for chunk in np.array_split(block, 8):
            d.accept(chunk)
            open_segment = d.result().open
            longest = max(longest, open_segment.end - open_segment.start)
    result = d.result()
    assert longest <= 10.0
    assert len(result.segments) == 90_000 // len(block)
    assert result.text == " ".join(["hello world"] * 10 * len(result.segments))


def test_join_texts():
    assert join_texts("hello", "world") == "hello world"
    assert join_texts("你好", "world") == "你好world"
    assert join_texts("hello", "你") == "hello你"
    assert join_texts("", "a") == "a" and join_texts("a", "") == "a"


def test_a_streams_hotwords_bias_every_segment(zipformer2_model_dir):
    """The hotword graph of a stream is given to the search of each of its
    segments, not only the first."""
    from trio_asr.recognition.hotwords import Hotword, compile_hotwords
    from trio_asr.recognition.model import load_model
    from trio_asr.recognition.recognizer import Recognizer

    model = load_model(zipformer2_model_dir)
    a, b, c = 11, 12, 13  # fixture pieces: one CJK character each
    phrase = model.tokens.text([a, b])

    def frame(probs: dict[int, float]) -> np.ndarray:
        row = np.full(model.vocab_size, 1e-7)
        for token, p in probs.items():
            row[token] = p
        return np.log(row / row.sum())

    said = [frame({a: 0.9}), frame({0: 1.0}), frame({c: 0.6, b: 0.4})] + [frame({0: 1.0})] * 40
    log_probs = np.array(said * 2, dtype=np.float32)
    texts = {}
    for label, hotwords in (("plain", None), ("biased", compile_hotwords([Hotword(phrase)], model.tokens))):
        stream = Recognizer(model, hotwords=hotwords).create_stream()
        stream.accept_log_probs(log_probs)
        texts[label] = [s.text for s in stream.result().segments]
    assert texts["plain"] == [model.tokens.text([a, c])] * 2
    assert texts["biased"] == [phrase] * 2
