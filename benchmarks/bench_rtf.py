"""Single-stream real-time factor: our recognizer vs sherpa-onnx vs the bare model.

    python benchmarks/bench_rtf.py [--model DIR] [--threads 1] [--chunk-ms 85] [--repeats 3]

For each model (the real-size synthetic Zipformer2-CTC fixture in float32 and
int8, plus ``--model`` or ``$TRIO_ASR_TEST_MODEL_DIR`` when given), every speech
clip (tests/data/audio) is streamed in ``--chunk-ms`` pieces through

- ours: :func:`trio_asr.cli.transcribe.transcribe_samples` (the server's decoding
  path: resampler, fbank, model chunker, CTC search, text), beam 10 and greedy;
- sherpa-onnx: ``OnlineRecognizer.from_zipformer2_ctc`` (greedy_search),
  ``accept_waveform`` / ``decode_stream`` while ready, 0.3 s tail padding as
  its streaming server adds;
- floor: onnxruntime alone (``session.run``) over as many chunks as ours ran,
  on the same features, carrying the real states.

All use the same ONNX file and ``--threads`` intra-op threads.  RTF is CPU
seconds of this process / audio seconds (best of ``--repeats``); "overhead"
is ours / floor - 1, the cost of everything around the model.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from common import Progress, fixture_model, speech, write_results

from trio_asr.recognition.features import StreamingFbank
from trio_asr.recognition.model import find_model_file, load_model, make_session_options
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.cli.transcribe import transcribe_samples

SHERPA_TAIL_SECONDS = 0.3
GOAL_VS_SHERPA = 1.2
GOAL_OVERHEAD = 0.10


def cpu_seconds(fn) -> tuple[float, float, object]:
    """(CPU seconds, wall seconds, result) of ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def run_ours(recognizer: Recognizer, clips, chunk_s: float) -> list[str]:
    return [transcribe_samples(recognizer, x, 16000, chunk_seconds=chunk_s).text for _, x in clips]


def make_sherpa(model_dir: Path, threads: int):
    import sherpa_onnx

    return sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
        tokens=str(model_dir / "tokens.txt"),
        model=str(find_model_file(model_dir)),
        num_threads=threads,
        sample_rate=16000,
        feature_dim=80,
        decoding_method="greedy_search",
    )


def run_sherpa(recognizer, clips, chunk: int) -> tuple[list[str], int]:
    texts, runs = [], 0
    for _, x in clips:
        stream = recognizer.create_stream()
        x = np.concatenate([x, np.zeros(int(SHERPA_TAIL_SECONDS * 16000), np.float32)])
        for start in range(0, len(x), chunk):
            stream.accept_waveform(16000, x[start : start + chunk])
            while recognizer.is_ready(stream):
                recognizer.decode_stream(stream)
                runs += 1
        stream.input_finished()
        while recognizer.is_ready(stream):
            recognizer.decode_stream(stream)
            runs += 1
        texts.append(recognizer.get_result(stream))
    return texts, runs


def model_chunks(model, clips) -> list[np.ndarray]:
    """Every chunk ours runs for ``clips``: (chunk_frames, F) features, tail padded
    as :class:`trio_asr.recognition.model.ModelStream` pads it."""
    scale = np.float32(model.sample_scale / 32768.0)
    chunks = []
    for _, x in clips:
        fbank = StreamingFbank(model.feature_options)
        frames = np.concatenate([fbank.accept_waveform(x * scale), fbank.flush()])
        n = math.ceil(len(frames) / model.chunk_shift)
        padded = np.full(
            ((n - 1) * model.chunk_shift + model.chunk_frames, model.feature_dim),
            model.feature_pad_value,
            np.float32,
        )
        padded[: len(frames)] = frames
        chunks += [padded[i * model.chunk_shift :][: model.chunk_frames] for i in range(n)]
    return chunks


def make_floor(model_dir: Path, model, threads: int):
    """A bare onnxruntime session and a function running it over chunks with
    carried states (states start from the model's initial ones)."""
    session = ort.InferenceSession(
        str(find_model_file(model_dir)),
        sess_options=make_session_options(threads=threads),
        providers=["CPUExecutionProvider"],
    )
    state_names = [i.name for i in session.get_inputs()[1:]]
    outputs = [session.get_outputs()[0].name] + [f"new_{n}" for n in state_names]
    initial = dict(zip(state_names, model.initial_state().tensors))

    def run(chunks: list[np.ndarray]) -> int:
        states = dict(initial)
        for chunk in chunks:
            _, *new = session.run(outputs, {"x": chunk[None], **states})
            states = dict(zip(state_names, new))
        return len(chunks)

    return run


def bench_model(label: str, model_dir: Path, clips, args, bar) -> dict:
    chunk_s = args.chunk_ms / 1000
    audio_s = sum(len(x) for _, x in clips) / 16000
    model = load_model(model_dir, threads=args.threads)
    recognizers = {
        "ours_beam": Recognizer(model, beam=10, decoding="beam"),
        "ours_greedy": Recognizer(model, decoding="greedy"),
    }
    chunks = model_chunks(model, clips)
    floor = make_floor(model_dir, model, args.threads)
    try:
        sherpa = make_sherpa(model_dir, args.threads) if type(model).__name__ == "Zipformer2CtcModel" else None
    except Exception as exc:  # sherpa-onnx missing or refusing the model
        print(f"sherpa-onnx skipped for {label}: {exc}", file=sys.stderr)
        sherpa = None

    jobs = {name: (lambda r=r: run_ours(r, clips, chunk_s)) for name, r in recognizers.items()}
    jobs["floor"] = lambda: floor(chunks)
    if sherpa is not None:
        jobs["sherpa"] = lambda: run_sherpa(sherpa, clips, round(chunk_s * 16000))
    for job in jobs.values():  # warm-up: first-run allocations, page faults of the weights
        job()
    best: dict[str, tuple[float, float]] = {}
    outputs: dict[str, object] = {}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            cpu, wall, outputs[name] = cpu_seconds(job)
            old = best.get(name, (math.inf, math.inf))
            best[name] = (min(old[0], cpu), min(old[1], wall))
            bar.advance()

    record: dict = {
        "model": label,
        "model_dir": str(model_dir),
        "model_file": find_model_file(model_dir).name,
        "audio_seconds": round(audio_s, 3),
        "files": [name for name, _ in clips],
        "chunks_ours": len(chunks),
        "rtf": {name: round(cpu / audio_s, 5) for name, (cpu, _) in best.items()},
        "rtf_wall": {name: round(wall / audio_s, 5) for name, (_, wall) in best.items()},
    }
    rtf = record["rtf"]
    for name in recognizers:
        record[f"{name}_overhead"] = round(rtf[name] / rtf["floor"] - 1, 4)
    if sherpa is not None:
        _, runs = outputs["sherpa"]
        record["chunks_sherpa"] = runs
        for name in recognizers:
            record[f"{name}_vs_sherpa"] = round(rtf[name] / rtf["sherpa"], 4)
    return record


def print_table(records: list[dict], args) -> None:
    print(
        f"single stream, {args.threads} thread(s), {args.chunk_ms:g} ms chunks, "
        f"best of {args.repeats}; RTF = CPU s / audio s"
    )
    head = ("model", "audio s", "beam", "greedy", "sherpa", "floor",
            "beam/sh", "greedy/sh", "beam ovh", "greedy ovh", "chunks")  # fmt: skip
    widths = (26, 8, 8, 8, 8, 8, 8, 10, 9, 11, 9)
    print("".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(head, widths))))
    for r in records:
        rtf = r["rtf"]
        cells = [
            r["model"], f"{r['audio_seconds']:.1f}", f"{rtf['ours_beam']:.4f}", f"{rtf['ours_greedy']:.4f}",
            f"{rtf['sherpa']:.4f}" if "sherpa" in rtf else "-", f"{rtf['floor']:.4f}",
            f"{r['ours_beam_vs_sherpa']:.2f}x" if "sherpa" in rtf else "-",
            f"{r['ours_greedy_vs_sherpa']:.2f}x" if "sherpa" in rtf else "-",
            f"{100 * r['ours_beam_overhead']:+.0f}%", f"{100 * r['ours_greedy_overhead']:+.0f}%",
            f"{r['chunks_ours']}/{r.get('chunks_sherpa', '-')}",
        ]  # fmt: skip
        print("".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cells, widths))))
    print(
        f"goals: ours <= {GOAL_VS_SHERPA}x sherpa-onnx single-stream; "
        f"pipeline overhead (ours / floor - 1) <= {100 * GOAL_OVERHEAD:.0f}%\n"
        "chunks: model runs, ours/sherpa (sherpa pads 0.3 s, ours pads the last chunk)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=os.environ.get("TRIO_ASR_TEST_MODEL_DIR") or None,
                        help="also a real model directory (default $TRIO_ASR_TEST_MODEL_DIR)")
    parser.add_argument("--no-fixture", action="store_true", help="skip the synthetic fixture models")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8-quantized fixture")
    parser.add_argument("--audio-dir", type=Path, help="WAV files to decode (default tests/data/audio)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-ms", type=float, default=85.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    models: list[tuple[str, Path]] = []
    if not args.no_fixture:
        models.append(("fixture real-size float32", fixture_model("float32")))
        if not args.no_int8:
            models.append(("fixture real-size int8", fixture_model("int8")))
    if args.model:
        models.append((f"model {Path(args.model).name}", Path(args.model)))
    if not models:
        raise SystemExit("nothing to measure: give --model or drop --no-fixture")
    clips = speech(args.audio_dir)
    records = []
    with Progress(len(models) * 4 * args.repeats, "rtf") as bar:
        for label, model_dir in models:
            records.append(bench_model(label, model_dir, clips, args, bar))
    print_table(records, args)
    path = write_results("rtf", {
        "threads": args.threads, "chunk_ms": args.chunk_ms, "repeats": args.repeats,
        "onnxruntime": ort.__version__, "cpu_count": os.cpu_count(),
        "goals": {"ours_vs_sherpa_max": GOAL_VS_SHERPA, "overhead_max": GOAL_OVERHEAD},
        "models": records,
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
