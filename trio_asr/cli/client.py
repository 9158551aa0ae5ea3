"""``trio-asr client``: stream an audio file to a server speaking the protocol.

Two pacing modes, matching the clients seen in the wild:

* lock-step (default, like PaddleSpeech's command-line client): send an
  85 ms chunk (2720 bytes at 16 kHz mono), wait for its reply, repeat;
* ``--pipeline`` (like its web demo): send chunks at real-time pace without
  waiting while a reader task collects the replies.

The audio goes out as PCM16 at the file's own rate and channel count; the
server resamples and down-mixes.  A file at a rate the server does not take
(see :data:`~trio_asr.protocol.limits.STANDARD_SAMPLE_RATES`, e.g. 192 kHz)
or with more channels than it takes is mixed down to mono and resampled to
16 kHz here first.  Files are read by :func:`trio_asr.audio_files.read_audio`
(WAV, and FLAC, Ogg, MP3 ... with soundfile).
"""

from __future__ import annotations

import json
import math
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import numpy as np
import trio
import trio_websocket

from trio_asr.audio import down_mix
from trio_asr.audio_files import AudioFileError, conversion_command, read_audio
from trio_asr.protocol.limits import DEFAULT_SAMPLE_RATE, STANDARD_SAMPLE_RATES, ProtocolLimits
from trio_asr.recognition.resample import resample

__all__ = ["DEFAULT_REPLY_TIMEOUT", "DEFAULT_URL", "ClientError", "fit_to_server", "stream_file", "stream_pcm"]

DEFAULT_URL = "ws://127.0.0.1:8090/paddlespeech/asr/streaming"

#: seconds to wait for each reply before giving up on the server
DEFAULT_REPLY_TIMEOUT = 30.0
#: at most this long for the server's side of the closing handshake
_CLOSE_SECONDS = 5.0


class ClientError(Exception):
    """The server answered with an error or broke the protocol."""


def _to_pcm16(samples: np.ndarray) -> bytes:
    scaled = np.clip(np.round(samples.astype(np.float64) * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


async def _recv(ws: trio_websocket.WebSocketConnection, timeout: float, grace: float = 0.0) -> dict[str, Any]:
    """The next reply, due within ``timeout`` s (+ ``grace``: until its frame is sent)."""
    try:
        with trio.fail_after(timeout + grace):
            message = await ws.get_message()
    except trio.TooSlowError:
        raise ClientError(
            f"no reply from the server in {timeout:g} s (is it overloaded or stuck? "
            "--reply-timeout sets the wait)"
        ) from None
    except trio_websocket.ConnectionClosed as exc:
        why = f" ({exc.reason.code} {exc.reason.reason or exc.reason.name})" if exc.reason else ""
        raise ClientError(f"the server closed the connection{why}") from None
    if not isinstance(message, str):
        raise ClientError("server sent a binary frame")
    reply = json.loads(message)
    if not isinstance(reply, dict):
        raise ClientError(f"unexpected reply: {message}")
    if reply.get("status") == "error":
        raise ClientError(f"server error: {reply.get('message')}")
    return reply


async def stream_pcm(
    url: str,
    pcm: bytes,
    *,
    sample_rate: int = 16000,
    channels: int = 1,
    name: str = "audio.wav",
    nbest: int = 1,
    chunk_ms: float = 85.0,
    pipeline: bool = False,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
) -> dict[str, Any]:
    """Stream PCM16 bytes as one stream; return the server's end reply.

    ``on_partial`` is called with every partial reply, in order.  ``token``
    is sent as ``Authorization: Bearer``; ``ssl_context`` verifies a
    ``wss://`` server (default: the system's CAs).  Raises
    :class:`ClientError` on an error reply, a protocol violation, or no
    reply (the opening handshake's included) within ``reply_timeout``
    seconds of when it was due.
    """
    frame_bytes = 2 * channels
    chunk_bytes = max(1, round(sample_rate * chunk_ms / 1000)) * frame_bytes
    chunks = [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
    start = {"name": name, "signal": "start", "nbest": nbest, "sampleRate": sample_rate, "channels": channels}
    partial = on_partial or (lambda reply: None)
    headers = [(b"authorization", b"Bearer " + token.encode())] if token else []
    if not reply_timeout > 0:
        raise ValueError(f"reply_timeout must be > 0 seconds, not {reply_timeout}")
    final: dict[str, Any] | None = None
    # the opening handshake (TLS's too) within reply_timeout: trio-websocket's
    # own timeout leaves its reader waiting on a silent server
    opening = trio.CancelScope(deadline=trio.current_time() + reply_timeout)
    try:
        with opening:
            if url.startswith("wss:"):
                ssl_context = ssl_context or ssl.create_default_context()
                await _check_tls(url, ssl_context)
            async with trio_websocket.open_websocket_url(
                url, ssl_context, extra_headers=headers, max_message_size=16 << 20,
                disconnect_timeout=min(reply_timeout, _CLOSE_SECONDS),
            ) as ws:
                opening.deadline = math.inf
                final = await _stream(ws, chunks, start, _Pacing(chunk_ms, pipeline, reply_timeout), partial)
    except trio_websocket.DisconnectionTimeout:  # the server ignored our close (after an error: that error)
        if final is None:
            raise ClientError(f"{url}: the server stopped answering") from None
    except trio_websocket.ConnectionRejected as exc:
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        raise ClientError(
            f"{url}: the server refused the WebSocket with HTTP {exc.status_code} {body}".rstrip()
            + _REJECTION_HINTS.get(exc.status_code, "")
        ) from None
    except (trio_websocket.HandshakeError, OSError) as exc:
        _raise_if_untrusted(url, exc)
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if isinstance(cause, OSError):
            raise ClientError(
                f"cannot connect to {url}: {cause.strerror or cause} (is the server running? check the URL)"
            ) from None
        raise ClientError(f"{url}: the WebSocket handshake failed ({cause or type(exc).__name__})") from None
    except trio.BrokenResourceError as exc:
        _raise_if_untrusted(url, exc)
        hint = " (is it a plain ws:// server?)" if "WRONG_VERSION_NUMBER" in str(exc.__cause__) else ""
        raise ClientError(f"{url}: the connection broke ({exc.__cause__ or exc}){hint}") from None
    if opening.cancelled_caught:
        raise ClientError(f"{url}: no answer to the opening handshake in {reply_timeout:g} s")
    if final is None or "result" not in final:
        raise ClientError(f"expected the end reply, got {final}")
    return final


async def _check_tls(url: str, ssl_context: ssl.SSLContext) -> None:
    """Complete a TLS handshake with the server of a ``wss://`` URL.

    trio-websocket reports a failed TLS handshake only as a timeout a minute
    later; doing one first ourselves turns an untrusted certificate into an
    immediate, clear error.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    stream = await trio.open_ssl_over_tcp_stream(
        host, parts.port or 443, ssl_context=ssl_context, https_compatible=True
    )
    async with stream:
        await stream.do_handshake()


def _raise_if_untrusted(url: str, exc: BaseException) -> None:
    """Raise a one-line ClientError if ``exc`` came from TLS certificate verification."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            raise ClientError(
                f"{url}: the server's TLS certificate is not trusted ({seen.verify_message}; "
                "for a self-signed certificate pass it as --cafile)"
            ) from None
        seen = seen.__cause__ or seen.__context__


_REJECTION_HINTS = {
    401: " (the server needs an access token: pass --token or set TRIO_ASR_TOKEN)",
    404: " (check the URL's path)",
}


@attrs.frozen
class _Pacing:
    """How a stream is sent: audio per frame, at real-time pace (``pipeline``)
    or each frame after the previous reply, and how long a reply may be late."""

    chunk_ms: float
    pipeline: bool
    reply_timeout: float


async def _stream(
    ws: trio_websocket.WebSocketConnection,
    chunks: list[bytes],
    start: dict[str, Any],
    pacing: _Pacing,
    partial: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    end = json.dumps({"name": start["name"], "signal": "end", "nbest": start["nbest"]})
    timeout = pacing.reply_timeout
    await ws.send_message(json.dumps(start))
    ready = await _recv(ws, timeout)
    if ready.get("signal") != "server_ready":
        raise ClientError(f"expected server_ready, got {ready}")
    if pacing.pipeline:
        final: dict[str, Any] = {}
        failure: list[ClientError] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                try:
                    for _ in chunks:
                        partial(await _recv(ws, timeout, pacing.chunk_ms / 1000))
                    final.update(await _recv(ws, timeout, pacing.chunk_ms / 1000))
                except ClientError as exc:  # raised below, not as an exception group
                    failure.append(exc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(reader)
            try:
                for chunk in chunks:
                    await ws.send_message(chunk)
                    await trio.sleep(pacing.chunk_ms / 1000 * len(chunk) / len(chunks[0]))  # real time
                await ws.send_message(end)
            except trio_websocket.ConnectionClosed:
                pass  # the reader reports why
        if failure:
            raise failure[0]
    else:
        for chunk in chunks:
            await ws.send_message(chunk)
            partial(await _recv(ws, timeout))
        await ws.send_message(end)
        final = await _recv(ws, timeout)
    return final


async def stream_file(url: str, path: str | Path, **options: Any) -> dict[str, Any]:
    """Read an audio file and :func:`stream_pcm` it under its file name.

    Raises :class:`~trio_asr.audio_files.AudioFileError` (a ValueError)
    for a file that cannot be read or brought to a rate the server takes."""
    samples, rate = fit_to_server(*read_audio(path), path=path)
    options.setdefault("name", Path(path).name)
    return await stream_pcm(url, _to_pcm16(samples), sample_rate=rate, channels=samples.shape[1], **options)


def fit_to_server(samples: np.ndarray, rate: int, *, path: str | Path = "audio") -> tuple[np.ndarray, int]:
    """``(samples, rate)`` as a server with the default limits takes them: as
    they are, or else mixed down to mono and resampled to 16 kHz."""
    if rate in STANDARD_SAMPLE_RATES and samples.shape[1] <= ProtocolLimits().max_channels:
        return samples, rate
    mono = down_mix(samples)
    if rate != DEFAULT_SAMPLE_RATE:
        try:
            mono = resample(mono, rate, DEFAULT_SAMPLE_RATE)
        except ValueError as exc:
            raise AudioFileError(
                f"{path}: cannot resample {rate} Hz to {DEFAULT_SAMPLE_RATE} Hz ({exc}); "
                f"convert it: {conversion_command(path)}"
            ) from None
    return mono[:, np.newaxis], DEFAULT_SAMPLE_RATE
