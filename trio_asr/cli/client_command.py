"""``trio-asr client``: its flags, and streaming each file to the server.

The streaming itself is :mod:`trio_asr.cli.client`, which is also a client
library; this module is the command around it: one stream per file, in
order, each printed when its end reply arrives.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from trio_asr.cli.commands import BAD_INPUT, CommandFailed, check_input_files

__all__ = ["add_client"]


def add_client(commands: Any) -> None:
    from trio_asr.cli.client import DEFAULT_REPLY_TIMEOUT, DEFAULT_URL

    parser = commands.add_parser(
        "client",
        help="stream audio files to a server and print the transcripts",
        description="Stream audio files to a server speaking the protocol, one stream each, in order, and print "
        "each final transcript. By default like PaddleSpeech's client: 85 ms frames, each sent after the previous "
        "reply; --pipeline sends at real-time pace without waiting, like its web demo.",
    )
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE",
        help="audio files: WAV (any rate, PCM or float, mono or multi-channel); FLAC, Ogg, MP3 ... with soundfile",
    )  # fmt: skip
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    parser.add_argument("--nbest", type=int, default=1, help="hypotheses to ask for (default 1)")
    parser.add_argument("--chunk-ms", type=float, default=85.0, help="audio per frame in ms (default 85)")
    parser.add_argument("--pipeline", action="store_true", help="send at real-time pace without waiting for replies")
    parser.add_argument("--json", action="store_true", help="print each file's end reply as JSON, one per line")
    parser.add_argument(
        "--reply-timeout", type=float, default=DEFAULT_REPLY_TIMEOUT, metavar="SECONDS",
        help=f"give up when a reply is this late (default {DEFAULT_REPLY_TIMEOUT:g}; inf: never)",
    )
    parser.add_argument(
        "--token", help="access token, sent as Authorization: Bearer (default: $TRIO_ASR_TOKEN, else none)"
    )
    parser.add_argument("--cafile", type=Path, help="for wss://: trust this CA or self-signed certificate (PEM)")
    parser.set_defaults(run=run_client)


def run_client(args: argparse.Namespace) -> int:
    """Stream each file; a file that cannot be read is reported and skipped
    (exit status 2 at the end), a failure of the server or the connection
    ends the command (status 1)."""
    import trio

    from trio_asr.cli.client import ClientError, stream_file
    from trio_asr.serving.tls import TlsError, client_context

    if args.nbest < 1 or not math.isfinite(args.chunk_ms) or args.chunk_ms <= 0:
        raise CommandFailed("--nbest must be >= 1 and --chunk-ms > 0", BAD_INPUT)
    if not args.reply_timeout > 0:  # inf waits for ever
        raise CommandFailed("--reply-timeout must be a number of seconds > 0 (or inf)", BAD_INPUT)
    check_input_files(args.files)
    try:
        ssl_context = client_context(args.cafile) if args.url.startswith("wss:") else None
    except TlsError as exc:
        raise CommandFailed(exc, BAD_INPUT) from None
    token = args.token if args.token is not None else os.environ.get("TRIO_ASR_TOKEN") or None
    options = {
        "nbest": args.nbest, "chunk_ms": args.chunk_ms, "pipeline": args.pipeline,
        "token": token, "ssl_context": ssl_context, "reply_timeout": args.reply_timeout,
    }  # fmt: skip
    live = _LiveLine(sys.stderr.isatty() and not args.json)
    several = len(args.files) > 1
    failures = 0
    for path in args.files:
        try:
            final = trio.run(lambda: stream_file(args.url, path, on_partial=live.show if live.on else None, **options))
        except (ClientError, OSError) as exc:
            live.end(keep=True)
            raise CommandFailed(exc) from None
        except ValueError as exc:  # the file: AudioFileError names it
            live.end(keep=True)
            failures += 1
            print(f"trio-asr client: {exc}", file=sys.stderr, flush=True)
            continue
        except BaseException:  # interrupted: the message goes on a line of its own
            live.end(keep=True)
            raise
        live.end(keep=False)
        _print_final(final, path, several, args)
    return BAD_INPUT if failures else 0


def _print_final(final: dict[str, Any], path: Path, several: bool, args: argparse.Namespace) -> None:
    """The end reply: as JSON with the file's path added (``file``, as
    ``transcribe --json`` names it: the stream's name is only the base
    name), else its text, after the path when there are several files."""
    from trio_asr.cli.transcribe import format_nbest

    if args.json:
        print(json.dumps({"file": str(path), **final}, ensure_ascii=False), flush=True)
        return
    print(f"{path}\t{final['result']}" if several else final["result"])
    for line in format_nbest((h["text"], h["score"]) for h in final.get("nbest", [])) if args.nbest > 1 else []:
        print(line)
    sys.stdout.flush()


class _LiveLine:
    """The partial transcript redrawn in place on a terminal's stderr."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.width = 0

    def show(self, reply: dict[str, Any]) -> None:
        text = str(reply.get("result", ""))
        sys.stderr.write("\r" + text.ljust(self.width))
        sys.stderr.flush()
        self.width = len(text)

    def end(self, *, keep: bool) -> None:
        """Finish the line: kept (a message follows) or wiped (the result follows on stdout)."""
        if self.on and self.width:
            sys.stderr.write("\n" if keep else "\r" + " " * self.width + "\r")
            sys.stderr.flush()
        self.width = 0
