"""One WebSocket connection: reader, decoder and writer tasks in a nursery.

*reader* turns frames into events through the sans-I/O
:class:`~trio_asr.protocol.ConnectionProtocol`; *decoder* runs the
recognizer (in worker threads; model chunks through the server's
:class:`~trio_asr.model_service.ModelService` when batching) and saves the
audio; *writer* sends the replies in order, then the close code after an
error.  Bounded memory channels join them, so a slow client or a slow model
applies backpressure, and replies keep the order of the requests: exactly
one per binary frame.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import numpy as np
import trio
import trio_websocket

from trio_asr.audio import WavWriter, create_unique_wav
from trio_asr.model import ModelStream
from trio_asr.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    ConnectionProtocol,
    EndStream,
    ErrorReply,
    Event,
    FinalResult,
    PartialResult,
    Reply,
    ServerReady,
    StartStream,
    State,
    encode_reply,
)
from trio_asr.recognizer import RecognitionResult

if TYPE_CHECKING:
    from trio_asr.server import Server

__all__ = ["Recognizer", "RecognizerStream", "Session", "SteppedRecognizerStream"]

log = logging.getLogger("trio_asr.server")

# Per-frame work small enough for the event loop itself: a worker-thread
# round trip costs more than it.  Everything else (model calls, large or
# resampled frames, long transcripts, disk writes) runs in worker threads.
#: a frame's features, at the model's rate (~0.15 ms for 4096 samples)
INLINE_MAX_SAMPLES = 4096
#: the search over one chunk and the partial text, while the n-best texts are
#: short (text costs ~1 us per token and hypothesis)
INLINE_MAX_FRAMES = 16
INLINE_MAX_TEXT = 256
#: received audio is written to the stream's WAV (in a worker thread) once
#: this much is waiting, and always when the stream ends
SAVE_EVERY_BYTES = 32768


class RecognizerStream(Protocol):
    def accept_waveform(self, samples: np.ndarray) -> None: ...
    def decode(self) -> None: ...
    def input_finished(self) -> None: ...
    def result(self) -> RecognitionResult: ...


class SteppedRecognizerStream(RecognizerStream, Protocol):
    """A stream whose model chunks can be run elsewhere (batched); see
    :class:`trio_asr.recognizer.RecognizerStream`."""

    model_stream: ModelStream

    def accept_log_probs(self, log_probs: np.ndarray) -> None: ...
    def flush_input(self) -> None: ...


class Recognizer(Protocol):
    """What the server needs of a recognizer (see ``trio_asr.recognizer``).

    ``create_stream(nbest, sample_rate)`` returns a stream taking float32 mono
    samples at ``sample_rate`` (resampling them to the model's rate itself, or
    raising ValueError for a rate it cannot take); ``result()`` gives a
    :class:`~trio_asr.recognizer.RecognitionResult`.
    Stream methods are called from worker threads, one call at a time per
    stream.

    A recognizer with a ``model`` attribute (an
    :class:`~trio_asr.model.AcousticModel`) must create
    :class:`SteppedRecognizerStream` s; with ``config.batching`` their chunks
    are then run by the server's :class:`~trio_asr.model_service.ModelService`.
    """

    sample_rate: int

    def create_stream(self, nbest: int, sample_rate: int) -> RecognizerStream: ...


def _close_reason(message: str) -> str:
    """Close reasons are limited to 123 bytes of UTF-8."""
    return message.encode("utf-8")[:120].decode("utf-8", "ignore")


@attrs.define
class _Stream:
    """Decoder-side state of one open audio stream."""

    start: StartStream
    recognizer_stream: RecognizerStream
    wav: WavWriter | None
    path: Path | None
    #: PCM received but not yet written to ``wav``
    unsaved: bytearray = attrs.Factory(bytearray)
    samples: int = 0
    decode_seconds: float = 0.0
    closed: bool = False

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.start.sample_rate


class Session:
    """One WebSocket connection: reader, decoder and writer tasks."""

    def __init__(self, server: Server, ws: trio_websocket.WebSocketConnection, conn_id: int, peer: str) -> None:
        self.server = server
        self.config = server.config
        self.ws = ws
        self.id = conn_id
        self.peer = peer
        self.protocol = ConnectionProtocol(self.config.protocol_limits())
        self.outcome = "ok"
        self._stopping = False
        self._read_scope: trio.CancelScope | None = None
        self._woken = False
        self._streams = 0
        self._audio_seconds = 0.0
        self._decode_seconds = 0.0
        self._failed = False
        self._nursery: trio.Nursery | None = None

    def wake(self) -> None:
        """Make the reader look at the server state (used when draining starts)."""
        if self._read_scope is not None:
            self._woken = True
            self._read_scope.cancel()

    def stop(self) -> None:
        """End the session soon: error 1001 after the replies already due."""
        self._stopping = True
        self.wake()

    async def run(self) -> None:
        size = self.config.channel_size
        events_tx, events_rx = trio.open_memory_channel[Event](size)
        replies_tx, replies_rx = trio.open_memory_channel[Reply](size)
        started = time.perf_counter()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reader, events_tx)
                nursery.start_soon(self._decoder, events_rx, replies_tx)
                nursery.start_soon(self._writer, replies_rx)
        finally:
            rtf = self._decode_seconds / self._audio_seconds if self._audio_seconds else 0.0
            log.info(
                "connection id=%d peer=%s streams=%d audio_s=%.2f rtf=%.3f duration_s=%.2f outcome=%s",
                self.id,
                self.peer,
                self._streams,
                self._audio_seconds,
                rtf,
                time.perf_counter() - started,
                self.outcome,
            )

    # ------------------------------------------------------------ reader

    async def _reader(self, events: trio.MemorySendChannel[Event]) -> None:
        protocol = self.protocol
        async with events:
            while protocol.state is not State.CLOSED:
                out = await self._next_events()
                for event in out:
                    await events.send(event)

    async def _next_events(self) -> list[Event]:
        protocol = self.protocol
        if self._stopping or (self.server.draining and protocol.state is State.IDLE):
            return protocol.fail(CLOSE_GOING_AWAY, "server is shutting down")
        message: str | bytes | None = None
        with trio.move_on_after(self.config.idle_timeout) as scope:
            self._read_scope = scope
            try:
                message = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return protocol.connection_closed()
            finally:
                self._read_scope = None
        if scope.cancelled_caught:
            if self._woken:
                self._woken = False
                return []
            return protocol.fail(CLOSE_POLICY_VIOLATION, f"no message for {self.config.idle_timeout:g} s")
        if isinstance(message, str):
            return protocol.receive_text(message)
        assert isinstance(message, bytes)
        return protocol.receive_bytes(message)

    # ------------------------------------------------------------ decoder

    async def _decoder(self, events: trio.MemoryReceiveChannel[Event], replies: trio.MemorySendChannel[Reply]) -> None:
        stream: _Stream | None = None
        async with events, replies:
            try:
                async for event in events:
                    if self._failed:
                        continue
                    try:
                        stream = await self._handle(event, stream, replies)
                    except _Unsupported as exc:
                        self._failed = True
                        await self._fail(replies, stream, ErrorReply(CLOSE_UNSUPPORTED_DATA, "start", str(exc)))
                    except Exception as exc:
                        log.exception("connection id=%d: internal error", self.id)
                        self._failed = True
                        reply = ErrorReply(CLOSE_INTERNAL_ERROR, None, f"internal error: {type(exc).__name__}")
                        await self._fail(replies, stream, reply)
            finally:
                self._cut(stream, "cancelled")

    async def _fail(self, replies: trio.MemorySendChannel[Reply], stream: _Stream | None, reply: ErrorReply) -> None:
        self._cut(stream, "error")
        self.outcome = f"closed {reply.code}: {reply.message}"
        await replies.send(reply)

    async def _handle(
        self, event: Event, stream: _Stream | None, replies: trio.MemorySendChannel[Reply]
    ) -> _Stream | None:
        if isinstance(event, Audio):
            assert stream is not None
            await replies.send(await self._feed(stream, event))
            return stream
        if isinstance(event, StartStream):
            stream = await self._run(self._open, event)
            self._streams += 1
            await replies.send(ServerReady())
            return stream
        if isinstance(event, EndStream):
            assert stream is not None
            if event.reply:
                final = await self._finish(stream)
                self._close(stream, "finished")
                await replies.send(final)
            else:
                self._close(stream, "cut off")
                if self.outcome == "ok":
                    self.outcome = "disconnected mid-stream"
            return None
        assert isinstance(event, ErrorReply)
        self.outcome = f"closed {event.code}: {event.message}"
        await replies.send(event)
        return stream

    async def _run(self, fn: Any, *args: Any) -> Any:
        """Run a blocking call in a worker thread; never blocks the event loop."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.server.limiter)

    def _open(self, start: StartStream) -> _Stream:
        try:
            recognizer_stream = self.server.recognizer.create_stream(start.nbest, start.sample_rate)
        except ValueError as exc:
            raise _Unsupported(str(exc)) from None
        wav = path = None
        if self.config.save_audio:
            self.config.audio_dir.mkdir(parents=True, exist_ok=True)
            path, file = create_unique_wav(self.config.audio_dir, start.name)
            wav = WavWriter(file, start.sample_rate, start.channels)
        return _Stream(start, recognizer_stream, wav, path)

    async def _feed(self, stream: _Stream, audio: Audio) -> PartialResult:
        """Save and decode one audio frame: features, model (batched through
        the service or run by the stream itself), search, partial result."""
        t0 = time.perf_counter()
        service = self.server.service
        if service is None:
            partial_result = await self._run(self._feed_unbatched, stream, audio)
        else:
            rs = stream.recognizer_stream
            if self._inline_accept(stream, audio):
                self._accept(stream, audio)
            else:
                await self._run(self._accept, stream, audio)
            log_probs = await service.decode(rs.model_stream)
            if self._inline_search(stream, log_probs):
                partial_result = self._partial(stream, log_probs)
            else:
                partial_result = await self._run(self._partial, stream, log_probs)
        stream.decode_seconds += time.perf_counter() - t0
        return partial_result

    async def _finish(self, stream: _Stream) -> FinalResult:
        """End of the stream: decode the padded tail, give the final result."""
        t0 = time.perf_counter()
        service = self.server.service
        rs = stream.recognizer_stream
        if service is None:
            await self._run(rs.input_finished)
            final = await self._run(self._final, stream, None)
        else:
            await self._run(rs.flush_input)
            log_probs = await service.decode(rs.model_stream)
            final = await self._run(self._final, stream, log_probs)
        stream.decode_seconds += time.perf_counter() - t0
        return final

    def _inline_accept(self, stream: _Stream, audio: Audio) -> bool:
        """Whether :meth:`_accept` is cheap enough for the event loop."""
        return (
            audio.samples.size <= INLINE_MAX_SAMPLES
            and stream.start.sample_rate == self.server.recognizer.sample_rate
            and (stream.wav is None or len(stream.unsaved) + len(audio.pcm) < SAVE_EVERY_BYTES)
        )

    def _inline_search(self, stream: _Stream, log_probs: np.ndarray) -> bool:
        """Whether :meth:`_partial` is cheap enough for the event loop."""
        rs = stream.recognizer_stream
        if len(log_probs) == 0 and rs.result_is_cached:
            return True
        if len(log_probs) > INLINE_MAX_FRAMES or not rs.result_is_cached:
            return False
        return len(rs.result().text) * stream.start.nbest <= INLINE_MAX_TEXT

    def _accept(self, stream: _Stream, audio: Audio) -> None:
        """Keep a frame's audio for saving (writing it out once enough is
        waiting) and compute its features."""
        if stream.wav is not None:
            stream.unsaved += audio.pcm
            if len(stream.unsaved) >= SAVE_EVERY_BYTES:
                self._save(stream)
        samples = audio.samples
        stream.samples += samples.size
        if samples.size:
            stream.recognizer_stream.accept_waveform(samples)

    def _feed_unbatched(self, stream: _Stream, audio: Audio) -> PartialResult:
        self._accept(stream, audio)
        self._save(stream)
        if audio.samples.size:
            stream.recognizer_stream.decode()
        return self._partial(stream, None)

    def _partial(self, stream: _Stream, log_probs: np.ndarray | None) -> PartialResult:
        rs = stream.recognizer_stream
        if log_probs is not None:
            rs.accept_log_probs(log_probs)
        result = rs.result()
        return PartialResult(text=result.text, nbest=_nbest(result, stream.start.nbest))

    def _final(self, stream: _Stream, log_probs: np.ndarray | None) -> FinalResult:
        rs = stream.recognizer_stream
        if log_probs is not None:
            rs.accept_log_probs(log_probs)
        result = rs.result()
        times = tuple((t.piece, float(t.start), float(t.end)) for t in result.times)
        return FinalResult(
            name=stream.start.name, text=result.text, nbest=_nbest(result, stream.start.nbest), times=times
        )

    @staticmethod
    def _save(stream: _Stream) -> None:
        if stream.wav is not None and stream.unsaved:
            stream.wav.write(stream.unsaved)
            stream.unsaved.clear()

    def _close(self, stream: _Stream, how: str) -> None:
        stream.closed = True
        if stream.wav is not None:
            try:
                self._save(stream)  # at most SAVE_EVERY_BYTES
            finally:
                stream.wav.close()
        self._audio_seconds += stream.audio_seconds
        self._decode_seconds += stream.decode_seconds
        rtf = stream.decode_seconds / stream.audio_seconds if stream.samples else 0.0
        log.info(
            "stream conn=%d name=%r saved=%s audio_s=%.2f rtf=%.3f outcome=%s",
            self.id,
            stream.start.name,
            stream.path,
            stream.audio_seconds,
            rtf,
            how,
        )

    def _cut(self, stream: _Stream | None, how: str) -> None:
        if stream is not None and not stream.closed:
            self._close(stream, how)

    # ------------------------------------------------------------ writer

    async def _writer(self, replies: trio.MemoryReceiveChannel[Reply]) -> None:
        open_ = True
        async with replies:
            async for reply in replies:
                if not open_:
                    continue  # keep draining so the decoder never blocks
                try:
                    with trio.move_on_after(self.config.idle_timeout) as scope:
                        await self.ws.send_message(encode_reply(reply))
                    if scope.cancelled_caught:
                        log.info("connection id=%d: client stopped reading; dropping it", self.id)
                        self.outcome = "client stopped reading"
                        assert self._nursery is not None
                        self._nursery.cancel_scope.cancel()
                        return
                    if isinstance(reply, ErrorReply):
                        open_ = False
                        with trio.move_on_after(self.config.handshake_timeout):
                            await self.ws.aclose(reply.code, _close_reason(reply.message))
                except trio_websocket.ConnectionClosed:
                    open_ = False


class _Unsupported(Exception):
    """The client's audio format cannot be served (close 1003)."""


def _nbest(result: RecognitionResult, n: int) -> tuple[tuple[str, float], ...]:
    if n <= 1:
        return ()
    return tuple((str(text), float(score)) for text, score in list(result.nbest)[:n])
