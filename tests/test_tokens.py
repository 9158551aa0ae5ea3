"""Token tables and token-id to text, checked against the byte-level BPE rule
as icefall publishes it (the table is rebuilt here from its ranges)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_asr.testing import zipformer2_ctc
from paths import MODELS_DIR
from trio_asr.cli.model_store import DEFAULT_MODEL
from trio_asr.recognition.tokens import BYTE_TO_CHAR, TextMemo, TokenTable

# icefall/byte_utils.py: the code point standing in for byte b is PUBLISHED[b].
PUBLISHED = [
    *range(256, 288),
    *range(32, 127),
    *range(288, 306),
    *range(308, 319),
    *range(321, 329),
    *range(330, 383),
    *range(384, 423),
]
ENCODE = {b: chr(c) for b, c in enumerate(PUBLISHED)}
DECODE = {chr(c): b for b, c in enumerate(PUBLISHED)}
SPECIALS = ["<blk>", "<sos/eos>", "<unk>"]

# Sentences the model's publisher reports for its own test clips.
CHINESE = [
    "对我做了介绍那么我想说的是呢大家如果对我的研究感兴趣呢",
    "重点呢想谈三个问题首先呢就是这一轮全球金融动荡的表现",
]


def byte_encode(word: str) -> str:
    return "".join(ENCODE[b] for b in word.encode("utf-8"))


def icefall_pieces(text: str) -> str:
    """What SentencePiece sees in icefall's bbpe recipes: CJK characters and
    other words are each a word, each word byte-encoded and led by ▁."""
    words = []
    for chunk in text.split():
        words.extend(list(chunk) if not chunk.isascii() else [chunk])
    return "".join("\u2581" + byte_encode(w) for w in words)


def segment(table: TokenTable, spelled: str) -> list[int]:
    """Longest-match segmentation of ``spelled`` into the table's pieces."""
    by_piece = {table.piece(i): i for i in range(len(table))}
    ids, i = [], 0
    while i < len(spelled):
        j = next(j for j in range(len(spelled), i, -1) if spelled[i:j] in by_piece)
        ids.append(by_piece[spelled[i:j]])
        i = j
    return ids


def reference_bytes(table: TokenTable, ids) -> bytes:
    """The bytes the pieces spell, control pieces such as <blk> left out."""
    pieces = [table.piece(i) for i in ids if table.piece(i) not in SPECIALS]
    return bytes(DECODE[ch] for piece in pieces for ch in piece if ch in DECODE and ch != " ")


def synthetic_bbpe() -> TokenTable:
    """Every byte alone and after ▁, plus a few merged pieces, English and Chinese."""
    singles = [ENCODE[b] for b in range(256) if b != 32]
    merged = ["\u2581hello", "\u2581wor", "ld", byte_encode("你"), "\u2581" + byte_encode("好")]
    return TokenTable([*SPECIALS, "\u2581", *singles, *("\u2581" + s for s in singles), *merged])


@pytest.fixture(scope="module")
def real_table(real_model_dir: Path) -> TokenTable:
    return TokenTable.from_file(real_model_dir / "tokens.txt")


def test_byte_alphabet_is_icefalls():
    assert [ord(c) for c in BYTE_TO_CHAR] == PUBLISHED


def test_real_table_is_detected_as_bbpe(real_table):
    assert real_table.bbpe
    assert real_table.blank_id == real_table.id("<blk>") == 0
    assert len(real_table) == 1000


@pytest.mark.parametrize("sentence", CHINESE)
def test_real_table_round_trips_chinese(real_table, sentence):
    ids = segment(real_table, icefall_pieces(sentence))
    assert real_table.text(ids) == sentence
    assert "".join(real_table.pieces(ids)) == sentence


@pytest.mark.parametrize("sentence", CHINESE)
def test_partial_results_hold_back_an_unfinished_character(real_table, sentence):
    ids = segment(real_table, icefall_pieces(sentence))
    for k in range(len(ids) + 1):
        expected = reference_bytes(real_table, ids[:k]).decode("utf-8", errors="ignore")
        assert real_table.text(ids[:k]) == expected
        assert sentence.startswith(expected)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_real_ids_decode_like_their_bytes(real_table, data):
    ids = data.draw(st.lists(st.integers(0, len(real_table) - 1), max_size=40))
    text = real_table.text(ids)
    assert text == reference_bytes(real_table, ids).decode("utf-8", errors="ignore")
    assert "".join(real_table.pieces(ids)) == text


def test_synthetic_bbpe_mixed_chinese_and_english():
    table = synthetic_bbpe()
    assert table.bbpe
    ids = segment(table, icefall_pieces("我 爱 hello world 你好 hello"))
    # Words are spaced; nothing is put next to a CJK character.
    assert table.text(ids) == "我爱hello world你好hello"
    assert table.text(segment(table, icefall_pieces("hello, world"))) == "hello, world"


def test_pieces_attribute_a_character_to_the_token_holding_its_first_byte():
    table = synthetic_bbpe()
    first, *rest = "你".encode("utf-8")
    ids = [table.id("\u2581" + ENCODE[first]), table.id(ENCODE[rest[0]]), table.id(ENCODE[rest[1]])]
    ids += segment(table, icefall_pieces("hello"))
    pieces = table.pieces(ids)
    assert pieces[:3] == ["你", "", ""]
    assert "".join(pieces[3:]) == "hello"  # no space next to a CJK character
    assert table.pieces(ids[:2]) == ["", ""]  # still incomplete: nothing to show


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["hello", "world", "a", "你好", "世界", "é", ",", "一"]), max_size=8))
def test_synthetic_bbpe_text_is_the_words_joined_by_the_spacing_rule(words):
    table = synthetic_bbpe()
    ids = segment(table, "".join("\u2581" + byte_encode(w) for w in words))
    expected = ""
    for w in words:
        cjk = "\u4e00" <= w[0] <= "\u9fff" or (expected and "\u4e00" <= expected[-1] <= "\u9fff")
        expected += w if not expected or cjk else " " + w
    assert table.text(ids) == expected
    assert "".join(table.pieces(ids)) == expected


def sentencepiece_table() -> TokenTable:
    return TokenTable(["<blk>", "<unk>", "\u2581HE", "LLO", "\u2581WORLD", "\u2581", "S", "<0xE4>", "<0xBD>", "<0xA0>"])


def test_sentencepiece_words_get_single_spaces():
    table = sentencepiece_table()
    assert not table.bbpe
    ids = [table.id(p) for p in ["\u2581HE", "LLO", "\u2581WORLD", "\u2581", "S"]]
    assert table.text(ids) == "HELLO WORLD S"
    assert table.pieces(ids) == ["HE", "LLO", " WORLD", "", " S"]
    assert table.text([table.id("\u2581"), *ids, table.id("\u2581")]) == "HELLO WORLD S"


def test_blank_unk_and_byte_fallback():
    table = sentencepiece_table()
    ids = [0, 7, 0, 8, 1, 9, 2, 3]
    assert table.text(ids) == "你HELLO"  # <0xE4><0xBD><0xA0> is 你; blank and <unk> say nothing


def write(tmp_path, text: str, newline: str = "\n") -> Path:
    path = tmp_path / "tokens.txt"
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_from_file_reads_odd_pieces(tmp_path, newline):
    path = write(tmp_path, "\u2581the 0\n  1\n\u3000 2\n' 3\n<blank> 4\n", newline)
    table = TokenTable.from_file(path)
    assert [table.piece(i) for i in range(len(table))] == ["\u2581the", " ", "\u3000", "'", "<blank>"]
    assert table.blank_id == 4  # NeMo puts blank last
    assert table.text([0, 1, 3, 4, 2, 0]) == "the ' the"


def test_a_line_with_only_an_id_is_a_space_piece(tmp_path):
    table = TokenTable.from_file(write(tmp_path, "<blk> 0\n1\na 2\n"))
    assert table.piece(1) == " "
    assert table.text([2, 1, 2]) == "a a"


@pytest.mark.parametrize(
    "text, message",
    [("a 0\nb 0\n", "twice"), ("a 0\nb 2\n", "not exactly"), ("a 0\nb\n", "expected")],
)
def test_from_file_refuses_broken_tables(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        TokenTable.from_file(write(tmp_path, text))


def test_bbpe_can_be_forced_either_way():
    pieces = [*SPECIALS, "\u2581" + byte_encode("你")]
    assert TokenTable(pieces).text([3]) == "你"
    assert TokenTable(pieces, bbpe=False).text([3]) == byte_encode("你")
    assert TokenTable(["<blk>", "\u2581ab", "c"], bbpe=True).text([1, 2]) == "abc"


def bbpe_tokens_file(path: Path, size: int) -> Path:
    """A Chinese byte-level BPE tokens.txt: each character whole (after ▁) and
    split after its first and second byte, then every single byte."""
    pieces = [*SPECIALS, "\u2581"]
    for ch in "".join(CHINESE) + "".join(chr(0x4E00 + 37 * k) for k in range(200)):
        spelled = byte_encode(ch)
        pieces += ["\u2581" + spelled, spelled[:1], spelled[1:], spelled[:2], spelled[2:]]
    pieces += [ENCODE[b] for b in range(256) if b != 32]
    pieces = list(dict.fromkeys(pieces))[:size]
    path.write_text("".join(f"{p} {i}\n" for i, p in enumerate(pieces)), encoding="utf-8")
    return path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bbpe_text_matches_sherpa_onnx(tmp_path, seed):
    """sherpa-onnx decodes a synthetic model's (random, so often broken)
    byte-level token sequence; our text of its tokens must be its text."""
    sherpa_onnx = pytest.importorskip("sherpa_onnx")

    tokens = bbpe_tokens_file(tmp_path / "bbpe_tokens.txt", zipformer2_ctc.TINY.vocab_size)
    model_dir = zipformer2_ctc.write_model(tmp_path / "model", tokens=tokens, seed=seed)
    recognizer = sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
        tokens=str(model_dir / "tokens.txt"), model=str(model_dir / "model.onnx"), num_threads=1
    )
    stream = recognizer.create_stream()
    noise = np.random.default_rng(seed).standard_normal(16000 * 4).astype(np.float32) * 0.1
    stream.accept_waveform(16000, noise)
    stream.input_finished()
    while recognizer.is_ready(stream):
        recognizer.decode_stream(stream)
    result = recognizer.get_result_all(stream)

    table = TokenTable.from_file(model_dir / "tokens.txt")
    assert table.bbpe
    ids = [table.id(piece) for piece in result.tokens]
    assert len(ids) > 10
    assert table.text(ids) == result.text


# --- encode: phrase -> the tokens the model would emit ------------------------

PHRASE_WORDS = ["hello", "world", "a", "你好", "世界", "é", ",", "一", "hello你好"]


def cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PHRASE_WORDS), min_size=1, max_size=6))
def test_encode_inverts_text_on_a_bbpe_table(words):
    table = synthetic_bbpe()
    phrase = " ".join(words)
    ids = table.encode(phrase)
    # The words joined by the spacing rule: no space next to a CJK character.
    expected = "".join(
        ch for i, ch in enumerate(phrase) if ch != " " or not (cjk(phrase[i - 1]) or cjk(phrase[i + 1]))
    )
    assert table.text(ids) == expected
    if "hello你好" not in words:  # never more tokens than icefall's own spelling
        assert len(ids) <= len(segment(table, icefall_pieces(phrase)))


def test_encode_spells_words_with_their_boundary_and_cjk_as_icefall_does():
    table = synthetic_bbpe()
    assert [table.piece(i) for i in table.encode("hello  world")] == ["\u2581hello", "\u2581wor", "ld"]
    hao = "\u2581" + byte_encode("好")
    assert table.encode("好") == (table.id(hao),)  # the boundary joined to the character
    assert table.encode("你好")[-1] == table.id(hao)


@pytest.mark.parametrize("sentence", CHINESE)
def test_encode_round_trips_chinese_on_a_bbpe_tokens_file(tmp_path, sentence):
    table = TokenTable.from_file(bbpe_tokens_file(tmp_path / "tokens.txt", 1500))
    ids = table.encode(sentence)
    assert table.text(ids) == sentence
    assert len(ids) == len(sentence)  # every character has a whole piece after ▁
    assert all(table.piece(i).startswith("\u2581") for i in ids)


@pytest.mark.parametrize("sentence", CHINESE)
def test_encode_round_trips_chinese_on_the_real_table(real_table, sentence):
    assert real_table.text(real_table.encode(sentence)) == sentence


def test_encode_on_the_default_models_table_spells_like_icefall():
    """The default model's tokens.txt (kept in tests/data): every character
    of the publisher's sentences is spelled after a ▁, as icefall's byte-level
    BPE spells Chinese, and the text comes back."""
    path = MODELS_DIR / DEFAULT_MODEL / "tokens.txt"
    table = TokenTable.from_file(path)
    assert table.bbpe
    for sentence in CHINESE:
        ids = table.encode(sentence)
        assert table.text(ids) == sentence
        starts = [i for i in ids if table.piece(i).startswith("\u2581")]
        assert len(starts) == len(sentence)
        assert len(ids) <= len(segment(table, icefall_pieces(sentence)))
    with pytest.raises(ValueError, match="cannot spell 'h'"):
        table.encode("hello")


def test_encode_on_a_sentencepiece_table_follows_its_case():
    table = sentencepiece_table()
    assert [table.piece(i) for i in table.encode("Hello world")] == ["\u2581HE", "LLO", "\u2581WORLD"]
    assert table.text(table.encode("hello s")) == "HELLO S"
    assert [table.piece(i) for i in table.encode("你")] == ["<0xE4>", "<0xBD>", "<0xA0>"]  # byte fallback
    mixed = TokenTable(["<blk>", "\u2581He", "\u2581he", "llo"])
    assert mixed.text(mixed.encode("He")) == "He"  # both cases: kept as written
    assert mixed.text(mixed.encode("hello")) == "hello"
    with pytest.raises(ValueError, match="cannot spell 'H'"):
        mixed.encode("HELLO")


def test_encode_on_a_character_table_with_a_space_token():
    table = TokenTable(["<blk>", " ", *"newyork"])
    assert "".join(table.piece(i) for i in table.encode("new  york")) == "new york"


def test_encode_refuses_what_the_table_cannot_spell():
    table = sentencepiece_table()
    with pytest.raises(ValueError, match="cannot spell 'X'"):
        table.encode("hex")
    with pytest.raises(ValueError, match="empty"):
        table.encode("  ")


def bytewise_pieces(table: TokenTable, ids: list[int]) -> list[str]:
    """The pieces rule applied one byte at a time, as the definition reads:
    the bytes go through one incremental UTF-8 decoder (invalid ones
    dropped), a character goes to the token holding its first byte, a word
    boundary becomes one space unless either neighbour is written without
    spaces."""
    import codecs

    from trio_asr.recognition.tokens import is_unspaced

    decoder = codecs.getincrementaldecoder("utf-8")("ignore")
    out, owner, space, previous = [""] * len(ids), None, False, ""
    for k, token_id in enumerate(ids):
        for unit in table._units[token_id]:
            if unit is None:
                space = True
                continue
            if owner is None:
                owner = k
            for ch in decoder.decode(bytes([unit])):
                if space and previous and not (is_unspaced(previous) or is_unspaced(ch)):
                    out[owner] += " "
                out[owner] += ch
                previous, space = ch, False
            if not decoder.getstate()[0]:
                owner = None
    return out


MIXED_PIECES = [
    "<blk>", "<unk>", "\u2581", "\u2581the", "re", "\u2581a\u2581b", "c\u2581", "中", "\u2581中", "é",
    "<0xE4>", "<0xB8>", "<0xAD>", "<0x41>", "<0x80>", "<0xFF>", " ", "\u2581한", "文",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(MIXED_PIECES) - 1), max_size=30))
def test_pieces_equal_the_rule_applied_byte_by_byte_on_a_mixed_table(ids):
    table = TokenTable(MIXED_PIECES)
    assert table.pieces(ids) == bytewise_pieces(table, ids)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 600), max_size=30))
def test_pieces_equal_the_rule_applied_byte_by_byte_on_a_bbpe_table(ids):
    table = synthetic_bbpe()
    ids = [i % len(table) for i in ids]
    assert table.pieces(ids) == bytewise_pieces(table, ids)


MEMO_PIECES = [*MIXED_PIECES, "<0xC3>", "<0xA9>"]


def edits(size: int):
    """Token sequences one after another, each keeping a prefix of the one
    before (or all of it with one token replaced) and adding tokens, as a
    search's best path changes."""
    step = st.tuples(
        st.integers(0, 40), st.lists(st.integers(0, size - 1), max_size=20), st.integers(0, 60), st.integers(0, size - 1)
    )
    return st.lists(step, min_size=1, max_size=12)


def replay(steps) -> list[list[int]]:
    sequences, ids = [], []
    for keep, added, at, replacement in steps:
        ids = ids[: max(len(ids) - keep, 0)] + added
        if at < len(ids) and at % 3 == 0:
            ids[at] = replacement
        sequences.append(ids)
    return sequences


@settings(max_examples=300, deadline=None)
@given(edits(len(MEMO_PIECES)))
def test_text_memo_gives_text_for_every_edit_on_a_mixed_table(steps):
    table = TokenTable(MEMO_PIECES)
    memo = TextMemo(table)
    for ids in replay(steps):
        assert memo.text(ids) == table.text(ids)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_text_memo_gives_text_for_every_edit_on_a_bbpe_table(data):
    table = synthetic_bbpe()
    memo = TextMemo(table)
    for ids in replay(data.draw(edits(len(table)))):
        assert memo.text(ids) == table.text(ids)


@settings(max_examples=300)
@given(
    st.lists(st.integers(0, 9), max_size=80),
    st.lists(st.integers(0, 9), max_size=40),
    st.lists(st.integers(0, 9), max_size=40),
)
def test_shared_prefix_is_the_longest_common_prefix(common, tail_a, tail_b):
    from trio_asr.recognition.tokens import _shared_prefix

    a, b = (*common, 10, *tail_a), (*common, 11, *tail_b)
    assert _shared_prefix(a, b) == len(common) == _shared_prefix(b, a)
    assert _shared_prefix(a, tuple(common)) == len(common) == _shared_prefix(tuple(common), b)


def test_text_memo_converts_only_what_changed():
    converted: list[int] = []

    class CountingTable(TokenTable):
        def _pieces_after(self, ids, previous, pending_space, marks):
            converted.append(len(ids))
            return super()._pieces_after(ids, previous, pending_space, marks)

    table = CountingTable(MEMO_PIECES)
    memo = TextMemo(table)
    the, e4, b8, ad = (table.id(p) for p in ("\u2581the", "<0xE4>", "<0xB8>", "<0xAD>"))
    ids = [the] * 200
    assert memo.text(ids) == " ".join(["the"] * 200)
    ids = ids[:-1] + [table.id("re"), the]  # the last token revised, one more added: from token 192
    assert memo.text(ids) == " ".join(["the"] * 199) + "re the"
    assert converted == [200, 9]
    # a character incomplete at a resume point: back to the point before it
    ids = [the] * 15 + [e4, b8, ad]
    memo.text(ids)
    converted.clear()
    text = memo.text([*ids, the])
    assert converted == [19]
    assert text == table.text([*ids, the]) == " ".join(["the"] * 15) + "中the"
