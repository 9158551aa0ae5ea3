"""Configuration files: TOML checked against :class:`~trio_asr.serving.config.ServerConfig`.

Precedence is defaults < TOML file < command-line flags: :func:`load_config`
reads the file (keys are the field names; an optional ``[server]`` table is
also accepted) and then applies the non-``None`` overrides.  Unknown keys
and values of the wrong type are errors with a one-line message naming the
key, so a typo in a config file is never silently ignored.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trio_asr.serving.config import FIELDS, ConfigError, ServerConfig

__all__ = ["load_config"]

_TYPE_NAMES = {
    bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path (string)",
    tuple: "a list of strings",
}  # fmt: skip



def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # a dependency on Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer longer than sys.get_int_max_str_digits()
        raise ConfigError(f"{path}: {exc}") from None


def _check_key(key: str, where: str) -> None:
    if key in FIELDS:
        return
    hint = ""
    if key.replace("-", "_") in FIELDS:
        hint = f" (keys use underscores: {key.replace('-', '_')})"
    elif close := difflib.get_close_matches(key, FIELDS, n=1):
        hint = f" (did you mean {close[0]}?)"
    raise ConfigError(f"{where}unknown setting {key!r}{hint}")


def _check_type(key: str, value: Any, where: str) -> None:
    meta = FIELDS[key].metadata
    kind = meta["type"]
    if value is None and meta["optional"]:
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is Path:
        ok = isinstance(value, (str, os.PathLike))
    elif kind is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        got = "" if not FIELDS[key].repr else f", got {value!r}"  # never echo a secret
        raise ConfigError(f"{where}{key} must be {_TYPE_NAMES[kind]}{got}")
    if kind in (int, float) and isinstance(value, int) and not -(2**63) <= value < 2**63:
        # TOML's integers are 64-bit; a larger one would overflow a float conversion
        raise ConfigError(f"{where}{key} is out of range, got an integer of {len(str(abs(value)))} digits")


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> ServerConfig:
    """Build a :class:`ServerConfig` from an optional TOML file and overrides.

    ``overrides`` (typically the command-line flags) win over the file;
    entries whose value is ``None`` mean "not given" and are skipped.
    Raises :class:`ConfigError` for unreadable files, unknown keys and
    invalid values, with a one-line message.
    """
    values: dict[str, Any] = {}
    if path is not None:
        where = f"{path}: "
        data = _read_toml(Path(path))
        table = data.pop("server", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}[server] must be a table")
        for key, value in [*data.items(), *table.items()]:
            _check_key(key, where)
            _check_type(key, value, where)
            values[key] = value
    for key, value in (overrides or {}).items():
        _check_key(key, "")
        if value is not None:
            _check_type(key, value, "")
            values[key] = value
    try:
        return ServerConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
