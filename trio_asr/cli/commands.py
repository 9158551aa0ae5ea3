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
    from trio_asr.serving.config import ServerConfig
    from trio_asr.recognition.hotwords import CompiledHotwords, Hotword
    from trio_asr.recognition.model import AcousticModel
    from trio_asr.recognition.recognizer import Recognizer

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


def _load_model(model: str | Path | None, threads: int, exact: bool) -> tuple[Path, AcousticModel]:
    from trio_asr.recognition.model import ModelError, load_model
    from trio_asr.cli.model_store import ModelNotAvailable, resolve_model_dir

    try:
        directory = resolve_model_dir(model)
        return directory, load_model(directory, threads=threads, per_item_quantization=exact)
    except (ModelNotAvailable, ModelError) as exc:
        raise CommandFailed(exc) from None


def _load_vad(config: Any) -> Any:
    """The Silero VAD when ``config.vad`` asks for it, else None."""
    if not config.vad:
        return None
    from trio_asr.recognition.vad import SileroVad, VadUnavailable

    try:
        return SileroVad(threshold=config.vad_threshold)
    except VadUnavailable as exc:
        raise CommandFailed(exc) from None


def _build_recognizer(config: ServerConfig, *, nbest: int = 1, greedy: bool = False) -> tuple[Path, Recognizer]:
    """The model directory and a recognizer made as ``config``'s recognizer
    settings (see :data:`trio_asr.serving.config.RECOGNIZER_SETTINGS`) say."""
    from trio_asr.recognition.recognizer import Recognizer

    if config.hotwords_file is not None and greedy:
        raise CommandFailed("--hotwords-file needs beam search (leave out --greedy)", 2)
    hotwords = _read_hotwords(config.hotwords_file)
    vad = _load_vad(config)
    model_dir, model = _load_model(config.model, config.threads, config.exact_batching)
    recognizer = Recognizer(
        model,
        beam=max(config.beam, nbest),
        decoding="greedy" if greedy else "beam",
        hotwords=_compile_hotwords(hotwords, config.hotwords_score, model),
        endpoint=config.endpoint_rules(),
        vad=vad,
        skip_non_speech=config.skip_non_speech or None,
    )
    return model_dir, recognizer


def _read_hotwords(path: Path | None) -> tuple[Hotword, ...]:
    """The phrases of ``--hotwords-file`` (checked before the model loads)."""
    from trio_asr.recognition.hotwords import HotwordError, read_hotwords_file

    if path is None:
        return ()
    try:
        return read_hotwords_file(path)
    except HotwordError as exc:
        raise CommandFailed(f"{exc} (fix the file or leave out --hotwords-file)", 2) from None


def _compile_hotwords(
    hotwords: tuple[Hotword, ...], score: float, model: AcousticModel
) -> CompiledHotwords | None:
    from trio_asr.recognition.hotwords import HotwordError, compile_hotwords

    try:
        compiled = compile_hotwords(hotwords, model.tokens, default_score=score)
    except HotwordError as exc:
        raise CommandFailed(f"{exc} (remove it from the hotwords file)", 2) from None
    return compiled


# ---------------------------------------------------------------- serve


def _add_serve(commands: Any) -> None:
    from trio_asr.serving.config import add_config_flags

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

    from trio_asr.serving.config import ConfigError, config_overrides
    from trio_asr.serving.config_file import load_config
    from trio_asr.serving.logs import configure_logging
    from trio_asr.serving.addresses import startup_line
    from trio_asr.serving.server import WS_PATH, Server, ServerStartError, shutdown_on_signals

    try:
        config = load_config(args.config, config_overrides(args))
    except ConfigError as exc:
        raise CommandFailed(exc, 2) from None
    configure_logging(config.log_level, config.log_format, log_transcripts=config.log_transcripts)
    model_dir, recognizer = _build_recognizer(config)
    config = attrs.evolve(config, model=model_dir)  # the directory actually served (e.g. in /metrics)
    server = Server(config, recognizer)

    async def run() -> str | None:
        try:
            await server.open()
        except ServerStartError as exc:
            return str(exc)
        line = startup_line(config, scheme=server.scheme, port=server.port, ws_path=WS_PATH, model_dir=model_dir)
        print(line, file=sys.stderr)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown_on_signals, server)
            await server.run()
            nursery.cancel_scope.cancel()
        return None

    settle_garbage_collector()
    error = trio.run(run)
    if error:
        raise CommandFailed(error)
    return 0


#: gen-0 collections every 10,000 net allocations instead of 700
SERVING_GC_THRESHOLDS = (10_000, 10, 10)


def settle_garbage_collector() -> None:
    """Tune Python's cyclic collector for serving, once startup is done.

    Every collection holds the interpreter lock, stalling the event loop and
    the model threads' Python parts alike.  With the defaults, a server at
    170 streams spent about 60 ms of every second in collections, full ones
    taking 30-60 ms (see benchmarks/README.md).  So: freeze what startup
    built (modules, classes, functions, the model's token tables: they live
    until exit and never need scanning again), and collect the young
    generation less often (nearly everything a frame allocates is freed by
    reference counting long before then)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)


# ---------------------------------------------------------------- client


def _add_client(commands: Any) -> None:
    from trio_asr.cli.client import DEFAULT_URL

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

    from trio_asr.cli.client import ClientError, stream_file
    from trio_asr.serving.tls import TlsError, client_context

    if args.nbest < 1 or not math.isfinite(args.chunk_ms) or args.chunk_ms <= 0:
        raise CommandFailed("--nbest must be >= 1 and --chunk-ms > 0", 2)
    if not args.file.is_file():
        raise CommandFailed(f"{args.file}: no such file (give a WAV file to stream)", 2)
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
    from trio_asr.serving.config import RECOGNIZER_SETTINGS, add_config_flags

    parser.add_argument("--nbest", type=int, default=1, help="hypotheses to print per file (default: 1)")
    parser.add_argument("--greedy", action="store_true", help="best-path decoding instead of beam search")
    parser.add_argument(
        "--timestamps", action="store_true", help="print word start/end times (with --json: also each token's)"
    )
    parser.add_argument("--segments", action="store_true", help="print the segments between endpoints with their times")
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    add_config_flags(parser, RECOGNIZER_SETTINGS)
    parser.set_defaults(run=_run_transcribe)


def _run_transcribe(args: argparse.Namespace) -> int:
    from trio_asr.serving.config import RECOGNIZER_SETTINGS, ConfigError, config_overrides
    from trio_asr.serving.config_file import load_config
    from trio_asr.cli.transcribe import run_batch

    try:
        config = load_config(None, config_overrides(args, RECOGNIZER_SETTINGS))
    except ConfigError as exc:  # named as the flags are
        setting, _, rest = str(exc).partition(" ")
        flag = "--" + setting.replace("_", "-") if setting in RECOGNIZER_SETTINGS else setting
        raise CommandFailed(f"{flag} {rest}", 2) from None
    if not 1 <= args.nbest <= config.beam:
        raise CommandFailed(f"--nbest must be between 1 and the beam width ({config.beam}), got {args.nbest}", 2)
    _, recognizer = _build_recognizer(config, nbest=args.nbest, greedy=args.greedy)
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
    from trio_asr.cli.model_store import REGISTRY, ModelNotAvailable, cache_root, is_complete, resolve_model_dir
    from trio_asr.cli.progress import megabytes

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
