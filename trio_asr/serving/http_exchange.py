"""One HTTP request and its response, as a handler sees it (:class:`Exchange`).

Part of :mod:`trio_asr.serving.http`, which re-exports everything here and
runs the connection the exchanges share; see its docstring for the limits.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import attrs
import h11
import trio

from trio_asr.protocol.transcription_api import ApiError
from trio_asr.serving.http_wire import ReplayStream, Wire

__all__ = [
    "DRAIN_BYTES",
    "BodyIncomplete",
    "BodyTimeout",
    "Exchange",
    "HttpError",
    "HttpLimits",
    "RequestTooLarge",
    "error_body",
    "head_error_body",
    "reason_phrase",
]

#: an unread request body up to this long is read and dropped to keep the connection
DRAIN_BYTES = 65536


class HttpError(Exception):
    """A request answered with :attr:`status` and this message, then the
    connection is closed."""

    status = 400


class RequestTooLarge(HttpError):
    """The request body is over the handler's limit (413)."""

    status = 413


class BodyIncomplete(HttpError):
    """The request body ended before its announced end, or its framing is
    broken (400)."""


class BodyTimeout(HttpError):
    """The request body came too slowly (408)."""

    status = 408


@attrs.frozen(kw_only=True)
class HttpLimits:
    """How long and how much one connection may take (see :mod:`trio_asr.serving.http`)."""

    max_header_bytes: int = 16384
    head_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0


def error_body(message: str) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"status": "error", "message": message}


def head_error_body(message: str) -> dict[str, Any]:
    """The body of an error found before the request's path is known (a bad
    or late head): ours and OpenAI's ``error`` object at once, so that both
    our clients and the ``openai`` package read the message."""
    return {**error_body(message), "error": ApiError(400, message).error_object()}


def reason_phrase(status: int) -> bytes:
    """The status line's reason: ``Not Found`` for 404 (empty for a status without one)."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class Exchange:
    """One request and its response.

    ``method`` and ``target`` as sent, ``path`` and ``query`` (parsed: each
    name to its values) split from the target, ``headers`` with lower-case
    names, ``peer`` (``host:port``).  A handler sends exactly one response:
    :meth:`respond` / :meth:`respond_json`, or :meth:`start_response`,
    :meth:`send` ... :meth:`end_response` (chunked: server-sent events), or
    it takes the connection with :meth:`upgrade`.  To ``HEAD`` the same
    status and headers go out without the body.  ``route`` (default
    ``"other"``) is the bounded label that metrics count the request under.
    """

    def __init__(
        self, request: h11.Request, wire: Wire, limits: HttpLimits, peer: str, on_upgrade: Callable[[Exchange], None]
    ) -> None:
        self._request = request
        self._wire = wire
        self._limits = limits
        self._on_upgrade = on_upgrade
        self.method = request.method.decode("ascii")
        self.target = request.target.decode("latin-1")
        self.path, _, query = self.target.partition("?")
        self.query: dict[str, list[str]] = parse_qs(query, keep_blank_values=True)
        self.headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers]
        self.http_version = request.http_version.decode("ascii")
        self.peer = peer
        self.route = "other"
        #: the status sent (101 once upgraded), ``None`` before
        self.status: int | None = None
        self.started = time.monotonic()
        self.upgraded = False
        self._body = "unread"  # then "reading", "read"
        self._response = "none"  # then "started", "ended"
        self._close = False

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (repeated ones joined by ``, ``), or ``None``."""
        values = [value for key, value in self.headers if key == name.lower()]
        return ", ".join(values) if values else None

    def close_after(self) -> None:
        """Close the connection after this response (which then says so)."""
        self._close = True

    @property
    def responded(self) -> bool:
        """Whether a response was started (or the connection upgraded)."""
        return self._response != "none" or self.upgraded

    @property
    def response_open(self) -> bool:
        """Whether a response was started and not ended."""
        return self._response == "started"

    @property
    def keeps_connection(self) -> bool:
        """Whether the connection may serve another request after this
        response: not if told to close, nor with an unread body too long to
        drain (or one the client waits for ``100 Continue`` to send)."""
        if self._close:
            return False
        if self._body == "read" or self._wire.h11.their_state is not h11.SEND_BODY:
            return True
        if self._body == "reading" or self._wire.h11.they_are_waiting_for_100_continue:
            return False
        announced = self._announced_length()
        return announced is not None and announced <= DRAIN_BYTES

    async def read_body(self, max_bytes: int) -> bytes:
        """The request body (empty if it has none), at most ``max_bytes``.

        Answers ``Expect: 100-continue`` first.  Raises :exc:`RequestTooLarge`
        as soon as the body is known to be longer (from Content-Length:
        before reading any of it), :exc:`BodyTimeout` and
        :exc:`BodyIncomplete`; after any of them the connection closes.
        Read once only."""
        if self._body != "unread" or self.upgraded:
            raise RuntimeError("the request body was already read")
        self._body = "reading"
        self._close = True  # until the whole body is in
        announced = self._announced_length()
        if announced is not None and announced > max_bytes:
            raise RequestTooLarge(f"request body of {announced} bytes, over the limit of {max_bytes}")
        if self._wire.h11.they_are_waiting_for_100_continue:
            await self._wire.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        body = bytearray()
        try:
            with trio.fail_after(self._limits.body_timeout):
                while not isinstance(event := await self._wire.next_event(self._limits.head_timeout), h11.EndOfMessage):
                    if isinstance(event, h11.Data):
                        if len(body) + len(event.data) > max_bytes:
                            raise RequestTooLarge(f"request body over the limit of {max_bytes} bytes")
                        body += event.data
        except trio.TooSlowError:
            raise BodyTimeout(f"request body not received within {self._limits.body_timeout:g} s, "
                              f"or a pause over {self._limits.head_timeout:g} s in it") from None  # fmt: skip
        except h11.RemoteProtocolError as exc:
            raise BodyIncomplete(f"incomplete request body: {exc}") from None
        self._body = "read"
        self._close = False
        return bytes(body)

    async def respond(self, status: int, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a whole response; its Content-Length is ``body``'s (one in ``headers`` is replaced)."""
        kept = [(name, value) for name, value in headers if name.lower() != "content-length"]
        await self.start_response(status, [*kept, ("content-length", str(len(body)))])
        await self.send(body)
        await self.end_response()

    async def respond_json(self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send ``obj`` as a JSON response."""
        await self.respond(status, json.dumps(obj).encode(), [("content-type", "application/json"), *headers])

    async def start_response(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """Send the status line and ``headers``; without a Content-Length the
        body that :meth:`send` gives is chunked (to HTTP/1.0: ended by the close)."""
        if self.responded:
            raise RuntimeError("a response was already sent")
        fields = list(headers)
        if not self.keeps_connection:
            fields.append(("connection", "close"))
        self._response = "started"
        self.status = status
        await self._wire.send(h11.Response(status_code=status, headers=fields, reason=reason_phrase(status)))

    async def send(self, data: bytes) -> None:
        """Send a piece of the body (nothing, to ``HEAD``)."""
        if self._response != "started":
            raise RuntimeError("send() needs start_response() first")
        if data and self.method != "HEAD":
            await self._wire.send(h11.Data(data=data))

    async def end_response(self) -> None:
        """End the response's body."""
        if self._response != "started":
            raise RuntimeError("end_response() needs start_response() first")
        self._response = "ended"
        await self._wire.send(h11.EndOfMessage())

    def upgrade(self) -> trio.abc.Stream:
        """Take the connection over: a stream that yields this request's
        bytes from its first (head and all), then the connection's.  Only
        before a response and before reading the body; HTTP is over on this
        connection, and the caller of :func:`~trio_asr.serving.http.serve_http`
        still closes it."""
        replay = self._wire.replay()
        if self.responded or replay is None:
            raise RuntimeError("upgrade() after a response, or after reading the body")
        self.upgraded = True
        self.status = 101
        self._on_upgrade(self)
        return ReplayStream(replay, self._wire.stream)

    def _announced_length(self) -> int | None:
        """The body length the head announces (``None``: chunked, not known)."""
        framing = dict(
            (name, value) for name, value in self._request.headers if name in (b"transfer-encoding", b"content-length")
        )
        if b"transfer-encoding" in framing:
            return None
        return int(framing.get(b"content-length", b"0"))
