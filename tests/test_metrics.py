"""ServerMetrics: what is recorded is what a Prometheus parser reads back."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trio_asr.serving.metrics import METRIC_NAMES, REFUSAL_REASONS, STREAM_OUTCOMES, ServerMetrics


def scrape(metrics: ServerMetrics) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a parsed exposition."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_every_listed_metric_is_exposed_and_nothing_else():
    body, _ = ServerMetrics().exposition()
    suffix = {"counter": "_total", "info": "_info"}
    families = text_string_to_metric_families(body.decode())
    # prometheus_client adds a *_created series (start time) to counters and histograms
    exposed = {f.name + suffix.get(f.type, "") for f in families if not f.name.endswith("_created")}
    assert exposed == set(METRIC_NAMES)


def test_labelled_counters_start_at_zero_for_every_known_label():
    samples = scrape(ServerMetrics())
    for outcome in STREAM_OUTCOMES:
        assert samples[("trio_asr_streams_total", (("outcome", outcome),))] == 0
    for reason in REFUSAL_REASONS:
        assert samples[("trio_asr_admission_refusals_total", (("reason", reason),))] == 0


def test_recorded_values_read_back():
    m = ServerMetrics()
    for _ in range(3):
        m.connection_opened()
    m.connection_closed(1000)
    m.connection_closed(1008)
    for outcome in ("completed", "completed", "disconnected"):
        m.stream_ended(outcome)
    m.refused("full")
    m.refused("overloaded")
    m.refused("overloaded")
    m.unauthorized()
    m.audio_received(1.5)
    m.audio_received(0.25)
    m.decode_cpu(0.125)
    m.model_batch(3, 0.01, cpu=0.5)
    for latency in (0.004, 0.03, 0.03, 3.0):
        m.partial_reply_sent(latency)
    m.model_batch(1, 0.0)
    m.model_batch(5, 0.2)
    m.track_queue_delay(lambda: 0.375)
    m.audio_saved(44 + 3200)
    m.save_failed()
    m.model_info(path="/models/x", format="zipformer2_ctc", sample_rate="16000")

    s = scrape(m)
    assert s[("trio_asr_connections_total", ())] == 3
    assert s[("trio_asr_connections_open", ())] == 1
    assert s[("trio_asr_close_codes_total", (("code", "1000"),))] == 1
    assert s[("trio_asr_close_codes_total", (("code", "1008"),))] == 1
    assert s[("trio_asr_streams_total", (("outcome", "completed"),))] == 2
    assert s[("trio_asr_streams_total", (("outcome", "disconnected"),))] == 1
    assert s[("trio_asr_admission_refusals_total", (("reason", "overloaded"),))] == 2
    assert s[("trio_asr_admission_refusals_total", (("reason", "full"),))] == 1
    assert s[("trio_asr_unauthorized_total", ())] == 1
    assert s[("trio_asr_audio_received_seconds_total", ())] == 1.75
    assert s[("trio_asr_decode_cpu_seconds_total", ())] == 0.625
    assert s[("trio_asr_partial_reply_latency_seconds_count", ())] == 4
    assert s[("trio_asr_partial_reply_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert s[("trio_asr_partial_reply_latency_seconds_bucket", (("le", "0.05"),))] == 3
    assert s[("trio_asr_partial_reply_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    assert s[("trio_asr_model_batch_size_sum", ())] == 9
    assert s[("trio_asr_model_batch_size_bucket", (("le", "4.0"),))] == 2
    assert s[("trio_asr_model_queue_delay_seconds_count", ())] == 3
    assert s[("trio_asr_model_queue_delay_current_seconds", ())] == 0.375
    assert s[("trio_asr_saved_audio_bytes_total", ())] == 3244
    assert s[("trio_asr_audio_save_failures_total", ())] == 1
    model = [labels for (name, labels) in s if name == "trio_asr_model_info"]
    assert model == [(("format", "zipformer2_ctc"), ("path", "/models/x"), ("sample_rate", "16000"))]
    build = dict(next(labels for (name, labels) in s if name == "trio_asr_build_info"))
    assert build["version"]


def test_servers_count_independently():
    a, b = ServerMetrics(), ServerMetrics()
    a.connection_opened()
    assert scrape(a)[("trio_asr_connections_total", ())] == 1
    assert scrape(b)[("trio_asr_connections_total", ())] == 0


def test_unknown_labels_are_a_programming_error():
    with pytest.raises(ValueError, match="outcome"):
        ServerMetrics().stream_ended("vanished")
    with pytest.raises(ValueError, match="reason"):
        ServerMetrics().refused("tired")
