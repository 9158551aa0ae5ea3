"""Access tokens: who may open a stream (sans-I/O).

Tokens come from repeated ``--auth-token`` flags and/or ``--auth-tokens-file``
files (one token per line; blank lines and ``#`` comments ignored).  A client
presents one as ``Authorization: Bearer <token>`` or, since browsers cannot
set headers on a WebSocket, as the ``token`` query parameter of the request
target.  :meth:`TokenGate.allows` checks a request head before the upgrade;
the comparison takes the same time whichever token (if any) matches and
however much of it does.

Tokens never appear in a ``repr``, an error message or a log line:
:func:`redact_target` removes them from request targets before logging.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import attrs

__all__ = ["TOKEN_PARAMETER", "TokenError", "TokenGate", "challenge_headers", "load_tokens", "redact_target"]

TOKEN_PARAMETER = "token"
_MAX_TOKEN_BYTES = 4096


class TokenError(ValueError):
    """A token or tokens file is unusable (the message never contains a token)."""


def _check(token: str, where: str) -> str:
    if not token:
        raise TokenError(f"{where}: empty access token")
    if len(token.encode()) > _MAX_TOKEN_BYTES:
        raise TokenError(f"{where}: access token longer than {_MAX_TOKEN_BYTES} bytes")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise TokenError(f"{where}: access tokens must be printable ASCII without spaces")
    return token


def load_tokens(tokens: Iterable[str] = (), files: Iterable[str | os.PathLike[str]] = ()) -> tuple[str, ...]:
    """The tokens given directly plus those in ``files``, validated, without duplicates."""
    found = [_check(t, "--auth-token") for t in tokens]
    for file in files:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read tokens file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise TokenError(f"tokens file {path} is not UTF-8 text") from None
        in_file = 0
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(_check(line, f"{path}, line {number}"))
                in_file += 1
        if not in_file:
            raise TokenError(f"tokens file {path} has no tokens (one per line; # starts a comment)")
    return tuple(dict.fromkeys(found))


def _digest(token: bytes) -> bytes:
    # Comparing fixed-length digests hides the tokens' lengths too.
    return hashlib.sha256(token).digest()


@attrs.frozen
class TokenGate:
    """Decides whether a request head carries one of the accepted tokens.

    An empty gate (no tokens configured) allows everything.
    """

    _digests: tuple[bytes, ...] = attrs.field(repr=False)

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> TokenGate:
        return cls(tuple(_digest(t.encode()) for t in tokens))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def allows(self, target: bytes | str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether the request (its target and header list, as h11 gives them)
        presents an accepted token; always true when no tokens are configured."""
        if not self._digests:
            return True
        presented = presented_token(target, headers)
        if presented is None:
            return False
        digest = _digest(presented)
        match = False
        for accepted in self._digests:  # no early exit: same time for every token
            match |= hmac.compare_digest(digest, accepted)
        return match


def presented_token(target: bytes | str, headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token a request presents: the ``Authorization: Bearer`` header if
    there is one (then the query is not looked at), else the ``token`` query
    parameter; ``None`` if neither.  An ``Authorization`` header of another
    scheme (a reverse proxy's Basic login) is not ours: the query still counts."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return credentials.strip() or None
    text = target.decode("latin-1") if isinstance(target, bytes) else target
    _, _, query = text.partition("?")
    for key, param in parse_qsl(query, keep_blank_values=True):
        if key == TOKEN_PARAMETER:
            return param.encode() or None
    return None


def redact_target(target: bytes | str) -> str:
    """A request target safe to log: any ``token`` parameter's value replaced by ``***``."""
    text = target.decode("latin-1") if isinstance(target, bytes) else target
    path, sep, query = text.partition("?")
    if not sep:
        return text
    pairs = parse_qsl(query, keep_blank_values=True)  # decoded, as presented_token reads them (%74oken is token)
    if all(k != TOKEN_PARAMETER for k, _ in pairs):
        return text
    return f"{path}?{urlencode([(k, '***' if k == TOKEN_PARAMETER else v) for k, v in pairs], safe='*')}"


def challenge_headers() -> list[tuple[str, str]]:
    """Extra headers of a 401 response (RFC 6750)."""
    return [("www-authenticate", 'Bearer realm="trio-asr"')]
