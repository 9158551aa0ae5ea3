"""Frames per second of the CTC searches on realistic, peaky log-probabilities.

    python benchmarks/bench_search.py [--frames 1000] [--vocab 1000] [--beam 10] [--threads 2]

The input is a log-softmax of random logits where blank dominates most frames
and one random token dominates the rest, like a trained CTC model's output.
The hotword rows bias the same beam search with 0 (an empty list, which
takes the biased code path), 10 and 1,000 phrases of one to four random
tokens (a tenth of them spelled by the input, so phrases match, break off
and complete); their compile time is printed beside them. The last line runs
one beam search per thread at once (the compiled search releases the GIL)
and reports the frames/s of all threads together.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from trio_asr.recognition.hotwords import Hotword, compile_hotwords
from trio_asr.recognition.search import GreedySearch, PrefixBeamSearch
from trio_asr.recognition.tokens import TokenTable


def peaky_log_probs(frames: int, vocab: int, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(frames, vocab))
    speaking = rng.random(frames) < 0.3
    winners = np.where(speaking, rng.integers(1, vocab, size=frames), 0)
    logits[np.arange(frames), winners] += rng.uniform(6.0, 12.0, size=frames)
    logits -= logits.max(axis=1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def hotword_graph(count: int, log_probs: np.ndarray, *, seed: int = 1):
    """``count`` phrases over a table of one word per token: a tenth copied
    from the input's most likely tokens, the rest random; and compile seconds."""
    vocab = log_probs.shape[1]
    table = TokenTable(["<blk>", *(f"\u2581w{i}" for i in range(1, vocab))])
    rng = np.random.default_rng(seed)
    said = [int(t) for t in log_probs.argmax(axis=1) if t != 0]
    phrases: dict[str, Hotword] = {}
    while len(phrases) < count:
        length = int(rng.integers(1, 5))
        if len(phrases) % 10 == 0 and len(said) > length:
            start = int(rng.integers(0, len(said) - length))
            ids = said[start : start + length]
        else:
            ids = rng.integers(1, vocab, size=length).tolist()
        phrase = " ".join(f"w{i}" for i in ids)
        phrases[phrase] = Hotword(phrase)
    start = time.perf_counter()
    compiled = compile_hotwords(list(phrases.values()), table)
    return compiled.graph, time.perf_counter() - start


def frames_per_second(runs: dict, log_probs: np.ndarray, repeats: int) -> dict[str, float]:
    """Best frames/s of each run; the runs take turns, so that a load change
    on a shared machine hits all of them alike."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, make_search in runs.items():
            search = make_search()
            start = time.perf_counter()
            search.accept(log_probs)
            best[name] = max(best[name], len(log_probs) / (time.perf_counter() - start))
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
    compiled = {}
    for count in (0, 10, 1000):
        graph, seconds = hotword_graph(count, log_probs)
        compiled[count] = seconds
        runs[f"prefix beam {args.beam}, {count:,} hotwords"] = lambda graph=graph: PrefixBeamSearch(
            args.beam, hotwords=graph
        )
    print(f"T={args.frames} V={args.vocab}, best of {args.repeats} (runs take turns)")
    measured = frames_per_second(runs, log_probs, args.repeats)
    plain = measured[f"prefix beam {args.beam}"]
    for name, fps in measured.items():
        note = ""
        if "hotwords" in name:
            count = int(name.split(", ")[1].split()[0].replace(",", ""))
            note = f"  ({fps / plain:.2f}x plain beam; compiled in {compiled[count] * 1000:.0f} ms)"
        print(f"{name:>32}: {fps:12,.0f} frames/s{note}")
    make = runs[f"prefix beam {args.beam}"]
    total = threaded_frames_per_second(make, log_probs, args.threads)
    print(f"{f'prefix beam {args.beam}, {args.threads} threads':>32}: {total:12,.0f} frames/s in all")


if __name__ == "__main__":
    main()
