"""Per-stream hotwords under load: do other clients notice?

    python benchmarks/bench_hotwords_load.py [--model DIR] [--lists 50] [--phrases 100] [--plain 5]

Runs ``trio-asr serve`` as a subprocess and measures, in one run:

1. *plain p95*: five plain streams (no hotwords) stream speech in real time
   (85 ms frames, like PaddleSpeech's client); the 95th percentile of their
   partial replies' latency alone; then while ``--lists`` other clients
   connect at once and send a plain ``start`` each (the control: what many
   connections cost by themselves); then while they send a ``start`` each
   with its own list of ``--phrases`` distinct 64-character phrases (each
   client waits for ``server_ready``, ends its stream and leaves). Each p95
   is given as a ratio to the one alone (the goal, with lists: at most 2).
   0.2 s after the others, two clients send a one-phrase list (a name like
   ``"张伟"``), one from this host, one from another (127.0.0.2, a loopback
   address of its own on Linux): how long each waits for ``server_ready``.
   ``--rounds`` times, with new lists each round; the median ratios.
2. *leavers*: ``--leavers`` connections each send such a ``start`` and close
   at once, in waves of 50 every 0.2 s; then a client with a new one-phrase
   list waits for ``server_ready``: how long, and how many of the leavers'
   upgrades were refused (503: the server counted itself full).

The CPU is named (lscpu's model name). The model is the tiny synthetic
Zipformer2-CTC, whose cost per chunk is small, so that what the server does
besides the model shows (``--fixture real-size``: the real-size int8 one of
``common.fixture_model``), unless ``--model`` names one. Other processes on
the machine show up as spread between the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import trio
import trio_websocket
from common import CACHE_DIR, fixture_model, speech, tile_to, write_results
from servers import CHUNK_SAMPLES, OursAdapter, ServerProcess, free_port

from trio_asr.recognition.model import load_model
from trio_asr.recognition.tokens import TokenTable, is_unspaced

FRAME_S = CHUNK_SAMPLES / 16000
PATH = OursAdapter.path


def fixture_dir(kind: str) -> Path:
    if kind == "real-size":
        return fixture_model("int8")
    from trio_asr.testing.zipformer2_ctc import write_model

    return write_model(CACHE_DIR / "zipformer2-ctc-tiny")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "?").strip()
    return f"{name}, {fields.get('CPU(s)', '?').strip()} CPUs"


def phrase_lists(tokens: TokenTable, count: int, phrases: int, seed: int) -> list[list[str]]:
    """``count`` lists of ``phrases`` distinct 64-character phrases the table spells."""
    chars = sorted({c for i in range(len(tokens)) for c in tokens.text([i]) if is_unspaced(c)})
    rng = random.Random(seed)
    return [["".join(rng.choice(chars) for _ in range(64)) for _ in range(phrases)] for _ in range(count)]


def one_phrase_lists(tokens: TokenTable, count: int) -> list[str]:
    """``count`` two-character names (as "张伟") the table spells, each new to the server."""
    chars = sorted({c for i in range(len(tokens)) for c in tokens.text([i]) if is_unspaced(c)})
    return [chars[2 * k] + chars[2 * k + 1] for k in range(count)]


def start_msg(name: str, hotwords: list[str] | None = None) -> str:
    fields = {"hotwords": hotwords} if hotwords else {}
    return json.dumps({"name": name, "signal": "start", "nbest": 1, **fields})


def end_msg(name: str) -> str:
    return json.dumps({"name": name, "signal": "end", "nbest": 1})


async def plain_stream(url: str, audio: np.ndarray, name: str, latencies: list[float]) -> None:
    """Stream ``audio`` in real time; the latency of every partial reply."""
    frames = [OursAdapter.payload(audio[i : i + CHUNK_SAMPLES]) for i in range(0, audio.size, CHUNK_SAMPLES)]
    sent: list[float] = []
    received: list[float] = []
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.send_message(start_msg(name))
        await ws.get_message()
        done = trio.Event()

        async def reader() -> None:
            while len(received) < len(frames):
                await ws.get_message()
                received.append(time.perf_counter())
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            t0 = time.perf_counter()
            for i, frame in enumerate(frames):
                await trio.sleep_until(trio.current_time() + max(0.0, t0 + i * FRAME_S - time.perf_counter()))
                sent.append(time.perf_counter())
                await ws.send_message(frame)
            await done.wait()
        await ws.send_message(end_msg(name))
        await ws.get_message()
    latencies.extend(r - s for s, r in zip(sent, received))


@contextlib.asynccontextmanager
async def connect(port: int, source: str | None = None) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A client connection, from ``source`` (another loopback address: another host) if given."""
    if source is None:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}{PATH}") as ws:
            yield ws
        return
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(nursery, trio.SocketStream(sock), "127.0.0.1", PATH)
        try:
            yield ws
        finally:
            await ws.aclose()


async def hotword_start(
    port: int, name: str, hotwords: list[str], waits: list[float], *, leave: bool = False, source: str | None = None
) -> str:
    """One ``start`` with ``hotwords``: leave at once, or wait for
    ``server_ready`` (its wait goes to ``waits``), end the stream and close."""
    try:
        async with connect(port, source) as ws:
            asked = time.perf_counter()
            await ws.send_message(start_msg(name, hotwords))
            if leave:
                return "left"
            reply = json.loads(await ws.get_message())
            waits.append(time.perf_counter() - asked)
            if reply.get("signal") != "server_ready":
                return f"refused: {reply.get('message')}"
            await ws.send_message(end_msg(name))
            await ws.get_message()
            return "ok"
    except trio_websocket.HandshakeError as exc:
        return f"upgrade refused ({getattr(exc, 'status_code', '?')})"
    except trio_websocket.ConnectionClosed as exc:
        return f"closed {exc.reason.code if exc.reason else '?'}"
    except OSError as exc:
        return f"cannot connect: {exc}"


async def plain_p95(url: str, audios: list[np.ndarray], load=None) -> tuple[float, float, int]:
    """(p95, max) latency in ms of the plain streams' partial replies, and
    how many, with ``load`` (an async function) started one second in."""
    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        for i, audio in enumerate(audios):
            nursery.start_soon(plain_stream, url, audio, f"plain-{i}.wav", latencies)
        if load is not None:
            await trio.sleep(1.0)
            nursery.start_soon(load)
    ms = np.array(latencies) * 1000
    return float(np.percentile(ms, 95)), float(ms.max()), int(ms.size)


def counted(outcomes: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


async def run(args: argparse.Namespace, port: int, tokens: TokenTable) -> dict:
    url = f"ws://127.0.0.1:{port}{PATH}"
    clips = speech()
    audios = [tile_to(clips, args.seconds, offset=i) for i in range(args.plain)]
    lists = phrase_lists(tokens, args.rounds * args.lists + args.leavers, args.phrases, seed=1)
    names = iter(one_phrase_lists(tokens, 4 * args.rounds + 1))
    record: dict = {"cpu": cpu_name(), "lists": args.lists, "phrases": args.phrases, "plain": args.plain,
                    "leavers": args.leavers, "rounds": args.rounds}  # fmt: skip

    async def starts(mine: list[list[str]], outcomes: list[str], waits: dict[str, list[float]]) -> None:
        """``mine`` (empty lists: plain starts) at once; 0.2 s later a one-phrase
        list from this host and another from another host (127.0.0.2)."""

        async def one(i: int) -> None:
            outcomes.append(await hotword_start(port, f"list-{i}.wav", mine[i], waits["lists"]))

        async with trio.open_nursery() as nursery:
            for i in range(len(mine)):
                nursery.start_soon(one, i)
            await trio.sleep(0.2)
            for key, source in (("same_host", None), ("other_host", "127.0.0.2")):
                nursery.start_soon(lambda k=key, s=source: hotword_start(port, f"{k}.wav", [next(names)], waits[k], source=s))

    await plain_p95(url, audios[:1])  # warm up
    rounds = []
    for r in range(args.rounds):  # alone, with plain starts, with lists (new ones each round)
        row: dict = {}
        alone, alone_max, replies = await plain_p95(url, audios)
        row["plain_alone"] = {"p95_ms": round(alone, 1), "max_ms": round(alone_max, 1), "replies": replies}
        for label, mine in (("with_plain_starts", [[]] * args.lists), ("with_lists", lists[r * args.lists :][: args.lists])):
            outcomes: list[str] = []
            waits: dict[str, list[float]] = {"lists": [], "same_host": [], "other_host": []}
            loaded, loaded_max, _ = await plain_p95(url, audios, lambda: starts(mine, outcomes, waits))
            row[label] = {
                "p95_ms": round(loaded, 1), "max_ms": round(loaded_max, 1), "p95_ratio": round(loaded / alone, 2),
                "ready_max_s": round(max(waits["lists"]), 3), "outcomes": counted(outcomes),
                **{f"one_phrase_{k}_ready_s": round(waits[k][0], 3) if waits[k] else None for k in ("same_host", "other_host")},
            }  # fmt: skip
        rounds.append(row)
        print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
    record["rounds"] = rounds
    for label in ("with_plain_starts", "with_lists"):
        record[f"p95_ratio_{label}_median"] = float(np.median([row[label]["p95_ratio"] for row in rounds]))

    await trio.sleep(1.0)
    leavers: list[str] = []

    async def leave(i: int) -> None:
        leavers.append(await hotword_start(port, f"leaver-{i}.wav", lists[args.rounds * args.lists + i], [], leave=True))

    for wave in range(0, args.leavers, 50):  # each wave closes at once, then the next comes
        async with trio.open_nursery() as nursery:
            for i in range(wave, min(wave + 50, args.leavers)):
                nursery.start_soon(leave, i)
        await trio.sleep(0.2)
    after: list[float] = []
    outcome = await hotword_start(port, "after-leavers.wav", [next(names)], after)
    record["leavers_outcomes"] = counted(leavers)
    record["one_phrase_after_leavers_ready_s"] = round(after[0], 3) if after else None
    record["one_phrase_after_leavers"] = outcome
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: a fixture, see --fixture)")
    parser.add_argument("--fixture", choices=("tiny", "real-size"), default="tiny",
                        help="without --model: the tiny synthetic model (the search and the protocol cost "
                             "more than the model, so hotword work shows) or the real-size int8 one")
    parser.add_argument("--lists", type=int, default=50, help="concurrent starts with distinct lists (phase 1)")
    parser.add_argument("--phrases", type=int, default=100, help="phrases per list")
    parser.add_argument("--plain", type=int, default=5, help="plain streams")
    parser.add_argument("--leavers", type=int, default=200, help="starts that close at once (phase 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per plain stream")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of phase 1 (new lists each round)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for `trio-asr serve`")
    args = parser.parse_args(argv)
    model_dir = args.model or fixture_dir(args.fixture)
    tokens = load_model(model_dir).tokens
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="trio-asr-bench-") as tmp:
        argv_ = [sys.executable, "-m", "trio_asr", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
                 "--port", str(port), "--no-save-audio", "--audio-dir", str(Path(tmp) / "audio"),
                 "--threads", "1", *args.server_arg]  # fmt: skip
        server = ServerProcess("trio-asr", argv_, port)
        try:
            server.wait_ready()
            record = trio.run(run, args, port, tokens)
        except Exception:
            print(f"the server's log ends with:\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    record["model"] = str(model_dir)
    print(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"results: {write_results('hotwords_load', record)}", file=sys.stderr)


if __name__ == "__main__":
    main()
