"""Batch transcription of audio files through the streaming recognizer.

Files are streamed in fixed-size pieces through the same recognizer stream
as the server's (:class:`~trio_asr.recognition.recognizer.RecognizerStream`,
resampling included), which here runs its model chunks itself
(:meth:`~trio_asr.recognition.recognizer.RecognizerStream.decode`) instead of
through the server's batching model service; both give the same results, so
``trio-asr transcribe`` and a client streaming the same file get the same text.
An offline model's files go through :mod:`trio_asr.cli.transcribe_offline`
instead, printed alike (:func:`format_result`, :func:`run_files`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TextIO

import numpy as np

from trio_asr.audio import down_mix
from trio_asr.audio_files import read_audio
from trio_asr.cli.progress import Progress
from trio_asr.recognition.recognizer import RecognitionResult, Recognizer, TokenTime
from trio_asr.recognition.stream_options import StreamOptions

if TYPE_CHECKING:
    from trio_asr.recognition.offline import UtteranceTags

__all__ = ["format_nbest", "format_result", "format_tags", "run_files", "transcribe_file", "transcribe_samples"]


def transcribe_samples(
    recognizer: Recognizer,
    samples: np.ndarray,
    sample_rate: int,
    *,
    nbest: int = 1,
    chunk_seconds: float = 0.1,
) -> RecognitionResult:
    """Decode ``samples`` ((n,) or (n, channels) float in [-1, 1]) as one stream,
    fed ``chunk_seconds`` at a time."""
    if chunk_seconds <= 0:
        raise ValueError("chunk_seconds must be positive")
    mono = down_mix(samples)
    stream = recognizer.create_stream(StreamOptions(nbest=nbest, sample_rate=sample_rate))
    step = max(1, round(chunk_seconds * sample_rate))
    for start in range(0, len(mono), step):
        stream.accept_waveform(mono[start : start + step])
        stream.decode()
    stream.input_finished()
    return stream.result()


def transcribe_file(
    recognizer: Recognizer, path: str | os.PathLike[str], *, nbest: int = 1, chunk_seconds: float = 0.1
) -> RecognitionResult:
    """Decode an audio file (see :func:`~trio_asr.audio_files.read_audio`)."""
    samples, rate = read_audio(path)
    return transcribe_samples(recognizer, samples, rate, nbest=nbest, chunk_seconds=chunk_seconds)


def _times_json(times: Iterable[TokenTime]) -> list[dict[str, str | float]]:
    return [{"w": t.piece, "bg": round(t.start, 3), "ed": round(t.end, 3)} for t in times]


def _tags_json(tags: UtteranceTags | None) -> dict[str, object]:
    return {} if tags is None else {"lang": tags.lang, "emotion": tags.emotion, "event": tags.event}


def format_tags(tags: UtteranceTags) -> str:
    """A text line's tags: ``lang=en emotion=NEUTRAL event=Speech``."""
    return f"lang={tags.lang} emotion={tags.emotion} event={tags.event}"


def format_nbest(nbest: Iterable[tuple[str, float]]) -> list[str]:
    """The n-best lines of ``transcribe`` and ``client``: ``  1.    -3.567  text``."""
    return [f"  {rank}. {score:9.3f}  {text}" for rank, (text, score) in enumerate(nbest, 1)]


def format_result(
    path: str,
    result: RecognitionResult,
    *,
    as_json: bool,
    nbest: int,
    timestamps: bool,
    segments: bool = False,
    tags: UtteranceTags | None = None,
    segment_tags: Sequence[UtteranceTags | None] = (),
    show_tags: bool = False,
) -> str:
    """One file's output: a JSON object per line, or ``path<TAB>text`` plus
    indented n-best, segment and timestamp lines.

    Timestamps are words (PaddleSpeech's ``times``: ``w``, ``bg``, ``ed`` in
    seconds); the JSON form adds each token's under ``tokens``.  Segments
    are the stream's pieces between endpoints, each with its time span (and
    its words, with timestamps), named as in the protocol's ``segments``:
    ``segment`` (the index), ``result``, ``bg``, ``ed`` (and ``times``).

    An offline model's ``tags`` (of the file) and ``segment_tags`` (of each
    segment; SenseVoice's) are JSON fields ``lang``, ``emotion``, ``event``
    of the file and of each segment; text output shows them with
    ``show_tags``: a line ``  lang=.. emotion=.. event=..`` after the
    first, and the same before each segment's text."""
    seg_tags = list(segment_tags) + [None] * (len(result.segments) - len(segment_tags))
    if as_json:
        record: dict[str, object] = {"file": path, "text": result.text} | _tags_json(tags)
        if nbest > 1:
            record["nbest"] = [{"text": t, "score": round(s, 4)} for t, s in result.nbest]
        if segments:
            record["segments"] = [
                {"segment": seg.index, "result": seg.text, "bg": round(seg.start, 3), "ed": round(seg.end, 3)}
                | _tags_json(seg_tag)
                | ({"times": _times_json(seg.words)} if timestamps else {})
                for seg, seg_tag in zip(result.segments, seg_tags)
            ]
        if timestamps:
            record["times"] = _times_json(result.times)
            record["tokens"] = _times_json(result.tokens)
        return json.dumps(record, ensure_ascii=False)
    lines = [f"{path}\t{result.text}"]
    if show_tags and tags is not None:
        lines.append(f"  {format_tags(tags)}")
    if nbest > 1:
        lines += format_nbest(result.nbest)
    if segments:
        lines += [
            f"  [{seg.start:8.2f} {seg.end:8.2f}]  "
            + (f"{format_tags(seg_tag)}  " if show_tags and seg_tag is not None else "")
            + seg.text
            for seg, seg_tag in zip(result.segments, seg_tags)
        ]
    if timestamps:
        lines += [f"  {t.start:7.2f} {t.end:7.2f}  {t.piece}" for t in result.times]
    return "\n".join(lines)


def run_batch(
    recognizer: Recognizer,
    paths: Sequence[str],
    *,
    nbest: int,
    timestamps: bool,
    as_json: bool,
    segments: bool = False,
    out: TextIO | None = None,
    progress: TextIO | None = None,
) -> int:
    """Transcribe ``paths`` in order (see :func:`run_files`); the number of
    files that could not be read."""

    def transcribe(path: str) -> str:
        result = transcribe_file(recognizer, path, nbest=nbest)
        return format_result(path, result, as_json=as_json, nbest=nbest, timestamps=timestamps, segments=segments)

    return run_files(transcribe, paths, out=out, progress=progress)


def run_files(
    transcribe: Callable[[str], str],
    paths: Sequence[str],
    *,
    out: TextIO | None = None,
    progress: TextIO | None = None,
) -> int:
    """``transcribe`` each of ``paths`` in order, printing its output to
    ``out`` (stdout) as it is ready, with a progress bar on ``progress``
    (stderr) for several files.

    A file that cannot be read (``transcribe`` raises OSError or ValueError)
    is reported on stderr in one line naming it and skipped; the return
    value is the number of such failures.
    """
    out = sys.stdout if out is None else out
    progress = sys.stderr if progress is None else progress
    failures = 0
    show_bar = len(paths) > 1
    bar = Progress(len(paths), "transcribing", stream=progress if show_bar else None)
    try:
        for path in paths:
            try:
                text = transcribe(path)
            except (OSError, ValueError) as exc:  # read_audio's AudioFileError names the file
                failures += 1
                bar.clear()  # a clean line for the message (stderr may be the bar's terminal)
                message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                print(f"trio-asr transcribe: {message}", file=sys.stderr)
            else:
                bar.clear()
                print(text, file=out, flush=True)
            bar.advance()
    except BaseException:  # Ctrl-C: no summary line; "interrupted" gets a clean line
        bar.clear()
        raise
    bar.close()
    return failures
