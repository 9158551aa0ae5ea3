"""An hour-long stream: is the cost of a partial result flat over time?

The speech clips are tiled with pauses (1.5 s of quiet noise after
each clip) to ``--minutes`` of audio and fed in 85 ms frames (PaddleSpeech's
client) at full speed through:

* the recognizer path as the batched server drives it (features, the
  model's chunks, the search, the result, the compact reply encoded; the
  default one, the whole transcript, for every 50th partial), with
  endpointing (segments) on;
* the same with endpointing off (one segment for the whole stream, as before
  segments existed) for ``--baseline-minutes``: the reference whose cost grows;
* with ``--server``, the whole server: one lock-step WebSocket client
  against an in-process server, default and compact replies.

Reported, side by side: the recognizer's CPU time per partial (features,
model, search, result) in the first and the last 5 minutes and their ratio
(goal <= 1.1), the part of it after the model (search, texts, n-best), the
CPU of encoding each reply form (default: the whole transcript, growing by
design; compact: the open segment), reply sizes, segment count, resident
memory over time.  ``--vad`` takes the endpoints from Silero VAD.

Run from the repository root: ``python benchmarks/bench_long_stream.py``.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import REPO_ROOT, SAMPLE_RATE, Progress, fixture_model, speech, write_results

from trio_asr.recognition.endpoint import EndpointRules
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.protocol.messages import StartStream, encode_reply
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.protocol.replies import ReplyBuilder

FRAME = 1360  # 85 ms at 16 kHz
# The default reply (the whole transcript, ~1 MB late in an hour with n-best)
# is encoded for every 50th partial only: encoding it for every one would
# flush the CPU caches and slow the recognizer's next step, blurring its cost.
DEFAULT_REPLY_EVERY = 50
WINDOW_S = 300.0  # first and last 5 minutes
PAUSE_S = 1.5


def tiled_audio(minutes: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    tile = []
    for _, clip in speech():
        tile += [clip, (rng.standard_normal(int(PAUSE_S * SAMPLE_RATE)) * 0.003).astype(np.float32)]
    one = np.concatenate(tile)
    need = int(minutes * 60 * SAMPLE_RATE)
    return np.tile(one, -(-need // one.size))[:need]


def half_silent_audio(minutes: float) -> np.ndarray:
    """The clips, each followed by as long a stretch of quiet noise: 50 % non-speech."""
    rng = np.random.default_rng(1)
    tile = []
    for _, clip in speech():
        tile += [clip, (rng.standard_normal(clip.size) * 0.003).astype(np.float32)]
    one = np.concatenate(tile)
    need = int(minutes * 60 * SAMPLE_RATE)
    return np.tile(one, -(-need // one.size))[:need]


def run_skipping(model, minutes: float, skip_after: float) -> dict:
    """CPU per audio second of a 50 %-silence stream: CTC endpoints, VAD
    endpoints, VAD endpoints with the model skipped on long non-speech."""
    from trio_asr.recognition.vad import SileroVad

    vad = SileroVad()
    audio = half_silent_audio(minutes)
    out = {}
    for name, recognizer in (
        ("ctc_endpoints", Recognizer(model)),
        ("vad_endpoints", Recognizer(model, vad=vad)),
        ("vad_skipping", Recognizer(model, vad=vad, skip_non_speech=skip_after)),
    ):
        stream = recognizer.create_stream()
        frames = range(0, len(audio), FRAME)
        with Progress(len(frames), name, stream=sys.stderr) as bar:
            t0 = time.process_time()
            for i in frames:
                stream.accept_waveform(audio[i : i + FRAME])
                stream.decode()
                stream.result()
                bar.advance()
            stream.input_finished()
            cpu = time.process_time() - t0
        result = stream.result()
        out[name] = {
            "cpu_s_per_audio_s": cpu / (len(audio) / SAMPLE_RATE),
            "chunks_skipped": stream.chunks_skipped,
            "chunks_run": stream.model_stream.chunks_run - stream.chunks_skipped,
            "segments": len(result.segments),
            "text_chars": len(result.text),
        }
    out["saved_vs_vad_endpoints"] = 1 - out["vad_skipping"]["cpu_s_per_audio_s"] / out["vad_endpoints"]["cpu_s_per_audio_s"]
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def model_dir(kind: str) -> Path:
    if kind == "real-size":
        return fixture_model("int8")
    from trio_asr.testing.zipformer2_ctc import write_model

    return write_model(REPO_ROOT / "benchmarks" / ".cache" / "zipformer2-ctc-tiny")


def summarise(times: list[float], cpu: list[float], after_model: list[float], duration: float) -> dict:
    first = [i for i, t in enumerate(times) if t <= WINDOW_S]
    last = [i for i, t in enumerate(times) if t > duration - WINDOW_S]

    def ms(values: list[float], idx: list[int]) -> dict:
        picked = [values[i] * 1e3 for i in idx if not math.isnan(values[i])]
        return {"mean_ms": statistics.fmean(picked), "p95_ms": float(np.percentile(picked, 95))}

    out = {
        "first": ms(cpu, first),
        "last": ms(cpu, last),
        "after_model_first": ms(after_model, first),
        "after_model_last": ms(after_model, last),
    }
    out["ratio"] = out["last"]["mean_ms"] / out["first"]["mean_ms"]
    out["after_model_ratio"] = out["after_model_last"]["mean_ms"] / out["after_model_first"]["mean_ms"]
    return out


def run_recognizer(recognizer: Recognizer, audio: np.ndarray, nbest: int, label: str) -> dict:
    """Stepped, as the batched server does; CPU of this thread per partial."""
    stream = recognizer.create_stream(StreamOptions(nbest=nbest))
    start = StartStream("long.wav", 1, 16, StreamOptions(nbest=nbest, sample_rate=SAMPLE_RATE))
    default = ReplyBuilder(start)
    compact = ReplyBuilder(StartStream("long.wav", 1, 16, StreamOptions(nbest=nbest, sample_rate=SAMPLE_RATE), compact=True))
    times, cpu, after_model, sizes, compact_sizes, rss = [], [], [], [], [], []
    encode_default, encode_compact = [], []
    duration = len(audio) / SAMPLE_RATE
    frames = range(0, len(audio), FRAME)
    with Progress(len(frames), label, stream=sys.stderr) as bar:
        for k, i in enumerate(frames):
            t0 = time.thread_time()
            stream.accept_waveform(audio[i : i + FRAME])
            log_probs = stream.model_stream.decode_ready_chunks()
            t1 = time.thread_time()
            stream.accept_log_probs(log_probs)
            result = stream.result()
            t2 = time.thread_time()
            reply = default.partial(result)  # announces segments: every time
            if k % DEFAULT_REPLY_EVERY == 0:
                size = len(encode_reply(reply).encode())
            t3 = time.thread_time()
            compact_size = len(encode_reply(compact.partial(result)).encode())
            t4 = time.thread_time()
            times.append((i + FRAME) / SAMPLE_RATE)
            cpu.append(t2 - t0)
            after_model.append(t2 - t1)
            encode_default.append(t3 - t2 if k % DEFAULT_REPLY_EVERY == 0 else math.nan)
            encode_compact.append(t4 - t3)
            sizes.append(size)
            compact_sizes.append(compact_size)
            if k % round(60 * SAMPLE_RATE / FRAME) == 0:
                rss.append(round(rss_mb(), 1))
            bar.advance()
    stream.flush_input()
    stream.accept_log_probs(stream.model_stream.decode_ready_chunks())
    final = stream.result()
    record = summarise(times, cpu, after_model, duration)
    for name, values in (("encode_default", encode_default), ("encode_compact", encode_compact)):
        part = summarise(times, values, values, duration)
        record[name] = {"first": part["first"], "last": part["last"], "ratio": part["ratio"]}
    last = [s for t, s in zip(times, sizes) if t > duration - WINDOW_S]
    compact_last = [s for t, s in zip(times, compact_sizes) if t > duration - WINDOW_S]
    record.update(
        audio_minutes=duration / 60,
        partials=len(times),
        segments=len(final.segments),
        reply_bytes_last_5min={"default_max": max(last), "compact_max": max(compact_last)},
        reply_bytes_max={"default": max(sizes), "compact": max(compact_sizes)},
        rss_mb_per_minute=rss,
    )
    return record


async def _server_session(port: int, audio: np.ndarray, compact: bool) -> dict:
    import json

    import trio_websocket

    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()
    times, latency, cpu, sizes = [], [], [], []
    n = len(pcm) // (2 * FRAME) + 1
    url = f"ws://127.0.0.1:{port}/paddlespeech/asr/streaming"
    async with trio_websocket.open_websocket_url(url, max_message_size=1 << 26) as ws:
        await ws.send_message(json.dumps({"name": "long.wav", "signal": "start", "nbest": 1, "compact": compact}))
        await ws.get_message()
        with Progress(n, f"server ({'compact' if compact else 'default'})", stream=sys.stderr) as bar:
            for i in range(0, len(pcm), 2 * FRAME):
                t0, c0 = time.perf_counter(), time.process_time()
                await ws.send_message(pcm[i : i + 2 * FRAME])
                reply = await ws.get_message()
                latency.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                sizes.append(len(reply.encode()))
                times.append((i // 2 + FRAME) / SAMPLE_RATE)
                bar.advance()
        await ws.send_message(json.dumps({"name": "long.wav", "signal": "end"}))
        final = json.loads(await ws.get_message())
    duration = len(audio) / SAMPLE_RATE
    record = summarise(times, cpu, latency, duration)
    # here "after_model" is the client-side latency of each reply
    record["latency_first"] = record.pop("after_model_first")
    record["latency_last"] = record.pop("after_model_last")
    record["latency_ratio"] = record.pop("after_model_ratio")
    last = [s for t, s in zip(times, sizes) if t > duration - WINDOW_S]
    record.update(reply_bytes_max=max(sizes), reply_bytes_last_5min_max=max(last),
                  final_reply_bytes=len(json.dumps(final, ensure_ascii=False).encode()))  # fmt: skip
    return record


def run_server(recognizer: Recognizer, audio: np.ndarray, audio_dir: Path) -> dict:
    import trio

    from trio_asr.serving.config import ServerConfig
    from trio_asr.serving.server import serve

    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=audio_dir, save_audio=False, workers=2)
    out = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve, config, recognizer)
            for compact in (False, True):
                out["compact" if compact else "default"] = await _server_session(server.port, audio, compact)
                out["rss_mb_after"] = round(rss_mb(), 1)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the stream (default 60)")
    parser.add_argument("--baseline-minutes", type=float, default=10.0,
                        help="length of the unsegmented reference stream (default 10; 0: skip)")  # fmt: skip
    parser.add_argument("--model", choices=("tiny", "real-size"), default="tiny",
                        help="synthetic model: the test fixture or the default model's geometry (int8)")  # fmt: skip
    parser.add_argument("--nbest", type=int, default=5, help="hypotheses per partial (default 5)")
    parser.add_argument("--vad", action="store_true", help="endpoints from Silero VAD")
    parser.add_argument("--server", action="store_true", help="also run the whole server path")
    parser.add_argument("--skip-non-speech", type=float, metavar="S",
                        help="also measure the CPU saved on a 50 %%-silence stream by skipping the model "
                        "after S seconds of non-speech (VAD)")  # fmt: skip
    parser.add_argument("--skip-minutes", type=float, default=10.0, help="length of that stream (default 10)")
    args = parser.parse_args()
    if args.minutes * 60 < 2 * WINDOW_S:
        raise SystemExit("--minutes must be at least 10 (two 5-minute windows)")

    model = load_model(model_dir(args.model))
    vad = None
    if args.vad:
        from trio_asr.recognition.vad import SileroVad

        vad = SileroVad()
    audio = tiled_audio(args.minutes)
    record: dict = {"model": args.model, "nbest": args.nbest, "vad": args.vad, "rules": str(EndpointRules())}
    record["segmented"] = run_recognizer(Recognizer(model, vad=vad), audio, args.nbest, "segmented")
    if args.baseline_minutes:
        reference = tiled_audio(args.baseline_minutes)
        base = Recognizer(model, endpoint=None)
        record["one_segment"] = run_recognizer(base, reference, args.nbest, "one segment (reference)")
    if args.server:
        record["server"] = run_server(Recognizer(model, vad=vad), audio, REPO_ROOT / "benchmarks" / ".cache" / "audio")
    if args.skip_non_speech:
        record["skipping"] = run_skipping(model, args.skip_minutes, args.skip_non_speech)
    record["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = write_results("long_stream", record)

    def line(name: str, r: dict) -> str:
        return (f"{name:24s} {r['audio_minutes']:5.0f} min  per partial {r['first']['mean_ms']:6.3f} -> "
                f"{r['last']['mean_ms']:6.3f} ms (x{r['ratio']:.2f}); after the model "
                f"{r['after_model_first']['mean_ms']:6.3f} -> {r['after_model_last']['mean_ms']:6.3f} ms "
                f"(x{r['after_model_ratio']:.2f}); JSON default {r['encode_default']['first']['mean_ms']:.3f} -> "
                f"{r['encode_default']['last']['mean_ms']:.3f} ms, compact {r['encode_compact']['first']['mean_ms']:.3f}"
                f" -> {r['encode_compact']['last']['mean_ms']:.3f} ms; segments {r['segments']}; reply max "
                f"{r['reply_bytes_max']['default']} B default / {r['reply_bytes_max']['compact']} B compact")  # fmt: skip

    print(line("segmented", record["segmented"]))
    if "one_segment" in record:
        print(line("one segment (reference)", record["one_segment"]))
    rss = record["segmented"]["rss_mb_per_minute"]
    print(f"RSS per minute (MB): first {rss[:3]} ... last {rss[-3:]}")
    for mode, r in record.get("server", {}).items():
        if isinstance(r, dict):
            print(f"server {mode:8s} CPU per reply {r['first']['mean_ms']:.3f} -> {r['last']['mean_ms']:.3f} ms "
                  f"(x{r['ratio']:.2f}); latency {r['latency_first']['mean_ms']:.3f} -> "
                  f"{r['latency_last']['mean_ms']:.3f} ms (x{r['latency_ratio']:.2f}); reply max "
                  f"{r['reply_bytes_max']} B, last 5 min {r['reply_bytes_last_5min_max']} B")  # fmt: skip
    skipping = record.get("skipping")
    if skipping:
        for name in ("ctc_endpoints", "vad_endpoints", "vad_skipping"):
            r = skipping[name]
            print(f"50 % silence, {name:14s} CPU {r['cpu_s_per_audio_s']:.4f} s per audio s; model chunks run "
                  f"{r['chunks_run']}, skipped {r['chunks_skipped']}; segments {r['segments']}")  # fmt: skip
        print(f"skipping saves {skipping['saved_vs_vad_endpoints']:.0%} of the CPU of VAD endpoints")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
