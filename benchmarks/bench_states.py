"""Batching model states in a model thread while the event loop is busy.

    python benchmarks/bench_states.py [--batch 32] [--repeats 5]

The model service stacks the states of a batch's streams (about 75 tensors
each for the default model's geometry) in a worker thread.  The event loop
meanwhile holds the interpreter lock most of the time under load.  This
compares, side by side in one run, the time to stack one batch of the
real-size int8 fixture's states:

* ``np.concatenate`` per tensor, which releases and retakes the lock for each
  tensor (and waits a switch interval for it each time the loop holds it);
* ``concatenate_states`` (``csrc/states.pyx``, what the server uses), which
  releases it once for all the copying;

each with the lock free, and with a thread beside it that keeps it busy (as
the event loop does).  The ratio is what matters; the milliseconds depend on
the machine.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import numpy as np

from common import Progress, fixture_model, write_results

from trio_asr._states import concatenate_states
from trio_asr.recognition.model import load_model


def per_tensor(per_stream, axes) -> list[np.ndarray]:
    return [np.concatenate([s[i] for s in per_stream], axis=axis) for i, axis in enumerate(axes)]


def stack_in_thread(stack, per_stream, axes, *, busy: bool) -> float:
    """Seconds one stack takes in a worker thread, with or without another
    thread running Python code (holding the interpreter lock) meanwhile."""
    stop = threading.Event()

    def hold_the_lock() -> None:
        while not stop.is_set():
            sum(range(1000))

    holder = threading.Thread(target=hold_the_lock)
    took: list[float] = []

    def work() -> None:
        started = time.perf_counter()
        stack(per_stream, axes)
        took.append(time.perf_counter() - started)

    if busy:
        holder.start()
    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        stop.set()
        if busy:
            holder.join()
    return took[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = load_model(fixture_model("int8"))
    rng = np.random.default_rng(0)
    features = rng.standard_normal((args.batch, model.chunk_frames, model.feature_dim)).astype(np.float32)
    _, states = model.run(features, [model.initial_state()] * args.batch)  # views of a batch, as served
    per_stream = [s.tensors for s in states]
    axes = states[0].batch_axes
    megabytes = sum(t.nbytes for t in per_stream[0]) * args.batch / 2**20
    methods = {"np.concatenate per tensor": per_tensor, "concatenate_states": concatenate_states}
    took: dict[tuple[str, bool], list[float]] = {(name, busy): [] for name in methods for busy in (False, True)}
    with Progress(args.repeats * len(took), "stacking") as bar:
        for _ in range(args.repeats):  # the cases take turns, so load changes hit all alike
            for name, busy in took:
                took[name, busy].append(stack_in_thread(methods[name], per_stream, axes, busy=busy))
                bar.advance()
    # the median, not the best: how long the lock takes to come back varies from run to run
    median = {case: float(np.median(times)) for case, times in took.items()}
    print(f"{len(axes)} state tensors x {args.batch} streams ({megabytes:.0f} MB), median of {args.repeats}; "
          f"switch interval {sys.getswitchinterval() * 1000:g} ms")  # fmt: skip
    print(f"{'':>28} {'lock free':>11} {'lock busy':>11}")
    for name in methods:
        print(f"{name:>28} {median[name, False] * 1000:8.1f} ms {median[name, True] * 1000:8.1f} ms")
    ratio = median["np.concatenate per tensor", True] / median["concatenate_states", True]
    print(f"with the lock busy, concatenate_states is {ratio:.0f}x faster")
    path = write_results("states", {
        "batch": args.batch, "tensors": len(axes), "megabytes": megabytes, "repeats": args.repeats,
        "ms": {f"{name}, lock {'busy' if busy else 'free'}": [round(t * 1000, 2) for t in times]
               for (name, busy), times in took.items()},
        "busy_ratio_of_medians": round(ratio, 1),
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
