"""A real server on the fixture model in a background thread, for tests whose
client is synchronous (a browser, a subprocess).

:func:`serve_in_thread` runs :class:`trio_asr.serving.server.Server` in its own
``trio.run`` and stops it (drained) when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_asr.serving.config import ServerConfig
from trio_asr.recognition.model import load_model
from trio_asr.recognition.recognizer import Recognizer
from trio_asr.serving.server import Server


@attrs.define
class ThreadedServer:
    server: Server
    port: int
    audio_dir: Path
    page_url: str


@contextlib.contextmanager
def serve_in_thread(model_dir: Path, *, audio_dir: Path, **settings: Any) -> Iterator[ThreadedServer]:
    """The server on 127.0.0.1 (any free port); its page is at ``page_url``."""
    config = ServerConfig(host="127.0.0.1", port=0, audio_dir=audio_dir, **settings)
    recognizer = Recognizer(load_model(model_dir), beam=10)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        server = Server(config, recognizer)
        box["server"] = server
        box["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            started.set()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported by the waiting test
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(60)
    if "error" in box or "server" not in box:
        raise RuntimeError(f"server did not start: {box.get('error')!r}")
    server: Server = box["server"]
    scheme = "https" if server.scheme == "wss" else "http"
    try:
        yield ThreadedServer(server, server.port, audio_dir, f"{scheme}://127.0.0.1:{server.port}/")
    finally:
        trio.from_thread.run_sync(server.shutdown, trio_token=box["token"])
        thread.join(30)
