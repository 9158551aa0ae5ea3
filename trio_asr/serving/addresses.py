"""The addresses ``trio-asr serve`` prints on startup, in the line it prints
(and the warning for an address open to others without TLS or tokens).

A server bound to a wildcard (``0.0.0.0``, ``::``, every interface) is not
reachable *at* that address from a browser, and a browser offers the
microphone only to secure contexts: ``https://`` pages and pages on
localhost.  So the printed addresses are ones a client on this machine can
use: loopback for a wildcard or loopback bind, the bound host otherwise.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from pathlib import Path

from trio_asr.serving.config import ServerConfig

__all__ = ["WILDCARD_HOSTS", "client_host", "exposure_warning", "is_loopback", "listen_error", "startup_line"]

#: hosts that bind every interface ("" is every interface of every family)
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, *, tls: bool, tokens: bool, saves_audio: bool = True) -> str | None:
    """The startup warning for binding ``host`` with neither TLS nor tokens
    (``None`` for a loopback address, or with either)."""
    if tls or tokens or is_loopback(host):
        return None
    saved = " (saved to disk)" if saves_audio else ""
    return (
        f"anyone who can reach this address can stream audio{saved} in clear text; "
        "use --auth-token/--auth-tokens-file and --certfile/--keyfile, or --host 127.0.0.1"
    )


def listen_error(host: str, port: int, exc: OSError) -> str:
    """The one line saying why the server cannot listen on ``host:port``,
    with the setting to change."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:  # (gaierror's codes are no errnos)
        hint = " (check --host: it must name an address of this machine)"
    elif exc.errno == errno.EADDRINUSE:
        hint = " (is another server running? pick another --port)"
    elif exc.errno == errno.EACCES:
        hint = " (ports below 1024 need privileges: pick another --port)"
    else:
        hint = ""
    return f"cannot listen on {host}:{port}: {reason}{hint}"


def client_host(host: str) -> str:
    """The host part of a URL reaching a server bound to ``host``: loopback
    for a wildcard (IPv6 loopback for ``::``), else ``host`` itself (IPv6
    addresses in brackets)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def startup_line(config: ServerConfig, *, scheme: str, port: int, ws_path: str, model_dir: Path) -> str:
    """What ``serve`` prints once it listens: the WebSocket URL, where it
    listens, the model, where audio goes and the microphone page's address,
    with what other machines need (``--host``, a token, TLS for the page's
    microphone)."""
    host = client_host(config.host)
    where = [f"listening on every interface ({config.host or '*'})"] if config.host in WILDCARD_HOSTS else []
    where.append(f"model {model_dir}" + (f", second pass {config.second_pass}" if config.second_pass else ""))
    where.append(f"saving audio to {config.audio_dir.resolve()}" if config.save_audio else "not saving audio")
    line = f"trio-asr: serving {scheme}://{host}:{port}{ws_path} ({'; '.join(where)})"
    if config.page:
        tls = scheme == "wss"
        line += f"; microphone page at {'https' if tls else 'http'}://{host}:{port}/"
        if not tls and config.host in WILDCARD_HOSTS:
            line += " (its microphone works on other machines only over https: --certfile)"
        elif not tls and not is_loopback(config.host):
            line += " (its microphone needs https: --certfile)"
    if is_loopback(config.host):
        tokens = config.auth_token or config.auth_tokens_file is not None
        line += "; only this machine can connect (to accept others: --host 0.0.0.0"
        line += ")" if tokens else " with --auth-token)"
    return line
