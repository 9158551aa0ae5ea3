"""Hotwords: the file and stream formats, and the automaton's bonuses against
a definition by brute force (the biased search: test_hotwords_search.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_asr.recognition.hotwords import (
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
from trio_asr.recognition.tokens import TokenTable

WORDS = ["<blk>", "\u2581I", "\u2581LIKE", "\u2581NEW", "\u2581YORK", "\u2581YOLK", "\u2581CITY", "\u2581GNU", "\u2581K"]
TABLE = TokenTable(WORDS)


def word_ids(text: str) -> list[int]:
    return [WORDS.index("\u2581" + w) for w in text.split()]



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
    assert hotwords_from_json(["new york", ["gnu", 2]]) == (Hotword("new york"), Hotword("gnu", 2.0))
    for bad, message in [
        ("new york", "must be a list"),
        ([["a", True]], "must be a number"),
        ([["a", 1, 2]], "phrase or a"),
        ([5], "phrase or a"),
        ([["a", 99]], "at most 10"),
        (["a", "a"], "twice"),
        ([""], "empty"),
    ]:
        with pytest.raises(HotwordError, match=message):
            hotwords_from_json(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_gives_hotwords_or_a_short_hotword_error(value):
    try:
        hotwords = hotwords_from_json(value)
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
    from trio_asr.recognition.hotwords import MERGES_CACHED

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
    trio_asr.recognition.hotwords' docstring, by brute force over suffixes."""
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
