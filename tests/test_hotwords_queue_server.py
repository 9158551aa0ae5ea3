"""Starts with hotword lists under load, through a real server and the real
recognizer on the synthetic zipformer2-CTC fixture: the work of clients that
left is dropped, the queue is bounded (1013), identical lists are compiled
once. The queue itself: test_compile_queue.py; the figures:
benchmarks/bench_hotwords_load.py."""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from serverutil import end_msg, recv_json, replies_until_close, start_msg, start_server, ws_url

import trio_asr.recognition.batched as batched
from trio_asr.recognition.compile_queue import CompileQueue
from trio_asr.recognition.hotwords import compile_hotwords
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.recognition.stream_options import StreamOptions
from trio_asr.recognition.tokens import is_unspaced


class GatedRecognizer:
    """The real recognizer, whose compiles record their list and then wait
    at ``gate`` (in the queue's worker thread) before doing any work."""

    def __init__(self, inner: Recognizer) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.compiling: list[list[str]] = []  # the lists whose compile began, in order
        self.compiled: list[list[str]] = []  # those that ran to their end

    @property
    def model(self) -> Any:
        return self.inner.model

    def create_stream_steps(self, options: StreamOptions) -> Generator[None, None, Any]:
        steps = self.inner.create_stream_steps(options)
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # nothing to compile
        yield  # work to do: queue it
        try:
            next(steps)  # looks for the list among those kept again (compiled meanwhile?), then begins
        except StopIteration as done:
            return done.value
        phrases = sorted(h.phrase for h in options.hotwords)
        self.compiling.append(phrases)
        yield
        assert self.gate.wait(10), "the gate was never opened"
        stream = yield from steps
        self.compiled.append(phrases)
        return stream


@pytest.fixture(scope="module")
def model(zipformer2_model_dir: Path) -> Any:
    return load_model(zipformer2_model_dir)


@pytest.fixture
def recognizer(model: Any) -> Recognizer:
    """A new one for each test: nothing compiled yet."""
    return Recognizer(model, beam=4, hotwords=compile_hotwords([], model.tokens))


@pytest.fixture
def gated(recognizer: Recognizer) -> GatedRecognizer:
    return GatedRecognizer(recognizer)


@pytest.fixture(scope="module")
def lists(model: Any) -> list[list[str]]:
    """Distinct one-phrase lists the model can spell."""
    tokens = model.tokens
    chars = sorted({c for i in range(len(tokens)) for c in tokens.text([i]) if is_unspaced(c)})
    return [[chars[2 * k] + chars[2 * k + 1]] for k in range(len(chars) // 2)]


async def until(condition, what: str) -> None:
    with trio.move_on_after(5):
        while not condition():
            await trio.sleep(0.005)
        return
    pytest.fail(f"waited in vain until {what}")


async def ready(ws: trio_websocket.WebSocketConnection) -> None:
    assert (await recv_json(ws))["signal"] == "server_ready"


async def test_the_starts_of_clients_that_left_are_dropped(
    nursery: trio.Nursery, tmp_path: Path, gated: GatedRecognizer, lists: list[list[str]]
) -> None:
    """Clients that send a list and leave cost nothing once gone: their lists
    are never compiled, the server does not count them, and the next client
    is served as soon as the compile running for a client still there ends."""
    server = await start_server(nursery, tmp_path, gated)
    url = ws_url(server.port)
    async with trio_websocket.open_websocket_url(url) as first:
        await first.send_message(start_msg("first.wav", hotwords=lists[0]))
        await until(lambda: gated.compiling, "its compile begins")
        for k in range(1, 6):  # they send their list and close at once
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message(start_msg(f"left-{k}.wav", hotwords=lists[k]))
        await until(lambda: server.connections == 1, "the server no longer counts them")
        async with trio_websocket.open_websocket_url(url) as legit:
            await legit.send_message(start_msg("legit.wav", hotwords=lists[6]))
            gated.gate.set()
            await ready(first)
            await ready(legit)
            await legit.send_message(end_msg("legit.wav"))
            assert (await recv_json(legit))["signal"] == "end"
    assert gated.compiling == gated.compiled == [lists[0], lists[6]]


async def test_a_compile_for_a_client_that_left_is_not_waited_for(
    nursery: trio.Nursery, tmp_path: Path, gated: GatedRecognizer, lists: list[list[str]]
) -> None:
    server = await start_server(nursery, tmp_path, gated)
    url = ws_url(server.port)
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message(start_msg("left.wav", hotwords=lists[0]))
        await until(lambda: gated.compiling, "its compile begins")
    # its compile still waits at the gate, in its thread: the session ends regardless
    await until(lambda: server.connections == 0, "the session of the client that left ends")
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message(start_msg("next.wav", hotwords=lists[1]))
        await until(lambda: len(gated.compiling) == 2, "the next compile begins: the queue moved on")
        gated.gate.set()
        await ready(ws)
    await until(lambda: gated.compiled == [lists[1]], "the abandoned compile stops")


async def test_a_start_that_finds_the_queue_full_is_told_to_try_again_later(
    nursery: trio.Nursery,
    tmp_path: Path,
    gated: GatedRecognizer,
    lists: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batched, "CompileQueue", lambda: CompileQueue(max_waiting=1))
    server = await start_server(nursery, tmp_path, gated)
    url = ws_url(server.port)
    async with trio_websocket.open_websocket_url(url) as running, trio_websocket.open_websocket_url(url) as waiting:
        await running.send_message(start_msg("running.wav", hotwords=lists[0]))
        await until(lambda: gated.compiling, "its compile begins")
        await waiting.send_message(start_msg("waiting.wav", hotwords=lists[1]))
        async with trio_websocket.open_websocket_url(url) as refused:
            await refused.send_message(start_msg("refused.wav", hotwords=lists[2]))
            replies, code = await replies_until_close(refused)
        assert code == 1013
        assert replies == [{
            "status": "error", "signal": "start",
            "message": "server busy: 1 hotword lists are waiting to be compiled; try again later",
        }]  # fmt: skip
        gated.gate.set()
        await ready(running)
        await ready(waiting)
    assert gated.compiled == [lists[0], lists[1]]


async def test_the_same_list_is_compiled_once(
    nursery: trio.Nursery, tmp_path: Path, gated: GatedRecognizer, lists: list[list[str]]
) -> None:
    """Two clients send the same phrases (in another order) while it compiles,
    a third sends them later: one compile for the three."""
    server = await start_server(nursery, tmp_path, gated)
    url = ws_url(server.port)
    phrases = lists[0] + lists[1]
    async with trio_websocket.open_websocket_url(url) as a, trio_websocket.open_websocket_url(url) as b:
        await a.send_message(start_msg("a.wav", hotwords=phrases))
        await until(lambda: gated.compiling, "its compile begins")
        await b.send_message(start_msg("b.wav", hotwords=phrases[::-1]))
        gated.gate.set()
        await ready(a)
        await ready(b)
    async with trio_websocket.open_websocket_url(url) as c:
        await c.send_message(start_msg("c.wav", hotwords=[[phrases[1], 1.5], phrases[0]]))  # 1.5: the default
        await ready(c)
    assert gated.compiling == gated.compiled == [sorted(phrases)]
