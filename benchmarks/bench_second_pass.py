"""Second pass: offline real-time factor against sherpa-onnx, and what the second pass costs a server.

    python benchmarks/bench_second_pass.py [--offline-model DIR] [--model DIR] [--streams 8] [--repeats 3]

1. Offline RTF: every speech clip (tests/data/audio) decoded whole by

   - ours: :class:`~trio_asr.recognition.offline.OfflineRecognizer`
     (features, model, CTC search; greedy as sherpa-onnx, and beam 10 as the
     server's second pass), one clip per call and all clips in one padded
     call (``recognize_batch``, as the second-pass service batches);
   - sherpa-onnx: ``OfflineRecognizer.from_sense_voice`` (or ``from_nemo_ctc``),
     ``decode_stream`` per clip and ``decode_streams`` for all.

   Same ONNX file, one intra-op thread.  RTF is CPU seconds of this process /
   audio seconds, best of ``--repeats``.

2. Server cost: ``--streams`` streams at once, each sending the clips (with
   short endpoint rules, so that segments close) as fast as replies come, to
   an in-process server with and without ``--second-pass``.  Reported: CPU
   seconds of the process per audio second (the inverse of the real-time
   streams a core holds: max streams scale with 1 / this), the final reply's
   latency after ``end``, and the second pass's batch sizes.

3. ``--real-size int8,float32``: single-stream RTF on the real-size
   synthetic SenseVoice-Small (``common.sense_voice_fixture``: SenseVoice-
   Small's geometry, 70 SAN-M layers, ~234 M parameters, random weights;
   int8 made as sherpa-onnx's export makes it), the speech clips tiled to
   ``--seconds`` (20) and decoded whole, one intra-op thread: sherpa-onnx's
   ``from_sense_voice`` (greedy), ours greedy and ours beam 10, their order
   rotated in each of ``--repeats`` rounds; ours / sherpa-onnx is the median
   of the rounds' ratios.  Ours is also split into features (fbank, LFR,
   CMVN), the ONNX call, log-softmax and the search.  Parts 1 and 2 are
   skipped.

4. ``--latency-streams N``: ``trio-asr serve --second-pass`` (the
   ``--offline-model``, or the real-size int8 fixture) as a process, N
   real-time streams as ``bench_server.py`` runs a level (10 s each), and
   the second pass's latency (segment close -> announced) from the server's
   ``trio_asr_second_pass_latency_seconds`` histogram over that level:
   p50 / p95 interpolated within its buckets, as Prometheus'
   ``histogram_quantile`` does, and the buckets themselves.

Without ``--offline-model`` the offline model is the synthetic SenseVoice
fixture (``trio_asr.testing.sense_voice``, a few thousand parameters): its
RTF measures our features and search against sherpa-onnx's, not a real
model's cost.  Without ``--model`` the streaming model is the real-size
synthetic Zipformer2-CTC (int8) of ``benchmarks/common.py``.  With a real
SenseVoice-small (``--offline-model``) both parts measure what users get.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio
import trio_websocket

from common import fixture_model, sense_voice_fixture, speech, tile_to, write_results

from trio_asr.recognition.model import find_model_file, load_model
from trio_asr.recognition.offline import OfflineRecognizer, load_offline_model
from trio_asr.recognition.offline.base import log_softmax
from trio_asr.recognition.offline.sense_voice import SenseVoiceModel
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.serving.config import ServerConfig
from trio_asr.serving.server import WS_PATH, serve
from trio_asr.testing.sense_voice import write_sense_voice_model

RULES = {"silenceWithoutText": 0.5, "silenceAfterText": 0.3, "maxSegment": 8.0}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def best_cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def make_sherpa(model_dir: Path, sense_voice: bool):
    import sherpa_onnx

    model, tokens = str(find_model_file(model_dir)), str(model_dir / "tokens.txt")
    if sense_voice:
        return sherpa_onnx.OfflineRecognizer.from_sense_voice(
            model=model, tokens=tokens, use_itn=True, num_threads=1
        )
    return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(model=model, tokens=tokens, num_threads=1)


def offline_rtf(model_dir: Path, clips, repeats: int) -> dict:
    model = load_offline_model(model_dir, threads=1)
    sense_voice = isinstance(model, SenseVoiceModel)
    greedy = OfflineRecognizer(model, decoding="greedy", use_itn=True)
    beam = OfflineRecognizer(model, beam=10, use_itn=True)
    sherpa = make_sherpa(model_dir, sense_voice)
    audio = sum(len(x) for _, x in clips) / 16000

    def sherpa_one() -> None:
        for _, x in clips:
            s = sherpa.create_stream()
            s.accept_waveform(16000, x)
            sherpa.decode_stream(s)

    def sherpa_all() -> None:
        streams = []
        for _, x in clips:
            s = sherpa.create_stream()
            s.accept_waveform(16000, x)
            streams.append(s)
        sherpa.decode_streams(streams)

    samples = [x for _, x in clips]
    rows = {
        "sherpa-onnx, one by one": best_cpu(sherpa_one, repeats),
        "ours greedy, one by one": best_cpu(lambda: [greedy.recognize(x) for x in samples], repeats),
        "ours beam 10, one by one": best_cpu(lambda: [beam.recognize(x) for x in samples], repeats),
        "sherpa-onnx, one batch": best_cpu(sherpa_all, repeats),
        "ours greedy, one batch": best_cpu(lambda: greedy.recognize_batch(samples), repeats),
        "ours beam 10, one batch": best_cpu(lambda: beam.recognize_batch(samples), repeats),
    }
    return {"audio_seconds": audio, "rtf": {k: v / audio for k, v in rows.items()}}


async def _stream(port: int, pcm: bytes, second_pass: bool) -> float:
    """One stream, lock-step; the final reply's latency after ``end``."""
    url = f"ws://127.0.0.1:{port}{WS_PATH}"
    async with trio_websocket.open_websocket_url(url, max_message_size=1 << 26) as ws:
        start = {"name": "b.wav", "signal": "start", "nbest": 1, "endpoint": RULES, "secondPass": second_pass}
        await ws.send_message(json.dumps(start))
        await ws.get_message()
        for i in range(0, len(pcm), 3200):  # 0.1 s frames
            await ws.send_message(pcm[i : i + 3200])
            await ws.get_message()
        sent = time.perf_counter()
        await ws.send_message(json.dumps({"name": "b.wav", "signal": "end", "nbest": 1}))
        final = json.loads(await ws.get_message())
        assert final["signal"] == "end"
        return time.perf_counter() - sent


async def _server_run(config: ServerConfig, model_dir: Path, pcm: bytes, streams: int) -> dict:
    results: dict = {}
    for second_pass in (False, True):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config, Recognizer(load_model(model_dir), beam=10))
            latencies: list[float] = []

            async def one() -> None:
                latencies.append(await _stream(server.port, pcm, second_pass))

            cpu, wall = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as clients:
                for _ in range(streams):
                    clients.start_soon(one)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            service = server.recognizer.second_pass
            audio = streams * len(pcm) / 2 / 16000
            results["with second pass" if second_pass else "first pass only"] = {
                "cpu_per_audio_second": cpu / audio,
                "wall_seconds": wall,
                "final_latency_median_s": float(np.median(latencies)),
                "second_pass_batches": service.batches if second_pass else 0,
                "second_pass_mean_batch": service.utterances / service.batches if second_pass and service.batches else 0,
            }
            server.shutdown(immediately=True)
    return results


def single_stream_rtf(model_dir: Path, audio: np.ndarray, repeats: int) -> dict:
    """Ours (greedy, beam 10) against sherpa-onnx on one long utterance,
    interleaved: CPU seconds per audio second of each round, and ours /
    sherpa-onnx per round."""
    model = load_offline_model(model_dir, threads=1)
    greedy = OfflineRecognizer(model, decoding="greedy", use_itn=True)
    beam = OfflineRecognizer(model, beam=10, use_itn=True)
    sherpa = make_sherpa(model_dir, True)
    seconds = len(audio) / 16000
    parts: dict[str, list[float]] = {"features": [], "onnx call": [], "log-softmax": [], "search (greedy)": []}
    texts = {}

    def sherpa_one() -> None:
        s = sherpa.create_stream()
        s.accept_waveform(16000, audio)
        sherpa.decode_stream(s)
        texts["sherpa-onnx"] = s.result.text

    def ours(recognizer: OfflineRecognizer, name: str):
        def run() -> None:
            texts[name] = recognizer.recognize(audio).result.text
        return run

    def ours_parts() -> None:
        """Ours greedy, step by step (the ONNX call and the log-softmax apart)."""
        t0 = time.process_time()
        u = greedy.prepare(audio)
        t1 = time.process_time()
        feed = {"x": u.features[None], "x_length": np.array([len(u.features)], np.int32),
                "language": np.array([0], np.int32), "text_norm": np.array([14], np.int32)}  # fmt: skip
        (logits,) = model._session.run(None, feed)
        t2 = time.process_time()
        log_probs = log_softmax(logits[0])
        t3 = time.process_time()
        greedy.decode(u, log_probs)
        t4 = time.process_time()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(value / seconds)

    runs = {"sherpa-onnx (greedy)": sherpa_one, "ours, greedy": ours(greedy, "greedy"),
            "ours, beam 10": ours(beam, "beam 10")}  # fmt: skip
    for fn in runs.values():  # warm-up: first-call allocations
        fn()
    rtf: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.process_time()
            runs[name]()
            rtf[name].append((time.process_time() - start) / seconds)
        ours_parts()
    base = rtf["sherpa-onnx (greedy)"]
    return {
        "audio_seconds": seconds,
        "rtf_median": {k: float(np.median(v)) for k, v in rtf.items()},
        "ratio_median": {k: float(np.median(np.array(v) / np.array(base))) for k, v in rtf.items()},
        "rtf_rounds": rtf,
        "ours_greedy_parts_rtf_median": {k: float(np.median(v)) for k, v in parts.items()},
        # sherpa-onnx puts a space where a piece starts with "▁" after a CJK one; ours does not
        "greedy_text_equal": texts["greedy"].replace(" ", "") == texts["sherpa-onnx"].replace(" ", ""),
    }


def histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {le: count} of a Prometheus histogram in ``text``."""
    buckets = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return dict(sorted(buckets.items()))


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds it."""
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in buckets.items():
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = le, count
    return lower


def latency_at(n: int, offline_dir: Path, model_dir: Path, clips, seconds: float, extra: list[str]) -> dict:
    """N real-time streams (bench_server's level) against ``trio-asr serve
    --second-pass``; the second-pass latency histogram over the level."""
    import asyncio
    import urllib.request

    import bench_server
    from servers import OursAdapter, start_ours

    args = bench_server.parse_args(["--seconds", str(seconds), *extra])
    name = "trio_asr_second_pass_latency_seconds"
    with tempfile.TemporaryDirectory(prefix="trio-asr-bench-") as tmp:
        server = start_ours("trio-asr --second-pass", model_dir, args, Path(tmp), ["--second-pass", str(offline_dir)])
        try:
            server.wait_ready()

            def scrape() -> dict[float, float]:
                url = f"http://127.0.0.1:{server.port}/metrics"
                with urllib.request.urlopen(url, timeout=30) as reply:
                    return histogram(reply.read().decode(), name)

            warm = bench_server.parse_args(["--seconds", "3", *extra])
            asyncio.run(bench_server.run_level(server, OursAdapter(), n, clips, warm))
            time.sleep(2.0)
            before = scrape()
            row = asyncio.run(bench_server.run_level(server, OursAdapter(), n, clips, args))
            after = scrape()
        finally:
            server.stop()
    level = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    return {
        "streams": n, "level": row, "segments": level.get(float("inf"), 0.0),
        "p50_s": histogram_quantile(0.5, level), "p95_s": histogram_quantile(0.95, level),
        "buckets": {("+Inf" if le == float("inf") else str(le)): c for le, c in level.items()},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline-model", type=Path, help="offline model directory (default: the synthetic SenseVoice)")
    parser.add_argument("--model", type=Path, help="streaming model directory (default: the real-size int8 fixture)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--audio-dir", type=Path)
    parser.add_argument("--real-size", metavar="KINDS",
                        help="single-stream RTF on the real-size SenseVoice fixture (int8,float32) instead of parts 1-2")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per utterance with --real-size")
    parser.add_argument("--latency-streams", type=int, metavar="N",
                        help="second-pass latency at N real-time streams (a server process) instead of parts 1-2")
    parser.add_argument("--bench-server-arg", action="append", default=[],
                        help="with --latency-streams: an argument for bench_server.py's level (repeatable),"
                        " e.g. --bench-server-arg=--arrivals=spread")
    args = parser.parse_args()
    clips = speech(args.audio_dir)
    if args.real_size:
        audio = tile_to(clips, args.seconds)
        print(f"CPU: {cpu_name()}; real-size SenseVoice fixture, {args.seconds:.0f} s utterance, 1 thread")
        real = {}
        for kind in args.real_size.split(","):
            real[kind] = r = single_stream_rtf(sense_voice_fixture(kind), audio, args.repeats)
            print(f"\n{kind}: RTF (CPU s / audio s, median of {args.repeats} interleaved rounds); greedy text"
                  f" {'equal to' if r['greedy_text_equal'] else 'DIFFERENT from'} sherpa-onnx's (spaces aside)")
            for name, rtf in r["rtf_median"].items():
                print(f"  {name:22s} {rtf:8.4f}   ours / sherpa-onnx x{r['ratio_median'][name]:5.3f}")
            print("  ours greedy, by part: " + ", ".join(f"{k} {v:.4f}" for k, v in r["ours_greedy_parts_rtf_median"].items()))
        record = {"cpu": cpu_name(), "seconds": args.seconds, "repeats": args.repeats, "real_size": real,
                  "load_before": " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())}  # fmt: skip
        print(f"\nwrote {write_results('second_pass_real_size', record)}")
        return 0
    if args.latency_streams:
        offline_dir = args.offline_model or sense_voice_fixture("int8")
        model_dir = args.model or fixture_model("int8")
        found = latency_at(args.latency_streams, offline_dir, model_dir, clips, 10.0, args.bench_server_arg)
        print(f"CPU: {cpu_name()}; {args.latency_streams} real-time streams, second pass {offline_dir}")
        print(f"  second-pass latency over {found['segments']:.0f} segments: p50 {found['p50_s']} s,"
              f" p95 {found['p95_s']} s; buckets {found['buckets']}")
        print(f"  level: {found['level']}")
        record = {"cpu": cpu_name(), "offline_model": str(offline_dir), "streaming_model": str(model_dir),
                  "bench_server_args": args.bench_server_arg, **found}  # fmt: skip
        print(f"\nwrote {write_results(f'second_pass_latency_{args.latency_streams}', record)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        offline_dir = args.offline_model
        if offline_dir is None:
            offline_dir = Path(tmp) / "sense-voice"
            write_sense_voice_model(offline_dir)
        print(f"CPU: {cpu_name()}; offline model {args.offline_model or 'synthetic SenseVoice fixture'}")
        offline = offline_rtf(offline_dir, clips, args.repeats)
        base = offline["rtf"]
        print(f"\nOffline RTF (CPU s / audio s, {offline['audio_seconds']:.1f} s of audio, 1 thread):")
        for name, rtf in base.items():
            ref = base["sherpa-onnx, one batch" if "batch" in name else "sherpa-onnx, one by one"]
            print(f"  {name:28s} {rtf:8.4f}   x{rtf / ref:5.2f} of sherpa-onnx")
        model_dir = args.model or fixture_model("int8")
        pcm_samples = np.concatenate([x for _, x in clips])
        pcm = np.clip(np.round(pcm_samples * 32768), -32768, 32767).astype("<i2").tobytes()
        config = ServerConfig(host="127.0.0.1", port=0, save_audio=False, second_pass=offline_dir, threads=1)
        server = trio.run(_server_run, config, model_dir, pcm, args.streams)
        print(f"\nServer, {args.streams} streams at full speed (model {model_dir}):")
        first = server["first pass only"]["cpu_per_audio_second"]
        for name, row in server.items():
            print(f"  {name:18s} CPU/audio s {row['cpu_per_audio_second']:.4f} (x{row['cpu_per_audio_second'] / first:.2f}),"
                  f" final reply after end {row['final_latency_median_s'] * 1000:.0f} ms (median),"
                  f" second-pass batches {row['second_pass_batches']} (mean {row['second_pass_mean_batch']:.1f})")
    record = {"cpu": cpu_name(), "offline_model": str(args.offline_model or "synthetic SenseVoice"),
              "streaming_model": str(model_dir), "offline": offline, "server": server, "streams": args.streams}
    print(f"\nwrote {write_results('second_pass', record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
