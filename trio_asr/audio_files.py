"""Audio files, on disk (``transcribe``, ``client``) or in memory (an upload):
WAV natively, other formats through `soundfile
<https://python-soundfile.readthedocs.io>`_ (libsndfile).

WAV stays on the fast path, :func:`trio_asr.audio.parse_wav`.  FLAC, Ogg
(Vorbis, Opus), MP3 and the other formats libsndfile knows are decoded by
soundfile, an optional dependency (``pip install 'trio-asr[formats]'``; its
wheels bundle libsndfile).  Every failure is an :class:`AudioFileError`
whose message is one line naming the file, its format and, for a file on
disk where converting would help, the ``ffmpeg`` command that does it.
:func:`decode_audio` raises its subclass :class:`UnsupportedAudioFormat`
for bytes in no format it can decode at all, so that a server can tell
"send another format" from "this file is broken".
"""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from trio_asr.audio import down_mix, parse_wav, read_wav

__all__ = [
    "AudioFileError",
    "UnsupportedAudioFormat",
    "conversion_command",
    "decode_audio",
    "detect_format",
    "read_audio",
]

FORMATS_EXTRA = "pip install 'trio-asr[formats]'"


class AudioFileError(ValueError):
    """An input file that cannot be read as audio; ``str()`` is one line naming it."""


class AudioTooLong(AudioFileError):
    """Audio longer than the ``max_seconds`` of :func:`decode_audio`."""


class UnsupportedAudioFormat(AudioFileError):
    """Audio in a format that cannot be decoded here at all (as opposed to a
    file of a known format that is empty, cut short or corrupt)."""


#: libsndfile's name of each format that :func:`detect_format` names, where it has one
_LIBSNDFILE_NAMES = {
    "FLAC": "FLAC", "Ogg": "OGG", "MP3": "MP3", "RF64": "RF64", "AIFF": "AIFF", "CAF": "CAF", "AU": "AU",
}  # fmt: skip

#: leading bytes of the formats worth naming in a message (offset, bytes, name)
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"fLaC", "FLAC"),
    (0, b"OggS", "Ogg"),
    (0, b"ID3", "MP3"),
    (0, b"RF64", "RF64"),
    (0, b"FORM", "AIFF"),
    (0, b"caff", "CAF"),
    (0, b".snd", "AU"),
    (0, b"#!AMR", "AMR"),
    (0, b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
    (4, b"ftyp", "MP4/M4A"),
)


def detect_format(head: bytes) -> str | None:
    """The name of the audio format that ``head`` (a file's first bytes)
    starts, or None."""
    if head[:4] == b"RIFF":
        return "WAV"
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "MP3"  # an MPEG audio frame header without an ID3 tag
    return None


def conversion_command(path: str | os.PathLike[str]) -> str:
    """The ffmpeg command that makes a 16 kHz mono WAV of ``path``, beside it."""
    source = Path(path)
    wav = source.suffix.lower() == ".wav"
    target = source.with_name(source.stem + "-16k.wav") if wav else source.with_suffix(".wav")
    return f"ffmpeg -i {shlex.quote(str(source))} -ar 16000 -ac 1 {shlex.quote(str(target))}"


def read_audio(path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], int]:
    """Read an audio file into float32 samples in [-1, 1], shape ``(frames, channels)``.

    Returns ``(samples, sample_rate)``.  WAV is read by :func:`read_wav`; a
    WAV that it refuses (A-law, ADPCM ...) and every other format go to
    soundfile when it is installed.  Raises :class:`AudioFileError`.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise AudioFileError(f"{path}: {_os_reason(exc)}") from None
    kind = detect_format(head)
    if kind == "WAV":
        try:
            return read_wav(path)
        except OSError as exc:
            raise AudioFileError(f"{path}: {_os_reason(exc)}") from None
        except ValueError as exc:
            soundfile = _soundfile()
            if soundfile is None:
                raise AudioFileError(f"{exc} (convert it: {conversion_command(path)})") from None
            try:
                return _read_with(soundfile, path)
            except (soundfile.SoundFileError, RuntimeError):
                raise AudioFileError(f"{exc} (convert it: {conversion_command(path)})") from None
    suffix = Path(path).suffix.lstrip(".")
    named = f"{kind or suffix.upper()} audio" if kind or suffix.isalnum() else "audio of an unknown format"
    soundfile = _soundfile()
    if soundfile is None:
        raise AudioFileError(
            f"{path}: {named} needs the soundfile package ({FORMATS_EXTRA}, or convert it: {conversion_command(path)})"
        )
    try:
        return _read_with(soundfile, path)
    except (soundfile.SoundFileError, RuntimeError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        what = f"cannot decode it as {kind}" if kind else "not an audio format trio-asr can read"
        raise AudioFileError(f"{path}: {what}: {reason.rstrip('.')} (convert it: {conversion_command(path)})") from None
    except OSError as exc:
        raise AudioFileError(f"{path}: {_os_reason(exc)}") from None


def decode_audio(
    data: bytes | bytearray | memoryview,
    name: str = "upload",
    *,
    max_seconds: float | None = None,
    mono: bool = False,
) -> tuple[npt.NDArray[np.float32], int]:
    """Decode an audio file held in memory into float32 samples in [-1, 1],
    shape ``(frames, channels)``, or ``(frames,)`` with ``mono`` (channels
    averaged as :func:`~trio_asr.audio.down_mix` does, a block at a time: a
    long compressed file never holds all its channels at once); returns
    ``(samples, sample_rate)``.

    WAV (integer PCM of 8 to 32 bits, float) is parsed by
    :func:`~trio_asr.audio.parse_wav`; a WAV it refuses and every other
    format go to soundfile, when it is installed.  With ``max_seconds``,
    audio longer than that is refused before more than that is decoded.

    Raises :class:`UnsupportedAudioFormat` when the bytes are in no format
    that can be decoded here (unknown, or soundfile missing or unable to read
    the format they start), else :class:`AudioFileError` when they are
    empty, cut short, corrupt or too long (a RIFF/WAVE file that cannot be
    decoded counts as broken, whatever its encoding).  Messages are one
    line, starting with ``name`` and naming the format detected.  A file
    that holds no frames (a WAV header alone) is no error: zero samples.
    """
    if not len(data):
        raise AudioFileError(f"{name}: empty file (0 bytes)")
    view = memoryview(data).cast("B")
    kind = detect_format(bytes(view[:16]))
    if kind == "WAV" and len(view) >= 12 and view[8:12].tobytes() != b"WAVE":
        kind = None  # a RIFF container of something else (AVI, WebP ...)
    wav_error = ""
    if kind == "WAV":
        try:
            samples, rate = parse_wav(view, f"{name}: cannot decode it as WAV", mono=mono)
        except ValueError as exc:
            wav_error = str(exc)  # perhaps a WAV encoding that soundfile reads (A-law ...)
        else:
            return _bounded(samples, rate, name, kind, max_seconds)
    soundfile = _soundfile()
    if soundfile is None:
        if wav_error:
            raise AudioFileError(wav_error)
        if kind:
            raise UnsupportedAudioFormat(f"{name}: {kind} audio needs the soundfile package ({FORMATS_EXTRA})")
        raise UnsupportedAudioFormat(f"{name}: not an audio format trio-asr can read (it reads WAV)")
    samples, rate = _decode_with(soundfile, view, name, kind, wav_error, max_seconds, mono)
    return _bounded(samples, rate, name, kind, max_seconds)


def _decode_with(
    soundfile: ModuleType,
    data: memoryview,
    name: str,
    kind: str | None,
    wav_error: str,
    max_seconds: float | None,
    mono: bool = False,
) -> tuple[npt.NDArray[np.float32], int]:
    """:func:`decode_audio` by soundfile; ``wav_error`` is why parse_wav refused the bytes, if it did."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            rate = int(f.samplerate)
            if f.channels <= 0 or rate <= 0:
                raise AudioFileError(f"{name}: {kind or 'audio'} with no audio channels or no sample rate")
            limit = -1 if max_seconds is None else int(max_seconds * rate) + 1
            samples = _read_mono(f, limit) if mono else f.read(frames=limit, dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as exc:
        reason = (getattr(exc, "error_string", None) or str(exc)).rstrip(".")
        if wav_error:
            raise AudioFileError(wav_error) from None
        if kind is None:
            known = "WAV, FLAC, Ogg, MP3 ..." if "MP3" in soundfile.available_formats() else "WAV, FLAC, Ogg ..."
            raise UnsupportedAudioFormat(f"{name}: not an audio format trio-asr can read (it reads {known})") from None
        if _LIBSNDFILE_NAMES.get(kind) not in soundfile.available_formats():
            raise UnsupportedAudioFormat(f"{name}: {kind} audio cannot be decoded here (send WAV or FLAC)") from None
        raise AudioFileError(f"{name}: cannot decode it as {kind}: {reason}") from None
    return np.ascontiguousarray(samples, dtype=np.float32), rate


#: frames decoded at a time by :func:`_read_mono`
_BLOCK_FRAMES = 1 << 20


def _read_mono(f: Any, limit: int) -> npt.NDArray[np.float32]:
    """Up to ``limit`` (-1: all) frames of the open SoundFile ``f``, down-mixed a block at a time."""
    blocks = [down_mix(block) for block in f.blocks(_BLOCK_FRAMES, dtype="float32", always_2d=True, frames=limit)]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _bounded(
    samples: npt.NDArray[np.float32], rate: int, name: str, kind: str | None, max_seconds: float | None
) -> tuple[npt.NDArray[np.float32], int]:
    if max_seconds is not None and len(samples) > max_seconds * rate:
        raise AudioTooLong(f"{name}: {kind or 'the audio'} is longer than the {max_seconds:g} s allowed")
    return samples, rate


def _read_with(soundfile: ModuleType, path: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], int]:
    samples, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    if samples.shape[1] == 0 or rate <= 0:
        raise AudioFileError(f"{path}: no audio channels or no sample rate")
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate)


def _soundfile() -> ModuleType | None:
    """The soundfile module, or None when it (or its libsndfile) is missing."""
    try:
        import soundfile
    except (ImportError, OSError):  # OSError: installed without a loadable libsndfile
        return None
    module: ModuleType = soundfile
    return module


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "a directory, not an audio file"
    return (exc.strerror or str(exc)).lower()
