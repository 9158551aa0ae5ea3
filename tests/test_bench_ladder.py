"""bench_server's search for a server's limit: with its default flags, the
level it reports lies within 5 % below the true limit, wherever that falls."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if not (REPO_ROOT / "benchmarks" / "bench_server.py").is_file():
    pytest.skip(f"no benchmarks/ beside {Path(__file__).parent}", allow_module_level=True)

# benchmarks/ is on the import path by pytest's `pythonpath` (pyproject.toml)
from bench_server import next_levels, parse_args  # noqa: E402


def found_limit(limit: int, start: int, refine: int, cap: int) -> int:
    """The max N the sweep reports for a server that holds every N <= ``limit``."""
    levels: list[dict] = []
    while (n := next_levels(start, levels, refine, cap)) is not None:
        levels.append({"n": n, "pass": n <= limit, "refining": any(not r["pass"] for r in levels)})
    return max((r["n"] for r in levels if r["pass"]), default=0)


def misses(start: int, refine: int, cap: int) -> list[int]:
    """The limits between ``start`` and the cap's reach that the sweep reports more than 5 % low."""
    # from 382 up, the ladder's last level below the cap (362) is more than 5 % low
    return [limit for limit in range(start, 382) if found_limit(limit, start, refine, cap) < limit * 0.95]


def test_the_default_sweep_reports_every_limit_within_5_percent() -> None:
    args = parse_args([])
    assert misses(args.start, args.refine, args.max_clients) == []


def test_a_sweep_that_stops_bisecting_early_is_caught() -> None:
    # two steps, the default before: 186 for a server that holds 196, among others
    assert 196 in misses(16, 2, 400)
