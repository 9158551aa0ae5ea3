"""The queue of starts whose hotwords must be compiled first
(trio_asr/recognition/compile_queue.py), with fake work, and the cache of
compiled stream lists it relies on; the same through a real server:
test_hotwords_queue_server.py."""

from __future__ import annotations

import threading
from collections.abc import Generator

import pytest
import trio
import trio.testing

from trio_asr.recognition.compile_queue import CompileQueue, CompileQueueFull
from trio_asr.recognition.hotwords import MERGES_CACHED, Hotword, compile_hotwords
from trio_asr.recognition.tokens import TokenTable

Steps = Generator[None, None, str]


class Work:
    """Fake compiles: each records when it starts, runs its steps in the
    queue's thread and records how it ended; a gate holds every step."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: dict[str, str] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.in_step = threading.Event()  # a step is waiting at the closed gate

    def steps(self, name: str, count: int = 3) -> Steps:
        self.started.append(name)
        try:
            for _ in range(count):
                self.in_step.set()
                assert self.gate.wait(10), "the gate was never opened"
                yield
        except GeneratorExit:
            self.ended[name] = "closed"
            raise
        self.ended[name] = "done"
        return name


async def until(condition, what: str) -> None:
    with trio.move_on_after(5):
        while not condition():
            await trio.sleep(0.001)
        return
    pytest.fail(f"waited in vain until {what}")


async def hold(queue: CompileQueue, work: Work, nursery: trio.Nursery) -> None:
    """Start a compile that holds the queue until ``work.gate`` opens."""
    work.gate.clear()
    work.in_step.clear()
    nursery.start_soon(queue.run, "holder", work.steps("holder"))
    await until(work.in_step.is_set, "the holder is in its first step")


async def test_clients_take_turns_one_compile_at_a_time() -> None:
    queue, work = CompileQueue(), Work()
    results: list[str] = []

    async def start(client: str, name: str) -> None:
        results.append(await queue.run(client, work.steps(name)))

    async with trio.open_nursery() as nursery:
        await hold(queue, work, nursery)
        for client, name in [("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"), ("b", "b2")]:
            nursery.start_soon(start, client, name)
            await trio.testing.wait_all_tasks_blocked()
        assert (queue.waiting, queue.waiting_for("a"), queue.busy) == (6, 3, True)
        assert work.started == ["holder"]  # the others wait without starting
        work.gate.set()
    # round-robin by client: a's second and third wait behind b's and c's first
    assert results == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert work.started == ["holder", *results]
    assert (queue.waiting, queue.busy) == (0, False)


async def test_a_full_queue_refuses_or_displaces_the_busiest_clients_newest() -> None:
    queue, work = CompileQueue(max_waiting=3), Work()
    outcomes: dict[str, str] = {}

    async def start(client: str, name: str) -> None:
        try:
            outcomes[name] = await queue.run(client, work.steps(name))
        except CompileQueueFull as exc:
            outcomes[name] = f"full: {exc}"

    async with trio.open_nursery() as nursery:
        await hold(queue, work, nursery)
        for client, name in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3"), ("b", "b2"), ("c", "c1")]:
            nursery.start_soon(start, client, name)
            await trio.testing.wait_all_tasks_blocked()
        # a3: a had 2 waiting, the busiest (a) not more than a's 2 + 1: refused.
        # b2: b had 1, a 2: not more than 1 + 1: refused.
        # c1: c had none, a 2 > 0 + 1: it takes the place of a's newest (a2).
        assert outcomes == {name: "full: 3 hotword lists are waiting to be compiled" for name in ("a3", "b2", "a2")}
        assert (queue.waiting, queue.waiting_for("a"), queue.waiting_for("c")) == (3, 1, 1)
        work.gate.set()
    assert [outcomes[name] for name in ("a1", "b1", "c1")] == ["a1", "b1", "c1"]
    assert "a2" not in work.ended and work.started == ["holder", "a1", "b1", "c1"]  # the refused never started


async def test_a_caller_cancelled_while_waiting_leaves_the_queue_unstarted() -> None:
    queue, work = CompileQueue(), Work()
    gone = trio.CancelScope()

    async def leaves() -> None:
        with gone:
            await queue.run("d", work.steps("gone"))

    async with trio.open_nursery() as nursery:
        await hold(queue, work, nursery)
        nursery.start_soon(leaves)
        nursery.start_soon(queue.run, "c", work.steps("stays"))
        await trio.testing.wait_all_tasks_blocked()
        assert queue.waiting == 2
        gone.cancel()  # its client went while it waited
        await trio.testing.wait_all_tasks_blocked()
        assert (queue.waiting, queue.waiting_for("d")) == (1, 0)
        work.gate.set()
    assert gone.cancelled_caught
    assert work.started == ["holder", "stays"]  # "gone" never started: its steps were closed unstarted
    assert work.ended == {"holder": "done", "stays": "done"}


async def test_a_caller_cancelled_while_its_compile_runs_is_not_kept_waiting() -> None:
    """The call returns while the thread still sits in a step; the thread
    then stops after that step, and the next compile goes ahead meanwhile."""
    queue, work = CompileQueue(), Work()
    work.gate.clear()
    async with trio.open_nursery() as nursery:
        running = trio.CancelScope()
        returned = trio.Event()

        async def runs() -> None:
            with running:
                await queue.run("a", work.steps("abandoned", count=100))
            returned.set()

        nursery.start_soon(runs)
        await until(work.in_step.is_set, "the compile is in a step")
        running.cancel()
        with trio.fail_after(5):
            await returned.wait()
        assert not work.gate.is_set() and "abandoned" not in work.ended  # returned, not waited for
        assert not queue.busy  # the queue moved on
        follower = trio.Event()

        async def follows() -> None:
            assert await queue.run("b", work.steps("next", count=1)) == "next"
            follower.set()

        nursery.start_soon(follows)
        await until(lambda: "next" in work.started, "the next compile starts")
        work.gate.set()
        await follower.wait()
    await until(lambda: "abandoned" in work.ended, "the abandoned thread ends")
    assert work.ended["abandoned"] == "closed"  # stopped after its step: not run to its end


async def test_callers_of_the_same_work_wait_for_one_compile() -> None:
    """The later callers take no place in the queue; once the first is done
    their steps finish at their first step (the work is kept)."""
    queue, work = CompileQueue(max_waiting=0), Work()
    kept: set[str] = set()

    def compile_once(name: str) -> Steps:
        if "list" not in kept:
            yield from work.steps(name, count=1)
            kept.add("list")
        return name

    results: dict[str, str] = {}

    async def start(name: str) -> None:
        results[name] = await queue.run(name, compile_once(name), "list")

    async with trio.open_nursery() as nursery:
        work.gate.clear()
        nursery.start_soon(start, "first")
        await until(work.in_step.is_set, "the first compile runs")
        for name in ("second", "third"):
            nursery.start_soon(start, name)
        await trio.testing.wait_all_tasks_blocked()
        assert queue.waiting == 0  # with no room to wait, they were not refused either
        work.gate.set()
    assert work.started == ["first"]
    assert results == {"first": "first", "second": "second", "third": "third"}


def test_stream_lists_are_kept_compiled_by_what_they_hold() -> None:
    table = TokenTable(["<blk>", "\u2581NEW", "\u2581YORK", "\u2581CITY", "\u2581GNU", "\u2581K"])
    base = compile_hotwords([Hotword("new york")], table, default_score=2.0)
    steps = base.merged_steps([Hotword("city"), Hotword("gnu", 3.0)])
    next(steps)  # not kept: the first step only says there is work
    with pytest.raises(StopIteration) as done:
        while True:
            next(steps)
    first = done.value.value
    # the same list in another order, a phrase's score written out as the default: kept
    for same in ([Hotword("gnu", 3.0), Hotword("city")], [Hotword("city", 2.0), Hotword("gnu", 3.0)]):
        assert base.cached(same) is first
        with pytest.raises(StopIteration) as done:
            next(base.merged_steps(same))
        assert done.value.value is first
    assert base.cached([Hotword("city"), Hotword("gnu", 2.0)]) is None  # another score: another list
    with pytest.raises(StopIteration) as done:
        next(base.merged_steps([]))
    assert done.value.value is base
    # least recently used first out: ``first``, used last, outlives the others
    others = [[Hotword("k", 1.0 + k / 10)] for k in range(MERGES_CACHED)]
    base.merged(others[0])
    base.merged([Hotword("city"), Hotword("gnu", 3.0)])
    for extra in others[1:]:
        base.merged(extra)
    assert base.cached([Hotword("gnu", 3.0), Hotword("city")]) is first
    assert base.cached(others[0]) is None
