"""Saving what each stream received, exactly as the client sent it.

:class:`AudioStore` is the server-wide side: where streams are saved,
whether the directory works (checked at startup, and tracked afterwards so
that ``/health`` can say when it fails).  :class:`Recording` is one stream's
WAV file with the one save policy: received PCM is collected and written in
pieces of :data:`SAVE_EVERY_BYTES` (in a worker thread, by the caller), and
always completely when the stream ends, however it ends.  A write that fails
part-way (a full disk) leaves a valid WAV of the whole frames that reached
the file (see :class:`~trio_asr.audio.WavWriter`); the rest is tried again
when the recording closes.

Once a save has failed, :meth:`AudioStore.probe` (run every
:data:`PROBE_EVERY_SECONDS` by the server, while the failure lasts) writes,
syncs and deletes a small file in the directory, and clears the failure when
that works: ``/health`` recovers without waiting for a stream to save.

Every method here does blocking file I/O: call them from worker threads,
except where a stream is being torn down under cancellation.  Failures are
raised as :class:`AudioSaveError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from trio_asr.audio import WavWriter, create_unique_wav
from trio_asr.protocol.messages import StartStream

__all__ = ["PROBE_EVERY_SECONDS", "SAVE_EVERY_BYTES", "AudioSaveError", "AudioStore", "Recording"]

#: received audio is written once this much is waiting (and when a stream ends)
SAVE_EVERY_BYTES = 32768

#: while saving fails, the directory is probed this often (seconds)
PROBE_EVERY_SECONDS = 2.0

#: what a probe writes: one block, so that a disk without room for one fails it
_PROBE_BYTES = 4096


class AudioSaveError(Exception):
    """Received audio could not be written (disk full, directory gone, ...)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class AudioStore:
    """Where streams are saved; ``directory=None`` saves nothing.

    :attr:`failure` is the last save error (``None`` once a later save or
    :meth:`probe` worked): the server reports it on ``/health``.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.failure: str | None = None
        self.probe_every = PROBE_EVERY_SECONDS
        self._failures = 0  # save failures so far: a probe clears none that came after it began

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
        except (OSError, ValueError) as exc:
            raise self.record_failure(exc) from None
        try:
            writer = WavWriter(file, start.sample_rate, start.channels)
        except (OSError, ValueError) as exc:  # not even a header: leave no file that is not a WAV
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise self.record_failure(exc) from None
        self.failure = None
        return Recording(self, path, writer)

    def record_failure(self, exc: BaseException) -> AudioSaveError:
        """Remember a save failure for /health; the error to raise."""
        self._failures += 1
        self.failure = _describe(exc)
        return AudioSaveError(f"cannot save audio: {self.failure}")

    def probe(self) -> None:
        """Create, write, sync and delete a small file in the directory (blocking):
        clear :attr:`failure` when that works, record the error when not."""
        if self.directory is None:
            return
        failures = self._failures
        name: str | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=self.directory)
            try:
                data = memoryview(bytes(_PROBE_BYTES))
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.record_failure(exc)
        else:
            if self._failures == failures:
                self.failure = None
        finally:
            if name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(name)


class Recording:
    """One stream's WAV file; see the module docstring for the policy."""

    def __init__(self, store: AudioStore, path: Path, writer: WavWriter) -> None:
        self.store = store
        self.path = path
        self._writer = writer
        self._pending = bytearray()
        self._unwritten = False  # the writer holds bytes a failed write did not save
        self.closed = False

    def append(self, pcm: bytes) -> bool:
        """Keep received bytes; true when enough waits that :meth:`write_pending` is due."""
        self._pending += pcm
        return len(self._pending) >= SAVE_EVERY_BYTES

    def write_pending(self) -> None:
        """Hand what is pending to the writer, which keeps what a failed
        write could not put in the file and tries it again the next time."""
        if not self._pending and not self._unwritten:
            return
        pending = bytes(self._pending)
        self._pending.clear()
        try:
            self._writer.write(pending)
        except (OSError, ValueError) as exc:
            self._unwritten = True
            raise self.store.record_failure(exc) from None
        self._unwritten = False
        self.store.failure = None

    def close(self) -> None:
        """Write what is still pending (or was not written yet) and close the
        file (idempotent)."""
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
