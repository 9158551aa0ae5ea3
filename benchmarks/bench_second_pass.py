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

from common import fixture_model, speech, write_results

from trio_asr.recognition.model import find_model_file, load_model
from trio_asr.recognition.offline import OfflineRecognizer, load_offline_model
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline-model", type=Path, help="offline model directory (default: the synthetic SenseVoice)")
    parser.add_argument("--model", type=Path, help="streaming model directory (default: the real-size int8 fixture)")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--audio-dir", type=Path)
    args = parser.parse_args()
    clips = speech(args.audio_dir)
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
