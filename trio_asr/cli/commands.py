"""The ``trio-asr`` command line: ``serve``, ``client``, ``transcribe``, ``models``.

Each command is an ``add`` function that declares its flags and a ``run``
function that does the work and returns the exit status: ``serve`` and
``models`` here, ``client`` and ``transcribe`` in ``client_command.py`` and
``transcribe_command.py``.  Expected failures (no model, port in use, server
down, bad file) print one line, ``trio-asr COMMAND: what happened (what to
do)``.  Exit status: 0 done, 1 failed (:data:`FAILED`: no model, server
down or refusing, port in use), 2 bad usage or input (:data:`BAD_INPUT`: a
bad option or setting, an input file missing or not readable as audio),
130 interrupted (:data:`INTERRUPTED`: Ctrl-C, one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trio_asr._version import __version__

if TYPE_CHECKING:
    from trio_asr.cli.model_store import ModelSpec
    from trio_asr.serving.config import ServerConfig
    from trio_asr.recognition.hotwords import CompiledHotwords, Hotword
    from trio_asr.recognition.model import AcousticModel
    from trio_asr.recognition.recognizer import Recognizer
    from trio_asr.serving.server import ServerStartError

__all__ = ["BAD_INPUT", "FAILED", "INTERRUPTED", "CommandFailed", "build_parser", "check_input_files", "main"]

#: exit statuses (0: done)
FAILED, BAD_INPUT, INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-asr",
        description="Streaming speech recognition server (PaddleSpeech streaming-ASR protocol).",
    )
    parser.add_argument("--version", action="version", version=f"trio-asr {__version__}")
    from trio_asr.cli.client_command import add_client
    from trio_asr.cli.transcribe_command import add_transcribe

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(commands)
    add_client(commands)
    add_transcribe(commands)
    _add_models(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if command is None:
            parser.print_help()
            return 0
        return _run(args)
    except BaseException as exc:
        if not is_interrupt(exc):
            raise
        print(f"trio-asr {command}: interrupted" if command else "trio-asr: interrupted", file=sys.stderr)
        return INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        status: int = args.run(args)
        return status
    except CommandFailed as exc:
        print(f"trio-asr {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C: a KeyboardInterrupt, or an exception group
    (Trio's nurseries wrap what their tasks raise) of KeyboardInterrupts and
    the Cancelled exceptions of the tasks it cancelled."""
    leaves = list(_leaves(exc))
    return any(isinstance(e, KeyboardInterrupt) for e in leaves) and all(
        isinstance(e, KeyboardInterrupt) or type(e).__name__ == "Cancelled" for e in leaves
    )


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    children = getattr(exc, "exceptions", None)  # a BaseExceptionGroup (a builtin from Python 3.11)
    if isinstance(children, tuple) and children and all(isinstance(c, BaseException) for c in children):
        for child in children:
            yield from _leaves(child)
    else:
        yield exc


class CommandFailed(Exception):
    """An expected failure: its message is the one line the user sees."""

    def __init__(self, message: object, status: int = FAILED) -> None:
        super().__init__(str(message))
        self.status = status


def check_input_files(paths: Iterable[str | Path]) -> None:
    """Refuse (status 2, one line naming it) the first path that is not a file."""
    for path in paths:
        if not Path(path).is_file():
            what = "a directory, not an audio file" if Path(path).is_dir() else "no such file"
            raise CommandFailed(f"{path}: {what}", BAD_INPUT)


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
    if config.processes > 1:
        from trio_asr.cli.supervisor import supervise

        return supervise(config)
    limit_malloc_arenas()
    model_dir, recognizer = _build_recognizer(config)
    config = attrs.evolve(config, model=model_dir)  # the directory actually served (e.g. in /metrics)
    server = Server(config, recognizer)

    async def run() -> ServerStartError | None:
        try:
            await server.open()
        except ServerStartError as exc:
            return exc
        line = startup_line(config, scheme=server.scheme, port=server.port, ws_path=WS_PATH, model_dir=model_dir)
        print(line, file=sys.stderr)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown_on_signals, server)
            await server.run()
            nursery.cancel_scope.cancel()
        return None

    settle_garbage_collector()
    error = trio.run(run)
    if error is not None:
        raise start_failure(error)
    return 0


def start_failure(error: ServerStartError) -> CommandFailed:
    """Why a server could not start, with its exit status: a bad setting
    (a token or TLS file) is bad input, anything else a failure."""
    return CommandFailed(error, BAD_INPUT if error.bad_setting else FAILED)


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


#: glibc malloc arenas a serving process uses (glibc's own default: 8 per core)
SERVING_MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's <malloc.h>


def limit_malloc_arenas(environ: Mapping[str, str] | None = None) -> bool:
    """At most :data:`SERVING_MALLOC_ARENAS` malloc arenas, on glibc, unless
    the environment says otherwise (``MALLOC_ARENA_MAX``, or ``arena_max`` in
    ``GLIBC_TUNABLES``); whether it set them.

    Call it before the model loads.  glibc gives each new thread an arena
    of its own, up to 8 per core, and every arena keeps what a model call's
    batch buffers freed in it; with fewer, the server held 60-100 MB less
    at 16-80 int8 streams on 2 cores at the same CPU per audio second, in
    two runs (see benchmarks/README.md)."""
    import ctypes
    import os

    environ = os.environ if environ is None else environ
    if "MALLOC_ARENA_MAX" in environ or "arena_max" in environ.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_ARENA_MAX, SERVING_MALLOC_ARENAS))


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
    from trio_asr.cli.model_store import ENV_MODEL_URL, REGISTRY, cache_root, is_complete
    from trio_asr.cli.progress import megabytes

    root = cache_root()
    if args.download is not None:
        if args.download not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise CommandFailed(f"--download {args.download}: not a known model name (known: {known})", 2)
        print(_download(REGISTRY[args.download], root, ENV_MODEL_URL))
        return 0
    for name, spec in sorted(REGISTRY.items()):
        state = "cached" if is_complete(spec, root / name) else "not downloaded"
        size = f"{megabytes(spec.archive_size)} download"
        print("\t".join([name, state, spec.language, size, spec.kind, str(root / name)]))
    return 0


def _download(spec: ModelSpec, root: Path, env_url: str) -> Path:
    """``spec``'s directory in the cache ``root``, downloaded there if missing."""
    from trio_asr.cli.model_store import DownloadFailed, ModelNotAvailable, download_model, is_complete

    if is_complete(spec, root / spec.name):
        return root / spec.name
    try:
        return download_model(spec, root, url=spec.url())
    except DownloadFailed as exc:  # its own message advises --model, which this command has not
        raise CommandFailed(
            f"cannot download {spec.name} from {exc.url} ({exc.reason}): allow network access, or set "
            f"{env_url} to a mirror holding {spec.archive}, or fetch that file by hand and unpack it into {root}"
        ) from None
    except ModelNotAvailable as exc:
        raise CommandFailed(exc) from None


if __name__ == "__main__":
    sys.exit(main())
