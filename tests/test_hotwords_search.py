"""The CTC prefix beam search biased by hotwords, on synthetic log-probs:
against a textbook search with the bonus, and the behaviours users see."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hotwords import TABLE, WORDS, naive_bonus, word_ids
from test_search import fed_in_pieces, log_softmax, peaky_cases, reference_beam_search

from trio_asr.recognition.hotwords import Hotword, _build_graph, compile_hotwords
from trio_asr.recognition.search import PrefixBeamSearch
from trio_asr.recognition.tokens import TokenTable


def spoken(words: list[dict[str, float]]) -> np.ndarray:
    """Log-probs of words said one after another: each word a frame of its
    token distribution (the rest to blank at 1e-3), then a blank frame."""
    frames = []
    for choice in words:
        probs = np.full(len(WORDS), 1e-6)
        for word, p in choice.items():
            probs[word_ids(word)[0]] = p
        probs[0] = 1e-3
        frames.append(probs / probs.sum())
        blank = np.full(len(WORDS), 1e-6)
        blank[0] = 1.0
        frames.append(blank / blank.sum())
    return np.log(np.array(frames)).astype(np.float32)


def decode(log_probs, hotwords=(), *, score=1.5, beam=8):
    graph = compile_hotwords([Hotword(h) for h in hotwords], TABLE, default_score=score).graph if hotwords else None
    search = PrefixBeamSearch(beam, hotwords=graph)
    search.accept(log_probs)
    return search.best


def test_the_bonus_flips_a_second_best_phrase():
    log_probs = spoken([{"I": 0.9}, {"LIKE": 0.9}, {"NEW": 0.9}, {"YOLK": 0.6, "YORK": 0.4}])
    assert decode(log_probs).tokens == tuple(word_ids("I LIKE NEW YOLK"))
    assert decode(log_probs, ["city"]).tokens == tuple(word_ids("I LIKE NEW YOLK"))
    best = decode(log_probs, ["new york"])
    assert best.tokens == tuple(word_ids("I LIKE NEW YORK"))
    plain = PrefixBeamSearch(8)
    plain.accept(log_probs)
    ctc = dict((h.tokens, h.score) for h in plain.nbest(8))[best.tokens]
    assert best.score == pytest.approx(ctc + 3.0)  # the score reports the kept bonus


def test_a_partial_match_leaks_no_bonus():
    """NEW YORK is the first two thirds of the phrase: with the bonus kept it
    would beat GNU YORK (3.0 against log 0.6/0.4), but the phrase breaks off."""
    log_probs = spoken([{"GNU": 0.6, "NEW": 0.4}, {"YORK": 0.9}])
    assert decode(log_probs, ["new york"]).tokens == tuple(word_ids("NEW YORK"))
    best = decode(log_probs, ["new york city"])
    assert best.tokens == tuple(word_ids("GNU YORK"))
    assert best.score == pytest.approx(decode(log_probs).score)
    # ... also when it breaks off by another word
    log_probs = spoken([{"GNU": 0.6, "NEW": 0.4}, {"YORK": 0.9}, {"I": 0.9}])
    assert decode(log_probs, ["new york city"]).tokens == tuple(word_ids("GNU YORK I"))


def test_partial_results_rank_by_kept_bonus_only():
    log_probs = spoken([{"GNU": 0.6, "NEW": 0.4}, {"YORK": 0.9}, {"CITY": 0.9}])
    graph = compile_hotwords([Hotword("new york city")], TABLE).graph
    search = PrefixBeamSearch(8, hotwords=graph)
    search.accept(log_probs[:4])  # GNU/NEW YORK so far: the phrase is under way
    assert search.best.tokens == tuple(word_ids("GNU YORK"))
    search.accept(log_probs[4:])
    assert search.best.tokens == tuple(word_ids("NEW YORK CITY"))


@pytest.mark.parametrize("seed", range(40))
def test_a_phrase_absent_from_the_audio_does_not_appear(seed):
    """Confident model-like frames (a trained CTC model puts well under 1e-5
    on a token it does not hear) and phrases made of tokens that the frames
    never favour: at the default score none shows up in the result."""
    rng = np.random.default_rng(seed)
    frames, vocab = 80, 30
    logits = rng.normal(size=(frames, vocab))
    said = rng.integers(1, vocab // 2, size=frames)  # the audio's tokens: the lower half
    winners = np.where(rng.random(frames) < 0.4, said, 0)
    logits[np.arange(frames), winners] += rng.uniform(12.0, 16.0, size=frames)
    log_probs = log_softmax(logits).astype(np.float32)
    phrases = {tuple(rng.integers(vocab // 2, vocab, size=rng.integers(1, 4)).tolist()): 1.5 for _ in range(20)}
    plain = PrefixBeamSearch(10)
    plain.accept(log_probs)
    biased = PrefixBeamSearch(10, hotwords=_build_graph(phrases, vocab))
    biased.accept(log_probs)
    assert biased.best.tokens == plain.best.tokens
    assert not any(t >= vocab // 2 for t in biased.best.tokens)


@settings(max_examples=60, deadline=None)
@given(peaky_cases(max_frames=40, max_vocab=12), st.integers(1, 8))
def test_no_hotwords_is_todays_search(log_probs, beam):
    """An empty hotword list takes the biased code path and changes nothing:
    the same n-best (tokens, frames, scores) as the plain search and as the
    textbook search."""
    empty = compile_hotwords([], TokenTable([str(i) for i in range(log_probs.shape[1])])).graph
    biased = PrefixBeamSearch(beam, hotwords=empty)
    biased.accept(log_probs)
    plain = PrefixBeamSearch(beam)
    plain.accept(log_probs)
    assert biased.nbest(beam) == plain.nbest(beam)
    expected = reference_beam_search(log_probs, beam)
    assert [(h.tokens, h.frames) for h in biased.nbest(beam)] == [(t, f) for t, _, f in expected]


@settings(max_examples=80, deadline=None)
@given(peaky_cases(max_frames=25, max_vocab=8), st.integers(1, 6), st.data())
def test_biased_search_matches_a_textbook_search_with_the_bonus(log_probs, beam, data):
    vocab = log_probs.shape[1]
    phrases = data.draw(
        st.dictionaries(
            st.lists(st.integers(1, vocab - 1), min_size=1, max_size=4).map(tuple),
            st.sampled_from([0.5, 1.5, 4.0, 10.0]),
            min_size=1,
            max_size=5,
        )
    )
    search = PrefixBeamSearch(beam, hotwords=_build_graph(phrases, vocab))
    search.accept(log_probs)
    expected = reference_beam_search(log_probs, beam, bonus=lambda p: naive_bonus(phrases, p))
    got = search.nbest(beam)
    assert sorted(h.tokens for h in got) == sorted(t for t, _, _ in expected)
    by_tokens = {t: (s, f) for t, s, f in expected}
    for h in got:
        assert h.score == pytest.approx(by_tokens[h.tokens][0], abs=1e-9)
        assert h.frames == by_tokens[h.tokens][1]


@settings(max_examples=40, deadline=None)
@given(peaky_cases(max_vocab=10), st.lists(st.integers(0, 60), max_size=6), st.integers(1, 8))
def test_biased_streaming_gives_the_same_nbest_as_one_block(log_probs, cuts, beam):
    vocab = log_probs.shape[1]
    graph = _build_graph({(1, 2): 2.0, (3,): 1.0, (2, 1, 2): 1.5}, vocab) if vocab > 3 else None
    whole = PrefixBeamSearch(beam, hotwords=graph)
    whole.accept(log_probs)
    split = fed_in_pieces(PrefixBeamSearch(beam, hotwords=graph), log_probs, [c for c in cuts if c < len(log_probs)])
    assert split.nbest(beam) == whole.nbest(beam)


def test_a_root_child_behind_many_shadowed_ones_is_still_found():
    """Tokens 2..9 continue the phrase under way (1 t) and also start the
    one-token phrases (t); a row in state (1) offers them with the smaller
    bonus of (1 t) and skips them in the root's list, where they rank first.
    Token 10, the last root child in that list, carries the largest bonus and
    must still be found (beam 1: the root list runs out and is extended)."""
    phrases = {**{(1, t): 1.0 for t in range(2, 10)}, **{(t,): 3.0 for t in range(2, 11)}}
    probs = np.full((2, 12), 1e-9)
    probs[0, 1] = 1.0
    probs[1, 2:10], probs[1, 10], probs[1, 0] = 0.11, 0.10, 0.01
    log_probs = np.log(probs / probs.sum(axis=1, keepdims=True))
    search = PrefixBeamSearch(1, hotwords=_build_graph(phrases, 12))
    search.accept(log_probs)
    expected = reference_beam_search(log_probs, 1, bonus=lambda p: naive_bonus(phrases, p))
    assert search.best.tokens == expected[0][0] == (1, 10)


@settings(max_examples=40, deadline=None)
@given(peaky_cases(max_vocab=10), st.integers(1, 6), st.data())
def test_biased_pruning_that_removes_nothing_changes_nothing(log_probs, beam, data):
    vocab = log_probs.shape[1]
    phrases = data.draw(
        st.dictionaries(st.lists(st.integers(1, vocab - 1), min_size=1, max_size=3).map(tuple),
                        st.sampled_from([1.5, 10.0]), min_size=1, max_size=6)
    )  # fmt: skip
    graph = _build_graph(phrases, vocab)
    plain = PrefixBeamSearch(beam, hotwords=graph)
    plain.accept(log_probs)
    unpruned = PrefixBeamSearch(beam, hotwords=graph, token_top_k=vocab, token_threshold=-np.inf)
    unpruned.accept(log_probs)
    assert unpruned.nbest(beam) == plain.nbest(beam)


@settings(max_examples=40, deadline=None)
@given(peaky_cases(max_vocab=10), st.integers(1, 6), st.integers(1, 3), st.data())
def test_a_pruned_token_is_not_brought_back_by_its_bonus(log_probs, beam, top_k, data):
    """Every token a biased, top-k pruned search emits was among the k most
    probable of its frame (blank aside), whatever its bonus."""
    vocab = log_probs.shape[1]
    phrases = {tuple(data.draw(st.lists(st.integers(1, vocab - 1), min_size=1, max_size=2))): 10.0}
    search = PrefixBeamSearch(beam, hotwords=_build_graph(phrases, vocab), token_top_k=top_k)
    search.accept(log_probs)
    for h in search.nbest(beam):
        for token, frame in zip(h.tokens, h.frames):
            row = np.delete(log_probs[frame], 0)
            assert (row > log_probs[frame, token]).sum() < top_k


def test_hotwords_fix_the_vocabulary_width():
    graph = _build_graph({(1, 2): 1.5}, 9)
    search = PrefixBeamSearch(4, hotwords=graph)
    with pytest.raises(ValueError, match="9"):
        search.accept(np.log(np.full((3, 12), 1 / 12, dtype=np.float32)))
    with pytest.raises(ValueError, match="blank_id"):
        PrefixBeamSearch(4, blank_id=9, hotwords=graph)


def test_one_graph_is_shared_by_searches_in_threads():
    import threading

    graph = compile_hotwords([Hotword("new york")], TABLE).graph
    log_probs = spoken([{"I": 0.9}, {"NEW": 0.9}, {"YOLK": 0.6, "YORK": 0.4}] * 200)
    searches = [PrefixBeamSearch(8, hotwords=graph) for _ in range(4)]
    workers = [threading.Thread(target=s.accept, args=(log_probs,)) for s in searches]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len({s.best for s in searches}) == 1
    assert searches[0].best.tokens == tuple(word_ids("I NEW YORK")) * 200


