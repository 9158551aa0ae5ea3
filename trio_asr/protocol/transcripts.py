"""A finished transcription as OpenAI's transcription API gives it back, sans-I/O.

:class:`Transcript` holds the text, segments and words of one file,
converted from the recognizer's result by :func:`transcript_from_result`.
This module writes the formats that are not JSON (:func:`subrip` and
:func:`webvtt`) and the UTF-8 bytes of every body (:func:`utf8`, :func:`json_bytes`);
:mod:`trio_asr.protocol.transcription_api` picks the format a request asks for.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from trio_asr.recognition.segments import RecognitionResult, Segment

__all__ = [
    "Transcript",
    "TranscriptSegment",
    "TranscriptWord",
    "json_bytes",
    "language_name",
    "subrip",
    "transcript_from_result",
    "utf8",
    "webvtt",
]

#: OpenAI's names of the languages SenseVoice tells apart
LANGUAGE_NAMES = {"zh": "chinese", "en": "english", "ja": "japanese", "ko": "korean", "yue": "cantonese"}

_SURROGATE = re.compile("[\ud800-\udfff]")
_ARROW = re.compile("-{2,}>")


@attrs.frozen
class TranscriptWord:
    """A word and its time span, seconds from the start of the audio."""

    word: str
    start: float
    end: float


@attrs.frozen
class TranscriptSegment:
    """A segment (numbered from 0), its time span and text, and its words
    when they are timed."""

    id: int
    start: float
    end: float
    text: str
    words: tuple[TranscriptWord, ...] = ()


@attrs.frozen
class Transcript:
    """The transcription of one audio file: the whole text, the language (None:
    not known), the audio's duration in seconds, the segments with text, and
    the whole text's alternatives as ``(text, log score)``, best first."""

    text: str
    language: str | None
    duration: float
    segments: tuple[TranscriptSegment, ...]
    nbest: tuple[tuple[str, float], ...] = ()


def _segment(number: int, segment: Segment) -> TranscriptSegment:
    words = tuple(TranscriptWord(w.piece, w.start, w.end) for w in segment.words)
    return TranscriptSegment(number, segment.start, segment.end, segment.text, words)


def transcript_from_result(result: RecognitionResult, duration: float, language: str | None) -> Transcript:
    """The transcript of a stream's result: its closed segments, then the
    open one if it has text (without words: they are timed when a segment
    closes); ``duration`` is the audio's, in seconds."""
    segments = list(result.segments)
    if result.open is not None and result.open.text:
        segments.append(result.open)
    return Transcript(
        text=result.text,
        language=language,
        duration=duration,
        segments=tuple(_segment(number, segment) for number, segment in enumerate(segments)),
        nbest=result.nbest,
    )


def language_name(detected: str | None, asked: str | None) -> str:
    """A transcript's language as OpenAI names it: the detected one, else
    the one asked for (``auto`` is none), else ``""``.  SenseVoice also tags
    audio ``nospeech`` or ``<unk>``: no language, so not one to report."""
    if detected in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[detected]
    if asked and asked != "auto":
        return LANGUAGE_NAMES.get(asked, asked)
    return ""


def utf8(text: str) -> bytes:
    """``text`` as UTF-8, a lone surrogate (which UTF-8 cannot hold) as U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8 (no ``\\u`` escapes but for control
    characters; a lone surrogate becomes U+FFFD, as in :func:`utf8`)."""
    return utf8(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _cue_text(text: str) -> str:
    """Text for one cue: on one line, and never a cue's ``-->``."""
    return _ARROW.sub("->", " ".join(text.split()))


def _timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS<separator>mmm``; the hours take more digits past 99."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    return f"{hours:02d}:{minutes:02d}:{ms // 1000:02d}{separator}{ms % 1000:03d}"


def subrip(transcript: Transcript) -> str:
    """The segments as SubRip (``.srt``) cues, numbered from 1, each followed
    by a blank line; a segment whose text is only whitespace has no cue."""
    cues: list[str] = []
    for segment in transcript.segments:
        text = _cue_text(segment.text)
        if text:
            times = f"{_timestamp(segment.start, ',')} --> {_timestamp(segment.end, ',')}"
            cues.append(f"{len(cues) + 1}\n{times}\n{text}\n\n")
    return "".join(cues)


def webvtt(transcript: Transcript) -> str:
    """The segments as a WebVTT file: ``WEBVTT``, a blank line, then one cue
    per segment, each followed by a blank line; ``&``, ``<`` and ``>`` in the
    text are written as the character references WebVTT cue text needs."""
    cues = ["WEBVTT\n\n"]
    for segment in transcript.segments:
        text = _cue_text(segment.text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        if text:
            cues.append(f"{_timestamp(segment.start, '.')} --> {_timestamp(segment.end, '.')}\n{text}\n\n")
    return "".join(cues)
