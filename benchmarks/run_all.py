"""Run every benchmark, one after another, each in its own process.

    python benchmarks/run_all.py [--quick] [--model DIR] [--sherpa-server-script PATH]

Runs bench_fbank, bench_search, bench_states, bench_rtf and bench_server (see
benchmarks/README.md; its sweep in both arrival modes, burst and spread); tables go to stdout, JSON and the PNG plot to
benchmarks/results/ (the plot needs matplotlib, ``pip install -e '.[bench]'``;
without it the JSON is still written).  ``--quick`` shortens every benchmark (a smoke run).
Exits non-zero if any benchmark failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import Progress, plotting_unavailable

HERE = Path(__file__).resolve().parent


def plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    quick = args.quick
    model = ["--model", str(args.model)] if args.model else []
    sherpa = ["--sherpa-server-script", args.sherpa_server_script] if args.sherpa_server_script else []
    return [
        ("bench_fbank", ["--seconds", "10" if quick else "60", "--repeats", "1" if quick else "5"]),
        ("bench_search", ["--repeats", "1" if quick else "3"]),
        ("bench_states", ["--repeats", "1" if quick else "5"]),
        ("bench_rtf", ["--repeats", "1" if quick else "3", *model]),
        ("bench_server", [*(["--start", "2", "--max-clients", "4", "--refine", "0", "--seconds", "4",
                             "--idle-connections", "8"] if quick else []),
                          "--arrivals", "burst,spread", *model, *sherpa]),  # fmt: skip
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--model", type=Path, default=os.environ.get("TRIO_ASR_TEST_MODEL_DIR") or None)
    parser.add_argument("--sherpa-server-script", default=os.environ.get("SHERPA_ONNX_STREAMING_SERVER"))
    args = parser.parse_args(argv)
    if notice := plotting_unavailable():
        print(notice, file=sys.stderr)
    failed = []
    steps = plan(args)
    with Progress(len(steps), "benchmarks") as bar:
        for name, extra in steps:
            print(f"\n=== {name} {' '.join(extra)}", flush=True)
            code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *extra])
            if code:
                failed.append(name)
            bar.advance()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
