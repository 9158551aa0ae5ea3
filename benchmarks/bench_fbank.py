"""Frames per second of our streaming fbank vs kaldi-native-fbank, one run.

    python benchmarks/bench_fbank.py [--seconds 60] [--chunk-ms 85] [--repeats 5]

Both compute 80-bin log-mel frames (16 kHz, 25/10 ms, povey, no dither) of the
same audio: every WAV in --audio-dir, repeated to --seconds.  Audio is fed in
--chunk-ms chunks (streaming) and in one piece (whole).  "knf" includes
fetching every frame into Python (what a caller has to do); "knf compute"
only feeds audio, for reference.  Best of --repeats runs each.
"""

from __future__ import annotations

import argparse
import time
import wave
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np

from trio_asr.recognition.features import FbankOptions, StreamingFbank
from trio_asr.cli.progress import Progress

from common import shared_dir

OPTIONS = FbankOptions(num_bins=80)


def load_audio(audio_dir: Path, seconds: float) -> np.ndarray:
    pieces = []
    for path in sorted(audio_dir.glob("*.wav")):
        with wave.open(str(path)) as w:
            if (w.getsampwidth(), w.getnchannels(), w.getframerate()) != (2, 1, 16000):
                continue
            pieces.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))
    if not pieces:
        raise SystemExit(f"no 16 kHz mono 16-bit WAV files in {audio_dir}")
    audio = np.concatenate(pieces)
    need = int(seconds * 16000)
    return np.tile(audio, -(-need // audio.size))[:need]


def chunks(x: np.ndarray, size: int):
    for start in range(0, x.size, size):
        yield x[start : start + size]


def run_ours(audio: np.ndarray, size: int) -> np.ndarray:
    fbank = StreamingFbank(OPTIONS)
    out = [fbank.accept_waveform(c) for c in chunks(audio, size)]
    out.append(fbank.flush())
    return np.concatenate(out)


def knf_options() -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = OPTIONS.snip_edges
    opts.mel_opts.num_bins = OPTIONS.num_bins
    opts.mel_opts.low_freq = OPTIONS.low_freq
    opts.mel_opts.high_freq = OPTIONS.high_freq
    return opts


def run_knf(audio: np.ndarray, size: int) -> np.ndarray:
    fbank = knf.OnlineFbank(knf_options())
    frames = []
    for c in chunks(audio, size):
        fbank.accept_waveform(16000, c)
        frames.extend(fbank.get_frame(i) for i in range(len(frames), fbank.num_frames_ready))
    fbank.input_finished()
    frames.extend(fbank.get_frame(i) for i in range(len(frames), fbank.num_frames_ready))
    return np.array(frames, dtype=np.float32)


def run_knf_compute(audio: np.ndarray, size: int) -> int:
    fbank = knf.OnlineFbank(knf_options())
    for c in chunks(audio, size):
        fbank.accept_waveform(16000, c)
    fbank.input_finished()
    return fbank.num_frames_ready


def best_rate(fn, audio, size, repeats, bar):
    best, result = 0.0, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(audio, size)
        elapsed = time.perf_counter() - start
        frames = result if isinstance(result, int) else len(result)
        best = max(best, frames / elapsed)
        bar.advance()
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-dir", type=Path, default=shared_dir() / "audio")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunk-ms", type=float, default=85.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    audio_i16 = load_audio(args.audio_dir, args.seconds)
    ours_input = audio_i16.astype(np.float32) / 32768  # what the recognizer feeds
    knf_input = audio_i16.astype(np.float32)  # knf wants int16 scale
    modes = {
        f"streaming {args.chunk_ms:g} ms": int(args.chunk_ms * 16),
        "whole": audio_i16.size,
    }
    rows = []
    with Progress(len(modes) * 3 * args.repeats, "fbank") as bar:
        for mode, size in modes.items():
            ours_fps, ours_frames = best_rate(run_ours, ours_input, size, args.repeats, bar)
            knf_fps, knf_frames = best_rate(run_knf, knf_input, size, args.repeats, bar)
            compute_fps, _ = best_rate(run_knf_compute, knf_input, size, args.repeats, bar)
            if ours_frames.shape != knf_frames.shape:
                raise SystemExit(f"frame counts differ: {ours_frames.shape} vs {knf_frames.shape}")
            diff = float(np.abs(ours_frames - knf_frames).max())
            rows.append((mode, ours_fps, knf_fps, ours_fps / knf_fps, compute_fps, diff))

    print(f"{audio_i16.size / 16000:.1f} s of audio, {len(ours_frames)} frames, best of {args.repeats}")
    header = ("mode", "ours fr/s", "knf fr/s", "ours/knf", "knf compute fr/s", "max |diff|")
    print(f"{header[0]:<18}{header[1]:>12}{header[2]:>12}{header[3]:>10}{header[4]:>18}{header[5]:>12}")
    for mode, ours_fps, knf_fps, ratio, compute_fps, diff in rows:
        print(
            f"{mode:<18}{ours_fps:>12,.0f}{knf_fps:>12,.0f}{ratio:>10.2f}"
            f"{compute_fps:>18,.0f}{diff:>12.2e}"
        )


if __name__ == "__main__":
    main()
