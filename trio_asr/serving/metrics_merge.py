"""One ``/metrics`` for several worker processes: their expositions merged.

Each worker of ``serve --processes N`` renders its own registry
(:class:`~trio_asr.serving.metrics.ServerMetrics`); :func:`merge_expositions`
parses several such texts (with prometheus_client's parser) and renders one
in which every sample is combined across them, by its name and labels:

* counters, histograms (buckets, counts, sums) and gauges that count
  (``trio_asr_connections_open``) are **summed**;
* ``*_current_seconds`` gauges (a queue's delay now) take the **maximum**,
  the delay of the worst-off worker, which is what admission compares;
* ``*_info`` samples (build, model) appear **once** (the maximum of 1s);
* ``*_created`` timestamps take the **minimum**, the earliest start.

:func:`lasting_part` keeps what outlives a process (counters and histograms,
without their creation times) so that a dead worker's counts can be kept
in the sums after it is gone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["lasting_part", "merge_expositions"]

_KEPT_TYPES = frozenset({"counter", "histogram"})


def _combine(name: str, old: float, new: float) -> float:
    if name.endswith("_created"):
        return min(old, new)
    if name.endswith(("_current_seconds", "_info")):
        return max(old, new)
    return old + new


class _Collected:
    """A collector that yields families already made."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families

    def describe(self) -> Iterable[Metric]:
        return ()


def merge_families(texts: Iterable[str]) -> list[Metric]:
    """The families of all ``texts``, each sample combined (see the module
    docstring); families keep the order of their first appearance."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged[key] = _combine(sample.name, merged[key], sample.value) if key in merged else sample.value
    for name, family in families.items():
        family.samples = [Sample(sample, dict(labels), value) for (sample, labels), value in values[name].items()]
    return list(families.values())


def _render(families: Sequence[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(families))
    return generate_latest(registry)


def merge_expositions(texts: Iterable[str]) -> bytes:
    """One exposition (text format 0.0.4) of all ``texts`` combined."""
    return _render(merge_families(texts))


def lasting_part(texts: Iterable[str]) -> bytes:
    """The counters and histograms of ``texts`` combined, without creation
    times: a finished process's contribution to the sums."""
    kept: list[Any] = []
    for family in merge_families(texts):
        if family.type in _KEPT_TYPES:
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            kept.append(family)
    return _render(kept)
