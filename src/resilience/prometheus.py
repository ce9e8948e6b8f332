"""Prometheus metrics for every decorated policy, read at scrape time.

::

    import resilience.prometheus

    resilience.prometheus.enable()                # into prometheus_client's default REGISTRY
    prometheus_client.start_http_server(9464)     # or mount resilience.prometheus.asgi_app()

:func:`enable` registers one :class:`ResilienceCollector` and switches call counting on.
While a call runs, the library only bumps plain integers in process memory; the collector
turns them, the event counters and every policy's ``snapshot()`` into metric families when
Prometheus scrapes. Names follow resilience4j's with the ``resilience_`` prefix and base
units; docs/metrics.md lists every metric with its type and labels.

Needs the ``prometheus`` extra: ``pip install resilience[prometheus]``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import _metrics

_le: Callable[[float], str] = floatToGoString  # the exposition's own float format

__all__ = ["ResilienceCollector", "enable", "disable", "asgi_app", "wsgi_app"]


def _render(fam: _metrics.Family) -> Metric:
    metric: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
    if fam.kind == "counter":
        metric = CounterMetricFamily(fam.name, fam.help, labels=fam.labels, unit=fam.unit)
    elif fam.kind == "gauge":
        metric = GaugeMetricFamily(fam.name, fam.help, labels=fam.labels, unit=fam.unit)
    else:
        metric = HistogramMetricFamily(fam.name, fam.help, labels=fam.labels, unit=fam.unit)
        for labels, (buckets, total) in fam.histograms:
            metric.add_metric(list(labels), [(_le(le), float(n)) for le, n in buckets], total)
        return metric
    for labels, value in fam.samples:
        metric.add_metric(list(labels), value)
    return metric


class ResilienceCollector(Collector):
    """Renders the resilience metric set when the registry is scraped.

    Create and register it with :func:`enable`, which also switches call counting on.
    """

    def collect(self) -> Iterator[Metric]:
        for fam in _metrics.collect():
            yield _render(fam)

    def describe(self) -> Iterable[Metric]:
        # Names only, so that the registry can refuse a second collector exposing them.
        return [
            _render(_metrics.Family(f.name, f.kind, f.help, f.labels, f.unit))
            for f in _metrics.collect()
        ]

    def __repr__(self) -> str:
        return "ResilienceCollector()"


_lock = threading.Lock()
_enabled: weakref.WeakKeyDictionary[CollectorRegistry, tuple[ResilienceCollector, bool]] = (
    weakref.WeakKeyDictionary()
)


def enable(
    registry: CollectorRegistry | None = None, *, durations: bool = True
) -> ResilienceCollector:
    """Register the collector in ``registry`` (default: ``prometheus_client.REGISTRY``).

    Switches on call counting for every decorated policy, including those decorated
    before this call. With ``durations=False`` calls are counted but not timed: the
    ``resilience_call_duration_seconds`` histogram stays empty and each call skips its
    two clock reads. Registering twice in one registry raises ``ValueError``.
    """
    reg = REGISTRY if registry is None else registry
    with _lock:
        if reg in _enabled:
            raise ValueError(
                f"resilience metrics are already registered in {reg!r}; "
                "call resilience.prometheus.disable(registry) before enabling them again"
            )
        collector = ResilienceCollector()
        try:
            reg.register(collector)
        except ValueError as exc:
            raise ValueError(
                f"cannot register resilience metrics in {reg!r}: another collector there "
                f"already exposes some of their names ({exc})"
            ) from exc
        _enabled[reg] = (collector, durations)
        _metrics.enable(durations=durations)
    return collector


def disable(registry: CollectorRegistry | None = None) -> None:
    """Unregister the collector from ``registry``; counting stops when no exporter is left.

    Counters keep their values: enabling again resumes them (a counter never goes back).
    """
    reg = REGISTRY if registry is None else registry
    with _lock:
        entry = _enabled.pop(reg, None)
        if entry is None:
            return
        collector, durations = entry
        reg.unregister(collector)
        _metrics.disable(durations=durations)


def asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving ``registry`` (default: the global one) in the exposition format.

    Mount it at ``/metrics``; call :func:`enable` with the same registry first.
    """
    return make_asgi_app(REGISTRY if registry is None else registry)


def wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """A WSGI app serving ``registry``, like :func:`asgi_app`."""
    return make_wsgi_app(REGISTRY if registry is None else registry)
