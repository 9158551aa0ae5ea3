"""Frames per second of the CTC searches on realistic, peaky log-probabilities.

    python benchmarks/bench_search.py [--frames 1000] [--vocab 1000] [--beam 10] [--threads 2]

The input is a log-softmax of random logits where blank dominates most frames
and one random token dominates the rest, like a trained CTC model's output.
The last line runs one beam search per thread at once (the compiled search
releases the GIL) and reports the frames/s of all threads together.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from trio_asr.search import GreedySearch, PrefixBeamSearch


def peaky_log_probs(frames: int, vocab: int, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(frames, vocab))
    speaking = rng.random(frames) < 0.3
    winners = np.where(speaking, rng.integers(1, vocab, size=frames), 0)
    logits[np.arange(frames), winners] += rng.uniform(6.0, 12.0, size=frames)
    logits -= logits.max(axis=1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def frames_per_second(make_search, log_probs: np.ndarray, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        search = make_search()
        start = time.perf_counter()
        search.accept(log_probs)
        best = max(best, len(log_probs) / (time.perf_counter() - start))
    return best


def threaded_frames_per_second(make_search, log_probs: np.ndarray, threads: int) -> float:
    searches = [make_search() for _ in range(threads)]
    workers = [threading.Thread(target=s.accept, args=(log_probs,)) for s in searches]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * len(log_probs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    log_probs = peaky_log_probs(args.frames, args.vocab)
    runs = {
        "greedy": lambda: GreedySearch(),
        f"prefix beam {args.beam}": lambda: PrefixBeamSearch(args.beam),
        f"prefix beam {args.beam}, top-k 20": lambda: PrefixBeamSearch(args.beam, token_top_k=20),
    }
    print(f"T={args.frames} V={args.vocab}, best of {args.repeats}")
    for name, make in runs.items():
        print(f"{name:>28}: {frames_per_second(make, log_probs, args.repeats):12,.0f} frames/s")
    make = runs[f"prefix beam {args.beam}"]
    total = threaded_frames_per_second(make, log_probs, args.threads)
    print(f"{f'prefix beam {args.beam}, {args.threads} threads':>28}: {total:12,.0f} frames/s in all")


if __name__ == "__main__":
    main()
