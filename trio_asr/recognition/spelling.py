"""Spelling a phrase with a token table's tokens, the inverse of
:meth:`trio_asr.recognition.tokens.TokenTable.text` (the rules are in
:meth:`~trio_asr.recognition.tokens.TokenTable.encode`'s docstring): the
trie of the tokens' spellings, the phrase as the bytes and word boundaries
to spell, and the dynamic programming that finds the cheapest spelling, in
steps (:func:`spell_steps`), so that a long list of hotwords can be
spelled between other work.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Generator, Iterator, Sequence
from typing import Any, cast

__all__ = ["POSITIONS_PER_STEP", "Trie", "is_unspaced", "spell_steps", "spelling_trie"]

# A token's content: byte values, with None marking a word boundary.
Units = tuple[int | None, ...]

# A phrase to spell: byte values and word boundaries, a boundary being
# _NEEDED (it puts a space into the text), _OPTIONAL (the text is the same
# either way: next to a character written without spaces) or _LEADING (the
# phrase's first, marked only when joined to its first token: a phrase must
# match at the start of an utterance, where no standalone boundary comes).
_NEEDED, _OPTIONAL, _LEADING = "needed", "optional", "leading"
#: positions of a phrase's spelling (UTF-8 bytes and word boundaries) per step of TokenTable.encode_steps
POSITIONS_PER_STEP = 64
_Target = list[int | str]

# The tokens' spellings as a trie: a node maps a unit (byte value, None for a
# word boundary) to the next node, and "id" to the smallest id of the tokens spelled up to it.
Trie = dict[int | str | None, "Trie | int"]


def is_unspaced(ch: str) -> bool:
    """Whether ``ch`` belongs to writing that puts no spaces between words."""
    if "\uac00" <= ch <= "\ud7af" or "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f":
        return False  # Hangul is wide but Korean is written with spaces
    return unicodedata.east_asian_width(ch) in ("W", "F")



def spelling_trie(units: Sequence[Units]) -> tuple[Trie, str | None]:
    """The trie of the tokens spelled by ``units`` (by token id), and the
    case phrases are spelled in: "upper" for a table without lower-case
    letters, "lower" for one without upper-case ones, else None."""
    trie: Trie = {}
    upper = lower = False
    for token_id, token in enumerate(units):
        if not token or all(u is None for u in token) and len(token) > 1:
            continue  # blank and control tokens; a run of boundaries spells nothing new
        node = trie
        for unit in token:
            node = cast(Trie, node.setdefault(unit, {}))
        node["id"] = min(cast(int, node.get("id", token_id)), token_id)
        upper = upper or any(u is not None and 65 <= u <= 90 for u in token)
        lower = lower or any(u is not None and 97 <= u <= 122 for u in token)
    return trie, "upper" if upper and not lower else "lower" if lower and not upper else None


def spell_steps(trie: Trie, case: str | None, phrase: str) -> Generator[None, None, tuple[int, ...]]:
    """The token ids spelling ``phrase``, in steps of :data:`POSITIONS_PER_STEP`
    positions; ValueError naming the character that cannot be spelled."""
    words = phrase.split()
    if not words:
        raise ValueError("an empty phrase has no tokens")
    text = " ".join(words)
    text = text.upper() if case == "upper" else text.lower() if case == "lower" else text
    target, chars = _spelling_target(text)
    return (yield from _fewest_tokens(trie, target, chars, text))


def _spelling_target(text: str) -> tuple[_Target, list[int]]:
    """``text`` (words joined by single spaces) as units and boundary marks,
    with the index in ``text`` of the character each entry belongs to."""
    target: _Target = []
    chars: list[int] = []
    previous = ""
    for index, ch in enumerate(text):
        if ch == " ":
            continue
        if not previous:
            target.append(_LEADING)
            chars.append(index)
        elif is_unspaced(ch) or is_unspaced(previous):
            target.append(_OPTIONAL)
            chars.append(index)
        elif text[index - 1] == " ":
            target.append(_NEEDED)
            chars.append(index)
        for byte in ch.encode("utf-8"):
            target.append(byte)
            chars.append(index)
        previous = ch
    return target, chars


# A step of a spelling: (cost..., token id or None to leave a boundary
# unmarked, next position).
_Step = tuple[int, int, int, int | None, int]


def _fewest_tokens(
    trie: Trie, target: _Target, chars: list[int], text: str
) -> Generator[None, None, tuple[int, ...]]:
    """Dynamic programming over ``target`` from its end: the cost of spelling
    ``target[p:]`` is (tokens + unmarked optional boundaries, unmarked
    boundaries, minus the first token's length), smallest first; in steps
    of :data:`POSITIONS_PER_STEP` positions."""
    size = len(target)
    # per position: the best step from there
    best: list[_Step | None] = [None] * (size + 1)
    best[size] = (0, 0, 0, None, size)
    token_id: int | None
    for p in range(size - 1, -1, -1):
        first = target[p]
        found: _Step | None = None
        rest = best[p + 1]
        if (first == _OPTIONAL or first == _LEADING) and rest is not None:  # leave it unmarked
            found = (rest[0] + (first == _OPTIONAL), rest[1] + 1, 0, None, p + 1)
        # The tokens spelling target[p:q], as _token_matches finds them (inlined: this is the hot loop).
        stack: list[tuple[Any, int, int]] = [(trie, p, 0)]
        while stack:
            node, q, skipped = stack.pop()
            if q > p:
                token_id = node.get("id")
                if token_id is not None and (q != p + 1 or first != _LEADING):
                    rest = best[q]
                    if rest is not None:
                        cost = (rest[0] + 1 + skipped, rest[1] + skipped, p - q)
                        if found is None or cost < found[:3]:
                            found = (*cost, token_id, q)
            if q == size:
                continue
            entry = target[q]
            if entry.__class__ is int:  # a byte
                child = node.get(entry)
                if child is not None:
                    stack.append((child, q + 1, skipped))
            else:  # a boundary
                child = node.get(None)
                if child is not None:
                    stack.append((child, q + 1, skipped))
                if entry == _OPTIONAL and q > p:
                    stack.append((node, q + 1, skipped + 1))
        best[p] = found
        if p % POSITIONS_PER_STEP == 0:
            yield
    if best[0] is None:
        reach = {0}
        for p in range(size):
            if p in reach:
                reach.update(q for q, _, _ in _token_matches(trie, target, p))
                if target[p] in (_OPTIONAL, _LEADING):
                    reach.add(p + 1)
        stuck = chars[max(reach)]
        raise ValueError(f"the model's tokens cannot spell {text[stuck]!r} (in {text!r})")
    ids: list[int] = []
    p = 0
    while p < size:
        step = best[p]
        assert step is not None
        _, _, _, token_id, q = step
        if token_id is not None:
            ids.append(token_id)
        p = q
    return tuple(ids)


def _token_matches(trie: Trie, target: _Target, p: int) -> Iterator[tuple[int, int, int]]:
    """``(end, optional boundaries skipped, token id)`` of every token whose
    units spell ``target[p:end]``, skipping optional boundaries inside it."""
    stack = [(trie, p, 0)]
    while stack:
        node, q, skipped = stack.pop()
        if q > p and "id" in node and not (q == p + 1 and target[p] == _LEADING):
            yield q, skipped, cast(int, node["id"])
        if q == len(target):
            continue
        entry = target[q]
        if isinstance(entry, int):
            if entry in node:
                stack.append((cast(Trie, node[entry]), q + 1, skipped))
        else:
            if None in node:
                stack.append((cast(Trie, node[None]), q + 1, skipped))
            if entry == _OPTIONAL and q > p:
                stack.append((node, q + 1, skipped + 1))
