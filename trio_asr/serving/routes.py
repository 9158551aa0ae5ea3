"""The server's route table: which handler answers which path and methods.

:class:`Router` is the handler :func:`trio_asr.serving.http.serve_http`
calls for every request.  It answers what no route handler should have to:
404 (no such path), 405 with ``Allow`` (a method the route does not take;
``HEAD`` goes wherever ``GET`` does), 401 with a challenge (a route that
needs one of the access tokens, :mod:`trio_asr.serving.auth`, without it),
503 (a route that starts new work while the server drains).  While it
drains every response also closes its connection, so that keep-alive
clients move on.

It also observes every request answered (:meth:`Router.observe`): the
``trio_asr_http_requests_total`` counter, labelled with the route's path,
never the request's (``other`` for a path without a route), and one
``request`` log line at INFO with the target's token redacted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs

from trio_asr.protocol.transcription_api import ApiError
from trio_asr.serving.auth import TokenGate, challenge_headers, redact_target
from trio_asr.serving.http import Answered, Exchange, Handler, error_body
from trio_asr.serving.lifecycle import Lifecycle
from trio_asr.serving.logs import log_event
from trio_asr.serving.metrics import ServerMetrics

__all__ = ["Route", "Router"]

log = logging.getLogger("trio_asr.http")

#: the paths of OpenAI's API, whose errors are in its shape
OPENAI_PREFIX = "/v1/"
UNAUTHORIZED_MESSAGE = "missing or wrong access token (send Authorization: Bearer TOKEN, or ?token=TOKEN)"


@attrs.frozen
class Route:
    """``handler`` answers ``methods`` on ``path``: if ``needs_auth``, only
    with an access token; if ``is_work``, not while the server drains."""

    path: str
    methods: frozenset[str]
    handler: Handler
    needs_auth: bool
    is_work: bool

    @property
    def allow(self) -> str:
        """The ``Allow`` header of a 405."""
        return ", ".join(sorted(self.methods))


class Router:
    """Routes by exact path; ``gate`` (the access tokens, none by default)
    may be replaced once they are loaded."""

    def __init__(self, lifecycle: Lifecycle, metrics: ServerMetrics, gate: TokenGate | None = None) -> None:
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.gate = gate if gate is not None else TokenGate.from_tokens(())
        self._routes: dict[str, Route] = {}

    def add(
        self, path: str, methods: Iterable[str], handler: Handler, *, needs_auth: bool = True, is_work: bool = False
    ) -> None:
        """Route ``methods`` (upper case; ``GET`` brings ``HEAD``) on
        ``path`` (exact, no query) to ``handler``.  ``needs_auth``: an access
        token is required when tokens are configured (401 without);
        ``is_work``: it starts work, refused with 503 while the server drains.
        A path is routed once (``ValueError`` for a second time)."""
        if path in self._routes:
            raise ValueError(f"{path} is routed already")
        allowed = {method.upper() for method in methods}
        if "GET" in allowed:
            allowed.add("HEAD")
        self._routes[path] = Route(path, frozenset(allowed), handler, needs_auth, is_work)

    async def __call__(self, exchange: Exchange) -> None:
        if self.lifecycle.draining:
            exchange.close_after()
        route = self._routes.get(exchange.path)
        if route is None:
            await _refuse(exchange, 404, f"no such path: {exchange.path}")
            return
        exchange.route = route.path
        if exchange.method not in route.methods:
            message = f"{exchange.method} is not allowed on {route.path} (allowed: {route.allow})"
            await _refuse(exchange, 405, message, [("allow", route.allow)])
        elif route.needs_auth and not self.allows(exchange):
            self.metrics.unauthorized()
            await _refuse(exchange, 401, UNAUTHORIZED_MESSAGE, challenge_headers())
        elif route.is_work and self.lifecycle.draining:
            self.metrics.refused("shutting_down")
            await _refuse(exchange, 503, "server shutting down")
        else:
            await route.handler(exchange)

    def allows(self, exchange: Exchange) -> bool:
        """Whether ``exchange`` presents an accepted token (or none is needed)."""
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in exchange.headers]
        return self.gate.allows(exchange.target, headers)

    def observe(self, answered: Answered) -> None:
        """Count and log one answered request (an :data:`~trio_asr.serving.http.Observer`)."""
        self.metrics.http_request(answered.route, answered.method, answered.status)
        log_event(
            log, "request", method=answered.method or "-", target=redact_target(answered.target) or "-",
            status=answered.status, seconds=round(answered.seconds, 4), peer=answered.peer,
        )  # fmt: skip


async def _refuse(exchange: Exchange, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
    """An error response: in OpenAI's error shape under :data:`OPENAI_PREFIX`
    (its clients read nothing else), in the server's own elsewhere."""
    if exchange.path.startswith(OPENAI_PREFIX):
        kind = "authentication_error" if status == 401 else "server_error" if status >= 500 else "invalid_request_error"
        body = ApiError(status, message, type=kind).body()
        await exchange.respond(status, body, [("content-type", "application/json"), *(headers or [])])
    else:
        await exchange.respond_json(status, error_body(message), headers or [])
