"""OpenTelemetry spans and metrics, recorded by the SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import resilience
import resilience.otel
from resilience import Backoff, Fallback, Pipeline, Retry, Timeout
from resilience._core.strategy import Scope
from resilience._core.telemetry import TELEMETRY
from resilience.testing import FakeClock
from telemetry_standins import Breaker, unique


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    resilience.otel.enable(provider)
    try:
        yield exporter
    finally:
        resilience.otel.disable()
        provider.shutdown()


def only_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


def test_one_internal_span_per_call_with_retry_events(exporter: InMemorySpanExporter) -> None:
    clock = FakeClock()
    name = unique("payments")
    failures = [OSError("reset"), OSError("reset")]

    @Retry(on=OSError, backoff=Backoff.constant(0.5), clock=clock, name=name)
    def pay() -> str:
        if failures:
            raise failures.pop()
        return "paid"

    assert pay() == "paid"
    span = only_span(exporter, name)
    assert span.kind is SpanKind.INTERNAL
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "resilience"
    assert span.instrumentation_scope.version == resilience.__version__
    assert dict(span.attributes or {}) == {
        "resilience.policy": name,
        "resilience.strategy": "retry",
        "resilience.attempts": 3,
        "resilience.outcome": "success",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert [(n, a["resilience.attempt"], a["resilience.delay"]) for n, a in events(span)] == [
        ("resilience.retry", 1, 0.5),
        ("resilience.retry", 2, 0.5),
    ]
    assert events(span)[0][1]["error.type"] == "OSError"


def test_a_failed_call_sets_error_type_and_status(exporter: InMemorySpanExporter) -> None:
    name = unique("failing")

    @Retry(on=OSError, attempts=1, name=name)
    def fail() -> None:
        raise ConnectionRefusedError("nope")

    with pytest.raises(ConnectionRefusedError):
        fail()
    span = only_span(exporter, name)
    attrs = dict(span.attributes or {})
    assert attrs["resilience.outcome"] == "unknown_failure"
    assert attrs["error.type"] == "ConnectionRefusedError"
    assert span.status.status_code is StatusCode.ERROR
    names = [n for n, _ in events(span)]
    assert names == ["resilience.retry.gave_up", "exception"]


def test_rejections_timeouts_and_fallbacks_become_span_events(
    exporter: InMemorySpanExporter,
) -> None:
    clock = FakeClock()
    name = unique("inventory")
    breaker = Breaker(clock=clock)

    @Pipeline(Fallback(0, on=TimeoutError), Timeout(1.0, clock=clock), breaker, name=name)
    def count() -> int:
        clock.advance(2.0)
        return 5

    assert count() == 0  # ran 2 s, timed out, the fallback answered
    breaker.move("open")
    with pytest.raises(Exception, match="circuit_open"):
        count()

    first, second = (s for s in exporter.get_finished_spans() if s.name == name)
    assert [n for n, _ in events(first)] == ["resilience.timeout", "resilience.fallback"]
    timeout = events(first)[0][1]
    assert (timeout["resilience.timeout"], timeout["resilience.elapsed"]) == (1.0, 2.0)
    assert dict(first.attributes or {})["resilience.outcome"] == "success"
    assert events(second)[0] == (
        "resilience.rejected",
        {
            "resilience.policy": name,
            "resilience.strategy": "circuit_breaker",
            "resilience.reason": "circuit_open",
            "resilience.retry_after": 1.5,
        },
    )
    attrs = dict(second.attributes or {})
    assert attrs["resilience.outcome"] == "rejected"
    assert attrs["error.type"] == "telemetry_standins.StandInError"


def test_nested_policies_nest_their_spans(exporter: InMemorySpanExporter) -> None:
    inner_name, outer_name = unique("inner"), unique("outer")

    @Retry(on=OSError, name=inner_name)
    def inner() -> int:
        return 1

    @Retry(on=OSError, name=outer_name)
    def outer() -> int:
        return inner() + 1

    assert outer() == 2
    inner_span, outer_span = only_span(exporter, inner_name), only_span(exporter, outer_name)
    assert inner_span.parent is not None
    assert outer_span.context is not None
    assert inner_span.parent.span_id == outer_span.context.span_id


async def test_async_calls_get_spans(exporter: InMemorySpanExporter) -> None:
    name = unique("async")

    @Timeout(5.0, name=name)
    async def fetch() -> int:
        await asyncio.sleep(0)
        return 1

    assert await fetch() == 1
    assert dict(only_span(exporter, name).attributes or {})["resilience.outcome"] == "success"


def test_without_a_real_provider_no_span_work_is_done_until_one_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert trace._TRACER_PROVIDER is None, "no test may set the global tracer provider"
    name = unique("later")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    resilience.otel.enable()
    try:
        observer = TELEMETRY.observer
        assert observer is not None
        assert observer.begin(Scope(name, "retry")) is None  # the no-op API is skipped
        assert ok() == 1

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        # What trace.set_tracer_provider() does, undone after the test.
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
        assert ok() == 1
    finally:
        resilience.otel.disable()
    assert [s.name for s in exporter.get_finished_spans()] == [name]
    assert TELEMETRY.observer is None


def test_an_explicit_noop_provider_is_skipped() -> None:
    resilience.otel.enable(trace.NoOpTracerProvider())
    try:
        observer = TELEMETRY.observer
        assert observer is not None
        assert observer.begin(Scope("x", "retry")) is None
    finally:
        resilience.otel.disable()


def test_metrics_instruments_mirror_the_counters() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    name = unique("otel_metrics")
    clock = FakeClock()

    @Retry(on=OSError, backoff=Backoff.constant(0.1), clock=clock, name=name)
    def flaky(fail: bool) -> int:
        if fail:
            raise OSError("x")
        return 1

    resilience.otel.enable(tracing=False, metrics=True, meter_provider=provider)
    try:
        flaky(False)
        flaky(False)
        with pytest.raises(OSError):
            flaky(True)
        data = reader.get_metrics_data()
    finally:
        resilience.otel.disable()
        provider.shutdown()
    assert data is not None
    points: dict[tuple[str, frozenset[tuple[str, Any]]], float] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "resilience"
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    points[(metric.name, frozenset((p.attributes or {}).items()))] = p.value  # type: ignore[union-attr]

    def point(metric: str, **attrs: str) -> float:
        return points[(metric, frozenset((f"resilience.{k}", v) for k, v in attrs.items()))]

    assert point("resilience.calls", policy=name, strategy="retry", outcome="success") == 2
    assert point("resilience.calls", policy=name, strategy="retry", outcome="unknown_failure") == 1
    assert point("resilience.retry.attempts", policy=name) == 2
    assert point("resilience.retry.gave_up", policy=name, reason="attempts") == 1


async def test_spans_and_metrics_together(exporter: InMemorySpanExporter) -> None:
    from prometheus_client import CollectorRegistry

    import resilience.prometheus
    from resilience._core.telemetry import STATS

    name = unique("both")
    clock = FakeClock()

    @Timeout(5.0, clock=clock, name=name)
    async def work(fail: bool) -> int:
        clock.advance(0.5)
        if fail:
            raise OSError("no")
        return 1

    registry = CollectorRegistry()
    resilience.prometheus.enable(registry)
    try:
        assert await work(False) == 1
        with pytest.raises(OSError):
            await work(True)
    finally:
        resilience.prometheus.disable(registry)
    outcomes = [
        dict(s.attributes or {})["resilience.outcome"]
        for s in exporter.get_finished_spans()
        if s.name == name
    ]
    assert outcomes == ["success", "unknown_failure"]
    stats = STATS.get(name, "timeout")
    assert (stats.calls(0), stats.calls(2)) == (1, 1)
    assert stats.seconds(0) + stats.seconds(2) == 1.0  # two calls of 0.5 s


def test_http_attempts_follow_the_http_client_conventions(
    exporter: InMemorySpanExporter,
) -> None:
    import httpx

    from resilience.httpx import ResilientTransport
    from resilience.testing import no_wait

    answers = iter([503, 503, 200])

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers))

    transport = ResilientTransport(httpx.MockTransport(upstream), attempts=3, name="catalog-http")
    with no_wait(), httpx.Client(transport=transport) as client:
        assert client.get("http://catalog.internal:8080/items?secret=1").status_code == 200
    spans = exporter.get_finished_spans()
    assert spans, "the resilient transport opens a span per request"
    span = spans[-1]
    assert span.attributes is not None
    assert span.attributes["http.request.resend_count"] == 2
    attempts = [a for n, a in events(span) if n == "resilience.http.attempt"]
    assert [a["http.request.resend_count"] for a in attempts] == [0, 1, 2]
    assert [a.get("http.response.status_code") for a in attempts] == [503, 503, 200]
    assert attempts[0]["error.type"] == "503"
    assert all("secret" not in str(v) for a in attempts for v in a.values())
