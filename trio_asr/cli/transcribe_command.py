"""``trio-asr transcribe``: its flags, and the run over the files
(the transcription itself is :mod:`trio_asr.cli.transcribe`, or, for an
offline model, :mod:`trio_asr.cli.transcribe_offline`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attrs

from trio_asr.cli.commands import BAD_INPUT, CommandFailed, _build_recognizer, check_input_files

__all__ = ["add_transcribe"]


def add_transcribe(commands: Any) -> None:
    from trio_asr.serving.config import RECOGNIZER_SETTINGS, add_config_flags

    parser = commands.add_parser(
        "transcribe",
        help="transcribe audio files (streamed through the server's recognizer, or with an offline model)",
        description="Transcribe audio files offline, streamed through the same recognizer the server uses; "
        "with an offline model (SenseVoice, NeMo CTC) each file is decoded whole, or cut into pieces of at "
        "most 30 s in its pauses.",
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE",
        help="audio files: WAV (PCM or float, any rate, mono or multi-channel); FLAC, Ogg, MP3 ... with soundfile",
    )  # fmt: skip
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses to print per file (default: 1)")
    parser.add_argument("--greedy", action="store_true", help="best-path decoding instead of beam search")
    parser.add_argument(
        "--timestamps", action="store_true", help="print word start/end times (with --json: also each token's)"
    )
    parser.add_argument("--segments", action="store_true", help="print the segments between endpoints with their times")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument(
        "--language", metavar="LANG",
        help="SenseVoice models: the language, one of auto, zh, en, ja, ko, yue (default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--itn", action=argparse.BooleanOptionalAction, default=None,
        help="SenseVoice models: punctuation and inverse text normalisation (default: --no-itn)",
    )  # fmt: skip
    parser.add_argument(
        "--tags", action="store_true",
        help="SenseVoice models: print each file's (and with --segments each segment's) language, emotion "
        "and audio event (--json always has them)",
    )  # fmt: skip
    add_config_flags(parser, RECOGNIZER_SETTINGS)
    parser.set_defaults(run=run_transcribe)


def run_transcribe(args: argparse.Namespace) -> int:
    """Transcribe each file; one that cannot be read is reported and
    skipped, and makes the exit status 2."""
    from trio_asr.cli.transcribe import run_batch
    from trio_asr.serving.config import RECOGNIZER_SETTINGS, ConfigError, config_overrides
    from trio_asr.serving.config_file import load_config

    try:
        config = load_config(None, config_overrides(args, RECOGNIZER_SETTINGS))
    except ConfigError as exc:  # named as the flags are
        setting, _, rest = str(exc).partition(" ")
        flag = "--" + setting.replace("_", "-") if setting in RECOGNIZER_SETTINGS else setting
        raise CommandFailed(f"{flag} {rest}", BAD_INPUT) from None
    if not 1 <= args.nbest <= config.beam:
        raise CommandFailed(
            f"--nbest must be between 1 and the beam width ({config.beam}), got {args.nbest}", BAD_INPUT
        )
    check_input_files(args.files)  # before the model loads
    model_dir = _resolve_model(config.model)
    from trio_asr.recognition.offline import is_offline_model

    if is_offline_model(model_dir):
        from trio_asr.cli.transcribe_offline import run_offline

        return run_offline(args, config, model_dir)
    for flag, value in (("--language", args.language), ("--itn/--no-itn", args.itn), ("--tags", args.tags or None)):
        if value is not None:
            raise CommandFailed(
                f"{flag} is for offline SenseVoice models; {model_dir} is a streaming model (leave out {flag})",
                BAD_INPUT,
            )
    _, recognizer = _build_recognizer(attrs.evolve(config, model=model_dir), nbest=args.nbest, greedy=args.greedy)
    failures = run_batch(
        recognizer, args.files, nbest=args.nbest, timestamps=args.timestamps, as_json=args.json, segments=args.segments
    )
    return BAD_INPUT if failures else 0


def _resolve_model(model: Path | None) -> Path:
    """The model directory (or ONNX file) ``--model`` names, else the default's."""
    from trio_asr.cli.model_store import ModelNotAvailable, resolve_model_dir

    try:
        return resolve_model_dir(model)
    except ModelNotAvailable as exc:
        raise CommandFailed(exc) from None
