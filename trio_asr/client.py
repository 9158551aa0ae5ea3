"""``trio-asr client``: stream a WAV file to a server speaking the protocol.

Two pacing modes, matching the clients seen in the wild:

* lock-step (default, like PaddleSpeech's command-line client): send an
  85 ms chunk (2720 bytes at 16 kHz mono), wait for its reply, repeat;
* ``--pipeline`` (like its web demo): send chunks at real-time pace without
  waiting while a reader task collects the replies.

The audio goes out as PCM16 at the file's own rate and channel count; the
server resamples and down-mixes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio_websocket

from trio_asr.audio import read_wav

__all__ = ["ClientError", "add_client_parser", "stream_file", "stream_pcm"]

DEFAULT_URL = "ws://127.0.0.1:8090/paddlespeech/asr/streaming"


class ClientError(Exception):
    """The server answered with an error or broke the protocol."""


def _to_pcm16(samples: np.ndarray) -> bytes:
    scaled = np.clip(np.round(samples.astype(np.float64) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


async def _recv(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    try:
        message = await ws.get_message()
    except trio_websocket.ConnectionClosed as exc:
        raise ClientError(f"server closed the connection ({exc.reason})") from None
    if not isinstance(message, str):
        raise ClientError("server sent a binary frame")
    reply = json.loads(message)
    if not isinstance(reply, dict):
        raise ClientError(f"unexpected reply: {message}")
    if reply.get("status") == "error":
        raise ClientError(f"server error: {reply.get('message')}")
    return reply


async def stream_pcm(
    url: str,
    pcm: bytes,
    *,
    sample_rate: int = 16000,
    channels: int = 1,
    name: str = "audio.wav",
    nbest: int = 1,
    chunk_ms: float = 85.0,
    pipeline: bool = False,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Stream PCM16 bytes as one stream; return the server's end reply.

    ``on_partial`` is called with every partial reply, in order.  Raises
    :class:`ClientError` on an error reply or a protocol violation.
    """
    frame_bytes = 2 * channels
    chunk_bytes = max(1, round(sample_rate * chunk_ms / 1000)) * frame_bytes
    chunks = [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
    start = {"name": name, "signal": "start", "nbest": nbest, "sampleRate": sample_rate, "channels": channels}
    partial = on_partial or (lambda reply: None)
    async with trio_websocket.open_websocket_url(url, max_message_size=16 << 20) as ws:
        await ws.send_message(json.dumps(start))
        ready = await _recv(ws)
        if ready.get("signal") != "server_ready":
            raise ClientError(f"expected server_ready, got {ready}")
        if pipeline:
            final: dict[str, Any] = {}
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    for _ in chunks:
                        partial(await _recv(ws))
                    final.update(await _recv(ws))

                nursery.start_soon(reader)
                for chunk in chunks:
                    await ws.send_message(chunk)
                    await trio.sleep(chunk_ms / 1000)
                await ws.send_message(json.dumps({"name": name, "signal": "end", "nbest": nbest}))
        else:
            for chunk in chunks:
                await ws.send_message(chunk)
                partial(await _recv(ws))
            await ws.send_message(json.dumps({"name": name, "signal": "end", "nbest": nbest}))
            final = await _recv(ws)
    if "result" not in final:
        raise ClientError(f"expected the end reply, got {final}")
    return final


async def stream_file(url: str, path: str | Path, **options: Any) -> dict[str, Any]:
    """Read a WAV file and :func:`stream_pcm` it under its file name."""
    samples, rate = read_wav(path)
    options.setdefault("name", Path(path).name)
    return await stream_pcm(url, _to_pcm16(samples), sample_rate=rate, channels=samples.shape[1], **options)


# ---------------------------------------------------------------- CLI


def add_client_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``client`` sub-command to ``trio-asr``'s parser."""
    parser = subparsers.add_parser(
        "client",
        help="stream a WAV file to a server and print the transcript",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("file", type=Path, help="WAV file (any rate, PCM or float, mono or multi-channel)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses to ask for (default 1)")
    parser.add_argument("--chunk-ms", type=float, default=85.0, help="audio per frame in ms (default 85)")
    parser.add_argument(
        "--pipeline", action="store_true", help="send at real-time pace without waiting for replies"
    )
    parser.add_argument("--json", action="store_true", help="print the server's end reply as JSON")
    parser.set_defaults(run=run_client)
    return parser


def run_client(args: argparse.Namespace) -> int:
    live = sys.stderr.isatty() and not args.json
    width = 0

    def show(reply: dict[str, Any]) -> None:
        nonlocal width
        text = str(reply.get("result", ""))
        sys.stderr.write("\r" + text.ljust(width))
        sys.stderr.flush()
        width = len(text)

    if args.nbest < 1 or not math.isfinite(args.chunk_ms) or args.chunk_ms <= 0:
        print("trio-asr client: --nbest must be >= 1 and --chunk-ms > 0", file=sys.stderr)
        return 2
    try:
        final = trio.run(
            lambda: stream_file(
                args.url,
                args.file,
                nbest=args.nbest,
                chunk_ms=args.chunk_ms,
                pipeline=args.pipeline,
                on_partial=show if live else None,
            )
        )
    except (ClientError, OSError, ValueError, trio_websocket.HandshakeError) as exc:
        if live and width:
            sys.stderr.write("\n")
        print(f"trio-asr client: {exc}", file=sys.stderr)
        return 1
    if live:
        sys.stderr.write("\r" + " " * width + "\r")
    if args.json:
        print(json.dumps(final, ensure_ascii=False))
    else:
        print(final["result"])
        for i, hyp in enumerate(final.get("nbest", [])[1:], start=2):
            print(f"  {i}. {hyp['text']}  ({hyp['score']:.2f})")
    return 0
