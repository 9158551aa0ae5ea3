"""Tests for trio_asr.cli.model_store against a local HTTP server.

The archives are built here from the default model's tokens.txt (kept in
tests/data) plus a stand-in model file, and the registry entries are
computed from those archives.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from paths import MODELS_DIR

from trio_asr.cli.model_store import (
    DEFAULT_MODEL,
    DEFAULT_URL_BASE,
    ENV_MODEL_DIR,
    ENV_MODEL_URL,
    REGISTRY,
    ChecksumMismatch,
    ModelFile,
    ModelNotAvailable,
    ModelSpec,
    UnsafeArchive,
    cache_root,
    download_model,
    is_complete,
    resolve_model_dir,
)

SHARED_MODEL = MODELS_DIR / DEFAULT_MODEL
NAME = "test-model"
MODEL_BYTES = b"stand-in for model.int8.onnx"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tokens() -> bytes:
    path = SHARED_MODEL / "tokens.txt"
    if path.is_file():
        return path.read_bytes()
    return b"<blk> 0\n<sos/eos> 1\n<unk> 2\n"


def _build_archive(path: Path, members: dict[str, bytes], *, extra: list[tarfile.TarInfo] = ()) -> None:
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)


def _spec_for(archive: Path, files: dict[str, bytes], name: str = NAME) -> ModelSpec:
    data = archive.read_bytes()
    return ModelSpec(
        name=name,
        archive=archive.name,
        archive_size=len(data),
        archive_sha256=_sha(data),
        files=[ModelFile(p, len(b), _sha(b)) for p, b in files.items()],
    )


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


@attrs.define
class Server:
    root: Path
    base: str
    requests: list[str]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root))
    )
    httpd.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}/models", httpd.requests)  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def published(server: Server) -> tuple[Server, ModelSpec, dict[str, bytes]]:
    """A well-formed model archive on the server, and its registry entry."""
    (server.root / "models").mkdir()
    files = {"model.int8.onnx": MODEL_BYTES, "tokens.txt": _tokens()}
    archive = server.root / "models" / f"{NAME}.tar.bz2"
    _build_archive(archive, {f"{NAME}/{p}": b for p, b in files.items()} | {f"{NAME}/README.md": b"hi"})
    return server, _spec_for(archive, files), files


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def _cache_entries(env: dict[str, str]) -> list[str]:
    root = cache_root(env)
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/models"


# -- download path ---------------------------------------------------------------


def test_download_unpack_and_resolve(tmp_path: Path, published: tuple[Server, ModelSpec, dict]) -> None:
    server, spec, files = published
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    progress = io.StringIO()
    path = resolve_model_dir(None, env, model=NAME, registry={NAME: spec}, progress=progress)
    assert path == tmp_path / "cache" / "trio-asr" / "models" / NAME
    for name, data in files.items():
        assert (path / name).read_bytes() == data
    assert server.requests == [f"/models/{NAME}.tar.bz2"]
    assert _cache_entries(env) == [NAME]  # no temporary files left behind
    bar = progress.getvalue()
    assert f"{spec.archive_size / 1e6:.1f} MB" in bar and "100%" in bar and bar.endswith("\n")


def test_already_cached_needs_no_network(tmp_path: Path, published: tuple[Server, ModelSpec, dict]) -> None:
    server, spec, _ = published
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    first = resolve_model_dir(None, env, model=NAME, registry={NAME: spec}, progress=None)
    env[ENV_MODEL_URL] = _closed_port_url()
    again = resolve_model_dir(None, env, model=NAME, registry={NAME: spec}, progress=None, download=False)
    assert again == first
    assert len(server.requests) == 1


def test_url_parameter_overrides_env(tmp_path: Path, published: tuple[Server, ModelSpec, dict]) -> None:
    server, spec, _ = published
    env = _env(tmp_path, **{ENV_MODEL_URL: _closed_port_url()})
    path = resolve_model_dir(
        None, env, model=NAME, registry={NAME: spec}, url_base=server.base, progress=None
    )
    assert is_complete(spec, path)


def test_sha_mismatch_is_rejected_and_leaves_nothing(
    tmp_path: Path, published: tuple[Server, ModelSpec, dict]
) -> None:
    server, spec, _ = published
    bad = attrs.evolve(spec, archive_sha256="0" * 64)
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    with pytest.raises(ChecksumMismatch, match="sha256") as info:
        resolve_model_dir(None, env, model=NAME, registry={NAME: bad}, progress=None)
    assert "\n" not in str(info.value)
    assert _cache_entries(env) == []


def test_wrong_size_is_rejected_before_reading(
    tmp_path: Path, published: tuple[Server, ModelSpec, dict]
) -> None:
    server, spec, _ = published
    bad = attrs.evolve(spec, archive_size=spec.archive_size + 1)
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    with pytest.raises(ChecksumMismatch, match="offers"):
        resolve_model_dir(None, env, model=NAME, registry={NAME: bad}, progress=None)
    assert _cache_entries(env) == []


def test_unpacked_file_checksum_is_verified(
    tmp_path: Path, published: tuple[Server, ModelSpec, dict]
) -> None:
    server, spec, _ = published
    wrong_file = ModelFile("model.int8.onnx", len(MODEL_BYTES), _sha(b"something else"))
    bad = attrs.evolve(spec, files=(wrong_file, spec.files[1]))
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    with pytest.raises(ChecksumMismatch, match="model.int8.onnx"):
        resolve_model_dir(None, env, model=NAME, registry={NAME: bad}, progress=None)
    assert _cache_entries(env) == []


def test_missing_file_in_archive_is_rejected(
    tmp_path: Path, published: tuple[Server, ModelSpec, dict]
) -> None:
    server, spec, _ = published
    bad = attrs.evolve(spec, files=(*spec.files, ModelFile("bbpe.model", 1, "a" * 64)))
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    with pytest.raises(ChecksumMismatch, match="lacks bbpe.model"):
        resolve_model_dir(None, env, model=NAME, registry={NAME: bad}, progress=None)
    assert _cache_entries(env) == []


def test_server_down_gives_one_line_actionable_error(tmp_path: Path) -> None:
    spec = REGISTRY[DEFAULT_MODEL]
    env = _env(tmp_path, **{ENV_MODEL_URL: _closed_port_url()})
    with pytest.raises(ModelNotAvailable) as info:
        resolve_model_dir(None, env, progress=None)
    message = str(info.value)
    assert "\n" not in message
    for needle in ("--model DIR", ENV_MODEL_DIR, spec.name, spec.url(None, env)):
        assert needle in message
    assert _cache_entries(env) == []


def test_http_404_is_reported(tmp_path: Path, server: Server) -> None:
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    with pytest.raises(ModelNotAvailable, match="HTTP 404") as info:
        resolve_model_dir(None, env, progress=None)
    assert "\n" not in str(info.value)


def test_download_disabled_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="--model DIR") as info:
        resolve_model_dir(None, _env(tmp_path), download=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "evil",
    [
        "../escaped.txt",
        f"{NAME}/../../escaped.txt",
        "/tmp/absolute-escape.txt",
        "symlink",
        "hardlink",
        "device",
    ],
)
def test_unsafe_archive_member_is_rejected(tmp_path: Path, server: Server, evil: str) -> None:
    (server.root / "models").mkdir()
    files = {"model.int8.onnx": MODEL_BYTES, "tokens.txt": _tokens()}
    members = {f"{NAME}/{p}": b for p, b in files.items()}
    extra = []
    if evil == "symlink":
        info = tarfile.TarInfo(f"{NAME}/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        extra.append(info)
    elif evil == "hardlink":
        info = tarfile.TarInfo(f"{NAME}/hard")
        info.type, info.linkname = tarfile.LNKTYPE, "/etc/passwd"
        extra.append(info)
    elif evil == "device":
        info = tarfile.TarInfo(f"{NAME}/dev")
        info.type = tarfile.CHRTYPE
        extra.append(info)
    else:
        members[evil] = b"gotcha"
    archive = server.root / "models" / f"{NAME}.tar.bz2"
    _build_archive(archive, members, extra=extra)
    spec = _spec_for(archive, files)
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    with pytest.raises(UnsafeArchive):
        resolve_model_dir(None, env, model=NAME, registry={NAME: spec}, progress=None)
    assert _cache_entries(env) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "cache" / "escaped.txt").exists()
    assert not Path("/tmp/absolute-escape.txt").exists()


def test_flat_archive_without_top_directory(tmp_path: Path, server: Server) -> None:
    (server.root / "models").mkdir()
    files = {"model.int8.onnx": MODEL_BYTES, "tokens.txt": _tokens()}
    archive = server.root / "models" / "flat.tar.bz2"
    _build_archive(archive, files)
    spec = _spec_for(archive, files)
    path = download_model(spec, tmp_path / "root", url=f"{server.base}/flat.tar.bz2", progress=None)
    assert path == tmp_path / "root" / NAME and is_complete(spec, path)


def test_concurrent_downloads_do_not_corrupt_the_cache(
    tmp_path: Path, published: tuple[Server, ModelSpec, dict]
) -> None:
    server, spec, files = published
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    results: list[Path | BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(resolve_model_dir(None, env, model=NAME, registry={NAME: spec}, progress=None))
        except BaseException as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = cache_root(env) / NAME
    assert results == [expected] * 4
    assert _cache_entries(env) == [NAME]
    for name, data in files.items():
        assert (expected / name).read_bytes() == data


def test_incomplete_cache_directory_is_reported(
    tmp_path: Path, published: tuple[Server, ModelSpec, dict]
) -> None:
    server, spec, _ = published
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base})
    stale = cache_root(env) / NAME
    stale.mkdir(parents=True)
    (stale / "tokens.txt").write_bytes(b"truncated")
    with pytest.raises(ModelNotAvailable, match="incomplete; delete it") as info:
        resolve_model_dir(None, env, model=NAME, registry={NAME: spec}, progress=None)
    assert str(stale) in str(info.value)
    assert _cache_entries(env) == [NAME]


# -- resolution order ---------------------------------------------------------------


def test_resolution_order(tmp_path: Path, published: tuple[Server, ModelSpec, dict]) -> None:
    server, spec, _ = published
    cli_dir = tmp_path / "cli-model"
    env_dir = tmp_path / "env-model"
    cli_dir.mkdir()
    env_dir.mkdir()
    env = _env(tmp_path, **{ENV_MODEL_URL: server.base, ENV_MODEL_DIR: str(env_dir)})
    registry = {NAME: spec}
    cached = resolve_model_dir(
        None, _env(tmp_path, **{ENV_MODEL_URL: server.base}), model=NAME, registry=registry, progress=None
    )
    assert resolve_model_dir(str(cli_dir), env, model=NAME, registry=registry) == cli_dir
    assert resolve_model_dir(cli_dir, env, model=NAME, registry=registry) == cli_dir
    assert resolve_model_dir(None, env, model=NAME, registry=registry) == env_dir
    assert resolve_model_dir("", env, model=NAME, registry=registry) == env_dir
    del env[ENV_MODEL_DIR]
    assert resolve_model_dir(None, env, model=NAME, registry=registry, download=False) == cached
    # --model may also name a registry entry.
    assert resolve_model_dir(NAME, env, model="other", registry=registry, download=False) == cached
    assert len(server.requests) == 1


def test_missing_explicit_directories_are_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotAvailable, match="--model .*nope: no such directory"):
        resolve_model_dir(str(missing), _env(tmp_path))
    with pytest.raises(ModelNotAvailable, match=f"{ENV_MODEL_DIR}=.*nope: no such directory"):
        resolve_model_dir(None, _env(tmp_path, **{ENV_MODEL_DIR: str(missing)}))
    with pytest.raises(ModelNotAvailable, match="unknown model"):
        resolve_model_dir(None, _env(tmp_path), model="no-such-model")


def test_cache_root_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "trio-asr" / "models"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if os.name != "nt":
        expected = tmp_path / "home" / ".cache" / "trio-asr" / "models"
        assert cache_root({}) == expected
        assert cache_root({"XDG_CACHE_HOME": "relative/ignored"}) == expected


# -- the registry itself ----------------------------------------------------------------


def test_default_registry_entry() -> None:
    spec = REGISTRY[DEFAULT_MODEL]
    assert spec.url(None, {}) == f"{DEFAULT_URL_BASE}/{DEFAULT_MODEL}.tar.bz2"
    assert spec.url(None, {ENV_MODEL_URL: "https://mirror.example/m/"}) == (
        f"https://mirror.example/m/{DEFAULT_MODEL}.tar.bz2"
    )
    assert {f.path for f in spec.files} >= {"model.int8.onnx", "tokens.txt"}


@pytest.mark.skipif(
    not (SHARED_MODEL / "tokens.txt").is_file(),
    reason=f"no {SHARED_MODEL / 'tokens.txt'} (TRIO_ASR_SHARED_DIR names a directory without it)",
)
def test_registry_tokens_checksum_matches_the_shared_copy() -> None:
    tokens = next(f for f in REGISTRY[DEFAULT_MODEL].files if f.path == "tokens.txt")
    data = (SHARED_MODEL / "tokens.txt").read_bytes()
    assert (len(data), _sha(data)) == (tokens.size, tokens.sha256)


@pytest.mark.real_model
@pytest.mark.skipif(not os.environ.get("TRIO_ASR_TEST_MODEL_DIR"), reason="TRIO_ASR_TEST_MODEL_DIR not set")
def test_real_model_directory_matches_registry() -> None:
    directory = Path(os.environ["TRIO_ASR_TEST_MODEL_DIR"])
    assert resolve_model_dir(str(directory), {}) == directory
    spec = REGISTRY[DEFAULT_MODEL]
    if directory.name != spec.name:
        pytest.skip(f"{directory} is not {spec.name}")
    for expected in spec.files:
        data = (directory / expected.path).read_bytes()
        assert (len(data), _sha(data)) == (expected.size, expected.sha256)


def test_spec_validation() -> None:
    good = ModelFile("tokens.txt", 1, "a" * 64)
    for bad_path in ["", "../x", "/abs", "C:\\x", "a/../../b"]:
        with pytest.raises(ValueError):
            ModelFile(bad_path, 1, "a" * 64)
    with pytest.raises(ValueError):
        ModelFile("x", 1, "A" * 64)
    with pytest.raises(ValueError):
        ModelFile("x", 0, "a" * 64)
    with pytest.raises(ValueError):
        ModelSpec("a/b", "a.tar.bz2", 1, "a" * 64, [good])
    with pytest.raises(ValueError):
        ModelSpec("..", "a.tar.bz2", 1, "a" * 64, [good])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        REGISTRY[DEFAULT_MODEL].name = "x"  # type: ignore[misc]
