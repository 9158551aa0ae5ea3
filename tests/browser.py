"""A headless Chromium driven over the DevTools protocol, for the page tests.

No WebDriver: Chromium is started with ``--remote-debugging-port=0``, the
browser's DevTools WebSocket address is read from its stderr, and commands are
sent over it (``websockets``' synchronous client) to one page target attached
in flattened mode.  The microphone is Chromium's fake capture device fed from
a WAV file.  :func:`find_chromium` returns ``None`` where no Chromium is
installed, so the tests can skip, saying so.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    explicit = os.environ.get("TRIO_ASR_CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    """A DevTools command failed or the page threw."""


class Browser:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, executable: str, *, fake_audio: Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self._ws = None
        self._stack = contextlib.ExitStack()
        self._profile = tempfile.TemporaryDirectory(prefix="trio-asr-chromium-", ignore_cleanup_errors=True)
        args = [
            executable,
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--autoplay-policy=no-user-gesture-required",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--user-data-dir={self._profile.name}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1000,1100",
            *extra_args,
        ]
        if fake_audio is not None:
            args.append(f"--use-file-for-fake-audio-capture={fake_audio}%noloop")
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.stderr_lines: list[str] = []
        url = self._devtools_url(timeout=30)
        self._ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=10))
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.call(f"{domain}.enable", session=True)

    def _devtools_url(self, timeout: float) -> str:
        found: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self._proc.stderr is not None
            for line in self._proc.stderr:
                self.stderr_lines.append(line.rstrip())
                if line.startswith("DevTools listening on ") and not found:
                    found.append(line.split(" on ", 1)[1].strip())
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not found:
            self.close()
            raise BrowserError("Chromium did not start: " + " | ".join(self.stderr_lines[-5:]))
        return found[0]

    def call(self, method: str, *, session: bool = False, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Send one command; return its result (events meanwhile go to :attr:`events`)."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("document.readyState === 'complete'", timeout=20)

    def evaluate(self, expression: str, *, timeout: float = 30) -> Any:
        """Evaluate in the page as if from a user gesture (a click); awaits promises."""
        result = self.call(
            "Runtime.evaluate",
            session=True,
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
            userGesture=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"page threw: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float) -> Any:
        """Poll until ``expression`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}; page: {self.page_summary()}")
            time.sleep(0.1)

    def page_summary(self) -> dict[str, Any]:
        return self.evaluate(
            "({state: document.body.dataset.state, status: document.getElementById('status').textContent,"
            " error: document.getElementById('error').textContent,"
            " partial: document.getElementById('partial').textContent,"
            " final: document.getElementById('final').textContent})"
        )

    def set_file(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(path)])

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def console_messages(self) -> list[str]:
        out = []
        for event in self.events:
            if event.get("method") == "Runtime.consoleAPICalled":
                args = event["params"].get("args", [])
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif event.get("method") == "Runtime.exceptionThrown":
                out.append(str(event["params"]["exceptionDetails"].get("exception", {}).get("description")))
        return out

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):  # the browser exits while answering
                self.call("Browser.close", timeout=5)
        self._stack.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
