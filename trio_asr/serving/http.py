"""HTTP/1.1 on one connection: h11 driven over a :class:`trio.abc.Stream`.

:func:`serve_http` reads request heads, hands each request to a handler as
an :class:`Exchange` (:mod:`.http_exchange`, re-exported here with its
errors), and keeps the connection alive between requests (pipelined
requests are answered in order) until the client, HTTP/1.0 or the handler
asks for a close.  It never closes the stream: its caller owns the stream.

The limits, from :class:`HttpLimits`:

- the first request head must arrive within ``head_timeout``, each later
  one within ``keepalive_timeout`` (a partial head then gets 408; silence
  is simply closed); a head over ``max_header_bytes`` gets 431, one that is
  not HTTP 400 with h11's reason; each of these closes the connection;
- a body is read only when the handler asks (:meth:`Exchange.read_body`):
  at most the handler's ``max_bytes`` (:exc:`RequestTooLarge`, before any
  of it is read when Content-Length says so), the whole of it within
  ``body_timeout`` with no pause over ``head_timeout`` (:exc:`BodyTimeout`),
  and complete (:exc:`BodyIncomplete`).  A handler's :exc:`HttpError` is
  answered with its status, and the connection closed;
- a body the handler left unread is drained after the response when it is
  short (:data:`DRAIN_BYTES`), otherwise the response says ``connection:
  close``;
- a client that reads no response for ``send_timeout`` is dropped
  (:exc:`trio.BrokenResourceError`).

A handler may instead take the connection over with :meth:`Exchange.upgrade`
(a WebSocket): it gets a stream that replays the request's own bytes, head
first, so that the upgrade's handshake is done by the upgrade's library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio

from trio_asr.serving.http_exchange import (
    DRAIN_BYTES,
    BodyIncomplete,
    BodyTimeout,
    Exchange,
    HttpError,
    HttpLimits,
    RequestTooLarge,
    error_body,
    head_error_body,
    reason_phrase,
)
from trio_asr.serving.http_wire import ReplayStream, Wire, drain_before_close

__all__ = [
    "DRAIN_BYTES",
    "Answered",
    "BodyIncomplete",
    "BodyTimeout",
    "Exchange",
    "Handler",
    "HttpError",
    "HttpLimits",
    "Observer",
    "ReplayStream",
    "RequestTooLarge",
    "error_body",
    "serve_http",
]

#: how long a connection closed with request bytes still coming lets them come
_LINGER_SECONDS = 1.0


@attrs.frozen(kw_only=True)
class Answered:
    """What became of one request, for metrics and logs: ``method`` and
    ``target`` are empty when no head could be read; ``status`` is 101 for
    an upgrade, 0 when nothing was sent (the client left)."""

    method: str
    target: str
    route: str
    status: int
    seconds: float
    peer: str


Handler = Callable[[Exchange], Awaitable[None]]
Observer = Callable[[Answered], None]


async def serve_http(
    stream: trio.abc.Stream, handler: Handler, limits: HttpLimits, *, peer: str = "?", observe: Observer | None = None
) -> None:
    """Serve HTTP requests on ``stream`` with ``handler`` until the
    connection is done (see the module docstring); ``observe`` hears of
    every request answered (an upgrade when it happens).  Raises what the
    stream raises (:exc:`trio.BrokenResourceError` ...) and what the handler
    raises other than :exc:`HttpError`; the stream is left open."""
    await _Connection(stream, limits, peer, observe).run(handler)


class _Connection:
    """The request loop of one connection."""

    def __init__(self, stream: trio.abc.Stream, limits: HttpLimits, peer: str, observe: Observer | None) -> None:
        self.stream = stream
        self.limits = limits
        self.peer = peer
        self.wire = Wire(stream, limits.max_header_bytes, limits.send_timeout)
        self._observe = observe

    async def run(self, handler: Handler) -> None:
        timeout = self.limits.head_timeout
        while (request := await self._read_head(timeout)) is not None:
            timeout = self.limits.keepalive_timeout
            exchange = Exchange(request, self.wire, self.limits, self.peer, self._record_exchange)
            try:
                await self._dispatch(handler, exchange)
            finally:
                if not exchange.upgraded:
                    self._record_exchange(exchange)
            if exchange.upgraded or not await self._next_cycle():
                return

    async def _read_head(self, timeout: float) -> h11.Request | None:
        """The next request's head; ``None`` when the connection is over
        (closed, silent, or a bad head, which is answered here)."""
        self.wire.start_head()
        status, message = 408, f"request head not received within {timeout:g} s"
        with trio.move_on_after(timeout):
            try:
                event = await self.wire.next_event()
            except h11.RemoteProtocolError as exc:
                status, message = exc.error_status_hint, str(exc)
                if status == 431:
                    message = f"request header fields too large (over {self.limits.max_header_bytes} bytes)"
            else:
                return event if isinstance(event, h11.Request) else None
        if status == 408 and not self.wire.head_begun():
            return None  # a silent client, or an idle keep-alive connection: nothing to answer
        started = time.monotonic()
        body = json.dumps(head_error_body(message)).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))), ("connection", "close")]
        try:
            await self.wire.send(h11.Response(status_code=status, headers=headers, reason=reason_phrase(status)))
            await self.wire.send(h11.Data(data=body))
            await self.wire.send(h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            status = 0  # the client is gone already
        self._record(Answered(method="", target="", route="other", status=status,
                              seconds=time.monotonic() - started, peer=self.peer))  # fmt: skip
        return None

    async def _dispatch(self, handler: Handler, exchange: Exchange) -> None:
        """Run the handler; answer its :exc:`HttpError`, a response it
        forgot, or (then re-raised) its failure; end a response it left open."""
        try:
            await handler(exchange)
        except HttpError as error:
            exchange.close_after()
            if not exchange.responded:
                await exchange.respond_json(error.status, error_body(str(error)))
            return
        except Exception:
            exchange.close_after()
            if not exchange.responded:
                await exchange.respond_json(500, error_body("internal server error"))
            raise
        if not exchange.responded:
            exchange.close_after()
            await exchange.respond_json(500, error_body("the server sent no response"))
        elif exchange.response_open:
            await exchange.end_response()

    async def _next_cycle(self) -> bool:
        """Get ready for the next request, draining a short unread body;
        whether the connection stays open."""
        conn = self.wire.h11
        if conn.our_state is not h11.DONE:  # MUST_CLOSE, or a response cut short
            await self._linger()
            return False
        try:
            with trio.fail_after(self.limits.head_timeout):
                while conn.their_state is h11.SEND_BODY:
                    await self.wire.next_event(self.limits.head_timeout)
        except (trio.TooSlowError, h11.RemoteProtocolError):
            return False
        if conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True

    async def _linger(self) -> None:
        """Before closing with request bytes still coming, let them arrive
        for a moment (see :func:`drain_before_close`)."""
        if self.wire.h11.their_state is h11.SEND_BODY:
            await drain_before_close(self.stream, _LINGER_SECONDS)

    def _record_exchange(self, exchange: Exchange) -> None:
        self._record(Answered(method=exchange.method, target=exchange.target, route=exchange.route,
                              status=exchange.status or 0, seconds=time.monotonic() - exchange.started,
                              peer=self.peer))  # fmt: skip

    def _record(self, answered: Answered) -> None:
        if self._observe is not None:
            self._observe(answered)
