"""Helpers for the server tests: test-double recognizer and model, a tiny client.

:class:`CountingRecognizer` goes through the same decode path as the real
recognizer (its chunks run by the model service, batched), with results
that summarise the audio; :class:`ControlledModel` wraps a real model so a
test can hold, count or fail its calls.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio_websocket

from trio_asr.serving.config import ServerConfig
from trio_asr.recognition.features import FbankOptions
from trio_asr.recognition.model import AcousticModel, ModelState, ModelStream
from trio_asr.recognition.recognizer import RecognitionResult, TokenTime
from trio_asr.recognition.resample import StreamingResampler
from trio_asr.serving.server import WS_PATH, Server, serve
from trio_asr.recognition.stream_options import StreamOptions


class CountingModel(AcousticModel):
    """A stand-in acoustic model for :class:`CountingRecognizer`: one feature
    frame per chunk, a meaningless output; the recognizer's ``decode_delay``
    slows each call and ``fail_on_decode`` makes it raise."""

    chunk_frames = chunk_shift = subsampling = feature_dim = 1
    frame_shift_s = 0.01
    vocab_size = 2

    def __init__(self, recognizer: CountingRecognizer) -> None:
        self.recognizer = recognizer

    @property
    def feature_options(self) -> FbankOptions:
        return FbankOptions()

    def initial_state(self) -> ModelState:
        return ModelState((np.zeros((1, 1), np.float32),), (0,))

    def run(self, features: np.ndarray, states: Sequence[ModelState]) -> tuple[np.ndarray, list[ModelState]]:
        if self.recognizer.decode_delay:
            threading.Event().wait(self.recognizer.decode_delay)
        if self.recognizer.fail_on_decode:
            raise RuntimeError("boom")
        return np.zeros((len(states), 1, self.vocab_size), np.float32), list(states)


class CountingStream:
    """Test double of a recognizer stream: the "text" summarises the audio.

    ``n=<samples> s=<sum of samples * 32768>`` lets a test compute the
    expected result from the audio it sent, so lost, duplicated, reordered
    or cross-connection audio shows up in the text.  Each frame of audio
    makes one chunk for the model service, like real features would.
    """

    def __init__(self, recognizer: CountingRecognizer, nbest: int, sample_rate: int) -> None:
        self.recognizer = recognizer
        self.nbest = nbest
        # Like the real stream, resample to the recognizer's rate on the way in.
        self.resampler = (
            None if sample_rate == recognizer.sample_rate
            else StreamingResampler(sample_rate, recognizer.sample_rate)
        )
        self.model_stream = ModelStream(recognizer.model)
        self.samples: list[np.ndarray] = []
        self.finished = False

    def accept_waveform(self, samples: np.ndarray) -> None:
        assert samples.dtype == np.float32 and samples.ndim == 1
        assert not self.finished
        on_loop = threading.current_thread() is threading.main_thread()
        assert on_loop == self.recognizer.cheap_accept, "runs where cheap_to_accept said"
        if self.resampler is not None:
            samples = self.resampler.process(samples)
        self.samples.append(samples.copy())
        self.model_stream.accept_features(np.zeros((1, 1), np.float32))

    def flush_input(self) -> None:
        on_loop = threading.current_thread() is threading.main_thread()
        assert on_loop == self.recognizer.cheap_accept, "runs where cheap_to_flush said"
        if self.resampler is not None:
            self.samples.append(self.resampler.flush())
        self.finished = True
        self.model_stream.input_finished()

    def accept_log_probs(self, log_probs: np.ndarray) -> None:
        assert log_probs.shape[1:] == (CountingModel.vocab_size,)

    def cheap_to_accept(self, samples: int) -> bool:
        return self.recognizer.cheap_accept

    def cheap_to_search(self, frames: int) -> bool:
        return self.recognizer.cheap_search

    def cheap_to_flush(self) -> bool:
        return self.recognizer.cheap_accept

    def result(self) -> RecognitionResult:
        x = np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)
        text = summary(x) + (" final" if self.finished else "")
        nbest = tuple((text + "'" * i, -float(i)) for i in range(self.nbest))
        return RecognitionResult(text, nbest, (TokenTime("n", 0.0, x.size / self.recognizer.sample_rate),))


def summary(x: np.ndarray) -> str:
    return f"n={x.size} s={int(round(float(np.sum(x.astype(np.float64))) * 32768))}"


class CountingRecognizer:
    """Serves :class:`CountingStream` s through the production decode path."""

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self.model = CountingModel(self)
        self.streams: list[CountingStream] = []
        self.decode_delay = 0.0
        self.fail_on_decode = False
        self.refused_rates: set[int] = set()
        #: what its streams answer to cheap_to_accept (and cheap_to_flush) / cheap_to_search (on the event loop or not)
        self.cheap_accept = False
        self.cheap_search = True

    def create_stream(self, options: StreamOptions) -> CountingStream:
        if options.hotwords:
            raise ValueError("CountingRecognizer takes no hotwords")
        sample_rate = options.sample_rate or self.sample_rate
        if sample_rate in self.refused_rates:
            raise ValueError(f"cannot take audio at {sample_rate} Hz")
        stream = CountingStream(self, options.nbest, sample_rate)
        self.streams.append(stream)
        return stream

    def create_stream_steps(self, options: StreamOptions) -> Generator[None, None, CountingStream]:
        """:meth:`create_stream` in one step: nothing to compile."""
        yield from ()
        return self.create_stream(options)


class ControlledModel:
    """A real acoustic model whose :meth:`run` the test controls.

    Records each batch size and the first feature value of each chunk run
    (``first_features``, which tells the streams apart); ``gate`` (when set to a ``threading.Event``)
    holds every run until the event is set, ``entered`` is set whenever a run
    starts, runs whose index (0-based) is in ``fail_calls`` raise.  Swap
    ``gate`` for a new event before setting the old one to hold the next run
    too.  Everything else is the wrapped model's.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batch_sizes: list[int] = []
        self.first_features: list[list[float]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_calls: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, features: np.ndarray, states: Any) -> Any:
        call = len(self.batch_sizes)
        self.batch_sizes.append(len(features))
        self.first_features.append([float(chunk[0, 0]) for chunk in features])
        gate = self.gate
        self.entered.set()
        if gate is not None:
            gate.wait(30)
        if call in self.fail_calls:
            raise RuntimeError("model failure (test)")
        return self.inner.run(features, states)


def make_config(tmp_path: Path, **overrides: object) -> ServerConfig:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "audio_dir": tmp_path / "audio",
        "idle_timeout": 5.0,
        "grace_period": 2.0,
        "handshake_timeout": 2.0,
        "workers": 4,
    }
    values.update(overrides)
    return ServerConfig(**values)


async def start_server(nursery: trio.Nursery, tmp_path: Path, recognizer=None, **overrides: object) -> Server:
    config = make_config(tmp_path, **overrides)
    return await nursery.start(serve, config, recognizer or CountingRecognizer())


def ws_url(port: int, path: str = WS_PATH) -> str:
    return f"ws://127.0.0.1:{port}{path}"


def start_msg(name: str = "t.wav", **fields: Any) -> str:
    return json.dumps({"name": name, "signal": "start", "nbest": 1, **fields})


def end_msg(name: str = "t.wav") -> str:
    return json.dumps({"name": name, "signal": "end", "nbest": 1})


async def recv_json(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        message = await ws.get_message()
    assert isinstance(message, str)
    return json.loads(message)


async def replies_until_close(ws: trio_websocket.WebSocketConnection) -> tuple[list[dict[str, Any]], int]:
    """Every JSON reply until the server closes; (replies, close code)."""
    replies = []
    with trio.fail_after(10):
        try:
            while True:
                replies.append(json.loads(await ws.get_message()))
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            return replies, exc.reason.code


async def expect_close(ws: trio_websocket.WebSocketConnection) -> int:
    """Wait for the server's close; return its code."""
    with trio.fail_after(10):
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code


async def http_get(port: int, path: str, headers: str = "") -> tuple[int, bytes]:
    """Plain HTTP/1.1 GET (on a connection kept alive); returns (status, body)."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
            status, _, body, _ = await read_response(stream)
    return status, body


async def read_response(
    stream: trio.abc.Stream, buffered: bytes = b"", *, head_only: bool = False
) -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP response from ``stream`` (after ``buffered``, bytes already
    received): (status, headers with lower-case names, body, the bytes
    received after it).  The body is framed by Content-Length, chunked, or
    the close; ``head_only``: none (the answer to HEAD)."""
    data = bytearray(buffered)

    async def more() -> bool:
        chunk = await stream.receive_some()
        data.extend(chunk)
        return bool(chunk)

    while b"\r\n\r\n" not in data:
        assert await more(), f"connection closed inside a response head: {bytes(data)!r}"
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    data[:] = rest
    if head_only:
        return int(status_line.split(" ", 2)[1]), headers, b"", bytes(data)
    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(data) < size:
            assert await more(), "connection closed inside a response body"
        body, after = bytes(data[:size]), bytes(data[size:])
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in data:
                assert await more(), "connection closed inside a chunked body"
            size_line, _, tail = bytes(data).partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(tail) < size + 2:
                assert await more(), "connection closed inside a chunk"
                tail = bytes(data).partition(b"\r\n")[2]
            body += tail[:size]
            data[:] = tail[size + 2 :]
            if size == 0:
                break
        after = bytes(data)
    else:
        while await more():
            pass
        body, after = bytes(data), b""
    return int(status_line.split(" ", 2)[1]), headers, body, after


async def raw_websocket(port: int) -> trio.SocketStream:
    """A TCP stream past the WebSocket opening handshake, driven frame by frame."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some()
    assert head.startswith(b"HTTP/1.1 101") and head.endswith(b"\r\n\r\n")
    return stream
