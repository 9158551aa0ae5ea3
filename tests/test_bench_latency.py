"""bench_server's latency bookkeeping: each reply is timed from the message
it answers, and never from a message sent after it arrived."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if not (REPO_ROOT / "benchmarks" / "bench_server.py").is_file():
    pytest.skip(f"no benchmarks/ beside {Path(__file__).parent}", allow_module_level=True)

# benchmarks/ is on the import path by pytest's `pythonpath` (pyproject.toml)
from bench_server import reply_latencies  # noqa: E402
from servers import OursAdapter, SherpaAdapter  # noqa: E402


def test_a_reply_per_frame_is_timed_from_its_frame():
    sent = [0.0, 1.0, 2.0]
    replies = [0.25, 1.5, 2.125]
    assert reply_latencies(OursAdapter(), sent, replies) == [0.25, 0.5, 0.125]


def test_a_reply_is_never_timed_from_a_later_message():
    # the second reply arrives before the frame it would answer was sent
    assert reply_latencies(OursAdapter(), [0.0, 1.0, 2.0], [0.5, 0.75]) == [0.5, 0.75]


def test_sherpa_replies_are_timed_from_the_message_that_completed_their_chunk():
    adapter = SherpaAdapter(chunk_frames=45, chunk_shift=32, closes_after_final=False)
    sent = [0.085 * i for i in range(40)]
    first = adapter.chunk_of_reply(0)
    assert first == 5  # the chunk's last frame (44) ends in the sixth 1360-sample message
    (latency,) = reply_latencies(adapter, sent, [sent[first] + 0.05])
    assert latency == pytest.approx(0.05)
