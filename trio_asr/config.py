"""Server configuration: one frozen attrs class, loadable from TOML.

Precedence is defaults < TOML file < command-line flags: :func:`load_config`
reads the file (keys are the field names; an optional ``[server]`` table is
also accepted) and then applies the non-``None`` overrides.  Unknown keys
are an error, so a typo in a config file is not silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from trio_asr.protocol import ProtocolLimits

__all__ = ["ConfigError", "ServerConfig", "load_config"]


class ConfigError(ValueError):
    """The configuration file or a value in it is invalid."""


def _positive(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{attribute.name} must be positive, got {value!r}")


def _non_negative(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or value < 0:
        raise ConfigError(f"{attribute.name} must not be negative, got {value!r}")


def _port(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not 0 <= value <= 65535:
        raise ConfigError(f"{attribute.name} must be in 0..65535, got {value!r}")


def _optional_path(value: Any) -> Path | None:
    return None if value is None else Path(value)


_LOG_LEVELS = ("debug", "info", "warning", "error")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything ``trio-asr serve`` can be told; all limits are enforced."""

    host: str = "0.0.0.0"
    port: int = attrs.field(default=8090, validator=[attrs.validators.instance_of(int), _port])
    #: model directory; ``None`` lets the CLI resolve the default model
    model: Path | None = attrs.field(default=None, converter=_optional_path)
    audio_dir: Path = attrs.field(default=Path("audio"), converter=Path)
    save_audio: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    nbest_max: int = attrs.field(default=10, validator=[attrs.validators.instance_of(int), _positive])
    beam: int = attrs.field(default=10, validator=[attrs.validators.instance_of(int), _positive])
    #: concurrent WebSocket sessions; more are refused with HTTP 503
    max_connections: int = attrs.field(default=100, validator=[attrs.validators.instance_of(int), _positive])
    max_message_bytes: int = attrs.field(default=1 << 20, validator=[attrs.validators.instance_of(int), _positive])
    #: seconds without any message from the client before it is closed (1008)
    idle_timeout: float = attrs.field(default=60.0, converter=float, validator=_positive)
    max_stream_seconds: float = attrs.field(default=3600.0, converter=float, validator=_positive)
    #: ONNX Runtime intra-op threads per model run
    threads: int = attrs.field(default=1, validator=[attrs.validators.instance_of(int), _positive])
    #: decode calls running at once in worker threads (over all connections)
    workers: int = attrs.field(
        factory=lambda: max(1, os.cpu_count() or 1), validator=[attrs.validators.instance_of(int), _positive]
    )
    #: run the model of all connections in one service that batches their chunks
    #: (see :mod:`trio_asr.model_service`); off: each connection runs its own
    batching: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    #: most chunks (streams) per batched model call
    max_batch: int = attrs.field(default=16, validator=[attrs.validators.instance_of(int), _positive])
    #: with a model whose outputs depend on the batch (dynamically quantized
    #: activations, as in int8 exports), run one stream per model call so a
    #: result never depends on other streams; off: batch anyway (cheaper, but
    #: rare tokens may then differ from decoding the stream alone)
    exact_batching: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    #: batched model calls running at once (one worker thread each)
    concurrent_batches: int = attrs.field(
        factory=lambda: max(1, os.cpu_count() or 1), validator=[attrs.validators.instance_of(int), _positive]
    )
    #: seconds of model queue delay above which new connections get HTTP 503
    #: (only with ``batching``; existing streams go on)
    max_queue_delay: float = attrs.field(default=0.5, converter=float, validator=_positive)
    log_level: str = attrs.field(default="warning", validator=attrs.validators.in_(_LOG_LEVELS))
    #: capacity of the reader->decoder and decoder->writer channels of a connection
    channel_size: int = attrs.field(default=16, validator=[attrs.validators.instance_of(int), _positive])
    #: seconds open streams get to finish after SIGINT/SIGTERM
    grace_period: float = attrs.field(default=10.0, converter=float, validator=_non_negative)
    #: seconds for the HTTP/WebSocket opening and closing handshakes
    handshake_timeout: float = attrs.field(default=10.0, converter=float, validator=_positive)

    def protocol_limits(self) -> ProtocolLimits:
        return ProtocolLimits(
            nbest_max=self.nbest_max,
            max_message_bytes=self.max_message_bytes,
            max_stream_seconds=self.max_stream_seconds,
        )


_FIELDS = frozenset(f.name for f in attrs.fields(ServerConfig))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                f"reading {path} needs Python >= 3.11 or the 'tomli' package (pip install tomli)"
            ) from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> ServerConfig:
    """Build a :class:`ServerConfig` from an optional TOML file and overrides.

    ``overrides`` (typically the command-line flags) win over the file;
    entries whose value is ``None`` mean "not given" and are skipped.
    Raises :class:`ConfigError` for unreadable files, unknown keys and
    invalid values.
    """
    values: dict[str, Any] = {}
    if path is not None:
        data = _read_toml(Path(path))
        table = data.pop("server", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [server] must be a table")
        values.update(data)
        values.update(table)
        unknown = sorted(set(values) - _FIELDS)
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting: {key}")
        if value is not None:
            values[key] = value
    try:
        return ServerConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
