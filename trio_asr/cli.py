"""The ``trio-asr`` command line: ``serve``, ``client``, ``transcribe``, ``models``."""

from __future__ import annotations

import argparse
import sys

from trio_asr._version import __version__
from trio_asr.client import add_client_parser
from trio_asr.server import add_serve_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-asr",
        description="Streaming speech recognition server (PaddleSpeech streaming-ASR protocol).",
    )
    parser.add_argument("--version", action="version", version=f"trio-asr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve_parser(commands)
    add_client_parser(commands)
    _add_transcribe_parser(commands)
    _add_models_parser(commands)
    return parser


def _add_transcribe_parser(commands) -> None:
    parser = commands.add_parser(
        "transcribe", help="transcribe WAV files (streamed through the server's decoding path)"
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="WAV files (PCM, any rate, mono or stereo)")
    parser.add_argument("--model", help="model directory or registry name (default: $TRIO_ASR_MODEL_DIR or the cache)")
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses to print per file (default 1)")
    parser.add_argument("--beam", type=int, default=10, help="CTC prefix beam width (default 10)")
    parser.add_argument("--greedy", action="store_true", help="best-path decoding instead of beam search")
    parser.add_argument("--timestamps", action="store_true", help="print token start/end times")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.set_defaults(run=_run_transcribe)


def _run_transcribe(args: argparse.Namespace) -> int:
    from trio_asr.model import ModelError, load_model
    from trio_asr.model_store import ModelNotAvailable, resolve_model_dir
    from trio_asr.recognizer import Recognizer
    from trio_asr.transcribe import run_batch

    if args.nbest < 1 or args.beam < 1 or args.threads < 1:
        print("trio-asr transcribe: --nbest, --beam and --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        model = load_model(resolve_model_dir(args.model), threads=args.threads)
    except (ModelNotAvailable, ModelError) as exc:
        print(f"trio-asr transcribe: {exc}", file=sys.stderr)
        return 1
    recognizer = Recognizer(model, beam=max(args.beam, args.nbest), decoding="greedy" if args.greedy else "beam")
    failures = run_batch(
        recognizer, args.files, nbest=args.nbest, timestamps=args.timestamps, as_json=args.json
    )
    return 1 if failures else 0


def _add_models_parser(commands) -> None:
    parser = commands.add_parser("models", help="list known models, or download one into the cache")
    parser.add_argument("--download", metavar="NAME", help="download (and verify) NAME into the cache")
    parser.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from trio_asr.model_store import REGISTRY, ModelNotAvailable, cache_root, is_complete, resolve_model_dir

    if args.download:
        try:
            print(resolve_model_dir(args.download))
        except ModelNotAvailable as exc:
            print(f"trio-asr models: {exc}", file=sys.stderr)
            return 1
        return 0
    root = cache_root()
    for name, spec in sorted(REGISTRY.items()):
        state = "cached" if is_complete(spec, root / name) else "not downloaded"
        print(f"{name}\t{state}\t{root / name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
