"""Endpoint rules on per-frame activity (the CTC best path's blank / non-blank).

Each rule is checked to fire on exactly the frame where its condition first
holds, not one frame earlier or later, and not at all when another rule's
condition holds instead; the detector's state restarts after an endpoint.
"""

from __future__ import annotations

import numpy as np
import pytest

from trio_asr.recognition.endpoint import MAX_SEGMENT_SECONDS, EndpointDetector, EndpointRules

SHIFT = 0.04  # seconds per frame: 25 frames per second


def run(rules: EndpointRules, active) -> list[int]:
    """Frame numbers (1-based, from the stream's start) after which a segment ends."""
    detector = EndpointDetector(rules, SHIFT)
    active = np.asarray(active, dtype=bool)
    ends, done = [], 0
    while done < len(active):
        k = detector.accept(active[done:])
        if k is None:
            break
        done += k
        ends.append(done)
    return ends


def frames(*runs: tuple[int, int]) -> list[bool]:
    """Runs of (activity, count)."""
    return [bool(a) for a, n in runs for _ in range(n)]


RULE1 = EndpointRules(silence_without_text=1.0, silence_after_text=None, max_segment=100)
RULE2 = EndpointRules(silence_without_text=None, silence_after_text=0.4, max_segment=100)
RULE3 = EndpointRules(silence_without_text=None, silence_after_text=None, max_segment=2.0)


def test_rule1_fires_after_the_silence_without_text():
    assert run(RULE1, frames((0, 24))) == []
    assert run(RULE1, frames((0, 25))) == [25]
    assert run(RULE1, frames((0, 60))) == [25, 50]


def test_rule1_does_not_fire_once_there_is_text():
    assert run(RULE1, frames((0, 10), (1, 1), (0, 40))) == []


def test_rule2_fires_after_the_silence_following_text():
    assert run(RULE2, frames((1, 3), (0, 9))) == []
    assert run(RULE2, frames((1, 3), (0, 10))) == [13]
    # a short pause inside the text is no endpoint; the count restarts after it
    assert run(RULE2, frames((1, 2), (0, 9), (1, 1), (0, 10))) == [22]


def test_rule2_needs_text():
    assert run(RULE2, frames((0, 200))) == []


def test_rule3_cuts_long_segments_whatever_they_hold():
    assert run(RULE3, frames((1, 49))) == []
    assert run(RULE3, frames((1, 50))) == [50]
    assert run(RULE3, frames((1, 20), (0, 30), (1, 60))) == [50, 100]


def test_rules_together_and_restart_after_an_endpoint():
    rules = EndpointRules(silence_without_text=1.0, silence_after_text=0.4, max_segment=2.0)
    # text then pause: rule 2 at frame 13; a fresh segment of silence: rule 1
    # 25 frames later; then text without pause: rule 3 after 50 frames.
    stream = frames((1, 3), (0, 10), (0, 25), (1, 50))
    assert run(rules, stream) == [13, 38, 88]


def test_result_does_not_depend_on_how_frames_are_cut():
    rng = np.random.default_rng(7)
    active = rng.random(3000) < 0.3
    rules = EndpointRules(silence_without_text=0.6, silence_after_text=0.2, max_segment=3.0)
    reference = run(rules, active)
    assert len(reference) > 10
    detector = EndpointDetector(rules, SHIFT)
    ends, done, pending = [], 0, active
    for piece in np.array_split(active, 97):
        pending = piece
        while len(pending):
            k = detector.accept(pending)
            if k is None:
                done += len(pending)
                break
            done += k
            ends.append(done)
            pending = pending[k:]
    assert ends == reference


@pytest.mark.parametrize(
    "kwargs",
    [
        {"silence_after_text": 0.0},
        {"silence_after_text": -1},
        {"silence_without_text": float("nan")},
        {"silence_without_text": 1e9},
        {"max_segment": MAX_SEGMENT_SECONDS + 1},
        {"max_segment": None},
        {"silence_after_text": "1"},
        {"silence_after_text": True},
    ],
)
def test_rules_are_validated_and_bounded(kwargs):
    with pytest.raises((TypeError, ValueError)):
        EndpointRules(**kwargs)


def test_rules_accept_ints_and_none():
    rules = EndpointRules(silence_without_text=None, silence_after_text=1, max_segment=30)
    assert rules.silence_after_text == 1.0 and isinstance(rules.max_segment, float)
