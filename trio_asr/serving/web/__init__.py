"""The microphone page served at ``GET /``: static package data, no build step.

``index.html`` + ``app.js`` (the protocol client and UI) + ``pcm-worklet.js``
(the AudioWorklet that turns microphone audio into PCM16).  They reference
nothing outside the server that serves them, so the page works offline.
:func:`find_asset` maps a request path to the bytes and headers to send.
"""

from __future__ import annotations

import functools
from importlib import resources

import attrs

__all__ = ["ASSET_PATHS", "Asset", "find_asset"]

#: request path -> file in this package
ASSET_PATHS = {
    "/": "index.html",
    "/index.html": "index.html",
    "/app.js": "app.js",
    "/pcm-worklet.js": "pcm-worklet.js",
}

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

# The page may connect to any WebSocket server the user names (it also works
# against other PaddleSpeech-compatible servers); everything else is ours.
_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' blob:; frame-ancestors 'none'"
)


@attrs.frozen
class Asset:
    body: bytes
    content_type: str

    def headers(self) -> list[tuple[str, str]]:
        """Response headers (content length included)."""
        return [
            ("content-type", self.content_type),
            ("content-length", str(len(self.body))),
            ("cache-control", "no-cache"),
            ("x-content-type-options", "nosniff"),
            ("content-security-policy", _CSP),
        ]


@functools.cache
def find_asset(path: str) -> Asset | None:
    """The asset for a request path (query string already removed), or ``None``."""
    name = ASSET_PATHS.get(path)
    if name is None:
        return None
    body = resources.files(__name__).joinpath(name).read_bytes()
    return Asset(body, _CONTENT_TYPES[name[name.rindex(".") :]])
