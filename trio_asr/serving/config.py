"""Server configuration: one frozen attrs class, the single definition of every setting.

Each field of :class:`ServerConfig` carries its type, help text and
validation; the ``serve`` command's flags are generated from them
(:func:`add_config_flags`) and TOML files are checked against them
(:func:`trio_asr.serving.config_file.load_config`), so a setting is written
exactly once.  A setting that configures a part (the protocol's limits, the
endpoint rules, the recognizer, the model service's batching) takes its
default and bounds from that part.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from trio_asr.bounds import at_least, between, off_or_between, positive
from trio_asr.protocol.limits import ProtocolLimits
from trio_asr.recognition.endpoint import MAX_SILENCE_SECONDS, MIN_SILENCE_SECONDS, EndpointRules
from trio_asr.recognition.model_service import BatchingPolicy
from trio_asr.recognition.hotwords import DEFAULT_SCORE, MAX_SCORE, check_score
from trio_asr.recognition.recognizer import SKIP_NON_SPEECH_SECONDS, Recognizer
from trio_asr.recognition.vad import DEFAULT_THRESHOLD, THRESHOLD_RANGE

__all__ = [
    "FIELDS",
    "RECOGNIZER_SETTINGS",
    "ConfigError",
    "ServerConfig",
    "add_config_flags",
    "config_overrides",
]


class ConfigError(ValueError):
    """The configuration file or a value in it is invalid."""


def _cpu_count() -> int:
    """The CPUs this process may run on (``taskset``, cgroup cpusets), else the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _default(cls: type, name: str) -> Any:
    """The default of ``cls``'s field ``name``: a setting that configures a
    part takes that part's default."""
    return attrs.fields_dict(cls)[name].default


def _bound(cls: type, name: str) -> Any:
    """The validator of ``cls``'s field ``name``: and its bounds."""
    return attrs.fields_dict(cls)[name].validator


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """A validator whose error is one plain line (``attrs.validators.in_``
    puts the attribute's whole repr in its arguments)."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def _setting(
    default: Any = attrs.NOTHING,
    *,
    type: type,
    help: str,
    factory: Callable[[], Any] | None = None,
    default_help: str | None = None,
    validator: Any = None,
    choices: tuple[str, ...] | None = None,
    optional: bool = False,
    secret: bool = False,
) -> Any:
    """A config field: ``type`` checks values from files, ``help`` becomes the
    flag's help text (with the default appended).  ``type=tuple`` is a list of
    strings (a repeatable flag); ``secret`` keeps the value out of ``repr``."""
    validators = [validator] if validator is not None else []
    if choices is not None:
        validators.append(_one_of(choices))
    converter: Any = None
    if type is float:
        converter = attrs.converters.optional(float) if optional else float
    elif type is Path:
        converter = attrs.converters.optional(Path) if optional else Path
    elif type is tuple:
        converter = tuple
    metadata = {"type": type, "help": help, "default_help": default_help, "choices": choices, "optional": optional}
    if factory is not None:
        return attrs.field(
            factory=factory, validator=validators, converter=converter, metadata=metadata, repr=not secret
        )
    return attrs.field(default=default, validator=validators, converter=converter, metadata=metadata, repr=not secret)


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything ``trio-asr serve`` can be told; all limits are enforced."""

    host: str = _setting(
        "127.0.0.1", type=str,
        help="interface to bind: loopback accepts this machine only; 0.0.0.0 (every interface) accepts others, "
        "give it an --auth-token",
    )  # fmt: skip
    port: int = _setting(8090, type=int, help="TCP port (0 picks a free one)", validator=between(0, 65535))
    model: Path | None = _setting(
        None, type=Path, optional=True, default_help="$TRIO_ASR_MODEL_DIR or the cached default model",
        help="model directory or registry name",
    )  # fmt: skip
    audio_dir: Path = _setting(Path("audio"), type=Path, help="where each stream is saved as WAV")
    save_audio: bool = _setting(True, type=bool, help="save each stream's audio")
    beam: int = _setting(
        _default(Recognizer, "beam"), type=int, help="CTC prefix beam width", validator=_bound(Recognizer, "beam")
    )
    nbest_max: int = _setting(
        _default(ProtocolLimits, "nbest_max"), type=int, help="largest nbest a client may ask for",
        validator=_bound(ProtocolLimits, "nbest_max"),
    )  # fmt: skip
    hotwords_file: Path | None = _setting(
        None, type=Path, optional=True, default_help="none",
        help="phrases to bias recognition towards, one per line, optionally 'PHRASE :SCORE' (see docs/hotwords.md)",
    )  # fmt: skip
    hotwords_score: float = _setting(
        DEFAULT_SCORE, type=float, validator=lambda _i, a, v: check_score(v, a.name),
        help=f"bonus per token of a hotword without its own score (0 < score <= {MAX_SCORE:g})",
    )  # fmt: skip
    max_stream_hotwords: int = _setting(
        _default(ProtocolLimits, "max_stream_hotwords"), type=int,
        validator=_bound(ProtocolLimits, "max_stream_hotwords"),
        help="phrases a client may add in its start message's 'hotwords' (0: none)",
    )  # fmt: skip
    max_connections: int = _setting(
        100, type=int, help="WebSocket connections at once; more get HTTP 503", validator=positive
    )
    max_message_bytes: int = _setting(
        _default(ProtocolLimits, "max_message_bytes"), type=int, help="largest frame accepted, bytes",
        validator=_bound(ProtocolLimits, "max_message_bytes"),
    )  # fmt: skip
    max_stream_seconds: float = _setting(
        _default(ProtocolLimits, "max_stream_seconds"), type=float, help="longest stream accepted, s",
        validator=_bound(ProtocolLimits, "max_stream_seconds"),
    )  # fmt: skip
    idle_timeout: float = _setting(
        60.0, type=float, validator=positive,
        help="an open stream silent this long ends as if the client had sent 'end' (final reply, audio saved); "
        "the connection stays open, s",
    )  # fmt: skip
    connection_idle_timeout: float = _setting(
        600.0, type=float, help="close a connection with no stream open after this long, s", validator=positive
    )
    ping_interval: float = _setting(
        30.0, type=float, validator=at_least(0),
        help="WebSocket ping to a connection with no stream open every this many s; "
        "no pong within the next interval closes it (0: no pings)",
    )  # fmt: skip
    send_timeout: float = _setting(
        60.0, type=float, help="drop a client that reads no reply for this long, s", validator=positive
    )
    threads: int = _setting(1, type=int, help="ONNX Runtime threads per model call", validator=positive)
    processes: int = _setting(
        1, type=int, validator=between(1, 64),
        help="worker processes serving the port together (SO_REUSEPORT, Linux), each with its own copy of the "
        "model, under one supervisor; the limits and /health, /metrics are the whole server's",
    )  # fmt: skip
    workers: int = _setting(
        factory=_cpu_count, type=int, default_help="the CPU count", validator=positive,
        help="feature, search and disk work running at once in worker threads",
    )  # fmt: skip
    batching: bool = _setting(
        True, type=bool, help="run the model chunks of all connections in batched calls (off: one chunk per call)"
    )
    max_batch: int = _setting(
        _default(BatchingPolicy, "max_batch"), type=int, help="most chunks per batched model call",
        validator=_bound(BatchingPolicy, "max_batch"),
    )  # fmt: skip
    max_call_seconds: float = _setting(
        _default(BatchingPolicy, "max_call_seconds"), type=float, validator=_bound(BatchingPolicy, "max_call_seconds"),
        help="CPU seconds a batched model call should stay under, s: every chunk of a call waits for all of it, "
        "so a call takes as many chunks as fit at the model's measured cost per chunk (at most --max-batch)",
    )  # fmt: skip
    exact_batching: bool = _setting(
        _default(BatchingPolicy, "exact"), type=bool,
        help="a stream's result never depends on other streams: int8 models are quantized per stream, and a "
        "model that still depends on the batch runs one stream per call (off: batch it anyway)",
    )  # fmt: skip
    concurrent_batches: int = _setting(
        factory=_cpu_count, type=int, default_help="the CPU count",
        validator=_bound(BatchingPolicy, "concurrent_batches"),
        help="batched model calls in flight at once",
    )  # fmt: skip
    max_queue_delay: float = _setting(
        _default(BatchingPolicy, "max_queue_delay"), type=float, validator=_bound(BatchingPolicy, "max_queue_delay"),
        help="model queue delay, s, above which new connections get HTTP 503",
    )  # fmt: skip
    channel_size: int = _setting(
        16, type=int, help="capacity of a connection's reader->decoder and decoder->writer channels",
        validator=positive,
    )  # fmt: skip
    grace_period: float = _setting(
        10.0, type=float, help="time open streams get to finish after SIGINT/SIGTERM, s", validator=at_least(0)
    )
    handshake_timeout: float = _setting(
        10.0, type=float, validator=positive,
        help="time for a connection's first HTTP request head, and for the WebSocket opening handshake; also the "
        "longest pause inside a request body, s",
    )  # fmt: skip
    close_timeout: float = _setting(
        5.0, type=float, help="time for a WebSocket closing handshake, s", validator=positive
    )
    max_header_bytes: int = _setting(
        16384, type=int, validator=between(1024, 1 << 20),
        help="largest HTTP request head (request line and headers), bytes; a larger one gets HTTP 431",
    )  # fmt: skip
    http_keepalive_timeout: float = _setting(
        5.0, type=float, validator=positive,
        help="an HTTP connection kept alive between requests is closed after this long without the next one, s",
    )  # fmt: skip
    body_timeout: float = _setting(
        60.0, type=float, validator=positive,
        help="time for a whole HTTP request body, s (and at most --handshake-timeout between two pieces of it)",
    )  # fmt: skip
    max_upload_bytes: int = _setting(
        25 * 1024 * 1024, type=int, validator=positive,
        help="largest audio file a transcription request may upload, bytes; a larger one gets HTTP 413",
    )  # fmt: skip
    max_upload_seconds: float = _setting(
        3600.0, type=float, validator=positive, help="longest audio a transcription upload may hold, s"
    )
    max_uploads: int = _setting(
        4, type=int, validator=positive,
        help="transcription uploads decoded at once; four times as many may be received and wait, more get HTTP 429",
    )  # fmt: skip
    drain_timeout: float = _setting(
        5.0, type=float, validator=positive,
        help="after the grace period, time cut-off connections get to save their audio and close, s",
    )  # fmt: skip
    log_level: str = _setting("warning", type=str, help="log level", choices=("debug", "info", "warning", "error"))
    log_format: str = _setting(
        "text", type=str, choices=("text", "json"),
        help="log lines as text, or one JSON object per event with the same fields",
    )  # fmt: skip
    log_transcripts: bool = _setting(
        False, type=bool, help="include recognised text in stream log events (never audio or tokens)"
    )
    certfile: Path | None = _setting(
        None, type=Path, optional=True, default_help="none: plain ws:// and http://",
        help="PEM certificate chain (and key, unless --keyfile): serve wss:// and https://",
    )  # fmt: skip
    keyfile: Path | None = _setting(
        None, type=Path, optional=True, default_help="the key is in --certfile", help="PEM private key for --certfile"
    )
    auth_token: tuple[str, ...] = _setting(
        (), type=tuple, secret=True, default_help="none: no token needed",
        help="access token clients must present (Authorization: Bearer, or ?token=); repeat for several",
    )  # fmt: skip
    auth_tokens_file: Path | None = _setting(
        None, type=Path, optional=True, default_help="none",
        help="file of access tokens, one per line (# comments); adds to --auth-token",
    )  # fmt: skip
    metrics: bool = _setting(True, type=bool, help="serve Prometheus metrics at /metrics")
    metrics_auth: bool = _setting(
        True, type=bool, help="/metrics needs an access token too (when tokens are configured)"
    )
    page: bool = _setting(True, type=bool, help="serve the microphone page at / (it asks for the token itself)")
    endpoint_silence_without_text: float = _setting(
        _default(EndpointRules, "silence_without_text"), type=float,
        validator=off_or_between(MIN_SILENCE_SECONDS, MAX_SILENCE_SECONDS),
        help="endpoint rule 1: a segment with no text ends after this much silence, s (0: off)",
    )  # fmt: skip
    endpoint_silence_after_text: float = _setting(
        _default(EndpointRules, "silence_after_text"), type=float,
        validator=off_or_between(MIN_SILENCE_SECONDS, MAX_SILENCE_SECONDS),
        help="endpoint rule 2: a segment with text ends after this much silence, s (0: off)",
    )  # fmt: skip
    endpoint_max_segment: float = _setting(
        _default(EndpointRules, "max_segment"), type=float, validator=_bound(EndpointRules, "max_segment"),
        help="endpoint rule 3: a segment ends when it is this long, s",
    )  # fmt: skip
    vad: bool = _setting(
        False, type=bool,
        help="apply the endpoint rules to Silero VAD's speech / non-speech instead of the CTC best path's "
        "tokens / blanks (needs trio-asr[vad])",
    )  # fmt: skip
    vad_threshold: float = _setting(
        DEFAULT_THRESHOLD, type=float, help="speech probability at which the VAD hears speech",
        validator=between(*THRESHOLD_RANGE),
    )
    skip_non_speech: float = _setting(
        0.0, type=float, validator=off_or_between(*SKIP_NON_SPEECH_SECONDS),
        help="with --vad: do not run the model on audio after this much non-speech, s (0: off; "
        "saves CPU on silence-heavy audio, but the text can change)",
    )  # fmt: skip
    second_pass: Path | None = _setting(
        None, type=Path, optional=True, default_help="none: segments keep the streaming model's text",
        help="offline model directory (SenseVoice, NeMo CTC) that decodes each closed segment again; segments are "
        "announced with its text, words, n-best and tags, partial results stay first-pass (see docs/protocol.md)",
    )  # fmt: skip
    second_pass_language: str = _setting(
        "auto", type=str, help="the second pass's language (SenseVoice: auto, zh, en, yue, ja, ko)"
    )
    second_pass_itn: bool = _setting(
        True, type=bool, help="the second pass punctuates and normalises its text (SenseVoice's inverse text "
        "normalisation)",
    )  # fmt: skip

    def __attrs_post_init__(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ConfigError("keyfile needs certfile too")
        if self.skip_non_speech and not self.vad:
            raise ConfigError("skip_non_speech needs vad (--vad)")

    def endpoint_rules(self) -> EndpointRules:
        """The endpoint rules of streams that do not ask for others."""
        return EndpointRules(
            silence_without_text=self.endpoint_silence_without_text or None,
            silence_after_text=self.endpoint_silence_after_text or None,
            max_segment=self.endpoint_max_segment,
        )

    def batching_policy(self) -> BatchingPolicy:
        """How the model service batches (one chunk per call without ``batching``)."""
        return BatchingPolicy(
            max_batch=self.max_batch if self.batching else 1,
            max_call_seconds=self.max_call_seconds,
            max_queue_delay=self.max_queue_delay,
            concurrent_batches=self.concurrent_batches,
            exact=self.exact_batching,
        )

    def protocol_limits(self) -> ProtocolLimits:
        return ProtocolLimits(
            nbest_max=self.nbest_max,
            max_message_bytes=self.max_message_bytes,
            max_stream_seconds=self.max_stream_seconds,
            max_stream_hotwords=self.max_stream_hotwords,
            endpoint=self.endpoint_rules(),
        )


FIELDS = {f.name: f for f in attrs.fields(ServerConfig)}


# ---------------------------------------------------------------- flags


#: the settings that shape a recognizer, shared by ``serve`` and ``transcribe``
RECOGNIZER_SETTINGS = (
    "model", "threads", "beam", "hotwords_file", "hotwords_score", "endpoint_silence_without_text",
    "endpoint_silence_after_text", "endpoint_max_segment", "vad", "vad_threshold", "skip_non_speech",
)  # fmt: skip


def add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One ``--flag`` per setting (or per setting in ``names``); a flag left
    out is ``None`` (not given)."""
    for field in FIELDS.values() if names is None else [FIELDS[name] for name in names]:
        meta = field.metadata
        kind = meta["type"]
        flag = "--" + field.name.replace("_", "-")
        if meta["default_help"] is not None:
            default = meta["default_help"]
        elif isinstance(field.default, Path):
            default = str(field.default)
        else:
            default = repr(field.default) if kind is str else str(field.default).lower() if kind is bool else field.default
        help_text = f"{meta['help']} (default: {default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is tuple:
            parser.add_argument(flag, action="append", default=None, metavar=field.name.upper(), help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, choices=meta["choices"], help=help_text)


def config_overrides(args: argparse.Namespace, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The settings given as flags (see :func:`add_config_flags`)."""
    return {name: getattr(args, name) for name in (FIELDS if names is None else names)}
