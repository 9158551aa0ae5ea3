"""Hotwords: the file and stream formats, the automaton's bonuses against a
definition-by-brute-force, and the biased search on synthetic log-probs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_search import fed_in_pieces, log_softmax, peaky_cases, reference_beam_search

from trio_asr.hotwords import (
    MAX_PHRASE_CHARS,
    MAX_PHRASES,
    Hotword,
    HotwordError,
    _build_graph,
    compile_hotwords,
    hotwords_from_json,
    merge_hotwords,
    parse_hotwords,
    read_hotwords_file,
)
from trio_asr.search import PrefixBeamSearch
from trio_asr.tokens import TokenTable

WORDS = ["<blk>", "\u2581I", "\u2581LIKE", "\u2581NEW", "\u2581YORK", "\u2581YOLK", "\u2581CITY", "\u2581GNU", "\u2581K"]
TABLE = TokenTable(WORDS)


def word_ids(text: str) -> list[int]:
    return [WORDS.index("\u2581" + w) for w in text.split()]


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


# --- formats ---------------------------------------------------------------


def test_file_format_phrases_scores_comments():
    text = "# names\nnew  york\n\n  GNU : 3\nyolk:0.5\r\n"
    assert parse_hotwords(text) == (Hotword("new york"), Hotword("GNU", 3.0), Hotword("yolk", 0.5))


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\nb : x\n", "f.txt:2: the score 'x' is not a number"),
        ("a : 0\n", "f.txt:1: the score must be above 0"),
        ("a : 11\n", "at most 10"),
        ("a : nan\n", "f.txt:1: the score must be above 0"),
        (" : 2\n", "f.txt:1: a phrase is empty"),
        ("a\nb\na\n", "f.txt:3: 'a' is already on line 1"),
        ("x" * (MAX_PHRASE_CHARS + 1), f"longer than {MAX_PHRASE_CHARS}"),
        ("a\u0000b\n", "control"),
        ("".join(f"p{i}\n" for i in range(MAX_PHRASES + 1)), f"more than {MAX_PHRASES}"),
    ],
)
def test_file_errors_are_one_line_with_the_place(text, message):
    with pytest.raises(HotwordError, match=message) as info:
        parse_hotwords(text, source="f.txt")
    assert "\n" not in str(info.value)


def test_reading_a_file(tmp_path):
    path = tmp_path / "hot.txt"
    path.write_bytes("\ufeffnew york : 2\n".encode())
    assert read_hotwords_file(path) == (Hotword("new york", 2.0),)
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(HotwordError, match="not UTF-8"):
        read_hotwords_file(path)
    path.write_bytes(b"a\n" * (1 << 20))
    with pytest.raises(HotwordError, match="larger than 1 MiB"):
        read_hotwords_file(path)
    with pytest.raises(HotwordError, match="cannot read hotwords file"):
        read_hotwords_file(tmp_path / "missing.txt")


def test_stream_list_from_json():
    assert hotwords_from_json(["new york", ["gnu", 2]], limit=5) == (Hotword("new york"), Hotword("gnu", 2.0))
    for bad, message in [
        ("new york", "must be a list"),
        ([["a", True]], "must be a number"),
        ([["a", 1, 2]], "phrase or a"),
        ([5], "phrase or a"),
        ([["a", 99]], "at most 10"),
        (["a", "a"], "twice"),
        (["a"] * 6, "at most 5"),
        ([""], "empty"),
    ]:
        with pytest.raises(HotwordError, match=message):
            hotwords_from_json(bad, limit=5)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_gives_hotwords_or_a_short_hotword_error(value):
    try:
        hotwords = hotwords_from_json(value, limit=5)
    except HotwordError as e:
        assert "\n" not in str(e) and len(str(e)) < 200
    else:
        assert len(hotwords) <= 5 and all(isinstance(h, Hotword) for h in hotwords)


def test_a_stream_list_adds_to_the_servers_and_overrides_its_scores():
    server = (Hotword("new york"), Hotword("gnu", 2.0))
    merged = merge_hotwords(server, (Hotword("gnu", 4.0), Hotword("city")))
    assert merged == (Hotword("new york"), Hotword("gnu", 4.0), Hotword("city"))
    compiled = compile_hotwords(server, TABLE)
    assert compiled.merged(()) is compiled
    assert compiled.merged([Hotword("city")]).hotwords == (*server, Hotword("city"))


def test_merges_are_cached_for_streams_sending_the_same_list():
    from trio_asr.hotwords import MERGES_CACHED

    compiled = compile_hotwords([Hotword("new york")], TABLE)
    lists = [[Hotword(w, 1.0 + k / 10)] for k, w in enumerate(["city", "gnu", "yolk", "i", "like", "k"] * 3)]
    first = compiled.merged(lists[0])
    assert compiled.merged(list(lists[0])) is first
    for extra in lists[1 : MERGES_CACHED + 1]:
        compiled.merged(extra)
    again = compiled.merged(lists[0])  # evicted: compiled anew, alike
    assert again is not first and again.hotwords == first.hotwords
    assert again.graph.walk(word_ids("NEW YORK CITY")) == first.graph.walk(word_ids("NEW YORK CITY"))


def test_a_phrase_the_model_cannot_spell_is_named():
    with pytest.raises(HotwordError, match="hotword 'new jersey': .*'J'"):
        compile_hotwords([Hotword("new york"), Hotword("new jersey")], TABLE)


# --- the automaton against its definition -----------------------------------


def naive_bonus(phrases: dict[tuple[int, ...], float], seq: tuple[int, ...]) -> tuple[float, float]:
    """``(kept, at_risk)`` of ``seq`` straight from the definition in
    trio_asr.hotwords' docstring, by brute force over suffixes."""
    starts = {p[:k] for p in phrases for k in range(1, len(p) + 1)}

    def window(x):
        return next((x[i:] for i in range(len(x)) if x[i:] in starts), ())

    def position_scores(w):
        return [max(s for p, s in phrases.items() if p[:k] == w[:k]) for k in range(1, len(w) + 1)]

    def settled(w):
        return {
            start + k
            for start in range(len(w))
            for p in phrases
            if w[start : start + len(p)] == p
            for k in range(1, len(p) + 1)
        }

    kept = 0.0
    for t in range(1, len(seq) + 1):
        w = window(seq[:t])
        newly = settled(w) - settled(w[:-1])
        if newly:
            phrase = max((p for p in phrases if w[len(w) - len(p) :] == p), key=len)
            shift = len(w) - len(phrase)
            scores = position_scores(phrase)
            kept += sum(scores[k - shift - 1] for k in newly)
    w = window(seq)
    at_risk = sum(s for k, s in enumerate(position_scores(w), 1) if k not in settled(w))
    return kept, at_risk


phrase_sets = st.dictionaries(
    st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    st.sampled_from([0.5, 1.0, 1.5, 3.0]),
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(phrase_sets, st.lists(st.integers(0, 5), max_size=12).map(tuple))
def test_automaton_bonus_matches_the_definition(phrases, seq):
    graph = _build_graph(phrases, 6)
    _, kept, at_risk = graph.walk(seq)
    want_kept, want_risk = naive_bonus(phrases, seq)
    assert kept == pytest.approx(want_kept)
    assert at_risk == pytest.approx(want_risk)


def test_bonus_per_token_along_a_phrase_taken_back_when_it_breaks_off():
    graph = _build_graph({(1, 2, 3): 1.5}, 5)
    steps = [graph.walk((1, 2, 3)[:k])[1:] for k in range(4)]
    assert steps == [(0.0, 0.0), (0.0, 1.5), (0.0, 3.0), (4.5, 0.0)]
    assert graph.walk((1, 2, 4))[1:] == (0.0, 0.0)
    assert graph.walk((1, 2, 1))[1:] == (0.0, 1.5)  # a new start of the phrase
    assert graph.walk((1, 2, 3, 4, 1, 2, 3))[1:] == (9.0, 0.0)  # kept twice


# --- the biased search --------------------------------------------------------


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


def test_graph_arrays_are_checked():
    from trio_asr._ctc import HotwordGraph

    good = dict(
        fail=[0, 0], child_start=[0, 1, 1], child_token=[3], child_state=[1],
        at_risk=[0.0, 1.0], gain=[0.0, 0.0], bound=[1.0, 1.0],
    )
    HotwordGraph(**good, vocab_size=4)
    for change in [
        {"child_token": [4]},
        {"child_state": [2]},
        {"fail": [0, 1]},
        {"child_start": [0, 2, 1]},
        {"at_risk": [0.0, math.inf]},
        {"gain": [0.0]},
    ]:
        with pytest.raises(ValueError):
            HotwordGraph(**{**good, **change}, vocab_size=4)


def test_compiling_a_thousand_phrases_is_quick_enough():
    """Per-stream lists are merged with the server's and compiled per stream."""
    import time

    rng = np.random.default_rng(0)
    table = TokenTable(["<blk>", *(f"\u2581{w}" for w in itertools.islice(_words(), 500))])
    phrases = [Hotword(" ".join(table.piece(int(i))[1:] for i in rng.integers(1, 500, size=3))) for _ in range(1000)]
    phrases = list({h.phrase: h for h in phrases}.values())
    start = time.perf_counter()
    compiled = compile_hotwords(phrases, table)
    assert compiled.graph.num_states > 1000
    assert time.perf_counter() - start < 5.0  # generous: a sanity bound, not a benchmark


def _words():
    for n in itertools.count(1):
        for letters in itertools.product("ABCDEFGHIJ", repeat=n):
            yield "".join(letters)
