"""Max real-time streams: trio-asr against sherpa-onnx's C++ streaming server, side by side.

    python benchmarks/bench_server.py [--fixture int8,float32,int8-whole | --model DIR]
        [--start 16] [--seconds 10] [--sherpa-server-script .../streaming_server.py]

For each model (by default the real-size fixtures, int8 as icefall exports
it, float32, and int8 of the whole model as sherpa-onnx's NeMo scripts
quantize: the default model's geometry, random weights) and each server (see servers.py:
ours with default flags; ours with ``--no-exact-batching`` for an int8 model;
sherpa-onnx's C++ ``sherpa-onnx-online-websocket-server`` with
``--num-work-threads=2 --num-threads=1 --max-batch-size=5
--enable-endpoint=false``; sherpa-onnx's Python example server if its script
is given), all started at once and their levels run in turn (so that changes
in the machine's load hit all alike), N WebSocket clients (the
``websockets`` library, one asyncio process) each stream ``--seconds`` of the
speech clips at real-time pace in 85 ms chunks, starting at random offsets
within one chunk (``--arrivals burst``, the default) or uniformly over the
first ``--spread`` (10) seconds with a random chunk phase (``--arrivals
spread``, each client then streaming ``--seconds`` + ``--spread``; both:
``--arrivals burst,spread``), reading replies concurrently, then end the stream.

A level N is *held* when no client saw an error and every stream kept real
time: its final reply came within ``--final-slack`` (0.5 s) of its last
chunk and within 1.1 x the audio's duration of its first chunk; ours must
also answer each frame with p95 latency <= 185 ms (sherpa-onnx's servers reply
once per model chunk, so they are not held to it).  N climbs by x1.25 from
``--start`` until a level fails (twice in a row: one load spike is not a
limit), then bisection between the highest held and the lowest failed level
goes on until they are at most 5 % of the held level apart or ``--refine``
steps are spent (the default, 3, always gets there from the ladder's 25 %):
the result is each server's max real-time streams, and the ratio ours / C++.

Memory in the same run: RSS growth per idle WebSocket connection
(``--idle-connections`` of them) and, per active stream, the peak RSS at the
highest level held less the RSS after warm-up, over N.  The machine's load average is recorded beside the
figures (other work on the machine lowers every column).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import itertools
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import FIXTURE_KINDS, Progress, fixture_model, plotting_unavailable, speech, tile_to, write_results_and_plot
from servers import (CHUNK_SAMPLES, OursAdapter, ServerProcess, SherpaAdapter, start_ours,
                     start_sherpa_cpp, start_sherpa_py)

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from trio_asr.recognition.model import find_model_file, load_model

CHUNK_S = CHUNK_SAMPLES / 16000
P95_GOAL_MS = 185.0
MAX_STRETCH = 1.1
CPP_FLAGS = ["--num-work-threads=2", "--max-batch-size=5", "--enable-endpoint=false"]


# ------------------------------------------------------------------ clients


def arrival_offsets(n: int, arrivals: str, spread_s: float, rng: random.Random) -> list[float]:
    """Each client's first chunk, in seconds after the level's start.

    ``burst``: all within one chunk (uniform in [0, CHUNK_S)), so every
    stream's model chunk is due in the same window; ``spread``: client i at
    ``i * spread_s / n`` plus a random phase in [0, CHUNK_S), so arrivals are
    uniform over the first ``spread_s`` seconds and chunk phases random."""
    if arrivals == "burst":
        return [rng.uniform(0, CHUNK_S) for _ in range(n)]
    if arrivals == "spread":
        return [i * spread_s / n + rng.uniform(0, CHUNK_S) for i in range(n)]
    raise ValueError(f"arrivals must be burst or spread, not {arrivals!r}")


def client_seconds(args) -> float:
    """Audio per client: ``--seconds``, plus the spread in spread mode, so that
    all N streams are open together for ``--seconds``."""
    return args.seconds + (args.spread if args.arrivals == "spread" else 0.0)


async def sleep_until(t: float) -> None:
    delay = t - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def stream_client(adapter, url: str, audio: np.ndarray, name: str, ready: asyncio.Event,
                        start_at: list[float], offset: float, timeout: float) -> dict:  # fmt: skip
    """One client: connect, start, wait for the common start time, then stream in
    real time while a reader task timestamps the replies."""
    payloads = [adapter.payload(audio[i : i + CHUNK_SAMPLES]) for i in range(0, len(audio), CHUNK_SAMPLES)]
    sent: list[float] = []
    replies: list[float] = []
    out: dict = {"chunks": len(payloads), "error": None, "final_at": None, "audio_s": len(audio) / 16000}
    async with connect(url, max_size=None, compression=None, open_timeout=60, ping_interval=None) as ws:
        await adapter.start(ws, name)
        await ready.wait()
        t0 = start_at[0] + offset

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
            if adapter.closes_after_final and replies:
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
    # Latencies are worked out after the level (reply_latencies): computing them
    # here would stall the event loop while other clients still wait for replies.
    out["sent"], out["replies"] = sent, replies
    out["first_send"] = sent[0] if sent else None
    out["last_send"] = sent[-1] if sent else None
    return out


def reply_latencies(adapter, sent: list[float], replies: list[float]) -> list[float]:
    """Seconds from the message each reply answers to the reply: reply ``k``
    answers ``adapter.chunk_of_reply(k)``, or the last message sent before it."""
    latencies = []
    for k, at in enumerate(replies):
        last_before = max(bisect.bisect_right(sent, at) - 1, 0)
        j = min(adapter.chunk_of_reply(k), len(sent) - 1, last_before)
        latencies.append(at - sent[j])
    return latencies


async def run_level(server: ServerProcess, adapter, n: int, clips, args) -> dict:
    url = f"ws://127.0.0.1:{server.port}{adapter.path}"
    ready = asyncio.Event()
    start_at = [0.0]
    seconds = client_seconds(args)
    audios = [tile_to(clips, seconds, offset=i) for i in range(n)]
    offsets = arrival_offsets(n, args.arrivals, args.spread, random.Random())
    timeout = max(offsets) + seconds + args.final_slack + 30
    tasks = [
        asyncio.create_task(stream_client(adapter, url, audios[i], f"bench-{n}-{i}.wav", ready, start_at,
                                          offsets[i], timeout))
        for i in range(n)
    ]  # fmt: skip
    await asyncio.sleep(0.5 + 0.02 * n)  # connections and "start" handshakes, not measured
    rss_before = server.rss_bytes()
    batches0 = server.model_batches() if adapter.replies_per_frame else None
    cpu0, main0, client_cpu0 = server.cpu_seconds(), server.main_thread_cpu_seconds(), time.process_time()
    start_at[0] = wall0 = time.perf_counter() + 0.1
    ready.set()
    peak = rss_before

    lag = 0.0  # the clients' own event-loop stalls: large ones would skew every latency

    async def sample_rss() -> None:
        nonlocal peak, lag
        while True:
            peak = max(peak, server.rss_bytes())
            for _ in range(25):
                asked = time.perf_counter() + 0.01
                await asyncio.sleep(0.01)
                lag = max(lag, time.perf_counter() - asked)

    sampler = asyncio.create_task(sample_rss())
    results = await asyncio.gather(*tasks, return_exceptions=True)
    sampler.cancel()
    wall = time.perf_counter() - wall0
    cpu = server.cpu_seconds() - cpu0
    main_cpu = server.main_thread_cpu_seconds() - main0
    client_cpu = time.process_time() - client_cpu0
    batches1 = server.model_batches() if batches0 is not None else None

    lat = np.array([x for r in results if isinstance(r, dict)
                    for x in reply_latencies(adapter, r["sent"], r["replies"])]) * 1000  # fmt: skip
    finals, stretch, ok = [], [], 0
    for r in results:
        if isinstance(r, dict) and r["final_at"] is not None and r["error"] is None:
            final = r["final_at"] - r["last_send"]
            finals.append(final)
            stretch.append((r["final_at"] - r["first_send"]) / r["audio_s"])
            ok += final <= args.final_slack and stretch[-1] <= MAX_STRETCH
    errors = [repr(r) if not isinstance(r, dict) else r["error"] for r in results]
    errors = [e for e in errors if e]
    audio_s = sum(r["audio_s"] for r in results if isinstance(r, dict)) or n * seconds
    frames = sum(len(r["sent"]) for r in results if isinstance(r, dict)) or 1
    row = {
        "n": n,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
        "replies": int(lat.size),
        "final_max_s": round(max(finals), 3) if finals else None,
        "wall_per_audio_max": round(max(stretch), 3) if stretch else None,
        "realtime_streams": f"{ok}/{n}",
        "all_realtime": ok == n,
        "aggregate_rtf": round(cpu / audio_s, 4),
        # server CPU per frame received, and that of its main thread (ours: the event loop), microseconds
        "cpu_us_per_frame": round(1e6 * cpu / frames, 1),
        "main_us_per_frame": round(1e6 * main_cpu / frames, 1),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        # ours: chunks per model call (from /metrics)
        "mean_batch": (round((batches1[1] - batches0[1]) / max(1.0, batches1[0] - batches0[0]), 1)
                       if batches0 and batches1 else None),
        "server_rss_peak_mb": round(peak / 2**20, 1),
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "client_lag_ms": round(lag * 1000, 1),
        "wall_s": round(wall, 2),
        "errors": errors[:5],
    }
    held = row["all_realtime"] and not errors
    if adapter.replies_per_frame:  # only ours promises a reply per frame
        held = held and row["p95_ms"] is not None and row["p95_ms"] <= P95_GOAL_MS
    row["pass"] = bool(held)
    return row


async def idle_memory(server, adapter, count: int) -> dict:
    url = f"ws://127.0.0.1:{server.port}{adapter.path}"
    await asyncio.sleep(0.5)
    before = server.rss_bytes()
    sockets = [await connect(url, compression=None, ping_interval=None, open_timeout=60) for _ in range(count)]
    await asyncio.sleep(1.0)
    after = server.rss_bytes()
    await asyncio.gather(*(ws.close() for ws in sockets))
    return {"connections": count, "rss_before_mb": round(before / 2**20, 1),
            "rss_per_idle_connection_kb": round((after - before) / count / 1024, 1)}  # fmt: skip


def next_levels(start: int, levels: list[dict], refine: int, cap: int) -> int | None:
    """The next N to try, or None when done: x1.25 up from ``start`` until
    one fails (or ``cap`` is passed), then bisection between the highest held
    and the lowest failed, until they are at most 5 % of the held level
    apart or ``refine`` steps are spent."""
    held = [r["n"] for r in levels if r["pass"]]
    failed = [r["n"] for r in levels if not r["pass"]]
    if not levels:
        return start
    if not failed:
        n = max(held[-1] + 1, round(held[-1] * 1.25))
        return n if n <= cap else None
    lo, hi = max([0, *[n for n in held if n < min(failed)]]), min(failed)
    steps = sum(1 for r in levels if r.get("refining"))
    if steps >= refine or hi - lo <= max(1, lo // 20):
        return None
    return (lo + hi) // 2


async def sweep(servers: dict, adapters: dict, clips, args, bar) -> dict:
    """Every server's ladder, interleaved: each round runs each server not yet
    done at its own next N, so that changes in the machine's load hit all of
    them alike."""
    records = {}
    warm = argparse.Namespace(**{**vars(args), "seconds": 3.0, "arrivals": "burst"})
    for name, server in servers.items():
        # warm-up at the first level's size, so that first-use allocations
        # (big batches included) are not counted as load
        await run_level(server, adapters[name], args.start, clips, warm)
        await asyncio.sleep(2.0)
        records[name] = {"idle": await idle_memory(server, adapters[name], args.idle_connections), "levels": []}
    active = list(servers)
    while active:
        for name in list(active):
            levels = records[name]["levels"]
            n = next_levels(args.start, levels, args.refine, args.max_clients)
            if n is None:
                active.remove(name)
                continue
            refining = any(not r["pass"] for r in levels)
            row = await run_level(servers[name], adapters[name], n, clips, args)
            if not row["pass"]:  # a level fails only if it fails twice: one load spike is not a limit
                print_row(name, row)
                await asyncio.sleep(2.0)
                row = await run_level(servers[name], adapters[name], n, clips, args)
            row["refining"] = refining
            levels.append(row)
            bar.advance()
            print_row(name, row)
            await asyncio.sleep(2.0)  # let the server drop the finished connections
    for record in records.values():
        held = [r for r in record["levels"] if r["pass"]]
        best = max(held, key=lambda r: r["n"]) if held else None
        record["max_n"] = best["n"] if best else 0
        # against the RSS after warm-up: the allocators keep what earlier levels took
        baseline = record["idle"]["rss_before_mb"]
        record["rss_per_active_stream_kb"] = (
            round((best["server_rss_peak_mb"] - baseline) * 1024 / best["n"], 1) if best else None
        )
    return records


# ------------------------------------------------------------------ output

COLUMNS = (("n", "N", 5), ("p50_ms", "p50 ms", 8), ("p95_ms", "p95 ms", 8), ("final_max_s", "final s", 8),
           ("wall_per_audio_max", "wall/aud", 9), ("realtime_streams", "realtime", 9),
           ("aggregate_rtf", "agg RTF", 8), ("main_us_per_frame", "main us", 8), ("server_cpu_pct", "CPU %", 7), ("mean_batch", "batch", 6),
           ("server_rss_peak_mb", "RSS MB", 8),
           ("client_cpu_pct", "client%", 8), ("client_lag_ms", "lag ms", 7), ("pass", "held", 6))  # fmt: skip


def print_row(name: str, row: dict) -> None:
    cells = "".join(f"{'-' if row[k] is None else row[k]!s:>{w}}" for k, _, w in COLUMNS)
    print(f"{name:<30}{cells}", flush=True)


def print_header(model: str) -> None:
    print(f"\n=== {model}", flush=True)
    print(f"{'server':<30}" + "".join(f"{h:>{w}}" for _, h, w in COLUMNS), flush=True)


def print_summary(results: dict, load: str) -> None:
    print(f"\nmax real-time streams (machine load before the run: {load})")
    names = list(dict.fromkeys(name for recs in results.values() for name in recs))
    widths = [len(n) + 3 for n in names]
    print(f"{'model (arrivals)':<18}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths)) + f"{'ours / C++':>12}")
    for model, recs in results.items():
        cells = "".join(f"{recs[n]['max_n'] if n in recs else '-':>{w}}" for n, w in zip(names, widths))
        ours, cpp = recs.get("trio-asr", {}).get("max_n"), recs.get("sherpa-onnx C++", {}).get("max_n")
        ratio = f"{ours / cpp:.2f}" if ours is not None and cpp else "-"
        print(f"{model:<18}{cells}{ratio:>12}")
    print("\nmemory: RSS per idle connection / per active stream (kB)")
    for model, recs in results.items():
        for name, rec in recs.items():
            print(f"{model:<18}{name:<30}{rec['idle']['rss_per_idle_connection_kb']:>10}"
                  f"{rec['rss_per_active_stream_kb'] if rec['rss_per_active_stream_kb'] is not None else '-':>10}")


def plot(results: dict, path: Path) -> None:
    """p95 reply latency and aggregate RTF against N, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(11, 4.2 * len(results)), squeeze=False)
    for (model, records), (ax_lat, ax_rtf) in zip(results.items(), axes):
        for name, rec in records.items():
            levels = sorted(rec["levels"], key=lambda r: r["n"])
            ns = [r["n"] for r in levels]
            (line,) = ax_lat.plot(ns, [r["p95_ms"] for r in levels], marker="o", label=f"{name} (max {rec['max_n']})")
            ax_rtf.plot(ns, [r["aggregate_rtf"] for r in levels], marker="o", color=line.get_color(), label=name)
            failed = [r for r in levels if not r["pass"]]
            ax_lat.scatter([r["n"] for r in failed], [r["p95_ms"] for r in failed], marker="x", s=80,
                           color="red", zorder=3)  # fmt: skip
        ax_lat.axhline(P95_GOAL_MS, color="grey", linestyle="--", linewidth=1, label=f"{P95_GOAL_MS:.0f} ms")
        for ax, title, ylabel in ((ax_lat, f"{model}: p95 reply latency (red x: not held)", "ms"),
                                  (ax_rtf, f"{model}: server CPU s / audio s", "RTF")):  # fmt: skip
            ax.set_xlabel("concurrent real-time streams N")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax_lat.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main


def cpu_description() -> str:
    """lscpu's model name, CPU count and the int8 instruction sets that change the figures."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}
    flags = fields.get("Flags", "").split()
    sets = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{fields.get('Model name', '?')}, {fields.get('CPU(s)', '?')} CPUs, {' '.join(sets) or 'no AVX2'}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=os.environ.get("TRIO_ASR_TEST_MODEL_DIR") or None,
                        help="model directory (default $TRIO_ASR_TEST_MODEL_DIR, else the real-size fixtures)")
    parser.add_argument("--fixture", default=",".join(FIXTURE_KINDS),
                        help=f"fixtures without --model, comma-separated ({', '.join(FIXTURE_KINDS)})")
    parser.add_argument("--start", type=int, default=16, help="first N")
    parser.add_argument("--max-clients", type=int, default=400)
    parser.add_argument("--refine", type=int, default=3, help="at most this many bisection steps after the first failed N")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="audio per client per N (with --arrivals spread, plus --spread)")
    parser.add_argument("--arrivals", default="burst",
                        help="comma-separated modes, each swept in turn: burst (all clients start within one "
                             "chunk) and/or spread (uniformly over the first --spread seconds, random chunk phase)")
    parser.add_argument("--spread", type=float, default=10.0, help="seconds over which spread arrivals start")
    parser.add_argument("--ours-tree", type=Path, action="append", default=[],
                        help="adds ours run from another source tree (e.g. a `git worktree` of an older commit, "
                             "with the compiled modules copied in), named 'trio-asr @<dir name>' (repeatable)")
    parser.add_argument("--final-slack", type=float, default=0.5,
                        help="a stream keeps real time if its final reply comes this soon after its last chunk")
    parser.add_argument("--idle-connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (every server)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra argument for `trio-asr serve` (repeatable), e.g. --server-arg=--workers=2")
    parser.add_argument("--cpp-arg", action="append", default=None,
                        help=f"arguments for the C++ server (repeatable; default {' '.join(CPP_FLAGS)})")
    parser.add_argument("--sherpa-server-script", default=os.environ.get("SHERPA_ONNX_STREAMING_SERVER"),
                        help="sherpa-onnx python-api-examples/streaming_server.py: adds its column")
    parser.add_argument("--second-pass", default=None, metavar="DIR|fixture|real-size",
                        help="adds ours with --second-pass DIR ('fixture': the synthetic SenseVoice;"
                        " 'real-size': the real-size SenseVoice-Small fixture, int8)")
    parser.add_argument("--servers",
                        default="trio-asr,trio-asr --no-exact-batching,trio-asr --second-pass,sherpa-onnx C++,sherpa-onnx py",
                        help="comma-separated subset of the servers to run")
    parser.add_argument("--audio-dir", type=Path)
    parser.add_argument("--cpus", default=None, metavar="LIST",
                        help="run every server under `taskset -c LIST` (e.g. 0, or 0,1): pins the servers, "
                        "not the load generator (their own CPU readings cover the main process only)")
    args = parser.parse_args(argv)
    args.cpp_arg = CPP_FLAGS if args.cpp_arg is None else args.cpp_arg
    args.servers = [s.strip() for s in args.servers.split(",")]
    args.arrival_modes = [a.strip() for a in args.arrivals.split(",")]
    for mode in args.arrival_modes:
        if mode not in ("burst", "spread"):
            parser.error(f"--arrivals: burst or spread, not {mode!r}")
    args.arrivals = args.arrival_modes[0]
    args.servers += [f"trio-asr @{tree.name}" for tree in args.ours_tree]
    return args


def second_pass_dir(args, workdir: Path) -> str:
    """The offline model of ``--second-pass`` ('fixture': the synthetic SenseVoice, written once;
    'real-size': the real-size synthetic SenseVoice-Small, int8, common.sense_voice_fixture)."""
    if args.second_pass == "real-size":
        from common import sense_voice_fixture

        return str(sense_voice_fixture("int8"))
    if args.second_pass != "fixture":
        return args.second_pass
    directory = workdir / "sense-voice"
    if not directory.is_dir():
        from trio_asr.testing.sense_voice import write_sense_voice_model

        write_sense_voice_model(directory)
    return str(directory)


def plan(model_dir: Path, args) -> list[tuple[str, object]]:
    """(server name, starter) for one model."""
    int8 = find_model_file(model_dir).name.endswith(".int8.onnx")
    servers = [
        ("trio-asr", lambda d, a, w: start_ours("trio-asr", d, a, w, [])),
        ("trio-asr --no-exact-batching",
         lambda d, a, w: start_ours("trio-asr --no-exact-batching", d, a, w, ["--no-exact-batching"]) if int8 else None),
        ("trio-asr --second-pass",
         lambda d, a, w: start_ours("trio-asr --second-pass", d, a, w, ["--second-pass", second_pass_dir(a, w)])
         if a.second_pass else None),
        ("sherpa-onnx C++", lambda d, a, w: start_sherpa_cpp("sherpa-onnx C++", d, a, w)),
        ("sherpa-onnx py", lambda d, a, w: start_sherpa_py("sherpa-onnx py", d, a, w)),
    ]  # fmt: skip
    for tree in args.ours_tree:
        servers.insert(1, (f"trio-asr @{tree.name}",
                           lambda d, a, w, t=tree: start_ours(f"trio-asr @{t.name}", d, a, w, [], tree=t)))
    return [(name, starter) for name, starter in servers if name in args.servers]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if notice := plotting_unavailable():
        print(notice, file=sys.stderr)  # now, not only after the sweep
    models = {"model": Path(args.model)} if args.model else {k: fixture_model(k) for k in args.fixture.split(",")}
    clips = speech(args.audio_dir)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict = {}
    # an estimate: a ladder of about ten levels to the first failure, then the bisection
    steps = sum(len(plan(d, args)) for d in models.values()) * (10 + args.refine) * len(args.arrival_modes)
    print(f"CPU: {cpu_description()}; load average before: {load}", flush=True)
    with tempfile.TemporaryDirectory(prefix="trio-asr-bench-") as tmp, Progress(steps, "server sweep") as bar:
        for (kind, model_dir), mode in itertools.product(models.items(), args.arrival_modes):
            label = f"{kind} ({mode})"
            args.arrivals = mode
            model = load_model(model_dir)
            adapters = {
                "trio-asr": OursAdapter(),
                "sherpa-onnx C++": SherpaAdapter(model.chunk_frames, model.chunk_shift, closes_after_final=False),
                "sherpa-onnx py": SherpaAdapter(model.chunk_frames, model.chunk_shift, closes_after_final=True),
            }
            del model
            print_header(f"{label}: {find_model_file(model_dir)}")
            servers = {}
            try:
                for name, starter in plan(model_dir, args):
                    server = starter(model_dir, args, Path(tmp))
                    if server is not None:
                        servers[name] = server
                for server in servers.values():
                    server.wait_ready()
                by_server = {name: adapters[name if name in adapters else "trio-asr"] for name in servers}
                results[label] = asyncio.run(sweep(servers, by_server, clips, args, bar))
            except Exception:
                for name, server in servers.items():
                    print(f"{name}'s log ends with:\n{server.log_tail()}", file=sys.stderr)
                raise
            finally:
                for server in servers.values():
                    server.stop()
    print_summary(results, f"{load}; CPU: {cpu_description()}")
    written = write_results_and_plot("server", {
        "models": {k: str(v) for k, v in models.items()}, "seconds_per_client": args.seconds,
        "arrivals": args.arrival_modes, "spread_s": args.spread, "cpu": cpu_description(),
        "chunk_ms": 1000 * CHUNK_S, "threads": args.threads, "server_args": args.server_arg,
        "cpp_args": args.cpp_arg, "server_cpus": args.cpus, "cpu_count": os.cpu_count(), "load_before": load,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()), "p95_goal_ms": P95_GOAL_MS,
        "final_slack_s": args.final_slack, "max_wall_per_audio": MAX_STRETCH, "results": results,
    }, lambda png: plot(results, png))  # fmt: skip
    print("wrote " + " and ".join(map(str, written)))

if __name__ == "__main__":
    main()
