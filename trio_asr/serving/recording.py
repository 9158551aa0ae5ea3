"""Saving what each stream received, exactly as the client sent it.

:class:`AudioStore` is the server-wide side: where streams are saved,
whether the directory works (checked at startup, and tracked afterwards so
that ``/health`` can say when it fails).  :class:`Recording` is one stream's
WAV file with the one save policy: received PCM is collected and written in
pieces of :data:`SAVE_EVERY_BYTES` (in a worker thread, by the caller), and
always completely when the stream ends, however it ends.

Every method here does blocking file I/O: call them from worker threads,
except where a stream is being torn down under cancellation.  Failures are
raised as :class:`AudioSaveError` with a one-line message.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from trio_asr.audio import WavWriter, create_unique_wav
from trio_asr.protocol.messages import StartStream

__all__ = ["SAVE_EVERY_BYTES", "AudioSaveError", "AudioStore", "Recording"]

#: received audio is written once this much is waiting (and when a stream ends)
SAVE_EVERY_BYTES = 32768


class AudioSaveError(Exception):
    """Received audio could not be written (disk full, directory gone, ...)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class AudioStore:
    """Where streams are saved; ``directory=None`` saves nothing.

    :attr:`failure` is the last save error (``None`` once a later save
    worked): the server reports it on ``/health``.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.failure: str | None = None

    @property
    def saving(self) -> bool:
        return self.directory is not None

    def check(self) -> None:
        """Create the directory if needed and prove a file can be written in it."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.directory):
                pass
        except OSError as exc:
            raise AudioSaveError(f"cannot save audio in {self.directory}: {_describe(exc)}") from None

    def open(self, start: StartStream) -> Recording | None:
        """A new recording for ``start`` (``None`` when not saving)."""
        if self.directory is None:
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path, file = create_unique_wav(self.directory, start.name)
            writer = WavWriter(file, start.sample_rate, start.channels)
        except (OSError, ValueError) as exc:
            raise self.record_failure(exc) from None
        self.failure = None
        return Recording(self, path, writer)

    def record_failure(self, exc: BaseException) -> AudioSaveError:
        """Remember a save failure for /health; the error to raise."""
        self.failure = _describe(exc)
        return AudioSaveError(f"cannot save audio: {self.failure}")


class Recording:
    """One stream's WAV file; see the module docstring for the policy."""

    def __init__(self, store: AudioStore, path: Path, writer: WavWriter) -> None:
        self.store = store
        self.path = path
        self._writer = writer
        self._pending = bytearray()
        self.closed = False

    def append(self, pcm: bytes) -> bool:
        """Keep received bytes; true when enough waits that :meth:`write_pending` is due."""
        self._pending += pcm
        return len(self._pending) >= SAVE_EVERY_BYTES

    def write_pending(self) -> None:
        if not self._pending:
            return
        try:
            self._writer.write(self._pending)
        except (OSError, ValueError) as exc:
            raise self.store.record_failure(exc) from None
        self._pending.clear()
        self.store.failure = None

    def close(self) -> None:
        """Write what is still pending and close the file (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.write_pending()
        finally:
            try:
                self._writer.close()
            except OSError as exc:
                raise self.store.record_failure(exc) from None

    def __repr__(self) -> str:
        return f"Recording({os.fspath(self.path)!r})"
