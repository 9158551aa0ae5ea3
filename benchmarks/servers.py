"""The servers bench_server.py compares, and how to talk to each.

- ``trio-asr``: ``python -m trio_asr serve`` (PaddleSpeech protocol: "start",
  PCM16 frames, "end"; one reply per frame, a final reply with signal "end");
- ``sherpa-onnx C++``: ``sherpa-onnx-online-websocket-server`` from the PyPI
  package ``sherpa-onnx-bin``, its shared libraries from the ``sherpa-onnx``
  wheel's ``sherpa_onnx/lib`` (float32 frames, text "Done" at the end; one JSON
  reply per model chunk, "Done!" after the final one);
- ``sherpa-onnx py`` (optional): sherpa-onnx's
  ``python-api-examples/streaming_server.py`` from a checkout (same frames;
  one JSON reply per model chunk; it closes after the final one).

Every server runs as a subprocess on 127.0.0.1 and a free port, read through
/proc for CPU time and RSS.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from trio_asr.recognition.model import find_model_file

CHUNK_SAMPLES = 1360  # 85 ms at 16 kHz: 2720 bytes of PCM16, what PaddleSpeech's client sends
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPP_SERVER = "sherpa-onnx-online-websocket-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess with /proc readings of its CPU time and memory."""

    def __init__(self, name: str, argv: list[str], port: int, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.port = port
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {timeout} s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def main_thread_cpu_seconds(self) -> float:
        """CPU time of the process's first thread (ours: the event loop)."""
        pid = self.proc.pid
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def model_batches(self) -> tuple[float, float] | None:
        """(model calls, chunks) so far, from ours' /metrics; None for a
        server without them."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        found = dict(re.findall(r"^trio_asr_model_batch_size_(count|sum) (\S+)$", text, re.MULTILINE))
        if len(found) != 2:
            return None
        return float(found["count"]), float(found["sum"])

    def log_tail(self, size: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-size:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_ours(name: str, model_dir: Path, args, workdir: Path, extra: list[str],
               tree: Path | None = None) -> ServerProcess:  # fmt: skip
    """Ours; from the source ``tree`` (its ``trio_asr`` first on the path) if given."""
    port = free_port()
    argv = [
        sys.executable, "-m", "trio_asr", "serve", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--no-save-audio",
        "--audio-dir", str(workdir / "audio"), "--max-connections", "1000",
        "--idle-timeout", "300", "--threads", str(args.threads), *args.server_arg, *extra,
    ]  # fmt: skip
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    return ServerProcess(name, pinned(args, argv), port, cwd=tree, env=env)


def pinned(args, argv: list[str]) -> list[str]:
    """``argv`` under ``taskset -c CPUS`` when ``--cpus`` asks to pin the servers."""
    cpus = getattr(args, "cpus", None)
    return ["taskset", "-c", cpus, *argv] if cpus else argv


def cpp_server() -> tuple[str, str] | None:
    """(executable, its library directory), or None if not installed."""
    exe = shutil.which(CPP_SERVER) or shutil.which(CPP_SERVER, path=sysconfig.get_path("scripts"))
    try:
        import sherpa_onnx
    except ImportError:
        return None
    lib = Path(sherpa_onnx.__file__).parent / "lib"
    return (exe, str(lib)) if exe and lib.is_dir() else None


def start_sherpa_cpp(name: str, model_dir: Path, args, workdir: Path) -> ServerProcess | None:
    found = cpp_server()
    if found is None:
        print(f"{name}: skipped ({CPP_SERVER} or the sherpa-onnx wheel is missing: "
              "pip install sherpa-onnx sherpa-onnx-bin)", file=sys.stderr)  # fmt: skip
        return None
    exe, lib = found
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [lib, os.environ.get("LD_LIBRARY_PATH")]))}
    port = free_port()
    argv = [
        exe, f"--port={port}", f"--zipformer2-ctc-model={find_model_file(model_dir)}",
        f"--tokens={model_dir / 'tokens.txt'}", f"--num-threads={args.threads}",
        *args.cpp_arg, f"--log-file={workdir / 'sherpa-cpp.log'}",
    ]  # fmt: skip
    return ServerProcess(name, pinned(args, argv), port, env=env)


def start_sherpa_py(name: str, model_dir: Path, args, workdir: Path) -> ServerProcess | None:
    script = args.sherpa_server_script
    if not script:
        return None
    source = Path(script).resolve().parent
    needed = [source / "streaming_server.py", source / "http_server.py", source / "web"]
    if not all(p.exists() for p in needed):
        print(f"{name}: skipped ({source} lacks streaming_server.py, http_server.py or web/)", file=sys.stderr)
        return None
    copy = workdir / "sherpa"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    port = free_port()
    argv = [
        sys.executable, str(copy / "streaming_server.py"),
        "--zipformer2-ctc", str(find_model_file(model_dir)), "--tokens", str(model_dir / "tokens.txt"),
        "--port", str(port), "--num-threads", str(args.threads), "--nn-pool-size", str(os.cpu_count() or 1),
        "--use-endpoint", "0", "--max-active-connections", "1000", "--doc-root", str(copy / "web"),
    ]  # fmt: skip
    return ServerProcess(name, argv, port, cwd=copy)


class OursAdapter:
    """PaddleSpeech streaming protocol: start / PCM16 frames / end, one reply per frame."""

    path = "/paddlespeech/asr/streaming"

    @staticmethod
    def payload(samples: np.ndarray) -> bytes:
        return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()

    async def start(self, ws, name: str) -> None:
        await ws.send(json.dumps({"name": name, "signal": "start", "nbest": 1}))
        reply = json.loads(await ws.recv())
        if reply.get("signal") != "server_ready":
            raise RuntimeError(f"unexpected start reply {reply}")

    async def end(self, ws, name: str) -> None:
        await ws.send(json.dumps({"name": name, "signal": "end", "nbest": 1}))

    @staticmethod
    def is_final(message) -> bool:
        return json.loads(message).get("signal") == "end"

    closes_after_final = False
    replies_per_frame = True

    def chunk_of_reply(self, k: int) -> int:
        return k


class SherpaAdapter:
    """sherpa-onnx's servers: float32 frames / "Done"; a reply per model chunk.
    The C++ server says "Done!" after the final result, the Python example
    closes the connection."""

    path = ""
    replies_per_frame = False

    def __init__(self, chunk_frames: int, chunk_shift: int, *, closes_after_final: bool) -> None:
        self.chunk_frames = chunk_frames
        self.chunk_shift = chunk_shift
        self.closes_after_final = closes_after_final

    @staticmethod
    def payload(samples: np.ndarray) -> bytes:
        return samples.astype("<f4").tobytes()

    async def start(self, ws, name: str) -> None:
        pass

    async def end(self, ws, name: str) -> None:
        await ws.send("Done")

    @staticmethod
    def is_final(message) -> bool:
        return message == "Done!"

    def chunk_of_reply(self, k: int) -> int:
        """The audio message whose arrival made model chunk ``k`` ready.

        sherpa-onnx runs chunk k once frame ``k * shift + T`` exists (its
        ``IsReady``: processed + T < frames ready); with ``snip_edges=False``
        frame t ends at sample ``160 t + 280``.
        """
        samples = (k * self.chunk_shift + self.chunk_frames) * 160 + 281
        return math.ceil(samples / CHUNK_SAMPLES) - 1
