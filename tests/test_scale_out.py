"""Scale-out: deploy/nginx.conf in front of two trio-asr servers.

The test runs the shipped nginx.conf itself, rewriting only what has to
differ on a test machine (backend addresses, the listen address, the
``user`` line; nginx's prefix is the test's temporary directory, where the
config's relative pid/log/scratch paths then land).  Both backends are real
servers on the fixture model; each PaddleSpeech-style client's final text
must equal the recognizer's result for the same audio without any server.
Needs the ``nginx`` binary (Debian/Ubuntu package ``nginx-light`` or ``nginx``); skips without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_websocket
import websockets.sync.client
from serverutil import http_get

from trio_asr.serving.config import ServerConfig
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.serving.server import WS_PATH, Server, serve
from trio_asr.cli.transcribe import transcribe_samples

NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"
FRAME_BYTES = 2720  # 85 ms of 16 kHz PCM16, as PaddleSpeech's client


def find_nginx() -> str:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.skip(
            "nginx is not installed (Debian/Ubuntu: apt-get install nginx-light, or nginx): "
            "cannot test deploy/nginx.conf"
        )
    return found


def render_nginx_conf(template: str, backends: list[int], listen_port: int) -> str:
    """``template`` with its upstream servers replaced by ``backends`` (ports
    on 127.0.0.1, keeping the template's per-server parameters), listening on
    127.0.0.1 only, and running its workers as the current user."""
    server_line = re.compile(r"^(\s*)server\s+\S+:\d+(\s[^;]*)?;$", re.M)
    lines = server_line.findall(template)
    assert lines, "no `server HOST:PORT ...;` lines in the upstream block"
    indent, params = lines[0]
    first = server_line.search(template)
    assert first is not None
    rendered = "\n".join(f"{indent}server 127.0.0.1:{port}{params};" for port in backends)
    text = template[: first.start()] + rendered + server_line.sub("", template[first.end() :])
    text = re.sub(r"\n(\s*\n)+(?=\s*\})", "\n", text)  # the removed lines' blank remains

    text, n = re.subn(r"^(\s*)listen\s+[^;]+;$", rf"\g<1>listen 127.0.0.1:{listen_port};", text, flags=re.M)
    assert n == 1, "expected exactly one `listen` line"
    text, n = re.subn(r"^user\s+[^;]+;$", worker_user_line(), text, flags=re.M)
    assert n == 1, "expected exactly one `user` line"
    return text


def worker_user_line() -> str:
    """nginx's ``user`` line for the current user; empty unless running as root
    on a POSIX system (elsewhere nginx ignores ``user``, with a warning)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return ""
    import grp  # POSIX only, like the root case itself
    import pwd

    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speechlike(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """Noise shaped by a slow envelope: enough structure for the model to emit tokens."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (1.0 + 0.2 * seed) * t) ** 2
    tone = np.sin(2 * np.pi * (200 + 150 * np.sin(2 * np.pi * 0.7 * t)) * t)
    x = 0.3 * envelope * (0.6 * tone + 0.4 * rng.standard_normal(t.size))
    return np.clip(x, -1, 1).astype(np.float32)


def pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16).tobytes()


def paddlespeech_session(url: str, name: str, pcm: bytes) -> tuple[int, dict]:
    """start, 85 ms frames lock-step, end; returns (partial replies, final reply)."""
    partials = 0
    with websockets.sync.client.connect(url, open_timeout=10, close_timeout=5) as ws:
        ws.send(json.dumps({"name": name, "signal": "start", "nbest": 1}))
        assert json.loads(ws.recv(timeout=10)) == {"status": "ok", "signal": "server_ready"}
        for i in range(0, len(pcm), FRAME_BYTES):
            ws.send(pcm[i : i + FRAME_BYTES])
            reply = json.loads(ws.recv(timeout=10))
            assert set(reply) == {"result"}, reply
            partials += 1
        ws.send(json.dumps({"name": name, "signal": "end", "nbest": 1}))
        final = json.loads(ws.recv(timeout=10))
    return partials, final


@pytest.fixture
def nginx() -> str:
    return find_nginx()


@pytest.fixture
def recognizer(zipformer2_model_dir: Path) -> Recognizer:
    return Recognizer(load_model(zipformer2_model_dir), beam=4)


async def start_backend(
    nursery: trio.Nursery, recognizer: Recognizer, audio_dir: Path, max_connections: int = 100
) -> tuple[Server, trio.Event]:
    """Start a server on a free port; the event is set once it has stopped."""
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        audio_dir=audio_dir,
        max_connections=max_connections,
        workers=2,
        idle_timeout=20.0,
        grace_period=1.0,
    )
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Server]) -> None:
        try:
            await serve(config, recognizer, task_status=task_status)
        finally:
            stopped.set()

    return await nursery.start(run), stopped


@asynccontextmanager
async def running_nginx(nginx: str, tmp_path: Path, backends: list[Server]) -> AsyncIterator[Path]:
    """Run deploy/nginx.conf in the foreground in front of ``backends`` until
    it answers /health; yields nginx's prefix directory (logs, pid).  nginx
    is always terminated on the way out."""
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(NGINX_CONF.read_text(), [b.port for b in backends], port))
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    with open(prefix / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [nginx, "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    try:
        with trio.fail_after(10):
            while True:
                assert proc.poll() is None, _read(prefix / "stderr.log") + _read(prefix / "error.log")
                try:
                    status, body = await http_get(port, "/health", "Connection: close\r\n")
                    break
                except OSError:
                    await trio.sleep(0.05)
        assert status == 200 and json.loads(body)["status"] == "ok", body
        yield prefix
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not (prefix / "nginx.pid").exists(), "nginx did not shut down cleanly"


def listen_port(prefix: Path) -> int:
    return int(re.search(r"listen 127\.0\.0\.1:(\d+);", (prefix.parent / "nginx.conf").read_text()).group(1))


def stream_log(prefix: Path) -> list[tuple[str, str]]:
    """(upstream addresses, upstream statuses) of every stream in nginx's access log."""
    text = _read(prefix / "access.log")
    return re.findall(rf'"GET {WS_PATH} [^"]*" \d+ upstream=(.*?) upstream_status=(.*?) seconds=', text)


async def wait_idle(*servers: Server) -> None:
    """Until every connection has ended (its WAV file closed)."""
    with trio.fail_after(10):
        while any(server.connections for server in servers):
            await trio.sleep(0.01)


def saved_names(server: Server) -> set[str]:
    return {path.stem for path in server.config.audio_dir.glob("*.wav")}


async def run_clients(port: int, names: list[str], recognizer: Recognizer) -> None:
    """Stream one distinct utterance per name through nginx at once; every
    client gets one reply per frame and the offline final text."""
    url = f"ws://127.0.0.1:{port}{WS_PATH}"
    audio = {name: speechlike(1.0 + 0.1 * i, seed=i) for i, name in enumerate(names)}
    results: dict[str, tuple[int, dict]] = {}

    async def client(name: str) -> None:
        results[name] = await trio.to_thread.run_sync(paddlespeech_session, url, f"{name}.wav", pcm16(audio[name]))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(client, name)
    for name in names:
        partials, final = results[name]
        pcm = pcm16(audio[name])
        expected = transcribe_samples(recognizer, np.frombuffer(pcm, np.int16) / np.float32(32768), 16000)
        assert partials == -(-len(pcm) // FRAME_BYTES)
        assert final["status"] == "ok" and final["signal"] == "end" and final["name"] == f"{name}.wav"
        assert final["result"] == expected.text
        assert expected.text, "the fixture model must emit text for the comparison to mean something"


async def test_nginx_spreads_streams_over_backends_and_fails_over(
    nursery: trio.Nursery, nginx: str, recognizer: Recognizer, tmp_path: Path
) -> None:
    a, a_stopped = await start_backend(nursery, recognizer, tmp_path / "audio-a")
    b, _ = await start_backend(nursery, recognizer, tmp_path / "audio-b")
    async with running_nginx(nginx, tmp_path, [a, b]) as prefix:
        port = listen_port(prefix)
        names = [f"client{i}" for i in range(6)]
        await run_clients(port, names, recognizer)
        await wait_idle(a, b)
        on_a, on_b = saved_names(a), saved_names(b)
        assert on_a | on_b == set(names) and not on_a & on_b
        assert on_a and on_b, f"least_conn must spread streams: {sorted(on_a)} / {sorted(on_b)}"
        served = stream_log(prefix)
        assert sorted(addr for addr, _ in served) == sorted(
            [f"127.0.0.1:{a.port}"] * len(on_a) + [f"127.0.0.1:{b.port}"] * len(on_b)
        )

        # One backend goes away: new streams still succeed, all on the other.
        a.shutdown(immediately=True)
        with trio.fail_after(10):
            await a_stopped.wait()
        later = [f"after{i}" for i in range(4)]
        await run_clients(port, later, recognizer)
        await wait_idle(b)
        assert saved_names(b) == on_b | set(later)
        assert saved_names(a) == on_a
        status, body = await http_get(port, "/health", "Connection: close\r\n")
        assert status == 200, body


async def test_a_full_backend_answers_503_and_nginx_retries_another(
    nursery: trio.Nursery, nginx: str, recognizer: Recognizer, tmp_path: Path
) -> None:
    full, _ = await start_backend(nursery, recognizer, tmp_path / "audio-full", max_connections=1)
    free, _ = await start_backend(nursery, recognizer, tmp_path / "audio-free")
    async with running_nginx(nginx, tmp_path, [full, free]) as prefix:
        port = listen_port(prefix)
        # A client connected straight to `full` takes its only slot.
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{full.port}{WS_PATH}") as held:
            await held.send_message(json.dumps({"name": "held.wav", "signal": "start", "nbest": 1}))
            assert json.loads(await held.get_message())["signal"] == "server_ready"
            status, body = await http_get(full.port, "/health", "Connection: close\r\n")
            assert (status, json.loads(body)["status"]) == (503, "full")

            names = [f"client{i}" for i in range(4)]
            for name in names:  # one after the other: round-robin between equally loaded backends
                await run_clients(port, [name], recognizer)
            await wait_idle(free)
            assert saved_names(free) == set(names)
            retried = [statuses for _, statuses in stream_log(prefix) if statuses == "503, 101"]
            assert retried, f"nginx never met the full backend: {stream_log(prefix)}"
            status, body = await http_get(port, "/health", "Connection: close\r\n")
            assert status == 200, body


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_rendering_keeps_everything_but_addresses_listen_and_user() -> None:
    template = NGINX_CONF.read_text()
    text = render_nginx_conf(template, [1111, 2222, 3333], 4444)
    params = re.search(r"server 127\.0\.0\.1:\d+(\s[^;]*);", template)
    assert params is not None
    assert re.findall(r"^\s*server 127\.0\.0\.1:(\d+)" + re.escape(params.group(1)) + ";$", text, re.M) == [
        "1111", "2222", "3333",
    ]  # fmt: skip
    assert re.findall(r"^\s*listen\s+([^;]+);", text, re.M) == ["127.0.0.1:4444"]
    # Every other directive of the shipped file survives unchanged.
    changed = re.compile(r"^\s*(server\s+\S+:\d+|listen\s|user\s)")
    kept = [line.strip() for line in template.splitlines() if line.strip() and not changed.match(line)]
    assert [line.strip() for line in text.splitlines() if line.strip() and not changed.match(line)] == kept
