"""Audio files for ``transcribe`` and ``client``: WAV natively, other formats
through `soundfile <https://python-soundfile.readthedocs.io>`_ (libsndfile).

WAV stays on the fast path, :func:`trio_asr.audio.read_wav`.  FLAC, Ogg
(Vorbis, Opus), MP3 and the other formats libsndfile knows are decoded by
soundfile, an optional dependency (``pip install 'trio-asr[formats]'``; its
wheels bundle libsndfile).  Every failure is an :class:`AudioFileError`
whose message is one line naming the file, its format and, where converting
would help, the ``ffmpeg`` command that does it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from trio_asr.audio import read_wav

__all__ = ["AudioFileError", "conversion_command", "detect_format", "read_audio"]

FORMATS_EXTRA = "pip install 'trio-asr[formats]'"


class AudioFileError(ValueError):
    """An input file that cannot be read as audio; ``str()`` is one line naming it."""


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
