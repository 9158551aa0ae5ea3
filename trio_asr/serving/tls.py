"""TLS: the SSL contexts behind ``wss://`` / ``https://`` and our client.

:func:`accept_tls` is the TLS side of one accepted connection, which tells
a client that sent plain HTTP to use TLS instead of failing its handshake.

:func:`server_context` loads ``--certfile`` (PEM, the certificate chain, and
the private key too unless ``--keyfile`` is given) into a context that
speaks TLS 1.2 or newer with HTTP/1.1 ALPN.  :func:`client_context` trusts
the system's CAs, or only ``cafile`` (e.g. a self-signed certificate).
Problems are one-line :class:`TlsError` messages, never a password prompt.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import trio

from trio_asr.serving.http import Exchange, HttpLimits, Observer, ReplayStream, error_body, serve_http

__all__ = ["TlsError", "accept_tls", "client_context", "server_context"]

PathLike = str | os.PathLike[str]


class TlsError(ValueError):
    """A certificate, key or CA file cannot be used."""


def _no_password() -> bytes:
    raise TlsError("the private key is encrypted; give an unencrypted key file (e.g. openssl pkey -in KEY -out NEW)")


def server_context(certfile: PathLike, keyfile: PathLike | None = None) -> ssl.SSLContext:
    """A server-side context with the certificate chain and key loaded."""
    for label, path in (("certificate", certfile), ("key", keyfile)):
        if path is not None and not Path(path).is_file():
            raise TlsError(f"TLS {label} file {path} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except ssl.SSLError as exc:
        key = keyfile if keyfile is not None else certfile
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsError(f"the key in {key} does not match the certificate in {certfile}") from None
        raise TlsError(
            f"cannot load TLS certificate {certfile} / key {key} (PEM files expected): {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise TlsError(f"cannot read TLS files {certfile}, {keyfile}: {exc.strerror}") from None
    return context


def client_context(cafile: PathLike | None = None) -> ssl.SSLContext:
    """A client-side context verifying the server against the system CAs or ``cafile``."""
    if cafile is not None and not Path(cafile).is_file():
        raise TlsError(f"CA file {cafile} does not exist")
    try:
        return ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise TlsError(f"cannot load CA file {cafile} (PEM expected): {exc.reason or exc}") from None


async def accept_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext, limits: HttpLimits, peer: str, observe: Observer | None = None
) -> trio.SSLStream[ReplayStream] | None:
    """The server side of TLS over ``stream`` (the handshake happens at the
    first read), or ``None`` when the client's first bytes (awaited for
    ``limits.head_timeout``) are no TLS handshake: plain HTTP is answered
    400, saying to use ``wss://`` or ``https://``."""
    first = b""
    with trio.move_on_after(limits.head_timeout):
        first = bytes(await stream.receive_some(4096))
    if first[:1] == b"\x16":  # a TLS handshake record
        return trio.SSLStream(ReplayStream(first, stream), context, server_side=True, https_compatible=True)
    if first:
        await serve_http(ReplayStream(first, stream), _refuse_plain_http, limits, peer=peer, observe=observe)
    return None


async def _refuse_plain_http(exchange: Exchange) -> None:
    exchange.close_after()
    await exchange.respond_json(400, error_body("this server speaks TLS: use wss:// or https://"))
