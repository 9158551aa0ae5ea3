"""Finding the model directory, and downloading known models into a cache.

Resolution order (:func:`resolve_model_dir`):

1. the ``--model`` command-line value: a directory, or the name of a model
   in the registry;
2. the ``TRIO_ASR_MODEL_DIR`` environment variable (a directory);
3. the user cache, ``$XDG_CACHE_HOME/trio-asr/models/<name>`` (by default
   ``~/.cache/trio-asr/models/<name>``; ``%LOCALAPPDATA%`` on Windows),
   downloading the model there on a miss.

Downloads stream into a private temporary file in the cache directory,
are checked against the registry's size and SHA-256, unpacked into a
private temporary directory (only regular files and directories whose names
stay inside it), checked file by file, and then renamed into place in one
step.  Concurrent downloads of the same model therefore never expose a
partial directory: the first rename wins and the others discard their copy.

Every failure to produce a model raises :class:`ModelNotAvailable`, whose
message is one line that says what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO, TextIO

import attrs

from trio_asr.cli.progress import Progress, megabytes

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_URL_BASE",
    "ENV_MODEL_DIR",
    "ENV_MODEL_URL",
    "REGISTRY",
    "ChecksumMismatch",
    "DownloadFailed",
    "ModelFile",
    "ModelNotAvailable",
    "ModelSpec",
    "UnsafeArchive",
    "cache_root",
    "download_model",
    "is_complete",
    "resolve_model_dir",
]

ENV_MODEL_DIR = "TRIO_ASR_MODEL_DIR"
ENV_MODEL_URL = "TRIO_ASR_MODEL_URL"
"""Base URL of a mirror: the directory that holds ``<archive>`` files."""

DEFAULT_URL_BASE = "https://github.com/k2-fsa/sherpa-onnx/releases/download/asr-models"

_CHUNK = 1 << 16
_TIMEOUT_S = 30.0


class ModelNotAvailable(Exception):
    """No usable model directory; ``str()`` is a one-line, actionable message."""


class DownloadFailed(ModelNotAvailable):
    """The archive could not be fetched (no network, HTTP error); ``url`` and
    ``reason`` let a command give advice of its own instead of ``str()``'s."""

    def __init__(self, message: str, *, url: str, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class ChecksumMismatch(ModelNotAvailable):
    """A download or an unpacked file does not match the registry."""


class UnsafeArchive(ModelNotAvailable):
    """An archive member is a link, a device, or would land outside the target."""


def _is_safe_member_name(name: str) -> bool:
    if not name or "\x00" in name:
        return False
    for flavour in (PurePosixPath(name), PureWindowsPath(name)):
        if flavour.is_absolute() or flavour.drive or flavour.root or ".." in flavour.parts:
            return False
    return True


def _sha256_hex(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{attribute.name} must be 64 lowercase hex digits, got {value!r}")


def _relative_path(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not _is_safe_member_name(value):
        raise ValueError(f"{attribute.name} must be a plain relative path, got {value!r}")


def _component(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(f"{attribute.name} must be a single path component, got {value!r}")


@attrs.frozen
class ModelFile:
    """A file that an unpacked model directory must contain."""

    path: str = attrs.field(validator=_relative_path)
    size: int = attrs.field(validator=attrs.validators.gt(0))
    sha256: str = attrs.field(validator=_sha256_hex)


def _file_tuple(files: Iterable[ModelFile]) -> tuple[ModelFile, ...]:
    return tuple(files)


@attrs.frozen
class ModelSpec:
    """A downloadable model: its archive and what the archive must contain.

    The archive ``<archive>`` (a ``.tar.bz2``) is fetched from a base URL;
    it may hold the files directly or inside one top-level directory named
    ``name``.  The model is cached as directory ``name``.
    """

    name: str = attrs.field(validator=_component)
    archive: str = attrs.field(validator=_component)
    archive_size: int = attrs.field(validator=attrs.validators.gt(0))
    archive_sha256: str = attrs.field(validator=_sha256_hex)
    files: tuple[ModelFile, ...] = attrs.field(converter=_file_tuple)
    #: what ``trio-asr models`` shows
    language: str = ""
    kind: str = ""

    def url(self, base: str | None = None, env: Mapping[str, str] = os.environ) -> str:
        """Archive URL under ``base``, else ``$TRIO_ASR_MODEL_URL``, else the official one."""
        base = base or env.get(ENV_MODEL_URL) or DEFAULT_URL_BASE
        return f"{base.rstrip('/')}/{self.archive}"


DEFAULT_MODEL = "sherpa-onnx-streaming-zipformer-small-ctc-zh-int8-2025-04-01"

REGISTRY: Mapping[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name=DEFAULT_MODEL,
            archive=f"{DEFAULT_MODEL}.tar.bz2",
            archive_size=21_264_113,
            archive_sha256="b3b309f7ce4a737195fcc6963ea19b0653a7d3401580af5ae0d3e284cbb71f0b",
            files=[
                ModelFile(
                    "model.int8.onnx",
                    26_342_340,
                    "68c9c943840f7d9cf3e8a4970ba50f404feb5277f611fa82b7e72267786fa84a",
                ),
                ModelFile(
                    "tokens.txt",
                    13_366,
                    "6fed8c6c248516f38e7faa19404b57413e8ce259f1cbc1fa4aebc86eac32fdfd",
                ),
            ],
            language="Chinese",
            kind="streaming zipformer2-CTC, int8",
        )
    ]
}


def cache_root(env: Mapping[str, str] = os.environ) -> Path:
    """The directory that holds cached models (not created here)."""
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "trio-asr" / "models"
    if os.name == "nt" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "trio-asr" / "models"
    return Path.home() / ".cache" / "trio-asr" / "models"


def is_complete(spec: ModelSpec, directory: Path) -> bool:
    """Whether ``directory`` holds every file of ``spec`` with the right size."""
    try:
        return all((directory / f.path).stat().st_size == f.size for f in spec.files)
    except OSError:
        return False


def resolve_model_dir(
    cli_value: str | os.PathLike[str] | None,
    env: Mapping[str, str] = os.environ,
    *,
    model: str = DEFAULT_MODEL,
    registry: Mapping[str, ModelSpec] = REGISTRY,
    download: bool = True,
    url_base: str | None = None,
    progress: TextIO | None = sys.stderr,
) -> Path:
    """Return the model directory to use; see the module docstring for the order.

    ``cli_value`` may name a registry model instead of a directory, or an
    ONNX file (``dir/model.onnx``: that file is loaded, with the
    ``tokens.txt`` beside it), which is returned as it is.  With
    ``download=False`` a cache miss is an error instead of a download.
    ``progress`` receives the download progress bar (``None``: silent).
    Only existence is checked for explicit directories; whether they hold a
    loadable model is the model loader's business.
    """
    if cli_value is not None and str(cli_value) != "":
        path = Path(cli_value)
        if path.is_dir() or path.is_file() and path.suffix == ".onnx":
            return path
        if path.is_file():
            raise ModelNotAvailable(
                f"--model {cli_value}: a file, not a model directory or ONNX file "
                f"(give the directory that holds the model: {path.parent})"
            )
        if str(cli_value) not in registry:
            known = ", ".join(sorted(registry)) or "none"
            raise ModelNotAvailable(
                f"--model {cli_value}: no such directory, and not a known model name (known: {known})"
            )
        model = str(cli_value)
    elif env.get(ENV_MODEL_DIR):
        path = Path(env[ENV_MODEL_DIR])
        if not path.is_dir():
            raise ModelNotAvailable(f"{ENV_MODEL_DIR}={path}: no such directory")
        return path

    if model not in registry:
        raise ModelNotAvailable(f"unknown model {model!r}; known: {', '.join(sorted(registry)) or 'none'}")
    spec = registry[model]
    root = cache_root(env)
    cached = root / spec.name
    if is_complete(spec, cached):
        return cached
    url = spec.url(url_base, env)
    if not download:
        raise ModelNotAvailable(
            f"no model found: pass --model DIR or set {ENV_MODEL_DIR}, "
            f"or allow downloading {spec.name} from {url} into {root}"
        )
    return download_model(spec, root, url=url, progress=progress)


def download_model(
    spec: ModelSpec,
    root: Path,
    *,
    url: str | None = None,
    progress: TextIO | None = sys.stderr,
    timeout: float = _TIMEOUT_S,
) -> Path:
    """Download, verify and unpack ``spec`` into ``root / spec.name``; return it.

    ``url`` defaults to ``spec.url()``.  Temporary files live in ``root`` and
    are removed whatever happens.
    """
    url = url or spec.url()
    final = root / spec.name
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, archive_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=root)
    except OSError as exc:
        raise ModelNotAvailable(f"cannot write to model cache {root}: {_reason(exc)}") from None
    archive = Path(archive_name)
    unpack_dir: Path | None = None
    try:
        with os.fdopen(fd, "w+b") as f:
            try:
                digest = _fetch(url, f, spec, progress, timeout)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise DownloadFailed(
                    f"no model found: pass --model DIR or set {ENV_MODEL_DIR}, or allow network "
                    f"access to download {spec.name} from {url} ({_reason(exc)})",
                    url=url, reason=_reason(exc),
                ) from None
        if digest != spec.archive_sha256:
            raise ChecksumMismatch(
                f"download of {spec.name} from {url} is corrupt: sha256 {digest}, "
                f"expected {spec.archive_sha256}; deleted it, try again or use another mirror"
            )
        unpack_dir = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".unpack", dir=root))
        _safe_extract(archive, unpack_dir, url)
        content = unpack_dir / spec.name
        if not content.is_dir():
            content = unpack_dir
        _verify_files(spec, content, url)
        try:
            content.rename(final)
        except OSError:
            if not is_complete(spec, final):  # not a concurrent download that won the race
                raise ModelNotAvailable(
                    f"cannot install {spec.name}: {final} exists but is incomplete; delete it and retry"
                ) from None
        return final
    finally:
        archive.unlink(missing_ok=True)
        if unpack_dir is not None:
            shutil.rmtree(unpack_dir, ignore_errors=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _fetch(url: str, out: BinaryIO, spec: ModelSpec, progress: TextIO | None, timeout: float) -> str:
    """Stream ``url`` into ``out``; return the SHA-256 hex digest.

    Reading stops early (:class:`ChecksumMismatch`) if the server offers or
    sends a different number of bytes than the registry expects.
    """
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s)/file only)
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) != spec.archive_size:
            raise ChecksumMismatch(
                f"download of {spec.name} from {url}: server offers {length} bytes, "
                f"expected {spec.archive_size}; use another mirror"
            )
        total = int(length) if length else spec.archive_size
        bar = Progress(total, f"downloading {spec.name}", stream=progress, fmt=megabytes)
        received = 0
        try:
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if received > spec.archive_size:
                    raise ChecksumMismatch(
                        f"download of {spec.name} from {url}: server sent more than the expected "
                        f"{spec.archive_size} bytes; use another mirror"
                    )
                digest.update(chunk)
                out.write(chunk)
                bar.update(received)
        except BaseException:  # a failure or Ctrl-C: its one line, no summary of the bar
            bar.clear()
            raise
        bar.close()
    if received != spec.archive_size:
        raise ConnectionError(f"download ended after {received} of {spec.archive_size} bytes")
    return digest.hexdigest()


def _safe_extract(archive: Path, dest: Path, url: str) -> None:
    """Unpack a ``.tar.bz2`` holding only regular files and directories under ``dest``."""
    try:
        with tarfile.open(archive, "r:bz2") as tar:
            members = tar.getmembers()
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise UnsafeArchive(
                        f"refusing model archive from {url}: {member.name!r} is not a regular file"
                    )
                if not _is_safe_member_name(member.name):
                    raise UnsafeArchive(
                        f"refusing model archive from {url}: member {member.name!r} escapes the target"
                    )
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python without extraction filters: the checks above stand alone
                tar.extractall(dest, members=members)  # noqa: S202
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ModelNotAvailable(f"cannot unpack model archive from {url}: {_reason(exc)}") from None


def _verify_files(spec: ModelSpec, directory: Path, url: str) -> None:
    for expected in spec.files:
        path = directory / expected.path
        if not path.is_file():
            raise ChecksumMismatch(f"model archive from {url} lacks {expected.path}")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected.sha256:
            raise ChecksumMismatch(f"{expected.path} in model archive from {url} does not match its sha256")
