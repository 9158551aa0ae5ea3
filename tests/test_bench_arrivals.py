"""bench_server.py's arrival schedules: burst (today's) and spread."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

pytest.importorskip("websockets")  # bench_server imports the benchmark client

# benchmarks/ is on the import path by pytest's `pythonpath` (pyproject.toml)
from bench_server import CHUNK_S, arrival_offsets, client_seconds, parse_args  # noqa: E402


def test_burst_arrivals_all_start_within_one_chunk() -> None:
    offsets = arrival_offsets(200, "burst", 10.0, random.Random(1))
    assert len(offsets) == 200 and all(0 <= t < CHUNK_S for t in offsets)


def test_spread_arrivals_are_uniform_over_the_spread_with_random_chunk_phase() -> None:
    n, spread = 400, 10.0
    offsets = arrival_offsets(n, "spread", spread, random.Random(2))
    assert all(i * spread / n <= t < i * spread / n + CHUNK_S for i, t in enumerate(offsets))
    assert max(offsets) < spread + CHUNK_S
    for second in range(10):  # as many start in each second of the spread
        assert sum(second <= t < second + 1 for t in offsets) == pytest.approx(n / spread, abs=2)
    phases = sorted(t % CHUNK_S / CHUNK_S for t in offsets)  # chunk phases cover the chunk
    assert max(b - a for a, b in zip([0.0, *phases], [*phases, 1.0])) < 0.05


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(ValueError):
        arrival_offsets(3, "wave", 10.0, random.Random(0))
    with pytest.raises(SystemExit):
        parse_args(["--arrivals", "burst,wave"])


def test_spread_clients_stream_longer_so_that_all_are_open_together() -> None:
    args = parse_args(["--arrivals", "spread,burst", "--seconds", "10", "--spread", "8"])
    assert args.arrival_modes == ["spread", "burst"]
    assert client_seconds(args) == 18.0
    args.arrivals = "burst"
    assert client_seconds(args) == 10.0


def test_another_source_tree_adds_a_server(tmp_path: Path) -> None:
    args = parse_args(["--servers", "trio-asr", "--ours-tree", str(tmp_path / "old")])
    assert args.servers == ["trio-asr", "trio-asr @old"]
