"""OpenTelemetry spans and metrics, recorded by the SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import resilience
import resilience.otel
from resilience import (
    Backoff,
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Keyed,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)
from resilience._core.strategy import Scope
from resilience._core.telemetry import COUNT, COUNT_TIME, TELEMETRY
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


class Metrics:
    """One collection of the SDK's in-memory reader: points by name and attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()
        assert data is not None
        self.points: dict[tuple[str, frozenset[tuple[str, Any]]], float] = {}
        self.units: dict[str, str] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "resilience"
                for metric in sm.metrics:
                    self.units[metric.name] = metric.unit or ""
                    for p in metric.data.data_points:
                        key = (metric.name, frozenset((p.attributes or {}).items()))
                        self.points[key] = p.value  # type: ignore[union-attr]

    def __call__(self, metric: str, le: str | None = None, **attrs: str) -> float:
        """The point of ``metric`` with exactly these ``resilience.*`` attributes."""
        key = {(f"resilience.{k}", v) for k, v in attrs.items()}
        if le is not None:
            key.add(("le", le))
        return self.points[(metric, frozenset(key))]

    def series(self, metric: str, policy: str) -> list[tuple[str, float]]:
        """``(le, count)`` of one policy's buckets, in bound order."""
        out = [
            (dict(attrs)["le"], value)
            for (name, attrs), value in self.points.items()
            if name == metric and ("resilience.policy", policy) in attrs
        ]
        return sorted(out, key=lambda item: float(item[0].replace("+Inf", "inf")))


def meter_provider(reader: InMemoryMetricReader) -> MeterProvider:
    # Every policy of the test session has its 20 duration buckets: more series than the
    # SDK's default limit of 2000 per instrument, past which it folds them into one.
    limit = View(instrument_name="resilience.*", aggregation_cardinality_limit=1_000_000)
    return MeterProvider(metric_readers=[reader], views=[limit])


@pytest.fixture
def collect() -> Iterator[Callable[[], Metrics]]:
    reader = InMemoryMetricReader()
    provider = meter_provider(reader)
    resilience.otel.enable(tracing=False, metrics=True, meter_provider=provider)
    try:
        yield lambda: Metrics(reader)
    finally:
        resilience.otel.disable()
        provider.shutdown()


def test_metrics_instruments_mirror_the_counters(collect: Callable[[], Metrics]) -> None:
    name = unique("otel_metrics")
    clock = FakeClock()

    @Retry(on=OSError, backoff=Backoff.constant(0.1), clock=clock, name=name)
    def flaky(fail: bool) -> int:
        if fail:
            raise OSError("x")
        return 1

    flaky(False)
    flaky(False)
    with pytest.raises(OSError):
        flaky(True)
    point = collect()
    assert point("resilience.calls", policy=name, strategy="retry", outcome="success") == 2
    assert point("resilience.calls", policy=name, strategy="retry", outcome="unknown_failure") == 1
    assert point("resilience.retry.attempts", policy=name) == 2
    assert point("resilience.retry.gave_up", policy=name, reason="attempts") == 1


def test_call_durations_are_mirrored_as_bucket_sum_and_count_counters(
    collect: Callable[[], Metrics],
) -> None:
    clock = FakeClock()
    name = unique("durations")
    plan: list[tuple[float, bool]] = []

    @Retry(on=OSError, attempts=2, backoff=Backoff.constant(0.25), clock=clock, name=name)
    def work() -> str:
        seconds, fail = plan.pop(0)
        clock.advance(seconds)
        if fail:
            raise OSError("reset")
        return "ok"

    plan[:] = [(0.125, False)]
    work()  # 0.125 s
    plan[:] = [(0.125, True), (0.125, False)]
    work()  # 0.125 + 0.25 backoff + 0.125 = 0.5 s
    plan[:] = [(1.5, True), (0.0, True)]
    with pytest.raises(OSError):
        work()  # 1.5 + 0.25 = 1.75 s, then it gives up
    plan[:] = [(40.0, False)]
    work()  # 40 s: past the last bound (2**35 ns, 34 s), only in +Inf

    m = collect()
    assert m.units["resilience.call.duration.bucket"] == "{call}"
    assert m.units["resilience.call.duration.sum"] == "s"
    assert m.units["resilience.call.duration.count"] == "{call}"
    assert m("resilience.call.duration.count", policy=name) == 4
    assert m("resilience.call.duration.sum", policy=name) == 42.375
    # Powers of two nanoseconds, as Prometheus' le labels; cumulative, as Prometheus'.
    # 0.125 s is below 2**27 ns, 0.5 s below 2**29 ns, 1.75 s below 2**31 ns.
    expected = [(repr(2**b / 1e9), 0) for b in range(17, 27)]
    expected += [("0.134217728", 1), ("0.268435456", 1), ("0.536870912", 2)]
    expected += [("1.073741824", 2), ("2.147483648", 3), ("4.294967296", 3)]
    expected += [(repr(2**b / 1e9), 3) for b in range(33, 36)] + [("+Inf", 4)]
    assert expected[0] == ("0.000131072", 0)
    assert m.series("resilience.call.duration.bucket", name) == expected


def test_durations_off_counts_calls_and_leaves_the_duration_buckets_empty() -> None:
    reader = InMemoryMetricReader()
    provider = meter_provider(reader)
    clock = FakeClock()
    name = unique("untimed")

    @Timeout(5.0, clock=clock, name=name)
    def work() -> int:
        clock.advance(0.5)
        return 1

    resilience.otel.enable(tracing=False, metrics=True, durations=False, meter_provider=provider)
    try:
        assert TELEMETRY.mode == COUNT  # no clock read per call
        work()
        m = Metrics(reader)
    finally:
        resilience.otel.disable()
        provider.shutdown()
    assert TELEMETRY.mode == 0
    assert m("resilience.calls", policy=name, strategy="timeout", outcome="success") == 1
    assert m("resilience.call.duration.count", policy=name) == 0
    assert m("resilience.call.duration.sum", policy=name) == 0
    assert m("resilience.call.duration.bucket", le="+Inf", policy=name) == 0


def test_metrics_time_calls_by_default_and_disable_stops_it() -> None:
    provider = meter_provider(InMemoryMetricReader())
    resilience.otel.enable(tracing=False, metrics=True, meter_provider=provider)
    try:
        assert TELEMETRY.mode == COUNT_TIME
    finally:
        resilience.otel.disable()
        provider.shutdown()
    assert TELEMETRY.mode == 0


def test_each_new_meter_provider_gets_instruments_and_a_dropped_one_is_let_go() -> None:
    # Providers made and dropped one after another often reuse the same address, which
    # once made a new provider look like one that already had the instruments.
    name = unique("fresh")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    dropped: list[weakref.ref[MeterProvider]] = []
    for calls in range(1, 11):
        reader = InMemoryMetricReader()
        provider = meter_provider(reader)
        resilience.otel.enable(tracing=False, metrics=True, meter_provider=provider)
        try:
            ok()
            m = Metrics(reader)
        finally:
            resilience.otel.disable()
            provider.shutdown()
        assert m("resilience.calls", policy=name, strategy="retry", outcome="success") == calls
        dropped.append(weakref.ref(provider))
        del provider, reader, m
        gc.collect(1)  # frees the young ones, so that the next may take the same address
    gc.collect()
    # Nothing keeps a provider alive once its user drops it.
    assert [ref() for ref in dropped] == [None] * 10


def test_only_the_provider_enabled_last_reports() -> None:
    name = unique("moved")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    providers = [meter_provider(first), meter_provider(second)]
    try:
        resilience.otel.enable(tracing=False, metrics=True, meter_provider=providers[0])
        ok()
        assert (
            Metrics(first)("resilience.calls", policy=name, strategy="retry", outcome="success")
            == 1
        )
        resilience.otel.enable(tracing=False, metrics=True, meter_provider=providers[1])
        assert first.get_metrics_data() is None  # its instruments stay, but report nothing
        assert (
            Metrics(second)("resilience.calls", policy=name, strategy="retry", outcome="success")
            == 1
        )
        resilience.otel.enable(tracing=False, metrics=True, meter_provider=providers[0])
        assert second.get_metrics_data() is None
        assert (
            Metrics(first)("resilience.calls", policy=name, strategy="retry", outcome="success")
            == 1
        )
    finally:
        resilience.otel.disable()
        for provider in providers:
            provider.shutdown()


def test_ratelimiter_waits_are_mirrored(collect: Callable[[], Metrics]) -> None:
    clock = FakeClock()
    name = unique("limited")
    limiter = RateLimiter(1, period=1.0, max_wait=None, clock=clock)

    @Pipeline(limiter, name=name)
    def take() -> int:
        return 1

    assert take() == 1  # the one permit of the first second
    m = collect()
    assert m("resilience.ratelimiter.available_permits", policy=name) == 0
    # One call refused (its deadline is nearer than the permit, 1 s away: retry_after 1 s)
    # and one call that waited 1 s for its permit: either is one wait of 1 s.
    with deadline(0.5, clock=clock), pytest.raises(RateLimitedError) as refused:
        take()
    assert refused.value.retry_after == 1.0
    assert take() == 1
    assert clock.now() == 1.0
    clock.advance(0.5)  # the next permit is due at 2 s: half of it has refilled

    m = collect()
    assert m.units["resilience.ratelimiter.wait.sum"] == "s"
    assert m("resilience.ratelimiter.wait.count", policy=name) == 1
    assert m("resilience.ratelimiter.wait.sum", policy=name) == 1.0
    assert m.series("resilience.ratelimiter.wait.bucket", name) == [
        ("0.001", 0),
        ("0.005", 0),
        ("0.01", 0),
        ("0.05", 0),
        ("0.1", 0),
        ("0.25", 0),
        ("0.5", 0),
        ("1.0", 1),
        ("2.5", 1),
        ("5.0", 1),
        ("10.0", 1),
        ("30.0", 1),
        ("60.0", 1),
        ("+Inf", 1),
    ]
    assert m("resilience.ratelimiter.available_permits", policy=name) == 0.5
    assert m("resilience.rejections", policy=name, reason="rate_limited") == 1


def test_histograms_match_the_prometheus_exposition(collect: Callable[[], Metrics]) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    import resilience.prometheus

    clock = FakeClock()
    name = unique("both_exporters")
    limiter = RateLimiter(2, period=1.0, max_wait=0.75, clock=clock)

    @Pipeline(Timeout(10.0, clock=clock), limiter, name=name)
    def work(seconds: float) -> None:
        clock.advance(seconds)

    registry = CollectorRegistry()
    resilience.prometheus.enable(registry)
    try:
        for seconds in (0.001, 0.25, 3.0, 0.0, 0.0, 0.0):
            with contextlib.suppress(RateLimitedError):
                work(seconds)
        with deadline(0.1, clock=clock), contextlib.suppress(RateLimitedError):
            work(0.0)
        text = generate_latest(registry).decode()
        m = collect()
    finally:
        resilience.prometheus.disable(registry)
    compared = 0
    for family in text_string_to_metric_families(text):
        otel = {
            "resilience_call_duration_seconds": "resilience.call.duration",
            "resilience_ratelimiter_wait_seconds": "resilience.ratelimiter.wait",
        }.get(family.name)
        if otel is None:
            continue
        for s in family.samples:
            if s.labels["policy"] != name:
                continue
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            part = s.name.rsplit("_", 1)[1]
            if part == "bucket":
                assert m(f"{otel}.bucket", le=s.labels["le"], **labels) == s.value, s
            elif part in ("sum", "count"):
                assert m(f"{otel}.{part}", **labels) == s.value, s
            else:
                continue
            compared += 1
    assert compared == (20 + 2) + (14 + 2)
    assert m("resilience.call.duration.count", policy=name) == 7


def test_gauges_read_a_real_circuit_breaker(collect: Callable[[], Metrics]) -> None:
    clock = FakeClock()
    name = unique("breaker")
    breaker = CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=50.0,
        window_size=4,
        minimum_calls=4,
        slow_call_duration=1.0,
        slow_call_rate_threshold=100.0,
        open_duration=30.0,
        name=name,
        clock=clock,
    )

    @breaker
    def call(seconds: float, fail: bool) -> None:
        clock.advance(seconds)
        if fail:
            raise OSError("down")

    def states(m: Metrics) -> dict[str, float]:
        return {
            s: m("resilience.circuitbreaker.state", policy=name, state=s)
            for s in ("closed", "open", "half_open", "forced_open", "disabled", "metrics_only")
        }

    m = collect()
    assert m.units["resilience.circuitbreaker.failure_rate"] == "%"
    assert m.units["resilience.circuitbreaker.slow_call_rate"] == "%"
    assert states(m) == {**dict.fromkeys(states(m), 0.0), "closed": 1.0}
    assert m("resilience.circuitbreaker.failure_rate", policy=name) == 0.0

    call(0.0, False)
    call(1.0, False)  # slow
    with pytest.raises(OSError):
        call(0.0, True)
    call(0.0, False)
    m = collect()
    assert states(m)["closed"] == 1.0
    # Percent, 0-100: one failed and one slow call of the four in the window.
    assert m("resilience.circuitbreaker.failure_rate", policy=name) == 25.0
    assert m("resilience.circuitbreaker.slow_call_rate", policy=name) == 25.0

    with pytest.raises(OSError):
        call(0.0, True)  # [slow, failed, ok, failed]: 50 % failed, the breaker opens
    m = collect()
    assert states(m) == {**dict.fromkeys(states(m), 0.0), "open": 1.0}
    assert m("resilience.circuitbreaker.failure_rate", policy=name) == 50.0
    assert m("resilience.circuitbreaker.slow_call_rate", policy=name) == 25.0
    moves = "resilience.circuitbreaker.transitions"
    assert m(moves, policy=name, from_state="closed", to_state="open") == 1

    clock.advance(30.0)  # the open duration is over: the next read finds it half-open
    m = collect()
    assert states(m) == {**dict.fromkeys(states(m), 0.0), "half_open": 1.0}
    assert m(moves, policy=name, from_state="open", to_state="half_open") == 1

    breaker.isolate()
    m = collect()
    assert states(m) == {**dict.fromkeys(states(m), 0.0), "forced_open": 1.0}


async def test_gauges_read_a_real_bulkhead(collect: Callable[[], Metrics]) -> None:
    clock = FakeClock()
    name = unique("bulkhead")
    bulkhead = Bulkhead(2, max_queued=3, clock=clock)
    release = asyncio.Event()

    @Pipeline(bulkhead, name=name)
    async def hold() -> None:
        await release.wait()

    def usage(m: Metrics) -> tuple[float, float, float]:
        return (
            m("resilience.bulkhead.in_flight", policy=name),
            m("resilience.bulkhead.queued", policy=name),
            m("resilience.bulkhead.max_concurrent", policy=name),
        )

    assert usage(collect()) == (0, 0, 2)
    tasks = [asyncio.create_task(hold()) for _ in range(4)]
    for _ in range(100):
        if bulkhead.queued == 2:
            break
        await asyncio.sleep(0)
    assert usage(collect()) == (2, 2, 2)
    release.set()
    await asyncio.gather(*tasks)
    assert usage(collect()) == (0, 0, 2)


def test_gauges_read_a_real_retry_budget_and_keyed_policy(
    collect: Callable[[], Metrics],
) -> None:
    clock = FakeClock()
    budget_name, keyed_name = unique("budget"), unique("keyed")
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)

    @Retry(on=OSError, budget=budget, clock=clock, name=budget_name)
    def fail() -> None:
        raise OSError("down")

    @Keyed(lambda tenant: Bulkhead(1, clock=clock), key=lambda tenant: tenant, name=keyed_name)
    def serve(tenant: str) -> str:
        return tenant

    with pytest.raises(OSError):
        fail()
    for tenant in ("a", "b", "c", "a"):
        serve(tenant)
    m = collect()
    assert m("resilience.retry.budget_available", policy=budget_name) == 0
    assert m("resilience.retry.budget_exhausted", policy=budget_name) == 1
    assert m("resilience.keyed.keys", policy=keyed_name) == 3


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
    assert attempts[0] == {
        "resilience.policy": "catalog-http",
        "resilience.strategy": "http",
        "http.request.method": "GET",
        "server.address": "catalog.internal",
        "server.port": 8080,
        "http.request.resend_count": 0,
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert "error.type" not in attempts[2]
    assert all("secret" not in str(v) for a in attempts for v in a.values())
