"""``trio-asr transcribe`` with an offline model (SenseVoice, NeMo CTC).

A file is read, mixed down, and decoded by
:func:`~trio_asr.recognition.offline.long_audio.recognize_long`: whole when
it is no longer than
:data:`~trio_asr.recognition.offline.pieces.MAX_PIECE_S`, else cut into
pieces in its pauses (Silero VAD's when it is installed, else the quietest
points), decoded in batches and joined, each piece one segment.  The output
is the streaming path's (:func:`~trio_asr.cli.transcribe.format_result`),
plus SenseVoice's tags.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from trio_asr.audio import down_mix
from trio_asr.audio_files import read_audio
from trio_asr.cli.commands import BAD_INPUT, CommandFailed, _read_hotwords
from trio_asr.cli.transcribe import format_result, run_files
from trio_asr.recognition.offline import OfflineModel, OfflineOptions, OfflineRecognizer
from trio_asr.recognition.offline.long_audio import recognize_long
from trio_asr.recognition.offline.nemo_ctc import NemoCtcOfflineModel
from trio_asr.recognition.offline.pieces import SilenceFinder, VadSilences
from trio_asr.recognition.offline.sense_voice import LANGUAGES, SenseVoiceModel

if TYPE_CHECKING:
    from trio_asr.serving.config import ServerConfig

__all__ = ["LANGUAGES", "STREAMING_ONLY", "run_offline", "transcribe_offline_file"]

#: settings of streaming recognition that an offline model has no use for
STREAMING_ONLY = (
    "endpoint_silence_without_text", "endpoint_silence_after_text", "endpoint_max_segment", "skip_non_speech",
)  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_offline_flags(args: argparse.Namespace, model_dir: Path) -> None:
    """Refuse (status 2) what an offline model cannot do, before it loads."""
    for name in STREAMING_ONLY:
        if getattr(args, name, None) is not None:
            raise CommandFailed(
                f"{_flag(name)} is for streaming models; {model_dir} is an offline model, "
                f"whose files are cut in their pauses (leave out {_flag(name)})",
                BAD_INPUT,
            )
    if args.language is not None and args.language not in LANGUAGES:
        raise CommandFailed(f"--language {args.language}: not one of {', '.join(LANGUAGES)}", BAD_INPUT)
    if args.hotwords_file is not None and args.greedy:
        raise CommandFailed("--hotwords-file needs beam search (leave out --greedy)", BAD_INPUT)


def check_conditioning_flags(args: argparse.Namespace, model: OfflineModel, model_dir: Path) -> None:
    """``--language``, ``--itn``/``--no-itn`` and ``--tags`` need a model
    that takes them: SenseVoice."""
    if isinstance(model, SenseVoiceModel):
        return
    given = [f for f, v in (("--language", args.language), ("--itn/--no-itn", args.itn)) if v is not None]
    given += ["--tags"] if args.tags else []
    if given:
        raise CommandFailed(
            f"{given[0]}: {model_dir} is a {_kind(model)} model, which takes no language, text "
            f"normalisation or tags (SenseVoice models do; leave out {given[0]})",
            BAD_INPUT,
        )


def _kind(model: OfflineModel) -> str:
    return "NeMo CTC" if isinstance(model, NemoCtcOfflineModel) else type(model).__name__


def _silences(args: argparse.Namespace, config: ServerConfig) -> SilenceFinder | None:
    """Silero VAD's pauses: always with ``--vad`` (or an error if it is not
    installed), never with ``--no-vad``, else when it is installed."""
    if args.vad is False:
        return None
    from trio_asr.recognition.vad import SileroVad, VadUnavailable

    try:
        return VadSilences(SileroVad(threshold=config.vad_threshold))
    except VadUnavailable as exc:
        if args.vad:
            raise CommandFailed(exc) from None
        return None


def build_offline(args: argparse.Namespace, config: ServerConfig, model_dir: Path) -> OfflineRecognizer:
    """The offline recognizer of ``model_dir`` that the flags ask for."""
    from trio_asr.recognition.hotwords import HotwordError, compile_hotwords
    from trio_asr.recognition.model import ModelError
    from trio_asr.recognition.offline import load_offline_model

    hotwords = _read_hotwords(config.hotwords_file)
    try:
        model = load_offline_model(model_dir, threads=config.threads)
    except ModelError as exc:
        raise CommandFailed(exc) from None
    check_conditioning_flags(args, model, model_dir)
    try:
        compiled = compile_hotwords(hotwords, model.tokens, default_score=config.hotwords_score)
    except HotwordError as exc:
        raise CommandFailed(f"{exc} (remove it from the hotwords file)", BAD_INPUT) from None
    return OfflineRecognizer(
        model,
        beam=max(config.beam, args.nbest),
        decoding="greedy" if args.greedy else "beam",
        hotwords=compiled,
        language=args.language or "auto",
        use_itn=bool(args.itn),
    )


def transcribe_offline_file(
    recognizer: OfflineRecognizer,
    path: str,
    *,
    nbest: int,
    timestamps: bool,
    as_json: bool,
    segments: bool,
    show_tags: bool,
    silences: SilenceFinder | None,
) -> str:
    """One file's output (see :func:`~trio_asr.cli.transcribe.format_result`)."""
    samples, rate = read_audio(path)
    options = OfflineOptions(nbest=nbest, sample_rate=rate)
    done = recognize_long(recognizer, down_mix(samples), options, silences=silences)
    return format_result(
        path, done.result, as_json=as_json, nbest=nbest, timestamps=timestamps, segments=segments,
        tags=done.tags, segment_tags=done.segment_tags, show_tags=show_tags,
    )  # fmt: skip


def run_offline(args: argparse.Namespace, config: ServerConfig, model_dir: Path) -> int:
    """``transcribe`` with the offline model in ``model_dir``: the exit status."""
    check_offline_flags(args, model_dir)
    silences = _silences(args, config)
    recognizer = build_offline(args, config, model_dir)

    def transcribe(path: str) -> str:
        return transcribe_offline_file(
            recognizer, path, nbest=args.nbest, timestamps=args.timestamps, as_json=args.json,
            segments=args.segments, show_tags=args.tags, silences=silences,
        )  # fmt: skip

    return BAD_INPUT if run_files(transcribe, args.files) else 0
