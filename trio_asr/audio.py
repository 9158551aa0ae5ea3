"""WAV input and output, PCM conversion, and safe names for saved audio.

Reading parses the RIFF container directly so that it can accept
``WAVE_FORMAT_EXTENSIBLE`` and IEEE float files, which :mod:`wave` refuses.
Writing is incremental: :class:`WavWriter` rewrites the two size fields of
the header after every :meth:`WavWriter.write`, so the file on disk is a
complete, valid WAV at all times (a crash or a vanished client loses nothing
that was written).
"""

from __future__ import annotations

import os
import secrets
import struct
import unicodedata
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
import numpy.typing as npt

__all__ = [
    "WAV_MAX_DATA_BYTES",
    "WavWriter",
    "create_unique_wav",
    "down_mix",
    "parse_wav",
    "pcm16_to_float",
    "read_wav",
    "safe_wav_name",
]

_FORMAT_PCM = 0x0001
_FORMAT_IEEE_FLOAT = 0x0003
_FORMAT_EXTENSIBLE = 0xFFFE
# Sub-format GUIDs of WAVE_FORMAT_EXTENSIBLE: the first two bytes carry the
# plain format tag, the remaining 14 bytes are this fixed suffix.
_GUID_SUFFIX = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

#: the most PCM bytes one WAV file can hold (its sizes are 32-bit fields)
WAV_MAX_DATA_BYTES = 0xFFFFFFFF - 36 - 1


def read_wav(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], int]:
    """Read a WAV file into float32 samples in [-1, 1]: :func:`parse_wav` of
    its bytes, its messages naming ``path``."""
    return parse_wav(Path(path).read_bytes(), path)


def parse_wav(
    data: bytes | bytearray | memoryview, name: object = "WAV", *, mono: bool = False
) -> tuple[npt.NDArray[np.float32], int]:
    """Parse a whole WAV file held in memory into float32 samples in [-1, 1].

    Returns ``(samples, sample_rate)`` with ``samples`` of shape
    ``(frames, channels)``, or ``(frames,)`` with ``mono``: the channels
    averaged as :func:`down_mix` does, a block at a time, so that a file of
    many channels never becomes a float array of all of them.  Accepts integer PCM of 8 (unsigned), 16, 24 or 32
    bits and IEEE float of 32 or 64 bits, plain or ``WAVE_FORMAT_EXTENSIBLE``.
    A data chunk whose declared size runs past the end of the data (as left
    by streaming writers) is read up to the last whole frame.

    Raises :class:`ValueError`, its message one line starting with ``name``,
    for anything else: not RIFF/WAVE, compressed formats, truncated or
    inconsistent headers, zero channels or rate.
    """
    data = memoryview(data).cast("B")  # slices of it are views: no copy of the samples
    if len(data) < 12 or data[0:4].tobytes() != b"RIFF" or data[8:12].tobytes() != b"WAVE":
        raise ValueError(f"{name}: not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4].tobytes()
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(name, data[body : body + size])
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError(f"{name}: data chunk before fmt chunk")
            tag, channels, rate, bits = fmt
            payload = data[body : body + size]
            return _decode(payload, tag, channels, bits, mono), rate
        pos = body + size + (size & 1)
    raise ValueError(f"{name}: truncated WAV (no {'data' if fmt else 'fmt'} chunk)")


def _parse_fmt(path: object, body: memoryview) -> tuple[int, int, int, int]:
    if len(body) < 16:
        raise ValueError(f"{path}: truncated fmt chunk")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise ValueError(f"{path}: truncated WAVE_FORMAT_EXTENSIBLE fmt chunk")
        sub = body[24:40]
        if sub[2:] != _GUID_SUFFIX:
            raise ValueError(f"{path}: unsupported WAVE_FORMAT_EXTENSIBLE sub-format")
        (tag,) = struct.unpack_from("<H", sub)
    if tag not in (_FORMAT_PCM, _FORMAT_IEEE_FLOAT):
        raise ValueError(f"{path}: unsupported WAV format tag 0x{tag:04x} (only PCM and float)")
    if channels == 0:
        raise ValueError(f"{path}: WAV declares zero channels")
    if rate == 0:
        raise ValueError(f"{path}: WAV declares a sample rate of zero")
    allowed = (8, 16, 24, 32) if tag == _FORMAT_PCM else (32, 64)
    if bits not in allowed:
        kind = "PCM" if tag == _FORMAT_PCM else "float"
        raise ValueError(f"{path}: unsupported {bits}-bit {kind} WAV")
    if block_align != channels * bits // 8:
        raise ValueError(f"{path}: block align {block_align} does not match {channels} x {bits} bits")
    return tag, channels, rate, bits


#: frames converted at once when a WAV is down-mixed as it is decoded
_MIX_BLOCK_FRAMES = 1 << 16


def _decode(payload: memoryview, tag: int, channels: int, bits: int, mono: bool) -> npt.NDArray[np.float32]:
    width = bits // 8
    frames = len(payload) // (width * channels)
    frame_bytes = width * channels
    if not mono or channels == 1:
        x = _to_float(payload[: frames * frame_bytes], tag, bits)
        return x.reshape(frames) if mono else x.reshape(frames, channels)
    out = np.empty(frames, np.float32)
    for start in range(0, frames, _MIX_BLOCK_FRAMES):
        stop = min(frames, start + _MIX_BLOCK_FRAMES)
        block = _to_float(payload[start * frame_bytes : stop * frame_bytes], tag, bits)
        out[start:stop] = down_mix(block.reshape(stop - start, channels))
    return out


def _to_float(payload: memoryview, tag: int, bits: int) -> npt.NDArray[np.float32]:
    """Whole samples of one encoding as float32 in [-1, 1], one dimension."""
    raw = np.frombuffer(payload, dtype=np.uint8)
    if tag == _FORMAT_IEEE_FLOAT:
        return raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
    if bits == 8:
        return (raw.astype(np.float32) - 128.0) / 128.0
    if bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8
        return ints.astype(np.float32) / float(1 << 23)
    # Scaling by a power of two after rounding to float32 rounds as dividing
    # exactly in float64 first would: the same values, half the memory.
    x = raw.view("<i2" if bits == 16 else "<i4").astype(np.float32)
    x *= np.float32(1.0 / (1 << (bits - 1)))
    return x


def pcm16_to_float(pcm: bytes | bytearray | memoryview) -> npt.NDArray[np.float32]:
    """Convert little-endian signed 16-bit PCM bytes to float32 in [-1, 1).

    The byte count must be even; callers that receive arbitrary frames carry
    an odd trailing byte over to the next frame themselves.
    """
    if len(pcm) % 2:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    return cast("npt.NDArray[np.float32]", samples)


def down_mix(x: np.ndarray) -> npt.NDArray[np.float32]:
    """Average the channels of ``(frames, channels)`` samples into mono float32.

    One-dimensional input is taken to be mono already and returned as float32.
    """
    x = np.asarray(x)
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected samples of shape (frames, channels), got {x.shape}")
    if x.shape[1] == 1:
        return x[:, 0].astype(np.float32)
    mono = x[:, 0].astype(np.float32)  # summed in place: no (frames, channels) temporary
    for channel in range(1, x.shape[1]):
        mono += x[:, channel]
    mono /= np.float32(x.shape[1])
    return mono


class WavWriter:
    """Incremental integer-PCM WAV writer; the file is valid after every write.

    ``target`` is a path (created or truncated) or a binary file opened for
    writing at offset 0, e.g. the one returned by :func:`create_unique_wav`;
    the writer takes ownership of it and closes it in :meth:`close`.

    :meth:`write` appends raw little-endian PCM.  Bytes that do not complete
    a frame (``channels * sampwidth`` bytes) are held back and prepended to
    the next write; an incomplete frame still held at :meth:`close` is
    dropped, since it is not a sample.  Each write hands the data and then
    the updated RIFF and data sizes to the OS (unbuffered), so a process that
    dies without closing leaves a complete file.  A write that fails part-way
    (``OSError``, e.g. a full disk) keeps the whole frames that reached the
    file, cuts the file to them and writes the header for exactly them before
    raising; the bytes it could not write are held back like an incomplete
    frame, so the next write (``write(b"")`` just retries) saves them if there
    is room by then.  :meth:`close` is idempotent; use the writer as a
    context manager.  The RIFF format limits the data to 4 GiB; a write
    beyond that raises :class:`ValueError`.
    """

    _DATA_START = 44

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        sample_rate: int,
        channels: int,
        sampwidth: int = 2,
    ) -> None:
        if not 1 <= channels <= 0xFFFF:
            raise ValueError(f"invalid channel count {channels}")
        if sampwidth not in (1, 2, 3, 4):
            raise ValueError(f"sample width must be 1, 2, 3 or 4 bytes, got {sampwidth}")
        if not 1 <= sample_rate * channels * sampwidth <= 0xFFFFFFFF:
            raise ValueError(f"invalid sample rate {sample_rate}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.sampwidth = sampwidth
        if isinstance(target, (str, os.PathLike)):
            self._file: BinaryIO = open(target, "wb")  # noqa: SIM115 (owned until close)
        else:
            self._file = target
        self._pending = b""
        self._data_bytes = 0
        self._closed = False
        block = channels * sampwidth
        self._fmt = b"WAVE" + b"fmt " + struct.pack(
            "<IHHIIHH", 16, _FORMAT_PCM, channels, sample_rate, sample_rate * block, block, sampwidth * 8
        )
        self._file.write(self._header(0))
        self._file.flush()
        # unbuffered from here on: after a failed write, what reached the file is known to the byte
        self._raw: BinaryIO = getattr(self._file, "raw", self._file)

    def _header(self, data_bytes: int) -> bytes:
        """The header for ``data_bytes`` of data."""
        pad = data_bytes & 1  # RIFF chunks are word aligned
        riff = b"RIFF" + struct.pack("<I", 36 + data_bytes + pad)
        return riff + self._fmt + b"data" + struct.pack("<I", data_bytes)

    @property
    def frames_written(self) -> int:
        """Number of whole frames in the file."""
        return self._data_bytes // (self.channels * self.sampwidth)

    def write(self, pcm: bytes | bytearray | memoryview) -> None:
        """Append raw PCM bytes and bring the header up to date on disk."""
        if self._closed:
            raise ValueError("write to a closed WavWriter")
        block = self.channels * self.sampwidth
        buf = self._pending + bytes(pcm)
        whole = len(buf) - len(buf) % block
        if self._data_bytes + whole > WAV_MAX_DATA_BYTES:
            raise ValueError("WAV data would exceed the 4 GiB limit of the format")
        self._pending = buf  # held back until it is in the file
        if not whole:
            return
        start, written = self._data_bytes, 0
        try:
            self._raw.seek(self._DATA_START + start)
            while written < whole:
                written += self._put(memoryview(buf)[written:whole])
        finally:  # also after a failure: the file ends at the last whole frame written, and says so
            kept = written - written % block
            try:
                self._set_data_bytes(start + kept, cut=kept != whole)
            except OSError:  # the header in the file still says `start`: cut the file to match
                self._raw.truncate(self._DATA_START + start + (start & 1))
                raise
            self._pending = buf[kept:]

    def _put(self, data: memoryview) -> int:
        """Write some of ``data`` (a short write is no error); how much."""
        n = self._raw.write(data)
        if not n:
            raise OSError(f"no byte of {len(data)} written")
        return n

    def _set_data_bytes(self, data_bytes: int, *, cut: bool) -> None:
        """Make the file hold ``data_bytes`` of data (cut after them, or just
        the pad byte added) and write the header for exactly that."""
        if cut or data_bytes & 1:
            self._raw.truncate(self._DATA_START + data_bytes + (data_bytes & 1))
        header = memoryview(self._header(data_bytes))
        self._raw.seek(0)
        done = 0
        while done < len(header):
            done += self._put(header[done:])
        self._data_bytes = data_bytes

    def close(self) -> None:
        """Close the file; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._file.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


MAX_NAME_BYTES = 100
"""Upper bound on the UTF-8 length of a file name made by :func:`safe_wav_name`."""

_DEFAULT_STEM = "audio"
_SUFFIX = ".wav"
_UNIQUE_TRIES = 100
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]}
)
_FORBIDDEN = frozenset('/\\<>:"|?*')


def safe_wav_name(client_name: object, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """Map an untrusted client-supplied name to a harmless ``.wav`` file name.

    The result is a single path component on every OS: path separators,
    characters Windows forbids, control and other non-printing characters are
    replaced by ``_``; leading and trailing dots and spaces are stripped (so
    no ``.``, ``..`` or hidden names); Windows device names (``CON``,
    ``nul.txt``, ``COM1`` ...) get a ``_`` prefix; an empty result becomes
    ``audio``.  Any extension the client gave is kept as part of the stem
    except a final ``.wav``, and ``.wav`` is always appended.  The UTF-8
    length of the whole name is at most ``max_bytes``.
    """
    name = unicodedata.normalize("NFC", client_name if isinstance(client_name, str) else "")
    if name.lower().endswith(_SUFFIX):
        name = name[: -len(_SUFFIX)]
    cleaned = "".join(
        "_" if ch in _FORBIDDEN or unicodedata.category(ch).startswith(("C", "Z")) and ch != " " else ch
        for ch in name
    )
    stem = _truncate_utf8(cleaned.strip(" ."), max_bytes - len(_SUFFIX)).rstrip(" .")
    if not stem:
        stem = _DEFAULT_STEM
    if stem.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        stem = "_" + stem
        stem = _truncate_utf8(stem, max_bytes - len(_SUFFIX)).rstrip(" .")
    return stem + _SUFFIX


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def create_unique_wav(audio_dir: str | os.PathLike[str], client_name: object) -> tuple[Path, BinaryIO]:
    """Create a new, empty file for ``client_name`` in ``audio_dir`` and open it.

    The name is cleaned by :func:`safe_wav_name`.  The file is created with
    ``O_CREAT | O_EXCL`` (which also refuses to follow a planted symlink), so
    an existing file is never overwritten, even by a concurrent stream or
    process: on a clash ``-1``, ``-2`` ... and finally random suffixes are
    tried.  Returns the path and the file opened for binary writing; pass the
    file to :class:`WavWriter`.
    """
    directory = Path(audio_dir)
    base = safe_wav_name(client_name)
    stem = base[: -len(_SUFFIX)]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for attempt in range(_UNIQUE_TRIES + 50):
        if attempt == 0:
            suffix = ""
        elif attempt <= _UNIQUE_TRIES:
            suffix = f"-{attempt}"
        else:
            suffix = f"-{secrets.token_hex(4)}"
        room = MAX_NAME_BYTES - len(_SUFFIX) - len(suffix)
        name = _truncate_utf8(stem, room).rstrip(" .") + suffix + _SUFFIX
        path = directory / name
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")
    raise FileExistsError(f"could not find a free file name for {base!r} in {directory}")
