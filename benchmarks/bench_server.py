"""Concurrency sweep: N real-time clients against ``trio-asr serve`` (and sherpa-onnx's server).

    python benchmarks/bench_server.py [--model DIR] [--clients 1,2,4,8,16,32,64]
        [--seconds 12] [--sherpa-server-script PATH/streaming_server.py]

The server runs as a subprocess (``python -m trio_asr serve``, loopback, a
free port, no saved audio), so whatever the server does (batching, workers)
is what is measured.  For each N, N WebSocket clients (the ``websockets``
library, one asyncio process) each stream ``--seconds`` of the speech clips
at real-time pace in 85 ms chunks (2720 bytes PCM16), starting at random
offsets within one chunk, reading replies concurrently, then send "end".

Per N: partial-reply latency (send of a chunk -> its reply) p50/p95/p99;
final latency (last chunk sent -> final reply); aggregate RTF (server CPU
seconds from /proc/<pid>/stat / audio seconds of all streams); server CPU %
and peak RSS; whether every stream kept real time (final reply within
``--final-slack`` s of its last chunk).  N passes when p95 < 300 ms and every
stream kept real time; the sweep stops at the first N that cannot keep up.

Memory: the RSS growth for ``--idle-connections`` idle WebSockets (per
connection), and the peak RSS growth per active stream at the largest N.

sherpa-onnx: its ``python-api-examples/streaming_server.py`` (with
``http_server.py`` and ``web/`` beside it) is NOT part of this repository;
give its path with ``--sherpa-server-script`` or ``$SHERPA_ONNX_STREAMING_SERVER``.
It is copied into a temporary directory and run on the same model with the
same intra-op threads.  Its protocol differs (float32 samples, "Done", JSON
``{"text", "segment"}`` replies once per model chunk, not per message): the
adapter below maps each of its replies to the audio message that completed
that model chunk (from its chunk size and fbank framing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.common import (
        Progress, fixture_model, plotting_unavailable, speech, tile_to, write_results_and_plot,
    )
except ImportError:
    from common import (
        Progress, fixture_model, plotting_unavailable, speech, tile_to, write_results_and_plot,
    )

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from trio_asr.model import find_model_file, load_model

CHUNK_SAMPLES = 1360  # 85 ms at 16 kHz: 2720 bytes of PCM16, what PaddleSpeech's client sends
CHUNK_S = CHUNK_SAMPLES / 16000
P95_GOAL_MS = 300.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ server processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess with /proc readings of its CPU time and memory."""

    def __init__(self, name: str, argv: list[str], port: int, cwd: Path | None = None) -> None:
        self.name = name
        self.port = port
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

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

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

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


def start_ours(model_dir: Path, args, workdir: Path) -> ServerProcess:
    port = free_port()
    argv = [
        sys.executable, "-m", "trio_asr", "serve", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--no-save-audio",
        "--audio-dir", str(workdir / "audio"), "--max-connections", "1000",
        "--idle-timeout", "300", "--threads", str(args.threads), *args.server_arg,
    ]  # fmt: skip
    return ServerProcess("trio-asr", argv, port)


def start_sherpa(model_dir: Path, args, workdir: Path) -> ServerProcess | None:
    script = args.sherpa_server_script
    if not script:
        print("sherpa-onnx server: skipped (no --sherpa-server-script / $SHERPA_ONNX_STREAMING_SERVER)",
              file=sys.stderr)  # fmt: skip
        return None
    source = Path(script).resolve().parent
    needed = [source / "streaming_server.py", source / "http_server.py", source / "web"]
    if not all(p.exists() for p in needed):
        print(f"sherpa-onnx server: skipped ({source} lacks streaming_server.py, http_server.py or web/)",
              file=sys.stderr)  # fmt: skip
        return None
    copy = workdir / "sherpa"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    port = free_port()
    argv = [
        sys.executable, str(copy / "streaming_server.py"),
        "--zipformer2-ctc", str(find_model_file(model_dir)), "--tokens", str(model_dir / "tokens.txt"),
        "--port", str(port), "--num-threads", str(args.threads), "--nn-pool-size", str(os.cpu_count() or 1),
        "--use-endpoint", "0", "--max-active-connections", "1000", "--doc-root", str(copy / "web"),
        *args.sherpa_arg,
    ]  # fmt: skip
    return ServerProcess("sherpa-onnx", argv, port, cwd=copy)


# ------------------------------------------------------------------ protocol adapters


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

    def chunk_of_reply(self, k: int) -> int:
        return k


class SherpaAdapter:
    """sherpa-onnx streaming_server.py: float32 frames / "Done"; a reply per model chunk."""

    path = ""

    def __init__(self, chunk_frames: int, chunk_shift: int) -> None:
        self.chunk_frames = chunk_frames
        self.chunk_shift = chunk_shift

    @staticmethod
    def payload(samples: np.ndarray) -> bytes:
        return samples.astype("<f4").tobytes()

    async def start(self, ws, name: str) -> None:
        pass

    async def end(self, ws, name: str) -> None:
        await ws.send("Done")

    @staticmethod
    def is_final(message) -> bool:
        return False  # the final reply is the last one before the server closes

    def chunk_of_reply(self, k: int) -> int:
        """The audio message whose arrival made model chunk ``k`` ready.

        sherpa-onnx runs chunk k once frame ``k * shift + T`` exists (its
        ``IsReady``: processed + T < frames ready); with ``snip_edges=False``
        frame t ends at sample ``160 t + 280``.
        """
        samples = (k * self.chunk_shift + self.chunk_frames) * 160 + 281
        return math.ceil(samples / CHUNK_SAMPLES) - 1


# ------------------------------------------------------------------ clients


async def sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def stream_client(adapter, url: str, audio: np.ndarray, name: str, ready: asyncio.Event,
                        start_at: list[float], timeout: float) -> dict:  # fmt: skip
    """One client: connect, start, wait for the common start time, then stream in
    real time while a reader task timestamps the replies."""
    payloads = [adapter.payload(audio[i : i + CHUNK_SAMPLES]) for i in range(0, len(audio), CHUNK_SAMPLES)]
    sent: list[float] = []
    replies: list[float] = []
    out: dict = {"chunks": len(payloads), "error": None, "final_at": None}
    async with connect(url, max_size=None, compression=None, open_timeout=60, ping_interval=None) as ws:
        await adapter.start(ws, name)
        await ready.wait()
        t0 = start_at[0] + random.uniform(0, CHUNK_S)

        async def reader() -> None:
            try:
                async for message in ws:
                    now = time.perf_counter()
                    if adapter.is_final(message):
                        out["final_at"] = now
                        return
                    replies.append(now)
            except ConnectionClosed:
                pass
            if isinstance(adapter, SherpaAdapter) and replies:
                out["final_at"] = replies.pop()

        read_task = asyncio.create_task(reader())
        try:
            for i, payload in enumerate(payloads):
                await sleep_until(t0 + i * CHUNK_S)
                sent.append(time.perf_counter())
                await ws.send(payload)
            await adapter.end(ws, name)
            await asyncio.wait_for(read_task, max(1.0, t0 + timeout - time.perf_counter()))
        except (asyncio.TimeoutError, ConnectionClosed, OSError) as exc:
            out["error"] = type(exc).__name__
            read_task.cancel()
    latencies = []
    for k, at in enumerate(replies):
        j = adapter.chunk_of_reply(k)
        j = min(j, len(sent) - 1, max((i for i, s in enumerate(sent) if s <= at), default=0))
        latencies.append(at - sent[j])
    out["latencies"] = latencies
    out["first_send"] = sent[0] if sent else None
    out["last_send"] = sent[-1] if sent else None
    return out


async def run_level(server: ServerProcess, adapter, n: int, clips, args) -> dict:
    url = f"ws://127.0.0.1:{server.port}{adapter.path}"
    ready = asyncio.Event()
    start_at = [0.0]
    audios = [tile_to(clips, args.seconds, offset=i) for i in range(n)]
    timeout = args.seconds + args.final_slack + 30
    tasks = [
        asyncio.create_task(stream_client(adapter, url, audios[i], f"bench-{n}-{i}.wav", ready, start_at, timeout))
        for i in range(n)
    ]
    await asyncio.sleep(0.5 + 0.02 * n)  # connections and "start" handshakes, not measured
    rss_before = server.rss_bytes()
    cpu0, client_cpu0 = server.cpu_seconds(), time.process_time()
    start_at[0] = wall0 = time.perf_counter() + 0.1
    ready.set()
    peak = rss_before

    async def sample_rss() -> None:
        nonlocal peak
        while True:
            peak = max(peak, server.rss_bytes())
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_rss())
    results = await asyncio.gather(*tasks, return_exceptions=True)
    sampler.cancel()
    wall = time.perf_counter() - wall0
    cpu = server.cpu_seconds() - cpu0
    client_cpu = time.process_time() - client_cpu0

    lat = np.array([x for r in results if isinstance(r, dict) for x in r["latencies"]]) * 1000
    finals, ok = [], 0
    for r in results:
        if isinstance(r, dict) and r["final_at"] is not None and r["error"] is None:
            final = r["final_at"] - r["last_send"]
            finals.append(final)
            ok += final <= args.final_slack
    errors = [repr(r) if not isinstance(r, dict) else r["error"] for r in results]
    errors = [e for e in errors if e]
    audio_s = n * args.seconds
    row = {
        "n": n,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "replies": int(lat.size),
        "final_max_s": round(max(finals), 3) if finals else None,
        "realtime_streams": f"{ok}/{n}",
        "all_realtime": ok == n,
        "aggregate_rtf": round(cpu / audio_s, 4),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        "server_rss_peak_mb": round(peak / 2**20, 1),
        "rss_growth_per_stream_kb": round((peak - rss_before) / n / 1024, 1),
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "wall_s": round(wall, 2),
        "errors": errors[:5],
    }
    row["pass"] = bool(row["all_realtime"] and row["p95_ms"] is not None and row["p95_ms"] < P95_GOAL_MS)
    return row


async def idle_memory(server: ServerProcess, adapter, count: int) -> dict:
    url = f"ws://127.0.0.1:{server.port}{adapter.path}"
    await asyncio.sleep(0.5)
    before = server.rss_bytes()
    sockets = [await connect(url, compression=None, ping_interval=None, open_timeout=60) for _ in range(count)]
    await asyncio.sleep(1.0)
    after = server.rss_bytes()
    await asyncio.gather(*(ws.close() for ws in sockets))
    return {"connections": count, "rss_before_mb": round(before / 2**20, 1),
            "rss_per_idle_connection_kb": round((after - before) / count / 1024, 1)}  # fmt: skip


async def sweep(server: ServerProcess, adapter, clips, args, bar) -> dict:
    # warm-up: one short stream, so first-use allocations are not counted as load
    warm = argparse.Namespace(**{**vars(args), "seconds": 2.0})
    await run_level(server, adapter, 1, clips, warm)
    record = {"idle": await idle_memory(server, adapter, args.idle_connections), "levels": []}
    for n in args.clients:
        row = await run_level(server, adapter, n, clips, args)
        record["levels"].append(row)
        bar.advance()
        print_row(server.name, row)
        if not row["all_realtime"] or (row["p95_ms"] or 0) > 4 * P95_GOAL_MS:
            print(f"{server.name}: stopping at N={n}: the server cannot keep up", file=sys.stderr)
            break
        await asyncio.sleep(1.0)
    passing = [r["n"] for r in record["levels"] if r["pass"]]
    record["max_n"] = max(passing) if passing else 0
    if record["levels"]:
        record["rss_per_active_stream_kb"] = record["levels"][-1]["rss_growth_per_stream_kb"]
    bar.update(bar.done + len(args.clients) - len(record["levels"]))
    return record


# ------------------------------------------------------------------ output

COLUMNS = (("n", "N", 5), ("p50_ms", "p50 ms", 8), ("p95_ms", "p95 ms", 8), ("p99_ms", "p99 ms", 8),
           ("final_max_s", "final s", 8), ("realtime_streams", "realtime", 9), ("aggregate_rtf", "agg RTF", 8),
           ("server_cpu_pct", "CPU %", 7), ("server_rss_peak_mb", "RSS MB", 8), ("client_cpu_pct", "client%", 8),
           ("pass", "pass", 6))  # fmt: skip


def print_row(name: str, row: dict) -> None:
    cells = "".join(f"{'-' if row[k] is None else row[k]!s:>{w}}" for k, _, w in COLUMNS)
    print(f"{name:<12}{cells}", flush=True)


def print_header() -> None:
    print(f"{'server':<12}" + "".join(f"{h:>{w}}" for _, h, w in COLUMNS), flush=True)


def print_summary(records: dict) -> None:
    for name, rec in records.items():
        idle = rec["idle"]
        print(
            f"{name}: max N (p95 < {P95_GOAL_MS:.0f} ms, all real-time) = {rec['max_n']}; "
            f"RSS per idle connection {idle['rss_per_idle_connection_kb']} kB; "
            f"peak RSS growth per active stream {rec.get('rss_per_active_stream_kb')} kB"
        )


def plot(records: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_lat, ax_rtf) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rec in records.items():
        ns = [r["n"] for r in rec["levels"]]
        (line,) = ax_lat.plot(ns, [r["p95_ms"] for r in rec["levels"]], marker="o", label=f"{name} p95")
        color = line.get_color()
        ax_lat.plot(ns, [r["p50_ms"] for r in rec["levels"]], marker=".", linestyle=":", color=color,
                    label=f"{name} p50")  # fmt: skip
        ax_rtf.plot(ns, [r["aggregate_rtf"] for r in rec["levels"]], marker="o", color=color, label=name)
        failed = [r for r in rec["levels"] if not r["pass"]]
        ax_lat.scatter([r["n"] for r in failed], [r["p95_ms"] for r in failed], marker="x", s=80, color="red",
                       zorder=3)  # fmt: skip
    ax_lat.axhline(P95_GOAL_MS, color="grey", linestyle="--", linewidth=1, label=f"{P95_GOAL_MS:.0f} ms goal")
    for ax, title, ylabel in ((ax_lat, "reply latency (red x: N fails)", "ms"),
                              (ax_rtf, "aggregate RTF (server CPU s / audio s)", "RTF")):  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:.0f}"))
        ax.set_xlabel("concurrent real-time streams N")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_lat.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=os.environ.get("TRIO_ASR_TEST_MODEL_DIR") or None,
                        help="model directory (default $TRIO_ASR_TEST_MODEL_DIR, else the int8 real-size fixture)")
    parser.add_argument("--fixture", choices=["int8", "float32"], default="int8",
                        help="which fixture without --model (default int8, like the default model)")
    parser.add_argument("--clients", default="1,2,4,8,16,32,64", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=12.0, help="audio per client per N")
    parser.add_argument("--final-slack", type=float, default=1.0,
                        help="a stream keeps real time if its final reply comes this soon after its last chunk")
    parser.add_argument("--idle-connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (both servers)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `trio-asr serve` (repeatable), e.g. --server-arg=--workers=2")
    parser.add_argument("--sherpa-server-script", default=os.environ.get("SHERPA_ONNX_STREAMING_SERVER"),
                        help="sherpa-onnx python-api-examples/streaming_server.py (default $SHERPA_ONNX_STREAMING_SERVER)")
    parser.add_argument("--sherpa-arg", action="append", default=[], help="extra argument for its server")
    parser.add_argument("--no-sherpa", action="store_true")
    parser.add_argument("--audio-dir", type=Path)
    args = parser.parse_args(argv)
    args.clients = [int(n) for n in args.clients.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if notice := plotting_unavailable():
        print(notice, file=sys.stderr)  # now, not only after the sweep
    model_dir = Path(args.model) if args.model else fixture_model(args.fixture)
    clips = speech(args.audio_dir)
    model = load_model(model_dir)
    adapters = {"trio-asr": OursAdapter(), "sherpa-onnx": SherpaAdapter(model.chunk_frames, model.chunk_shift)}
    del model
    starters = {"trio-asr": start_ours, "sherpa-onnx": None if args.no_sherpa else start_sherpa}
    records: dict = {}
    with tempfile.TemporaryDirectory(prefix="trio-asr-bench-") as tmp, \
            Progress(len(args.clients) * 2, "server sweep") as bar:  # fmt: skip
        print_header()
        for name, starter in starters.items():
            server = starter(model_dir, args, Path(tmp)) if starter else None
            if server is None:
                bar.advance(len(args.clients))
                continue
            try:
                server.wait_ready()
                records[name] = asyncio.run(sweep(server, adapters[name], clips, args, bar))
            except Exception:
                print(f"{name} failed; its log ends with:\n{server.log_tail()}", file=sys.stderr)
                raise
            finally:
                server.stop()
    print_summary(records)
    written = write_results_and_plot("server", {
        "model_dir": str(model_dir), "model_file": find_model_file(model_dir).name,
        "seconds_per_client": args.seconds, "chunk_ms": 1000 * CHUNK_S, "threads": args.threads,
        "server_args": args.server_arg, "sherpa_args": args.sherpa_arg, "cpu_count": os.cpu_count(),
        "p95_goal_ms": P95_GOAL_MS, "final_slack_s": args.final_slack, "servers": records,
    }, lambda png: plot(records, png))  # fmt: skip
    print("wrote " + " and ".join(map(str, written)))


if __name__ == "__main__":
    main()
