"""Token and word time spans of a decoded segment.

A token is emitted at one output frame (the search records which); its span
runs from that frame through the *active* frames that follow it (frames whose
best-path token is not blank), up to the frame before the next token is
emitted: the span ends where a blank run or the next token begins.

Words are made of tokens' display pieces (:meth:`trio_asr.recognition.tokens.TokenTable.pieces`):
a space starts a new word, and each character of writing without spaces
between words (CJK) is a word by itself, as PaddleSpeech's own subtitle client
assumes.  A word starts at its first token's first frame and ends at its last
token's last frame.
"""

from __future__ import annotations

from collections.abc import Sequence

from trio_asr.recognition.tokens import is_unspaced

__all__ = ["token_spans", "word_spans"]


def token_spans(frames: Sequence[int], active: Sequence[int], num_frames: int) -> list[tuple[int, int]]:
    """``(first, last)`` frame of each token emitted at ``frames`` (ascending).

    ``active[t]`` is true when frame ``t``'s best-path token is not blank;
    ``num_frames`` bounds the last token's span.
    """
    spans = []
    for i, first in enumerate(frames):
        limit = frames[i + 1] if i + 1 < len(frames) else num_frames
        last = first
        while last + 1 < limit and active[last + 1]:
            last += 1
        spans.append((first, last))
    return spans


def word_spans(pieces: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[tuple[str, int, int]]:
    """``(word, first frame, last frame)`` of the words that ``pieces`` spell.

    ``pieces[i]`` is token ``i``'s display text and ``spans[i]`` its frames;
    tokens with empty pieces are skipped.
    """
    words: list[tuple[str, int, int]] = []
    open_word = False  # whether the next letter continues words[-1]
    for piece, (first, last) in zip(pieces, spans):
        for ch in piece:
            if ch.isspace():
                open_word = False
            elif is_unspaced(ch):
                words.append((ch, first, last))
                open_word = False
            elif open_word:
                word, start, _ = words[-1]
                words[-1] = (word + ch, start, last)
            else:
                words.append((ch, first, last))
                open_word = True
    return words
