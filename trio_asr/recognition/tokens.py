"""Token tables (sherpa-onnx ``tokens.txt``) and token-id to text conversion.

Two piece spellings are understood:

* SentencePiece pieces, where ``▁`` (U+2581) marks the start of a word and a
  piece ``<0xHH>`` is a byte-fallback byte;
* byte-level BPE ("bbpe", icefall): every UTF-8 byte of the training text was
  first replaced by one printable character, so a piece spells bytes, not
  characters, and one token may hold part of a character. Pieces may still
  start with ``▁``.

Text is made of words joined by single spaces, except that no space is put
next to an East Asian wide character (CJK ideographs, kana, full-width
punctuation), so Chinese comes out without spurious spaces while mixed
Chinese/English keeps spaces between English words.

:meth:`TokenTable.encode` inverts this for a phrase (the token sequence the
model would emit to spell it), which is what hotwords are matched on.
"""

from __future__ import annotations

import codecs
import itertools
import os
import re
import unicodedata
from collections.abc import Generator, Iterable, Sequence

import attrs

from trio_asr.recognition.spelling import Trie, is_unspaced, spell_steps, spelling_trie

__all__ = ["BYTE_TO_CHAR", "CHAR_TO_BYTE", "TextMemo", "TokenTable", "is_unspaced"]

WORD_BOUNDARY = "\u2581"
BLANK_PIECES = ("<blk>", "<blank>")


def _byte_alphabet() -> tuple[str, ...]:
    """icefall's printable stand-in character for every byte value.

    Printable ASCII (32..126) stands for itself; the other 161 byte values, in
    increasing order, take the characters from U+0100 upward that NFKC leaves
    unchanged (so the alphabet survives SentencePiece's normalisation).
    """
    stand_ins = (chr(c) for c in range(0x100, 0x300) if unicodedata.normalize("NFKC", chr(c)) == chr(c))
    return tuple(chr(b) if 32 <= b <= 126 else next(stand_ins) for b in range(256))


BYTE_TO_CHAR: tuple[str, ...] = _byte_alphabet()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}

_LINE = re.compile(r"^(?:(.*?)[ \t]+)?(-?\d+)[ \t]*$")
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_CONTROL = re.compile(r"^<[^<>\s]+>$")
_WHITESPACE_BYTES = frozenset(b" \t\n\r\x0b\x0c")

# A token's content: byte values, with None marking a word boundary.
_Units = tuple[int | None, ...]
# Where a conversion can resume: the last character so far, and whether a word boundary is pending.
_Mark = tuple[str, bool]
#: tokens between the points where TextMemo may resume a conversion
_MARK_EVERY = 16

def _looks_bbpe(pieces: Iterable[str]) -> bool:
    uses_high_bytes = False
    for piece in pieces:
        if _CONTROL.match(piece):
            continue
        body = piece.replace(WORD_BOUNDARY, "")
        if any(ch not in CHAR_TO_BYTE for ch in body):
            return False
        uses_high_bytes = uses_high_bytes or any(ord(ch) >= 0x100 for ch in body)
    return uses_high_bytes


def _units(piece: str, *, bbpe: bool) -> _Units:
    fallback = _BYTE_FALLBACK.match(piece)
    if fallback:
        raw: list[int | None] = [int(fallback.group(1), 16)]
    elif _CONTROL.match(piece):
        return ()
    else:
        raw = []
        for ch in piece:
            if ch == WORD_BOUNDARY or ch.isspace():
                raw.append(None)
            elif bbpe and ch in CHAR_TO_BYTE:
                raw.append(CHAR_TO_BYTE[ch])
            else:
                raw.extend(ch.encode("utf-8"))
    return tuple(None if u in _WHITESPACE_BYTES else u for u in raw)


# A token spelled as zero or more word boundaries followed by complete UTF-8
# characters: (whether it starts with a boundary, its characters).
_Whole = tuple[bool, str]


def _whole(units: _Units) -> _Whole | None:
    """The token as whole characters, or None when it needs decoding byte by
    byte (a boundary after its first character, or bytes that are not
    complete valid UTF-8 on their own)."""
    leading = 0
    while leading < len(units) and units[leading] is None:
        leading += 1
    body = units[leading:]
    if None in body:
        return None
    try:
        text = bytes(body).decode("utf-8")  # type: ignore[arg-type]
    except UnicodeDecodeError:
        return None
    return leading > 0, text


@attrs.frozen(init=False)
class TokenTable:
    """Id <-> piece table of a model, and the rules that turn ids into text.

    ``bbpe`` is detected from the pieces unless given: a table is byte-level
    BPE when every ordinary piece (``<...>`` control pieces aside) is spelled
    with ``▁`` and the 256 byte stand-in characters only, and some piece uses
    a stand-in beyond ASCII.
    """

    _pieces: tuple[str, ...]
    blank_id: int
    bbpe: bool
    _units: tuple[_Units, ...]
    _whole: tuple[_Whole | None, ...] = attrs.field(eq=False, repr=False)
    # [(trie, case)], built on first encode
    _spelling: list[tuple[Trie, str | None]] = attrs.field(eq=False, repr=False)

    def __init__(self, pieces: Sequence[str], *, blank_id: int | None = None, bbpe: bool | None = None):
        pieces = tuple(pieces)
        if not pieces:
            raise ValueError("a token table needs at least one token")
        if blank_id is None:
            blank_id = next((i for i, p in enumerate(pieces) if p in BLANK_PIECES), 0)
        if not 0 <= blank_id < len(pieces):
            raise ValueError(f"blank_id {blank_id} is outside the table of {len(pieces)} tokens")
        if bbpe is None:
            bbpe = _looks_bbpe(pieces)
        units = tuple(() if i == blank_id else _units(p, bbpe=bbpe) for i, p in enumerate(pieces))
        self.__attrs_init__(pieces, blank_id, bbpe, units, tuple(_whole(u) for u in units), [])

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, blank_id: int | None = None, bbpe: bool | None = None
    ) -> TokenTable:
        """Read a sherpa-onnx ``tokens.txt``: one ``<piece> <id>`` per line.

        A line holding only an id stands for the piece " " (sherpa-onnx's
        reading of a whitespace piece). Ids must be exactly ``0 .. N-1``.
        """
        by_id: dict[int, str] = {}
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n").lstrip(" \t")
                if not line.strip():
                    continue
                match = _LINE.match(line)
                if match is None:
                    raise ValueError(f"{path}:{number}: expected '<piece> <id>', got {line!r}")
                piece, token_id = match.group(1) or " ", int(match.group(2))
                if token_id in by_id:
                    raise ValueError(f"{path}:{number}: id {token_id} appears twice")
                by_id[token_id] = piece
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"{path}: token ids are not exactly 0..{len(by_id) - 1}")
        return cls([by_id[i] for i in range(len(by_id))], blank_id=blank_id, bbpe=bbpe)

    def __len__(self) -> int:
        return len(self._pieces)

    def piece(self, token_id: int) -> str:
        """The piece exactly as spelled in the table."""
        return self._pieces[token_id]

    def id(self, piece: str) -> int:
        """The id of ``piece``; KeyError if it is not in the table."""
        try:
            return self._pieces.index(piece)
        except ValueError:
            raise KeyError(piece) from None

    def text(self, ids: Iterable[int]) -> str:
        """The text of a token sequence.

        Blank and ``<...>`` control tokens (``<unk>``, ``<sos/eos>``) add
        nothing. Bytes that are not valid UTF-8 are dropped, and so are the
        bytes of a character that is still incomplete at the end: a partial
        result shows that character once the token completing it arrives.
        """
        return "".join(self.pieces(ids))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The display text contributed by each token, for timestamps.

        ``"".join(pieces(ids)) == text(ids)``. A character belongs to the token
        holding its first byte, so with byte-level BPE a token that only
        finishes a character (and blank/control tokens) contributes "". The
        space before a word is part of the piece of the token starting it.
        """
        return self._pieces_after(list(ids), "", False, None)

    def _pieces_after(
        self, ids: Sequence[int], previous: str, pending_space: bool, marks: list[_Mark | None] | None
    ) -> list[str]:
        """:meth:`pieces` of ``ids`` following tokens whose text ended in
        ``previous`` (its last character; "" if none) with a word boundary
        ``pending_space`` and no character incomplete.  Appends to ``marks``,
        after every :data:`_MARK_EVERY` tokens, where a conversion could
        resume: (previous, pending_space), or None while a character is
        incomplete."""
        out = [""] * len(ids)
        decoder = codecs.getincrementaldecoder("utf-8")("ignore")
        owner: int | None = None  # token holding the first byte of a pending character
        for k, token_id in enumerate(ids):
            whole = self._whole[token_id]
            if whole is not None and owner is None:  # the usual token: whole characters, nothing pending
                boundary, text = whole
                pending_space = pending_space or boundary
                if text:
                    if pending_space and previous and not (is_unspaced(previous) or is_unspaced(text[0])):
                        text = " " + text
                    out[k], previous, pending_space = text, text[-1], False
            else:
                for unit in self._units[token_id]:
                    if unit is None:
                        pending_space = True
                        continue
                    if owner is None:
                        owner = k
                    for ch in decoder.decode(bytes((unit,))):
                        if pending_space and previous and not (is_unspaced(previous) or is_unspaced(ch)):
                            out[owner] += " "
                        out[owner] += ch
                        previous, pending_space = ch, False
                    if not decoder.getstate()[0]:
                        owner = None
            if marks is not None and (k + 1) % _MARK_EVERY == 0:
                marks.append((previous, pending_space) if owner is None else None)
        return out

    def encode(self, phrase: str) -> tuple[int, ...]:
        """The tokens this model emits to spell ``phrase``: the inverse of
        :meth:`text`, so ``text(encode(p))`` is ``p`` with its whitespace
        collapsed (and its case changed as below).

        Words are separated by whitespace; a word starts with a word boundary
        (``▁``), and each character written without spaces (CJK) may start
        its own word, as icefall's byte-level BPE models spell Chinese. Of
        the spellings, the cheapest is taken: a token costs 1, so does an
        optional boundary left unmarked (the phrase's leading one excepted),
        ties going to more marked boundaries and then to the longest first
        token. BPE merges usually give that spelling; a model that emits
        another one is not matched. A table without lower-case letters (or
        without upper-case ones) gets the phrase upper-cased (lower-cased).
        ValueError, naming the character, if the table cannot spell it.
        """
        steps = self.encode_steps(phrase)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def encode_steps(self, phrase: str) -> Generator[None, None, tuple[int, ...]]:
        """:meth:`encode` in steps of
        :data:`~trio_asr.recognition.spelling.POSITIONS_PER_STEP` bytes of
        the phrase (a small fraction of a millisecond each), for callers that
        interleave it with other work."""
        return spell_steps(*self._spelling_trie(), phrase)

    def _spelling_trie(self) -> tuple[Trie, str | None]:
        if not self._spelling:
            self._spelling.append(spelling_trie(self._units))
        return self._spelling[0]


class TextMemo:
    """:meth:`TokenTable.text` of sequences that mostly extend the last one
    converted, as a search's best path does while it grows.  A call converts
    the tokens from the last resume point at or before the prefix it shares
    with the last sequence: there is one every :data:`_MARK_EVERY` tokens
    where no character is incomplete.  Finding the shared prefix and copying
    the text kept are C-speed passes over the sequence."""

    def __init__(self, table: TokenTable) -> None:
        self._table = table
        self._ids: tuple[int, ...] = ()
        self._text = ""
        #: after each _MARK_EVERY tokens of ``_ids``: (text length, previous
        #: character, pending space), or None where a character is incomplete
        self._marks: list[tuple[int, str, bool] | None] = [(0, "", False)]

    def text(self, ids: Sequence[int]) -> str:
        """``table.text(ids)``."""
        ids = tuple(ids)
        mark = _shared_prefix(ids, self._ids) // _MARK_EVERY
        while (resume := self._marks[mark]) is None:  # the empty prefix always resumes
            mark -= 1
        kept, previous, pending_space = resume
        states: list[_Mark | None] = []
        pieces = self._table._pieces_after(ids[mark * _MARK_EVERY :], previous, pending_space, states)
        ends = list(itertools.accumulate(map(len, pieces), initial=kept))  # at a mark, the pieces before it are final
        del self._marks[mark + 1 :]
        self._marks += [None if state is None else (ends[k * _MARK_EVERY], *state) for k, state in enumerate(states, 1)]
        self._text = self._text[:kept] + "".join(pieces)
        self._ids = ids
        return self._text


def _shared_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    # a[:low] == b[:low] and a[:high] != b[:high].  Paths mostly differ in
    # their last tokens: step back from the end, then bisect.
    low, high, step = n - 1, n, 1
    while low > 0 and a[:low] != b[:low]:
        high, step = low, 2 * step
        low = max(high - step, 0)
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low
