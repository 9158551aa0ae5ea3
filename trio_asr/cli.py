"""The ``trio-asr`` command line: ``serve``, ``client``, ``transcribe``, ``models``.

Each command is a ``_add_*`` function that declares its flags and a
``_run_*`` function that does the work and returns the exit status.
Expected failures (no model, port in use, server down, bad file) print one
line, ``trio-asr COMMAND: what happened (what to do)``, and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trio_asr._version import __version__

if TYPE_CHECKING:
    from trio_asr.hotwords import CompiledHotwords, Hotword
    from trio_asr.model import AcousticModel

__all__ = ["CommandFailed", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-asr",
        description="Streaming speech recognition server (PaddleSpeech streaming-ASR protocol).",
    )
    parser.add_argument("--version", action="version", version=f"trio-asr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(commands)
    _add_client(commands)
    _add_transcribe(commands)
    _add_models(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        status: int = args.run(args)
        return status
    except CommandFailed as exc:
        print(f"trio-asr {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0


class CommandFailed(Exception):
    """An expected failure: its message is the one line the user sees."""

    def __init__(self, message: object, status: int = 1) -> None:
        super().__init__(str(message))
        self.status = status


def _load_model(model: str | Path | None, threads: int) -> tuple[Path, AcousticModel]:
    from trio_asr.model import ModelError, load_model
    from trio_asr.model_store import ModelNotAvailable, resolve_model_dir

    try:
        directory = resolve_model_dir(model)
        return directory, load_model(directory, threads=threads)
    except (ModelNotAvailable, ModelError) as exc:
        raise CommandFailed(exc) from None


def _load_vad(config: Any) -> Any:
    """The Silero VAD when ``config.vad`` asks for it, else None."""
    if not config.vad:
        return None
    from trio_asr.vad import SileroVad, VadUnavailable

    try:
        return SileroVad(threshold=config.vad_threshold)
    except VadUnavailable as exc:
        raise CommandFailed(exc) from None


def _read_hotwords(path: Path | None) -> tuple[Hotword, ...]:
    """The phrases of ``--hotwords-file`` (checked before the model loads)."""
    from trio_asr.hotwords import HotwordError, read_hotwords_file

    if path is None:
        return ()
    try:
        return read_hotwords_file(path)
    except HotwordError as exc:
        raise CommandFailed(f"{exc} (fix the file or leave out --hotwords-file)", 2) from None


def _compile_hotwords(
    hotwords: tuple[Hotword, ...], score: float, model: AcousticModel
) -> CompiledHotwords | None:
    from trio_asr.hotwords import HotwordError, compile_hotwords

    try:
        compiled = compile_hotwords(hotwords, model.tokens, default_score=score)
    except HotwordError as exc:
        raise CommandFailed(f"{exc} (remove it from the hotwords file)", 2) from None
    return compiled


# ---------------------------------------------------------------- serve


def _add_serve(commands: Any) -> None:
    from trio_asr.config import add_config_flags

    parser = commands.add_parser(
        "serve",
        help="run the streaming ASR WebSocket server",
        description="Serve the PaddleSpeech streaming-ASR protocol on ws://HOST:PORT/paddlespeech/asr/streaming. "
        "Every setting can also be given in a TOML file (--config); flags win over the file.",
    )
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys: the flag names with underscores)")
    add_config_flags(parser)
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import attrs
    import trio

    from trio_asr.config import ConfigError, config_overrides, load_config
    from trio_asr.logs import configure_logging
    from trio_asr.recognizer import Recognizer
    from trio_asr.server import WS_PATH, Server, ServerStartError, shutdown_on_signals

    try:
        config = load_config(args.config, config_overrides(args))
    except ConfigError as exc:
        raise CommandFailed(exc, 2) from None
    configure_logging(config.log_level, config.log_format, log_transcripts=config.log_transcripts)
    hotwords = _read_hotwords(config.hotwords_file)
    model_dir, model = _load_model(config.model, config.threads)
    config = attrs.evolve(config, model=model_dir)  # the directory actually served (e.g. in /metrics)
    compiled = _compile_hotwords(hotwords, config.hotwords_score, model)
    recognizer = Recognizer(
        model,
        beam=config.beam,
        hotwords=compiled,
        endpoint=config.endpoint_rules(),
        vad=_load_vad(config),
        skip_non_speech=config.skip_non_speech or None,
    )
    server = Server(config, recognizer)

    async def run() -> str | None:
        try:
            await server.open()
        except ServerStartError as exc:
            return str(exc)
        saving = f"saving audio to {config.audio_dir.resolve()}" if config.save_audio else "not saving audio"
        web = "https" if server.scheme == "wss" else "http"
        print(f"trio-asr: serving {server.scheme}://{config.host}:{server.port}{WS_PATH} (model {model_dir}; {saving})"
              + (f"; microphone page at {web}://{config.host}:{server.port}/" if config.page else ""),
              file=sys.stderr)  # fmt: skip
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown_on_signals, server)
            await server.run()
            nursery.cancel_scope.cancel()
        return None

    error = trio.run(run)
    if error:
        raise CommandFailed(error)
    return 0


# ---------------------------------------------------------------- client


def _add_client(commands: Any) -> None:
    from trio_asr.client import DEFAULT_URL

    parser = commands.add_parser(
        "client",
        help="stream a WAV file to a server and print the transcript",
        description="Stream a WAV file to a server speaking the protocol and print the final transcript. "
        "By default like PaddleSpeech's client: 85 ms frames, each sent after the previous reply; "
        "--pipeline sends at real-time pace without waiting, like its web demo.",
    )
    parser.add_argument("file", type=Path, help="WAV file (any rate, PCM or float, mono or multi-channel)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses to ask for (default 1)")
    parser.add_argument("--chunk-ms", type=float, default=85.0, help="audio per frame in ms (default 85)")
    parser.add_argument("--pipeline", action="store_true", help="send at real-time pace without waiting for replies")
    parser.add_argument("--json", action="store_true", help="print the server's end reply as JSON")
    parser.add_argument(
        "--token", help="access token, sent as Authorization: Bearer (default: $TRIO_ASR_TOKEN, else none)"
    )
    parser.add_argument("--cafile", type=Path, help="for wss://: trust this CA or self-signed certificate (PEM)")
    parser.set_defaults(run=_run_client)


def _run_client(args: argparse.Namespace) -> int:
    import trio

    from trio_asr.client import ClientError, stream_file
    from trio_asr.tls import TlsError, client_context

    if args.nbest < 1 or not math.isfinite(args.chunk_ms) or args.chunk_ms <= 0:
        raise CommandFailed("--nbest must be >= 1 and --chunk-ms > 0", 2)
    live = sys.stderr.isatty() and not args.json
    width = 0

    def show(reply: dict[str, Any]) -> None:
        nonlocal width
        text = str(reply.get("result", ""))
        sys.stderr.write("\r" + text.ljust(width))
        sys.stderr.flush()
        width = len(text)

    try:
        ssl_context = client_context(args.cafile) if args.url.startswith("wss:") else None
    except TlsError as exc:
        raise CommandFailed(exc, 2) from None
    token = args.token if args.token is not None else os.environ.get("TRIO_ASR_TOKEN") or None
    options = {
        "nbest": args.nbest, "chunk_ms": args.chunk_ms, "pipeline": args.pipeline,
        "token": token, "ssl_context": ssl_context,
    }  # fmt: skip
    try:
        final = trio.run(lambda: stream_file(args.url, args.file, on_partial=show if live else None, **options))
    except (ClientError, OSError, ValueError) as exc:
        if live and width:
            sys.stderr.write("\n")
        raise CommandFailed(exc) from None
    if live:
        sys.stderr.write("\r" + " " * width + "\r")
    if args.json:
        print(json.dumps(final, ensure_ascii=False))
    else:
        print(final["result"])
        for i, hyp in enumerate(final.get("nbest", [])[1:], start=2):
            print(f"  {i}. {hyp['text']}  ({hyp['score']:.2f})")
    return 0


# ---------------------------------------------------------------- transcribe


def _add_transcribe(commands: Any) -> None:
    parser = commands.add_parser(
        "transcribe",
        help="transcribe WAV files (streamed through the server's decoding path)",
        description="Transcribe WAV files offline, streamed through the same recognizer the server uses.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="WAV files (PCM, any rate, mono or stereo)")
    parser.add_argument("--model", help="model directory or registry name (default: $TRIO_ASR_MODEL_DIR or the cache)")
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses to print per file (default 1)")
    parser.add_argument("--beam", type=int, default=10, help="CTC prefix beam width (default 10)")
    parser.add_argument("--greedy", action="store_true", help="best-path decoding instead of beam search")
    parser.add_argument(
        "--hotwords-file", type=Path, metavar="FILE",
        help="phrases to bias recognition towards, one per line, optionally 'PHRASE :SCORE' (see README: Hotwords)",
    )  # fmt: skip
    parser.add_argument(
        "--hotwords-score", type=float, default=None, metavar="SCORE",
        help="bonus per token of a hotword without its own score (default 1.5)",
    )  # fmt: skip
    parser.add_argument(
        "--timestamps", action="store_true", help="print word start/end times (with --json: also each token's)"
    )
    parser.add_argument("--segments", action="store_true", help="print the segments between endpoints with their times")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    from trio_asr.endpoint import EndpointRules

    rules = EndpointRules()
    for flag, default, what in (
        ("--endpoint-silence-without-text", rules.silence_without_text, "a segment with no text ends after this much silence, s (0: off)"),
        ("--endpoint-silence-after-text", rules.silence_after_text, "a segment with text ends after this much silence, s (0: off)"),
        ("--endpoint-max-segment", rules.max_segment, "a segment ends when it is this long, s"),
    ):  # fmt: skip
        parser.add_argument(flag, type=float, default=default, metavar="S", help=f"{what} (default {default:g})")
    parser.add_argument(
        "--vad", action="store_true", help="endpoints from Silero VAD's speech / non-speech (needs trio-asr[vad])"
    )
    parser.add_argument(
        "--skip-non-speech", type=float, metavar="S",
        help="with --vad: do not run the model on audio after S seconds of non-speech (the text can change)",
    )  # fmt: skip
    parser.set_defaults(run=_run_transcribe)


def _run_transcribe(args: argparse.Namespace) -> int:
    from trio_asr.endpoint import EndpointRules
    from trio_asr.hotwords import DEFAULT_SCORE, HotwordError, check_score
    from trio_asr.recognizer import Recognizer
    from trio_asr.search import MAX_BEAM
    from trio_asr.transcribe import run_batch

    if args.nbest < 1 or args.beam < 1 or args.threads < 1:
        raise CommandFailed("--nbest, --beam and --threads must be >= 1", 2)
    if max(args.beam, args.nbest) > MAX_BEAM:
        raise CommandFailed(f"--beam and --nbest must be at most {MAX_BEAM}", 2)
    if args.hotwords_file is None and args.hotwords_score is not None:
        raise CommandFailed("--hotwords-score needs --hotwords-file", 2)
    if args.hotwords_file is not None and args.greedy:
        raise CommandFailed("--hotwords-file needs beam search (leave out --greedy)", 2)
    try:
        score = check_score(DEFAULT_SCORE if args.hotwords_score is None else args.hotwords_score, "--hotwords-score")
    except HotwordError as exc:
        raise CommandFailed(exc, 2) from None
    try:
        rules = EndpointRules(
            silence_without_text=args.endpoint_silence_without_text or None,
            silence_after_text=args.endpoint_silence_after_text or None,
            max_segment=args.endpoint_max_segment,
        )
    except ValueError as exc:
        raise CommandFailed(f"bad --endpoint-* flag: {exc} (0 switches the silence rules off)", 2) from None
    vad = None
    if args.vad:
        from trio_asr.vad import SileroVad, VadUnavailable

        try:
            vad = SileroVad()
        except VadUnavailable as exc:
            raise CommandFailed(exc) from None
    if args.skip_non_speech is not None and vad is None:
        raise CommandFailed("--skip-non-speech needs --vad", 2)
    hotwords = _read_hotwords(args.hotwords_file)
    _, model = _load_model(args.model, args.threads)
    compiled = _compile_hotwords(hotwords, score, model) if hotwords else None
    try:
        recognizer = Recognizer(
            model,
            beam=max(args.beam, args.nbest),
            decoding="greedy" if args.greedy else "beam",
            hotwords=compiled,
            endpoint=rules,
            vad=vad,
            skip_non_speech=args.skip_non_speech,
        )
    except ValueError as exc:
        raise CommandFailed(f"--skip-non-speech: {exc}", 2) from None
    failures = run_batch(
        recognizer, args.files, nbest=args.nbest, timestamps=args.timestamps, as_json=args.json, segments=args.segments
    )
    return 1 if failures else 0


# ---------------------------------------------------------------- models


def _add_models(commands: Any) -> None:
    parser = commands.add_parser(
        "models",
        help="list known models, or download one into the cache",
        description="List the models trio-asr knows (name, cached or not, language, download size, kind, "
        "cache path), or download one into the cache with --download NAME.",
    )
    parser.add_argument("--download", metavar="NAME", help="download (and verify) the model NAME into the cache")
    parser.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from trio_asr.model_store import REGISTRY, ModelNotAvailable, cache_root, is_complete, resolve_model_dir
    from trio_asr.progress import megabytes

    if args.download is not None:
        if args.download not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise CommandFailed(f"--download {args.download}: not a known model name (known: {known})", 2)
        try:
            print(resolve_model_dir(args.download))
        except ModelNotAvailable as exc:
            raise CommandFailed(exc) from None
        return 0
    root = cache_root()
    for name, spec in sorted(REGISTRY.items()):
        state = "cached" if is_complete(spec, root / name) else "not downloaded"
        size = f"{megabytes(spec.archive_size)} download"
        print("\t".join([name, state, spec.language, size, spec.kind, str(root / name)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
