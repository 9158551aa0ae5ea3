"""Hotwords: phrases the CTC prefix beam search is biased towards (sans-I/O).

Three steps, each checking what it takes:

* :func:`parse_hotwords` reads the file format (:func:`read_hotwords_file`
  reads a file, size-bounded), :func:`hotwords_from_json` a stream's list;
* :func:`merge_hotwords` adds a stream's list to the server's;
* :func:`compile_hotwords` spells every phrase with the model's own tokens
  (:meth:`trio_asr.recognition.tokens.TokenTable.encode`) and builds the Aho-Corasick
  automaton over token ids that the compiled search walks
  (:mod:`trio_asr.recognition.hotword_automaton`), a
  :class:`CompiledHotwords` shared by every stream that uses the same list;
  :meth:`CompiledHotwords.merged_steps` compiles a stream's list with it,
  in short steps, and keeps the lists used last.

**File format.** UTF-8 text, one phrase per line; blank lines and lines
starting with ``#`` are ignored; runs of whitespace in a phrase count as one
space. A line may end in ``:SCORE`` (a number, ``0 < SCORE <= 10``), the
phrase's bonus per token in natural-log units, instead of the default
(``--hotwords-score``, 1.5). So a phrase cannot contain ``:``. At most
:data:`MAX_PHRASES` phrases of at most :data:`MAX_PHRASE_CHARS` characters;
a phrase may appear once.

**Scores.** Walking along a phrase, a hypothesis gains the phrase's score for
every token; if the phrase breaks off, everything gained on it is taken back;
once the phrase is complete the bonus is kept. Precisely, for a token
sequence ``x`` let ``w`` be its longest suffix that begins some phrase (the
automaton's state). Position ``k`` of ``w`` carries the largest score of the
phrases beginning with ``w[:k]``. The positions of ``w`` inside some phrase
occurrence lying wholly in ``w`` are *settled*, the others *at risk*.
Entering a state keeps (adds for good) the positions that it settles newly
(those not settled in ``w`` without its last token), each with its score in
the longest phrase ending there; a hypothesis is ranked with the kept bonus
plus the at-risk scores of its state, and reported with the kept bonus only.
Two overlapping phrases that both complete may both count their shared
tokens.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import attrs
import numpy as np

from trio_asr._ctc import HotwordGraph
from trio_asr.recognition.hotword_automaton import Steps, graph_steps, run_steps
from trio_asr.recognition.tokens import TokenTable

__all__ = [
    "DEFAULT_SCORE",
    "MAX_PHRASE_CHARS",
    "MAX_PHRASES",
    "MAX_SCORE",
    "CompiledHotwords",
    "Hotword",
    "HotwordError",
    "compile_hotwords",
    "empty_hotwords",
    "hotwords_from_json",
    "merge_hotwords",
    "parse_hotwords",
    "read_hotwords_file",
    "stream_graph",
]

DEFAULT_SCORE = 1.5
MAX_SCORE = 10.0
MAX_PHRASES = 10_000
MAX_PHRASE_CHARS = 64
MAX_FILE_BYTES = 1 << 20  # far above MAX_PHRASES short lines


class HotwordError(ValueError):
    """A hotword list that cannot be used; the message is one line for the user."""


def check_score(score: object, what: str = "score") -> float:
    """``score`` as a float if it is a number with ``0 < score <= MAX_SCORE``."""
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise HotwordError(f"{what} must be a number, got {_short(score)}")
    try:
        score = float(score)
    except OverflowError:  # an integer beyond any float (JSON allows 4300 digits)
        raise HotwordError(f"{what} must be above 0 and at most {MAX_SCORE:g}, got {_short(score)}") from None
    if not (math.isfinite(score) and 0 < score <= MAX_SCORE):
        raise HotwordError(f"{what} must be above 0 and at most {MAX_SCORE:g}, got {score:g}")
    return score


def _short(value: object) -> str:
    """``repr(value)``, cut so that an error message stays one short line."""
    try:
        text = repr(value)
    except RecursionError:  # a deeply nested JSON list
        text = f"a nested {type(value).__name__}"
    except ValueError:  # an integer too long for repr (sys.get_int_max_str_digits)
        text = f"a {type(value).__name__} too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def _check_phrase(phrase: object) -> str:
    if not isinstance(phrase, str):
        raise HotwordError(f"a phrase must be a string, got {_short(phrase)}")
    if len(phrase) > 4 * MAX_PHRASE_CHARS:  # before scanning it
        raise HotwordError(f"phrase {_short(phrase)} is longer than {MAX_PHRASE_CHARS} characters")
    if not phrase.isprintable() and any(  # isprintable: no "C" category at all, quickly
        unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and not ch.isspace() for ch in phrase
    ):
        raise HotwordError(f"phrase {_short(phrase)} holds a control or unassigned character")
    text = " ".join(phrase.split())
    if not text:
        raise HotwordError("a phrase is empty")
    if len(text) > MAX_PHRASE_CHARS:
        raise HotwordError(f"phrase {_short(text)} is longer than {MAX_PHRASE_CHARS} characters")
    if ":" in text:
        raise HotwordError(f"phrase {text!r} contains ':' (a score is written 'PHRASE :SCORE')")
    return text


@attrs.frozen
class Hotword:
    """One phrase and its bonus per token (``None``: the default score)."""

    phrase: str = attrs.field(converter=_check_phrase)
    score: float | None = attrs.field(
        default=None, converter=attrs.converters.optional(check_score)
    )


def _distinct(hotwords: Iterable[Hotword]) -> tuple[Hotword, ...]:
    out = tuple(hotwords)
    seen: set[str] = set()
    for hotword in out:
        if hotword.phrase in seen:
            raise HotwordError(f"phrase {hotword.phrase!r} appears twice")
        seen.add(hotword.phrase)
    return out


def parse_hotwords(text: str, *, source: str = "hotwords") -> tuple[Hotword, ...]:
    """The phrases of a hotwords file's text (format in the module docstring);
    errors name ``source`` and the line."""
    hotwords = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{number}"
        phrase, colon, score_text = line.rpartition(":")
        if not colon:
            phrase, score = line, None
        else:
            try:
                score = check_score(float(score_text), "the score")
            except ValueError as e:  # HotwordError is one too
                detail = e if isinstance(e, HotwordError) else f"the score {_short(score_text.strip())} is not a number"
                raise HotwordError(f"{where}: {detail} (expected 'PHRASE' or 'PHRASE :SCORE')") from None
        try:
            hotword = Hotword(phrase, score)
        except HotwordError as e:
            raise HotwordError(f"{where}: {e}") from None
        if hotword.phrase in seen:
            raise HotwordError(f"{where}: {hotword.phrase!r} is already on line {seen[hotword.phrase]}")
        seen[hotword.phrase] = number
        hotwords.append(hotword)
        if len(hotwords) > MAX_PHRASES:
            raise HotwordError(f"{where}: more than {MAX_PHRASES} phrases")
    return tuple(hotwords)


def read_hotwords_file(path: str | os.PathLike[str]) -> tuple[Hotword, ...]:
    """:func:`parse_hotwords` of a file (UTF-8, at most 1 MiB)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise HotwordError(f"cannot read hotwords file {os.fspath(path)!r}: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise HotwordError(f"hotwords file {os.fspath(path)!r} is larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise HotwordError(f"hotwords file {os.fspath(path)!r} is not UTF-8 (byte {e.start})") from None
    return parse_hotwords(text, source=os.fspath(path))


def hotwords_from_json(value: object) -> tuple[Hotword, ...]:
    """A stream's list: a JSON array of phrases, each a string or a
    ``[phrase, score]`` pair (the caller bounds its length first)."""
    if not isinstance(value, list):
        raise HotwordError("hotwords must be a list of phrases or [phrase, score] pairs")
    hotwords = []
    for item in value:
        if isinstance(item, str):
            hotwords.append(Hotword(item))
        elif isinstance(item, list) and len(item) == 2:
            hotwords.append(Hotword(item[0], check_score(item[1], f"the score of {_short(item[0])}")))
        else:
            raise HotwordError(f"a hotword must be a phrase or a [phrase, score] pair, got {_short(item)}")
    return _distinct(hotwords)


def merge_hotwords(base: Sequence[Hotword], extra: Sequence[Hotword]) -> tuple[Hotword, ...]:
    """``base`` plus ``extra``; a phrase in both takes ``extra``'s score."""
    replaced = {h.phrase: h for h in extra}
    return (*(replaced.pop(h.phrase, h) for h in base), *(h for h in extra if h.phrase in replaced))


#: distinct stream lists kept compiled (least recently used dropped first)
MERGES_CACHED = 16
#: phrases the server's list may skip per step of a compile (they are spelled already)
KNOWN_PER_STEP = 256

# A stream's list as compiled: its phrases and their scores, in phrase order
_ListKey = tuple[tuple[str, float], ...]


@attrs.frozen
class CompiledHotwords:
    """A hotword list compiled for one token table; ``graph`` goes to
    :class:`trio_asr.recognition.search.PrefixBeamSearch`. Shareable across threads."""

    hotwords: tuple[Hotword, ...]
    default_score: float
    tokens: TokenTable = attrs.field(repr=False)
    graph: HotwordGraph = attrs.field(repr=False)
    _spelled: dict[str, tuple[int, ...]] = attrs.field(repr=False, eq=False)  # phrase -> its tokens
    _merges: OrderedDict[_ListKey, CompiledHotwords] = attrs.field(repr=False, eq=False, factory=OrderedDict)
    _lock: threading.Lock = attrs.field(repr=False, eq=False, factory=threading.Lock)

    def merged(self, extra: Sequence[Hotword]) -> CompiledHotwords:
        """These hotwords plus a stream's ``extra`` (itself when it is empty),
        compiled at once: :meth:`merged_steps` run to its end."""
        return run_steps(self.merged_steps(extra))

    def merged_steps(self, extra: Sequence[Hotword]) -> Steps[CompiledHotwords]:
        """:meth:`merged` in steps of a small fraction of a millisecond
        each. The last :data:`MERGES_CACHED` distinct lists
        used are kept, whatever the order of their phrases (and a phrase
        without a score is one with the default score), so streams sending
        the same list compile it once; such a list, or an empty one, is
        returned at the first ``next()``. Otherwise the first ``next()``
        yields before any work is done, and the second looks in the kept
        lists again. Phrases of these hotwords are not spelled again."""
        key = self._key(extra)
        if not key:
            return self
        found = self.cached(extra)
        if found is not None:
            return found
        yield  # work to do: the caller may wait for its turn
        found = self.cached(extra)  # compiled meanwhile, for another stream
        if found is not None:
            return found
        found = yield from _compile_steps(
            merge_hotwords(self.hotwords, tuple(extra)), self.tokens, self.default_score, self._spelled
        )
        with self._lock:
            if len(self._merges) >= MERGES_CACHED and key not in self._merges:
                self._merges.popitem(last=False)  # the least recently used
            self._merges[key] = found
        return found

    def cached(self, extra: Sequence[Hotword]) -> CompiledHotwords | None:
        """These hotwords plus ``extra`` if that list is kept compiled (it
        counts as used), else None."""
        key = self._key(extra)
        if not key:
            return self
        with self._lock:
            found = self._merges.get(key)
            if found is not None:
                self._merges.move_to_end(key)
        return found

    def _key(self, extra: Sequence[Hotword]) -> _ListKey:
        default = self.default_score
        return tuple(sorted((h.phrase, default if h.score is None else h.score) for h in extra))


def stream_graph(
    base: CompiledHotwords | None, extra: Sequence[Hotword], tokens: TokenTable
) -> HotwordGraph | None:
    """The graph for a stream: ``base`` (the recognizer's, shared; None: no
    phrases) plus the stream's ``extra`` phrases (compiled for this stream,
    see :meth:`CompiledHotwords.merged`), or None when there are no phrases
    at all (the unbiased search)."""
    compiled = (base or empty_hotwords(tokens)).merged(extra)
    return compiled.graph if compiled.hotwords else None


@functools.lru_cache(maxsize=4)
def empty_hotwords(tokens: TokenTable) -> CompiledHotwords:
    """No phrases, for ``tokens``: the base of stream lists on a recognizer
    without hotwords of its own (one per table, so their merges are kept)."""
    return compile_hotwords((), tokens)


def compile_hotwords(
    hotwords: Sequence[Hotword], tokens: TokenTable, *, default_score: float = DEFAULT_SCORE
) -> CompiledHotwords:
    """Spell every phrase with ``tokens`` and build its automaton; a phrase
    the table cannot spell is a :class:`HotwordError` naming it."""
    default_score = check_score(default_score, "the default hotword score")
    return run_steps(_compile_steps(tuple(hotwords), tokens, default_score, {}))


def _compile_steps(
    hotwords: tuple[Hotword, ...], tokens: TokenTable, default_score: float, known: dict[str, tuple[int, ...]]
) -> Steps[CompiledHotwords]:
    """Compiling, in steps: part of a phrase spelled
    (:meth:`~trio_asr.recognition.tokens.TokenTable.encode_steps`), or
    :data:`KNOWN_PER_STEP` phrases of ``known`` looked up, then the
    automaton's steps."""
    spellings = {}
    scores: dict[tuple[int, ...], float] = {}
    looked_up = 0
    for hotword in hotwords:
        ids = known.get(hotword.phrase)
        if ids is None:
            try:
                ids = yield from tokens.encode_steps(hotword.phrase)
            except ValueError as e:
                raise HotwordError(f"hotword {hotword.phrase!r}: {e}") from None
        else:
            looked_up += 1
            if looked_up % KNOWN_PER_STEP == 0:
                yield
        spellings[hotword.phrase] = ids
        score = default_score if hotword.score is None else hotword.score
        scores[ids] = max(score, scores.get(ids, 0.0))  # two phrases may spell alike
    graph = yield from graph_steps(scores, len(tokens))
    return CompiledHotwords(hotwords, default_score, tokens, graph, spellings)


def _build_graph(phrases: dict[tuple[int, ...], float], vocab_size: int) -> HotwordGraph:
    return run_steps(graph_steps(phrases, vocab_size))
