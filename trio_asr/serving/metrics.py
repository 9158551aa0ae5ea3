"""Prometheus metrics of one server, exposed at ``GET /metrics``.

:class:`ServerMetrics` owns its own :class:`prometheus_client.CollectorRegistry`
(not the process-wide default), so several servers in one process (tests, or
an embedding application) count independently.  The server calls the
recording methods where things happen; :meth:`ServerMetrics.exposition`
renders the text format with prometheus_client itself.

Every metric name starts with ``trio_asr_``; :data:`METRIC_NAMES` lists them
as they appear in the exposition (counters with their ``_total`` suffix).
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from trio_asr._version import __version__

__all__ = ["HTTP_METHODS", "METRIC_NAMES", "REFUSAL_REASONS", "STREAM_OUTCOMES", "ServerMetrics"]

#: how a stream ended: final result sent ("end", or a second "start") /
#: client gone mid-stream / ended by an error (bad input, limits, internal) /
#: cut by the server (shutdown, a client that stopped reading)
STREAM_OUTCOMES = ("completed", "disconnected", "error", "aborted")
#: why an upgrade got HTTP 503
REFUSAL_REASONS = ("full", "overloaded", "shutting_down", "connections")
#: the methods counted by name in ``trio_asr_http_requests_total`` (any other is ``other``)
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 128)
_UPLOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_DELAY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

METRIC_NAMES = (
    "trio_asr_connections_open",
    "trio_asr_connections_total",
    "trio_asr_streams_total",
    "trio_asr_close_codes_total",
    "trio_asr_admission_refusals_total",
    "trio_asr_unauthorized_total",
    "trio_asr_http_requests_total",
    "trio_asr_audio_received_seconds_total",
    "trio_asr_decode_cpu_seconds_total",
    "trio_asr_partial_reply_latency_seconds",
    "trio_asr_model_batch_size",
    "trio_asr_model_queue_delay_seconds",
    "trio_asr_model_queue_delay_current_seconds",
    "trio_asr_saved_audio_bytes_total",
    "trio_asr_audio_save_failures_total",
    "trio_asr_second_pass_latency_seconds",
    "trio_asr_second_pass_batch_size",
    "trio_asr_second_pass_queue_delay_seconds",
    "trio_asr_second_pass_queue_delay_current_seconds",
    "trio_asr_second_pass_failures_total",
    "trio_asr_upload_audio_seconds_total",
    "trio_asr_upload_seconds",
    "trio_asr_build_info",
    "trio_asr_model_info",
)


class ServerMetrics:
    """The metrics of one server; all recording methods are cheap and sync."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._connections_open = Gauge(
            "trio_asr_connections_open", "WebSocket connections open now", registry=registry
        )
        self._connections = Counter(
            "trio_asr_connections", "WebSocket connections accepted", registry=registry
        )
        self._streams = Counter(
            "trio_asr_streams", "streams ended, by outcome", ["outcome"], registry=registry
        )
        self._close_codes = Counter(
            "trio_asr_close_codes", "WebSocket close codes sent by the server", ["code"], registry=registry
        )
        self._refusals = Counter(
            "trio_asr_admission_refusals",
            "connections refused with HTTP 503, by reason (connections: over the bound on open ones, TLS ones closed)",
            ["reason"],
            registry=registry,
        )
        self._unauthorized = Counter(
            "trio_asr_unauthorized", "requests refused with HTTP 401 (missing or wrong token)", registry=registry
        )
        self._http_requests = Counter(
            "trio_asr_http_requests",
            "HTTP requests answered, by route (its path, or other), method and status (101: upgraded, 0: none sent)",
            ["route", "method", "status"],
            registry=registry,
        )
        self._audio_seconds = Counter(
            "trio_asr_audio_received_seconds", "seconds of audio received from clients", registry=registry
        )
        self._decode_cpu = Counter(
            "trio_asr_decode_cpu_seconds",
            "CPU seconds of decoding: features and search, and the model calls' own threads",
            registry=registry,
        )
        self._partial_latency = Histogram(
            "trio_asr_partial_reply_latency_seconds",
            "time from receiving an audio frame to sending its partial result",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._batch_size = Histogram(
            "trio_asr_model_batch_size", "streams per model call", buckets=_BATCH_BUCKETS, registry=registry
        )
        self._queue_delay = Histogram(
            "trio_asr_model_queue_delay_seconds",
            "time a model chunk waited before its model call started",
            buckets=_DELAY_BUCKETS,
            registry=registry,
        )
        self._queue_delay_now = Gauge(
            "trio_asr_model_queue_delay_current_seconds",
            "the model queue delay that admission control compares with max_queue_delay",
            registry=registry,
        )
        self._saved_bytes = Counter(
            "trio_asr_saved_audio_bytes", "bytes of WAV audio written to the audio directory", registry=registry
        )
        self._save_failures = Counter(
            "trio_asr_audio_save_failures", "streams whose audio could not be saved", registry=registry
        )
        self._second_latency = Histogram(
            "trio_asr_second_pass_latency_seconds",
            "time from a segment's close to the reply announcing its second-pass text",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._second_batch = Histogram(
            "trio_asr_second_pass_batch_size", "segments per second-pass model call", buckets=_BATCH_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self._second_delay = Histogram(
            "trio_asr_second_pass_queue_delay_seconds",
            "time a segment waited before its second-pass batch started",
            buckets=_DELAY_BUCKETS,
            registry=registry,
        )
        self._second_delay_now = Gauge(
            "trio_asr_second_pass_queue_delay_current_seconds",
            "the second pass's queue delay that admission control compares with max_queue_delay",
            registry=registry,
        )
        self._second_failures = Counter(
            "trio_asr_second_pass_failures", "segments announced with first-pass text as their second pass failed",
            registry=registry,
        )  # fmt: skip
        self._upload_audio = Counter(
            "trio_asr_upload_audio_seconds", "seconds of audio in uploaded files (the HTTP API)", registry=registry
        )
        self._upload_time = Histogram(
            "trio_asr_upload_seconds", "time from an upload's request to its response (decoding included)",
            buckets=_UPLOAD_BUCKETS, registry=registry,
        )  # fmt: skip
        self._build = Info("trio_asr_build", "trio-asr version and platform", registry=registry)
        self._model = Info("trio_asr_model", "the model being served", registry=registry)
        self._build.info({"version": __version__, "python": platform.python_version()})
        for outcome in STREAM_OUTCOMES:
            self._streams.labels(outcome)
        for reason in REFUSAL_REASONS:
            self._refusals.labels(reason)

    # -- recording

    def connection_opened(self) -> None:
        self._connections.inc()
        self._connections_open.inc()

    def connection_closed(self, code: int | None) -> None:
        """A connection ended; ``code`` is the close code the server sent (if any)."""
        self._connections_open.dec()
        if code is not None:
            self._close_codes.labels(str(code)).inc()

    def stream_ended(self, outcome: str) -> None:
        if outcome not in STREAM_OUTCOMES:
            raise ValueError(f"unknown stream outcome {outcome!r}")
        self._streams.labels(outcome).inc()

    def refused(self, reason: str) -> None:
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self._refusals.labels(reason).inc()

    def unauthorized(self) -> None:
        self._unauthorized.inc()

    def http_request(self, route: str, method: str, status: int) -> None:
        """One HTTP request answered; ``route`` must come from a bounded set
        (a route's path, never a request's), ``method`` is bounded here."""
        self._http_requests.labels(route, method if method in HTTP_METHODS else "other", str(status)).inc()

    def audio_received(self, seconds: float) -> None:
        self._audio_seconds.inc(seconds)

    def decode_cpu(self, seconds: float) -> None:
        self._decode_cpu.inc(seconds)

    def partial_reply_sent(self, latency: float) -> None:
        self._partial_latency.observe(latency)

    def model_batch(self, size: int, queue_delay: float, cpu: float = 0.0) -> None:
        """One model call of ``size`` streams whose oldest chunk waited
        ``queue_delay`` s, costing ``cpu`` s (added to the decode CPU)."""
        self._batch_size.observe(size)
        self._queue_delay.observe(queue_delay)
        self._decode_cpu.inc(cpu)

    def track_queue_delay(self, current: Callable[[], float]) -> None:
        """Read the current queue delay from ``current()`` at every scrape."""
        self._queue_delay_now.set_function(current)

    def second_pass_batch(self, size: int, queue_delay: float, cpu: float = 0.0) -> None:
        """One second-pass batch of ``size`` segments whose oldest waited
        ``queue_delay`` s, costing ``cpu`` s (added to the decode CPU)."""
        self._second_batch.observe(size)
        self._second_delay.observe(queue_delay)
        self._decode_cpu.inc(cpu)

    def second_pass_announced(self, latency: float) -> None:
        """A segment was announced ``latency`` s after it closed."""
        self._second_latency.observe(latency)

    def upload_audio(self, seconds: float) -> None:
        """An uploaded file holds ``seconds`` of audio."""
        self._upload_audio.inc(seconds)

    def upload_answered(self, seconds: float) -> None:
        """An upload was answered ``seconds`` after it was admitted."""
        self._upload_time.observe(seconds)

    def second_pass_failed(self) -> None:
        self._second_failures.inc()

    def track_second_pass_queue_delay(self, current: Callable[[], float]) -> None:
        self._second_delay_now.set_function(current)

    def audio_saved(self, nbytes: int) -> None:
        self._saved_bytes.inc(nbytes)

    def save_failed(self) -> None:
        self._save_failures.inc()

    def model_info(self, **labels: str) -> None:
        """Describe the served model (e.g. ``path``, ``format``, ``sample_rate``)."""
        self._model.info({k: str(v) for k, v in labels.items()})

    # -- exposition

    def exposition(self) -> tuple[bytes, str]:
        """The body and content type of a ``/metrics`` response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
