"""One open audio stream of a connection: its decoding, recording and accounting.

A session's decoder task keeps one :class:`OpenStream` between ``start``
and the end of the stream.  It records every byte received (the WAV is
opened at the first of them, so a stream without audio leaves no file),
and :meth:`OpenStream.close` finishes the file, counts the stream in the
metrics and the connection's totals, and logs it, whichever way the
stream ended.
"""

from __future__ import annotations

import contextlib
import logging

import attrs
import trio

from trio_asr.recognition.batched import StreamDecoder
from trio_asr.serving.logs import log_event
from trio_asr.protocol.messages import StartStream
from trio_asr.serving.metrics import ServerMetrics
from trio_asr.serving.recording import AudioSaveError, AudioStore, Recording
from trio_asr.protocol.replies import StreamReplies

__all__ = ["ConnectionTotals", "OpenStream"]

log = logging.getLogger("trio_asr.serving.server")

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


@attrs.define(eq=False)
class OpenStream:
    """See the module docstring.  ``limiter`` bounds the worker threads its
    file I/O runs in; ``conn_id`` names the connection in logs."""

    start: StartStream
    decoding: StreamDecoder
    replies: StreamReplies
    audio: AudioStore
    metrics: ServerMetrics
    totals: ConnectionTotals
    limiter: trio.CapacityLimiter
    conn_id: int
    recording: Recording | None = None
    samples: int = 0
    closed: bool = False
    save_failed: bool = False

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.start.sample_rate

    def received(self, samples: int) -> None:
        """Count samples of audio received (decoded or not)."""
        self.samples += samples
        self.metrics.audio_received(samples / self.start.sample_rate)

    async def record(self, pcm: bytes) -> None:
        """Keep received bytes, opening the file at the first of them;
        raises :class:`~trio_asr.serving.recording.AudioSaveError`."""
        if not pcm or self.save_failed or not self.audio.saving:
            return
        if self.recording is None:
            self.recording = await trio.to_thread.run_sync(self.audio.open, self.start, limiter=self.limiter)
        if self.recording is not None and self.recording.append(pcm):
            await trio.to_thread.run_sync(self.recording.write_pending, limiter=self.limiter)

    async def keep(self, pcm: bytes) -> None:
        """:meth:`record`, for a stream that is ending: a save error is logged."""
        try:
            await self.record(pcm)
        except AudioSaveError as exc:
            log.warning("connection id=%d: %s", self.conn_id, exc)
            self.note_save_failed()

    def keep_now(self, pcm: bytes) -> None:
        """Keep bytes without waiting (under cancellation); :meth:`close` writes them."""
        if self.recording is not None and not self.save_failed:
            self.recording.append(pcm)

    def note_save_failed(self) -> None:
        """Count this stream's save failure (once)."""
        if not self.save_failed:
            self.metrics.save_failed()
        self.save_failed = True

    def close(self, how: str, text: str | None = None) -> None:
        """Finish the recording (blocking I/O), count and log the stream;
        raises :class:`~trio_asr.serving.recording.AudioSaveError` after all that."""
        self.closed = True
        try:
            if self.recording is not None:
                self.recording.close()
                with contextlib.suppress(OSError):
                    self.metrics.audio_saved(self.recording.path.stat().st_size)
        except AudioSaveError:
            self.note_save_failed()
            how, text = "error", None
            raise
        finally:
            decode_seconds = self.decoding.decode_seconds
            self.totals.audio_seconds += self.audio_seconds
            self.totals.decode_seconds += decode_seconds
            self.metrics.stream_ended(_OUTCOMES[how])
            self.metrics.decode_cpu(self.decoding.cpu_seconds)
            rtf = decode_seconds / self.audio_seconds if self.samples else 0.0
            log_event(
                log, "stream", conn=self.conn_id, name=self.start.name,
                saved=str(self.recording.path) if self.recording else None,
                audio_s=round(self.audio_seconds, 2), rtf=round(rtf, 3), outcome=how, text=text,
            )  # fmt: skip

    async def aclose(self, how: str, text: str | None = None) -> None:
        """:meth:`close`, in a worker thread when a file is to be finished
        (without one it is only counting, cheaper than a thread hop)."""
        if self.recording is None:
            self.close(how, text)
        else:
            await trio.to_thread.run_sync(self.close, how, text, limiter=self.limiter)

    def cut(self, how: str) -> None:
        """Close a stream that is being torn down, here and now (also under
        cancellation); a save error is logged, the stream is gone either way."""
        if self.closed:
            return
        try:
            self.close(how)
        except AudioSaveError as exc:
            log.warning("connection id=%d: %s", self.conn_id, exc)
