"""One open audio stream of a connection: its decoding, replies, recording and accounting.

A session's decoder task opens an :class:`OpenStream` for each ``start``
(:meth:`OpenStream.open`, built from the whole parsed ``start``) and hands
it the stream's events: :meth:`~OpenStream.feed` answers an audio frame with
its partial reply, :meth:`~OpenStream.finish` answers ``end`` with the final
reply, and :meth:`~OpenStream.end` / :meth:`~OpenStream.cut` close a stream
that was cut off.  Every byte received is recorded (the WAV is opened at
the first of them, so a stream without audio leaves no file), and however
the stream ends its file is finished, it is counted in the metrics and the
connection's totals, and it is logged once.
"""

from __future__ import annotations

import contextlib
import logging

import attrs
import trio

from trio_asr.protocol.messages import Audio, FinalResult, PartialResult, StartStream
from trio_asr.recognition.batched import BatchedRecognizer, BatchedStream
from trio_asr.serving.logs import log_event
from trio_asr.serving.metrics import ServerMetrics
from trio_asr.serving.recording import AudioSaveError, AudioStore, Recording
from trio_asr.serving.second_pass import StreamReplies

__all__ = ["ConnectionTotals", "OpenStream", "StreamContext"]

log = logging.getLogger("trio_asr.server")

#: how a stream ended (as logged) -> its outcome in the metrics
_OUTCOMES = {
    "finished": "completed", "cut off": "disconnected", "error": "error", "shut down": "aborted", "cancelled": "aborted",
}  # fmt: skip


@attrs.define
class ConnectionTotals:
    """What a connection's streams added up to, for its log line."""

    streams: int = 0
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0


@attrs.frozen
class StreamContext:
    """What the streams of one connection share: the server's recognizer,
    audio store and metrics, the connection's totals, its id (for logs)
    and its peer ("host:port"; starts waiting for their hotwords to be
    compiled take turns by host)."""

    recognizer: BatchedRecognizer
    audio: AudioStore
    metrics: ServerMetrics
    totals: ConnectionTotals
    conn_id: int
    peer: str = ""


class OpenStream:
    """See the module docstring; one caller at a time."""

    def __init__(self, start: StartStream, decoding: BatchedStream, context: StreamContext) -> None:
        self.start = start
        self._decoding = decoding
        self._replies = StreamReplies.of(start, context.recognizer, context.metrics)  # with the second pass, if any
        self._context = context
        self._limiter = context.recognizer.limiter  # bounds the worker threads of its file I/O
        self._recording: Recording | None = None
        self._samples = 0
        self._save_failed = False
        self.closed = False

    @classmethod
    async def open(cls, start: StartStream, context: StreamContext) -> OpenStream:
        """The stream ``start`` asks for; raises ValueError (a
        :class:`~trio_asr.recognition.hotwords.HotwordError` among them)
        when the recognizer cannot take it, and
        :class:`~trio_asr.recognition.compile_queue.CompileQueueFull` when
        it cannot take it now."""
        decoding = await context.recognizer.open_stream(start.options, context.peer.rsplit(":", 1)[0])
        context.totals.streams += 1
        return cls(start, decoding, context)

    @property
    def audio_seconds(self) -> float:
        return self._samples / self.start.sample_rate

    # ------------------------------------------------------------ events

    async def feed(self, audio: Audio) -> PartialResult:
        """Record and decode a frame; the partial reply it is due.  Raises
        :class:`~trio_asr.serving.recording.AudioSaveError` when its audio
        cannot be saved."""
        self._received(audio)
        await self._record(audio.pcm)
        return self._replies.partial(audio.samples, await self._decoding.feed(audio.samples))

    async def finish(self) -> FinalResult:
        """The client ended the stream: decode the rest, close it; the final reply."""
        reply = await self._replies.final(await self._decoding.finish())  # after the second passes, if any
        await self.end("finished", reply.text)
        return reply

    async def keep(self, audio: Audio) -> None:
        """Record a frame no reply will answer (the stream is ending); a
        save error is logged."""
        self._received(audio)
        try:
            await self._record(audio.pcm)
        except AudioSaveError as exc:
            log.warning("connection id=%d: %s", self._context.conn_id, exc)

    def keep_now(self, pcm: bytes) -> None:
        """Keep bytes without waiting (under cancellation); closing writes them."""
        if self._recording is not None and not self._save_failed:
            self._recording.append(pcm)

    def _note_save_failed(self) -> None:
        """Count this stream's save failure (once)."""
        if not self._save_failed:
            self._context.metrics.save_failed()
        self._save_failed = True

    # ------------------------------------------------------------ closing

    async def end(self, how: str, text: str | None = None) -> None:
        """Close the stream (``how`` it ended, as logged), in a worker thread
        when a file is to be finished (without one it is only counting,
        cheaper than a thread hop); raises
        :class:`~trio_asr.serving.recording.AudioSaveError` after all that."""
        if self._recording is None:
            self._close(how, text)
        else:
            await trio.to_thread.run_sync(self._close, how, text, limiter=self._limiter)

    async def abort(self, how: str) -> None:
        """Close a stream that was cut off (``how``, as logged): as :meth:`cut`,
        in a worker thread when a file is to be finished."""
        if self.closed:
            return
        if self._recording is None:
            self.cut(how)
        else:
            await trio.to_thread.run_sync(self.cut, how, limiter=self._limiter)

    def cut(self, how: str) -> None:
        """Close a stream that is being torn down, here and now (also under
        cancellation); a save error is logged (unless the stream's saving had
        failed already: one line per failure), the stream is gone either way."""
        if self.closed:
            return
        failed_already = self._save_failed
        try:
            self._close(how)
        except AudioSaveError as exc:
            if not failed_already:
                log.warning("connection id=%d: %s", self._context.conn_id, exc)

    # ------------------------------------------------------------ internals

    def _received(self, audio: Audio) -> None:
        self._samples += audio.samples.size
        self._context.metrics.audio_received(audio.samples.size / self.start.sample_rate)

    async def _record(self, pcm: bytes) -> None:
        """Keep received bytes, opening the file at the first of them."""
        audio = self._context.audio
        if not pcm or self._save_failed or not audio.saving:
            return
        try:
            if self._recording is None:
                self._recording = await trio.to_thread.run_sync(audio.open, self.start, limiter=self._limiter)
            if self._recording is not None and self._recording.append(pcm):
                await trio.to_thread.run_sync(self._recording.write_pending, limiter=self._limiter)
        except AudioSaveError:
            self._note_save_failed()
            raise

    def _close(self, how: str, text: str | None = None) -> None:
        """Finish the recording (blocking I/O), count and log the stream."""
        self.closed = True
        self._replies.close()
        context, recording = self._context, self._recording
        try:
            if recording is not None:
                recording.close()
                with contextlib.suppress(OSError):
                    context.metrics.audio_saved(recording.path.stat().st_size)
        except AudioSaveError:
            self._note_save_failed()
            how, text = "error", None
            raise
        finally:
            decode_seconds = self._decoding.decode_seconds
            context.totals.audio_seconds += self.audio_seconds
            context.totals.decode_seconds += decode_seconds
            context.metrics.stream_ended(_OUTCOMES[how])
            context.metrics.decode_cpu(self._decoding.cpu_seconds)
            rtf = decode_seconds / self.audio_seconds if self._samples else 0.0
            log_event(
                log, "stream", conn=context.conn_id, name=self.start.name,
                saved=str(recording.path) if recording else None,
                audio_s=round(self.audio_seconds, 2), rtf=round(rtf, 3), outcome=how, text=text,
            )  # fmt: skip
