"""OpenAI's transcription API (``POST /v1/audio/transcriptions``), sans-I/O.

:func:`parse_transcription_form` checks the form's fields (parsed by
:mod:`trio_asr.protocol.multipart`) into a :class:`TranscriptionRequest`,
:func:`render_transcript` writes a :class:`~trio_asr.protocol.transcripts.Transcript`
in the response format asked for, and :func:`text_delta_event` and
:func:`text_done_event` are the server-sent events of a streamed one.  A
refusal is an :class:`ApiError`, which carries OpenAI's error body.

The fields, as OpenAI documents them, and what is made of them here:

* ``file`` (required): the audio, in any format
  :func:`trio_asr.audio_files.decode_audio` reads;
* ``model``: required by OpenAI, optional here, and any value is taken (the
  server has one model);
* ``language``: a language code such as ``en``, ``zh``, ``yue`` or ``auto``
  (at most 16 of ``a``-``z`` and ``-``, taken in lower case);
* ``prompt`` and ``temperature`` (0 to 1): checked, kept, and not used, as
  the recognizer has no use for them;
* ``response_format``: one of :data:`RESPONSE_FORMATS` (``json`` by default);
* ``timestamp_granularities[]`` (or without ``[]``; repeated): ``word``
  and/or ``segment`` (``segment`` by default), what ``verbose_json``
  lists; the other formats ignore them;
* ``stream``: ``true`` for server-sent events instead of one body, for the
  ``json`` and ``text`` formats only, as OpenAI has it.

And two of trio-asr's own, as the WebSocket ``start`` message has them
(:mod:`trio_asr.protocol.start`): ``hotwords``, a JSON list of phrases or
``[phrase, score]`` pairs, and ``nbest``, the number of alternatives that
``json`` gives (as ``"nbest": [{"text", "score"}]`` when more than 1).

Fields of other names are ignored.  A field other than ``file`` must be UTF-8
and at most :data:`MAX_FIELD_BYTES`, and be given once (but for the
granularities).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import attrs

from trio_asr.protocol.multipart import FormPart
from trio_asr.protocol.transcripts import (
    Transcript,
    TranscriptSegment,
    TranscriptWord,
    json_bytes,
    subrip,
    transcript_from_result,
    utf8,
    webvtt,
)
from trio_asr.recognition.hotwords import Hotword, HotwordError, hotwords_from_json

__all__ = [
    "MAX_FIELD_BYTES",
    "RESPONSE_FORMATS",
    "ApiError",
    "Transcript",
    "TranscriptSegment",
    "TranscriptWord",
    "TranscriptionRequest",
    "error_event",
    "parse_transcription_form",
    "render_transcript",
    "sse_event",
    "text_delta_event",
    "text_done_event",
    "transcript_from_result",
]

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
#: the formats that may be streamed
STREAM_FORMATS = ("json", "text")
MAX_FIELD_BYTES = 64 << 10
GRANULARITIES = ("word", "segment")
_LANGUAGE = re.compile(r"[a-z-]{1,16}")
_FIELDS = ("file", "model", "language", "prompt", "response_format", "temperature", "hotwords", "nbest", "stream")
_REPEATED = ("timestamp_granularities[]", "timestamp_granularities")

TEXT_PLAIN = "text/plain; charset=utf-8"
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": TEXT_PLAIN,
    "srt": TEXT_PLAIN,  # as OpenAI serves it (application/x-subrip is no registered type)
    "vtt": "text/vtt; charset=utf-8",
}


@attrs.frozen
class ApiError(Exception):
    """A refused request, as OpenAI reports it: the HTTP status and the
    error object (``param`` names the form field at fault)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message

    def error_object(self) -> dict[str, str | None]:
        """OpenAI's error object: ``message``, ``type``, ``param``, ``code``."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def body(self) -> bytes:
        """The response body: ``{"error": {"message", "type", "param", "code"}}``."""
        return json_bytes({"error": self.error_object()})


@attrs.frozen
class TranscriptionRequest:
    """What a transcription request asks for (see the module docstring).

    ``filename`` is the file part's file name, ``"upload"`` when it has
    none; ``language`` is None when not given; ``word_times`` and
    ``segment_times`` are the timestamp granularities.
    """

    audio: bytes
    filename: str
    model: str
    language: str | None
    prompt: str | None
    response_format: str
    word_times: bool
    segment_times: bool
    temperature: float | None
    hotwords: tuple[Hotword, ...]
    nbest: int
    stream: bool


def _short(value: str) -> str:
    """``value`` quoted for a message, cut so that the message stays short."""
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 40 else shown[:36] + '..."'


def _file_name(name: str | None) -> str:
    """The upload's name as messages show it: one line (control characters
    and line or paragraph separators as ``?``), at most 64 characters,
    keeping the end (the extension)."""
    if not name:
        return "upload"
    name = "".join("?" if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in name)
    return name if len(name) <= 64 else "..." + name[-61:]


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param)


def _text(part: FormPart) -> str:
    if len(part.data) > MAX_FIELD_BYTES:
        raise _bad(part.name, f"'{part.name}' is longer than {MAX_FIELD_BYTES} bytes")
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(part.name, f"'{part.name}' is not UTF-8 text (byte {exc.start})") from None


def _fields(parts: Sequence[FormPart]) -> tuple[dict[str, FormPart], list[str]]:
    """The known single fields by name, and the granularities' values."""
    single: dict[str, FormPart] = {}
    granularities: list[str] = []
    for part in parts:
        if part.name in _REPEATED:
            granularities.append(_text(part))
        elif part.name in _FIELDS:
            if part.name in single:
                raise _bad(part.name, f"'{part.name}' is given more than once")
            single[part.name] = part
    return single, granularities


def parse_transcription_form(
    parts: Sequence[FormPart], *, max_nbest: int, max_hotwords: int
) -> TranscriptionRequest:
    """The request that a form's parts make; raises :class:`ApiError` (400,
    ``param`` the field) for a missing or bad field.  ``nbest`` may be 1 to
    ``max_nbest``, ``hotwords`` hold at most ``max_hotwords`` phrases."""
    single, granularities = _fields(parts)
    file = single.get("file")
    if file is None:
        raise _bad("file", "'file' is required: the audio file to transcribe")
    if not file.data:
        raise _bad("file", "'file' is empty (0 bytes)")
    text = {name: _text(part) for name, part in single.items() if name != "file"}
    response_format = text.get("response_format", "json") or "json"
    if response_format not in RESPONSE_FORMATS:
        allowed = ", ".join(RESPONSE_FORMATS)
        raise _bad("response_format", f"'response_format' must be one of {allowed}, got {_short(response_format)}")
    stream = _boolean(text.get("stream") or "false", "stream")
    if stream and response_format not in STREAM_FORMATS:
        raise _bad("stream", f"streaming is only for response_format json or text, not {response_format}")
    for value in granularities:
        if value not in GRANULARITIES:
            raise _bad(
                "timestamp_granularities[]", f"'timestamp_granularities[]' must be word or segment, got {_short(value)}"
            )
    return TranscriptionRequest(
        audio=file.data,
        filename=_file_name(file.filename),
        model=text.get("model", ""),
        language=_language(text.get("language")),
        prompt=text.get("prompt"),
        response_format=response_format,
        word_times="word" in granularities,
        segment_times="segment" in granularities or not granularities,
        temperature=_temperature(text.get("temperature")),
        hotwords=_hotwords(text.get("hotwords"), max_hotwords),
        nbest=_nbest(text.get("nbest") or "1", max_nbest),
        stream=stream,
    )


def _language(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    language = value.strip().lower()
    if _LANGUAGE.fullmatch(language) is None:
        raise _bad("language", f"'language' must be a language code such as en or zh, got {_short(value)}")
    return language


def _boolean(value: str, name: str) -> bool:
    if value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _bad(name, f"'{name}' must be true or false, got {_short(value)}")


def _temperature(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        temperature = float(value)
    except ValueError:
        temperature = math.nan
    if not 0 <= temperature <= 1:
        raise _bad("temperature", f"'temperature' must be a number from 0 to 1, got {_short(value)}")
    return temperature


def _nbest(value: str, max_nbest: int) -> int:
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 6 and 1 <= int(digits) <= max_nbest):
        raise _bad("nbest", f"'nbest' must be an integer from 1 to {max_nbest}, got {_short(value)}")
    return int(digits)


def _hotwords(value: str | None, max_hotwords: int) -> tuple[Hotword, ...]:
    """The ``hotwords`` field as the WebSocket ``start`` takes it."""
    if value is None or not value.strip():
        return ()
    try:
        phrases = json.loads(value)
    except (ValueError, RecursionError):
        raise _bad("hotwords", "'hotwords' is not JSON: a list of phrases or [phrase, score] pairs") from None
    if isinstance(phrases, list) and len(phrases) > max_hotwords:
        message = f"'hotwords' holds {len(phrases)} phrases, at most {max_hotwords} are allowed"
        raise _bad("hotwords", message)
    try:
        return hotwords_from_json(phrases)
    except HotwordError as exc:
        raise _bad("hotwords", f"'hotwords': {exc}") from None


def _seconds(value: float) -> float:
    return round(float(value), 3) + 0.0  # + 0.0: no -0.0


def _verbose(transcript: Transcript, request: TranscriptionRequest) -> dict[str, Any]:
    """The ``verbose_json`` object, with the fields of the openai client's
    ``TranscriptionVerbose`` (Whisper's decoding statistics as neutral values)."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": transcript.language or "",
        "duration": _seconds(transcript.duration),
        "text": transcript.text,
    }
    if request.segment_times:
        body["segments"] = [
            {
                "id": s.id,
                "seek": 0,
                "start": _seconds(s.start),
                "end": _seconds(s.end),
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for s in transcript.segments
        ]
    if request.word_times:
        body["words"] = [
            {"word": w.word, "start": _seconds(w.start), "end": _seconds(w.end)}
            for s in transcript.segments
            for w in s.words
        ]
    return body


def render_transcript(transcript: Transcript, request: TranscriptionRequest) -> tuple[str, bytes]:
    """The response to ``request``: ``(content type, body)`` in its format.

    ``json``: ``{"text"}``, plus ``"nbest": [{"text", "score"}]`` when the
    request asks for more than one; ``text``: the text and a newline;
    ``srt``, ``vtt``: a cue per segment
    (:func:`~trio_asr.protocol.transcripts.subrip`,
    :func:`~trio_asr.protocol.transcripts.webvtt`), served as
    ``text/plain`` and ``text/vtt``; ``verbose_json``: the language ("" when
    not known), duration, text, and the segments and/or words the
    granularities ask for.  Times are rounded to milliseconds.
    """
    kind = request.response_format
    if kind == "json":
        body: dict[str, Any] = {"text": transcript.text}
        if request.nbest > 1:
            body["nbest"] = [{"text": text, "score": float(score)} for text, score in transcript.nbest[: request.nbest]]
        return CONTENT_TYPES[kind], json_bytes(body)
    if kind == "verbose_json":
        return CONTENT_TYPES[kind], json_bytes(_verbose(transcript, request))
    if kind == "text":
        return CONTENT_TYPES[kind], utf8(transcript.text + "\n")
    if kind == "srt":
        return CONTENT_TYPES[kind], utf8(subrip(transcript))
    if kind == "vtt":
        return CONTENT_TYPES[kind], utf8(webvtt(transcript))
    raise ValueError(f"no response format {kind!r}")


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload`` as JSON: ``data: {...}`` and a blank line."""
    return b"data: " + json_bytes(payload) + b"\n\n"


def text_delta_event(delta: str) -> bytes:
    """The event of more text: ``{"type": "transcript.text.delta", "delta"}``."""
    return sse_event({"type": "transcript.text.delta", "delta": delta})


def text_done_event(text: str) -> bytes:
    """The last event, with the whole text: ``{"type": "transcript.text.done", "text"}``."""
    return sse_event({"type": "transcript.text.done", "text": text})


def error_event(error: ApiError) -> bytes:
    """An event that ends a stream in failure: the error's body, which the
    openai client raises as an ``APIError``."""
    return b"data: " + error.body() + b"\n\n"
