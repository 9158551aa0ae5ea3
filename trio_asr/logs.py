"""Structured logs: one record per event, written as a text line or a JSON object.

Code logs an event with :func:`log_event` (a name plus fields).  With
``--log-format text`` it is one line, ``<time> <LEVEL> <logger>: <event>
key=value ...``; with ``--log-format json`` one JSON object per line with the
same fields plus ``time``, ``level``, ``logger`` and ``event``.  Records
logged the ordinary way (a message, no fields) come out as ``message``.

What never reaches a log: fields named in :data:`SECRET_FIELDS` (tokens,
audio) and bytes values.  Fields named in :data:`TRANSCRIPT_FIELDS` (what
was said) are dropped unless ``log_transcripts`` is on.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = [
    "LOG_FORMATS",
    "SECRET_FIELDS",
    "TRANSCRIPT_FIELDS",
    "JsonFormatter",
    "RedactFilter",
    "TextFormatter",
    "configure_logging",
    "log_event",
]

LOG_FORMATS = ("text", "json")
SECRET_FIELDS = frozenset({"token", "tokens", "authorization", "audio", "pcm"})
TRANSCRIPT_FIELDS = frozenset({"text", "result", "nbest", "transcript", "segments", "times"})


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, /, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (rendered by this module's formatters)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, "fields": fields})


class RedactFilter(logging.Filter):
    """Drops secret fields always and transcript fields unless allowed."""

    def __init__(self, log_transcripts: bool = False) -> None:
        super().__init__()
        self.log_transcripts = log_transcripts

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        if fields:
            record.fields = {
                key: value
                for key, value in fields.items()
                if key not in SECRET_FIELDS
                and not isinstance(value, (bytes, bytearray, memoryview))
                and (self.log_transcripts or key not in TRANSCRIPT_FIELDS)
            }
        return True


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <event or message> key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = event
            for key, value in getattr(record, "fields", {}).items():
                out.setdefault(key, value)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "warning", fmt: str = "text", *, log_transcripts: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Send all logging to ``stream`` (default stderr) in ``fmt``; returns the handler."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter(log_transcripts))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
