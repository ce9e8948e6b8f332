"""The Prometheus exposition after scripted scenarios under the fake clock, parsed back."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import resilience.prometheus
from _prometheus_server import prometheus_scraping
from conftest import ManualClock, settle, wait_until
from resilience import (
    Backoff,
    BulkheadFullError,
    CircuitBreaker,
    Fallback,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)
from resilience._metrics import READERS
from resilience.testing import FakeClock
from telemetry_standins import Breaker, Bulkhead, Limiter, histogram, unique

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(reg: CollectorRegistry) -> tuple[str, Samples]:
    text = generate_latest(reg).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_retry_timeout_fallback_scenario_gives_exact_counts(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    name = unique("checkout")
    plan: list[str] = []

    @Pipeline(
        Fallback("cached", on=TimeoutError),
        Timeout(1.0, clock=clock),
        Retry(on=OSError, attempts=3, backoff=Backoff.constant(0.2), clock=clock),
        name=name,
    )
    def checkout() -> str:
        step = plan.pop(0)
        clock.advance(1.5 if step == "slow" else 0.1)
        if step == "fail":
            raise OSError("connection reset by 10.0.0.7 token=secret")
        return "ok"

    plan[:] = ["ok"]
    assert checkout() == "ok"  # 0.1 s
    plan[:] = ["fail", "fail", "ok"]
    assert checkout() == "ok"  # 3 x 0.1 s + 2 x 0.2 s = 0.7 s
    plan[:] = ["fail", "fail", "fail"]
    with pytest.raises(OSError):
        checkout()  # gives up after 3 attempts, 0.7 s
    plan[:] = ["slow"]
    assert checkout() == "cached"  # times out after 1.5 s, the fallback answers

    text, samples = scrape(registry)
    calls = "resilience_calls_total"
    assert value(samples, calls, policy=name, strategy="pipeline", outcome="success") == 3
    assert value(samples, calls, policy=name, strategy="pipeline", outcome="unknown_failure") == 1
    assert value(samples, calls, policy=name, strategy="pipeline", outcome="rejected") == 0
    assert value(samples, "resilience_retry_attempts_total", policy=name) == 4
    assert value(samples, "resilience_retry_gave_up_total", policy=name, reason="attempts") == 1
    assert value(samples, "resilience_timeouts_total", policy=name) == 1
    assert value(samples, "resilience_fallbacks_total", policy=name) == 1

    hist = "resilience_call_duration_seconds"
    assert value(samples, f"{hist}_count", policy=name) == 4
    assert value(samples, f"{hist}_sum", policy=name) == pytest.approx(3.0)
    assert value(samples, f"{hist}_bucket", policy=name, le="0.067108864") == 0
    assert value(samples, f"{hist}_bucket", policy=name, le="0.134217728") == 1
    assert value(samples, f"{hist}_bucket", policy=name, le="1.073741824") == 3
    assert value(samples, f"{hist}_bucket", policy=name, le="2.147483648") == 4
    assert value(samples, f"{hist}_bucket", policy=name, le="+Inf") == 4
    # Labels stay bounded: no exception message, address or token reaches the exposition.
    assert "secret" not in text
    assert "10.0.0.7" not in text


def test_breaker_bulkhead_and_limiter_from_events_and_snapshots(
    registry: CollectorRegistry,
) -> None:
    clock = FakeClock()
    name = unique("inventory")
    breaker, bulkhead, limiter = Breaker(clock=clock), Bulkhead(clock=clock), Limiter(clock=clock)

    @Pipeline(breaker, bulkhead, limiter, name=name)
    def lookup() -> int:
        return 1

    assert lookup() == 1
    breaker.move("open")
    for _ in range(3):
        with pytest.raises(Exception, match="circuit_open"):
            lookup()
    breaker.move("half_open")
    breaker.failure_rate = 50.0
    limiter.rejecting = True
    with pytest.raises(Exception, match="rate_limited"):
        lookup()
    limiter.rejecting = False
    bulkhead.rejecting = True
    with pytest.raises(Exception, match="bulkhead_full"):
        lookup()

    _, samples = scrape(registry)
    rejected = "resilience_rejections_total"
    assert value(samples, rejected, policy=name, reason="circuit_open") == 3
    assert value(samples, rejected, policy=name, reason="rate_limited") == 1
    assert value(samples, rejected, policy=name, reason="bulkhead_full") == 1
    calls = "resilience_calls_total"
    assert value(samples, calls, policy=name, strategy="pipeline", outcome="rejected") == 5
    assert value(samples, calls, policy=name, strategy="pipeline", outcome="success") == 1

    moves = "resilience_circuitbreaker_transitions_total"
    assert value(samples, moves, policy=name, from_state="closed", to_state="open") == 1
    assert value(samples, moves, policy=name, from_state="open", to_state="half_open") == 1
    state = "resilience_circuitbreaker_state"
    assert value(samples, state, policy=name, state="half_open") == 1
    for other in ("closed", "open", "forced_open", "disabled", "metrics_only"):
        assert value(samples, state, policy=name, state=other) == 0
    assert value(samples, "resilience_circuitbreaker_failure_rate", policy=name) == 50.0
    assert value(samples, "resilience_circuitbreaker_slow_call_rate", policy=name) == 25.0

    assert value(samples, "resilience_bulkhead_in_flight", policy=name) == 7
    assert value(samples, "resilience_bulkhead_queued", policy=name) == 2
    assert value(samples, "resilience_bulkhead_max_concurrent", policy=name) == 10
    assert value(samples, "resilience_ratelimiter_available_permits", policy=name) == 4

    # The rejection's retry_after (1.5 s) is no wait: the wait histogram has no series.
    wait = "resilience_ratelimiter_wait_seconds_count"
    assert (wait, frozenset({("policy", name)})) not in samples


def test_budget_exhaustion_is_counted_and_the_budget_is_a_gauge(
    registry: CollectorRegistry,
) -> None:
    clock = FakeClock()
    name = unique("budget")
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)

    @Retry(on=OSError, budget=budget, clock=clock, name=name)
    def fail() -> None:
        raise OSError("down")

    with pytest.raises(OSError):
        fail()
    _, samples = scrape(registry)
    assert value(samples, "resilience_retry_budget_exhausted_total", policy=name) == 1
    assert value(samples, "resilience_retry_gave_up_total", policy=name, reason="budget") == 1
    assert value(samples, "resilience_retry_budget_available", policy=name) == 0
    # No retry was scheduled, so the policy has no retry-attempts series at all.
    assert ("resilience_retry_attempts_total", frozenset({("policy", name)})) not in samples


def test_every_family_is_exposed_even_without_samples(registry: CollectorRegistry) -> None:
    text, _ = scrape(registry)
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == set(READERS)


class BrokenSnapshot(Bulkhead):
    def snapshot(self) -> dict[str, Any]:
        raise RuntimeError("snapshot broke")


def test_a_strategy_whose_snapshot_raises_is_skipped_and_logged_once(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    healthy, broken = unique("healthy"), unique("broken")
    limiter = Limiter(name=healthy)
    limiter(lambda: None)

    def decorate() -> Any:
        gate = BrokenSnapshot(name=broken)
        return gate, gate(lambda: None)

    gate, _ = decorate()
    with caplog.at_level(logging.ERROR, logger="resilience"):
        for _ in range(2):
            _, samples = scrape(registry)  # the scrape still answers
            assert value(samples, "resilience_ratelimiter_available_permits", policy=healthy) == 4
            assert not [
                k
                for k in samples
                if k[0].startswith("resilience_bulkhead") and ("policy", broken) in k[1]
            ]
    assert [r.getMessage() for r in caplog.records].count(
        f"resilience: snapshot() of {gate!r} raised; it is skipped"
    ) == 1
    # A new strategy is logged too, even where the dropped one lived.
    del gate
    gc.collect()
    caplog.clear()
    _again = decorate()
    with caplog.at_level(logging.ERROR, logger="resilience"):
        scrape(registry)
    assert len(caplog.records) == 1
    assert limiter.snapshot()["available"] == 4.0


def test_registering_twice_in_one_registry_is_a_clear_error(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        resilience.prometheus.enable(registry)
    other = CollectorRegistry()
    other.register(resilience.prometheus.ResilienceCollector())
    with pytest.raises(ValueError, match="another collector"):
        resilience.prometheus.enable(other)


def test_disable_stops_counting_and_keeps_the_counters() -> None:
    reg = CollectorRegistry()
    name = unique("toggle")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    resilience.prometheus.enable(reg)
    ok()
    resilience.prometheus.disable(reg)
    ok()  # not counted
    resilience.prometheus.enable(reg)
    try:
        ok()
        _, samples = scrape(reg)
    finally:
        resilience.prometheus.disable(reg)
    calls = "resilience_calls_total"
    assert value(samples, calls, policy=name, strategy="retry", outcome="success") == 2


def test_durations_off_counts_calls_and_leaves_the_histogram_empty() -> None:
    reg = CollectorRegistry()
    name = unique("counts_only")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    resilience.prometheus.enable(reg, durations=False)
    try:
        ok()
        _, samples = scrape(reg)
    finally:
        resilience.prometheus.disable(reg)
    assert value(
        samples, "resilience_calls_total", policy=name, strategy="retry", outcome="success"
    )
    assert value(samples, "resilience_call_duration_seconds_count", policy=name) == 0


async def test_asgi_app_serves_the_exposition(registry: CollectorRegistry) -> None:
    name = unique("asgi")

    @Retry(on=OSError, name=name)
    async def ok() -> int:
        return 1

    await ok()
    app = resilience.prometheus.asgi_app(registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert f'resilience_calls_total{{outcome="success",policy="{name}",strategy="retry"}} 1.0' in (
        response.text
    )


def test_wsgi_app_serves_the_exposition(registry: CollectorRegistry) -> None:
    app = resilience.prometheus.wsgi_app(registry)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE resilience_calls_total counter" in response.text


def test_works_with_start_http_server(registry: CollectorRegistry) -> None:
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert response.status_code == 200
    assert "resilience_call_duration_seconds" in response.text


def test_a_real_prometheus_server_scrapes_the_metrics(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    name = unique("scraped")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    for _ in range(3):
        ok()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with prometheus_scraping([f"127.0.0.1:{server.server_address[1]}"], tmp_path) as prom:
            result = prom.wait_for(f'resilience_calls_total{{policy="{name}",outcome="success"}}')
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result[0]["value"][1] == "3"


# -- the rate limiter's wait histogram: the time calls really waited ---------------------------
WAIT = "resilience_ratelimiter_wait_seconds"
WAIT_LE = ("0.001", "0.005", "0.01", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0")
WAIT_LE += ("30.0", "60.0", "+Inf")


def cumulative(*counts: int) -> dict[str, float]:
    """The expected buckets of the wait histogram: one cumulative count per bound, in order."""
    return dict(zip(WAIT_LE, map(float, counts), strict=True))


def test_the_wait_histogram_holds_the_time_sync_calls_waited(
    registry: CollectorRegistry,
) -> None:
    clock = FakeClock()
    name = unique("limited_sync")

    @RateLimiter(2, max_wait=1.0, name=name, clock=clock)  # a permit every 0.5 s
    def call() -> None:
        return None

    call()  # admitted at once: not observed
    call()  # waits 0.5 s
    clock.advance(0.25)
    call()  # waits the 0.25 s left of its interval
    with deadline(0.125, clock=clock), pytest.raises(RateLimitedError) as info:
        call()  # its permit is 0.5 s away, past its deadline: rejected at once
    assert info.value.retry_after == 0.5
    call()  # waits 0.5 s

    buckets, count, total = histogram(registry, WAIT, name)
    assert buckets == cumulative(0, 0, 0, 0, 0, 1, 3, 3, 3, 3, 3, 3, 3, 3)
    assert count == 3
    assert total == 1.25  # the rejection's retry_after is not a wait
    _, samples = scrape(registry)
    assert value(samples, "resilience_rejections_total", policy=name, reason="rate_limited") == 1
    calls = "resilience_calls_total"
    assert value(samples, calls, policy=name, strategy="rate_limiter", outcome="success") == 4


async def test_the_wait_histogram_holds_the_time_async_calls_waited(
    registry: CollectorRegistry,
) -> None:
    clock = FakeClock()
    name = unique("limited_async")

    limiter = RateLimiter(2, max_wait=1.0, name=name, clock=clock)

    @limiter
    async def call() -> None:
        return None

    await call()
    await call()  # waits 0.5 s
    clock.advance(0.25)
    await call()  # waits 0.25 s
    with deadline(0.125, clock=clock), pytest.raises(RateLimitedError):
        await call()
    await call()  # waits 0.5 s
    await limiter.aacquire()  # waits 0.5 s
    async with limiter:  # waits 0.5 s
        pass

    buckets, count, total = histogram(registry, WAIT, name)
    assert buckets == cumulative(0, 0, 0, 0, 0, 1, 5, 5, 5, 5, 5, 5, 5, 5)
    assert count == 5
    assert total == 2.25


def test_a_limiter_that_never_waits_has_no_wait_series(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    name = unique("never_waits")

    @RateLimiter(1, period=10.0, name=name, clock=clock)  # max_wait=0: reject, never wait
    def call() -> None:
        return None

    call()
    with pytest.raises(RateLimitedError):
        call()
    assert histogram(registry, WAIT, name) == ({}, 0.0, 0.0)


# -- real bulkheads, limiters and breakers: their gauges while calls run, queue and leave ------


def bulkhead_gauges(registry: CollectorRegistry, policy: str) -> tuple[float, float, float]:
    """``(in_flight, queued, max_concurrent)`` as scraped."""
    _, samples = scrape(registry)
    return (
        value(samples, "resilience_bulkhead_in_flight", policy=policy),
        value(samples, "resilience_bulkhead_queued", policy=policy),
        value(samples, "resilience_bulkhead_max_concurrent", policy=policy),
    )


def permits(registry: CollectorRegistry, policy: str) -> float:
    _, samples = scrape(registry)
    return value(samples, "resilience_ratelimiter_available_permits", policy=policy)


def test_a_real_bulkheads_gauges_follow_threads_running_queueing_and_giving_up(
    registry: CollectorRegistry,
) -> None:
    clock = FakeClock()
    name = unique("bulkhead_threads")
    go = threading.Event()
    outcomes: list[str] = []

    @resilience.Bulkhead(2, max_queued=2, name=name, clock=clock)
    def hold() -> None:
        assert go.wait(30), "the test never let the call finish"

    def run(budget: float | None) -> None:
        try:
            with deadline(budget, clock=clock) if budget else contextlib.nullcontext():
                hold()
            outcomes.append("done")
        except BulkheadFullError:
            outcomes.append("gave up")

    threads: list[threading.Thread] = []

    def start(budget: float | None) -> threading.Thread:
        t = threading.Thread(target=run, args=(budget,), daemon=True)
        t.start()
        threads.append(t)
        return t

    assert bulkhead_gauges(registry, name) == (0, 0, 2)
    try:
        start(None)
        start(None)
        wait_until(lambda: bulkhead_gauges(registry, name)[0] == 2)
        start(None)
        wait_until(lambda: bulkhead_gauges(registry, name)[1] == 1)
        impatient = start(1.0)  # queues until t=1 at most
        wait_until(lambda: bulkhead_gauges(registry, name)[1] == 2)
        assert bulkhead_gauges(registry, name) == (2, 2, 2)
        with pytest.raises(BulkheadFullError):
            hold()  # the queue is full: rejected at once, and never counted as queued
        assert bulkhead_gauges(registry, name) == (2, 2, 2)

        clock.advance(1.0)  # the impatient waiter's deadline: it leaves the queue
        impatient.join(5)
        assert outcomes == ["gave up"]
        assert bulkhead_gauges(registry, name) == (2, 1, 2)
    finally:
        go.set()  # whatever happened, no thread is left holding or queueing
        clock.advance(1.0)
        for t in threads:
            t.join(5)
            assert not t.is_alive()
    assert sorted(outcomes) == ["done", "done", "done", "gave up"]
    assert bulkhead_gauges(registry, name) == (0, 0, 2)
    _, samples = scrape(registry)
    assert value(samples, "resilience_rejections_total", policy=name, reason="bulkhead_full") == 2


async def test_a_real_bulkheads_gauges_follow_tasks_and_cancelled_ones(
    registry: CollectorRegistry,
) -> None:
    name = unique("bulkhead_tasks")
    bulkhead = resilience.Bulkhead(2, max_queued=3, name=name)
    go = asyncio.Event()

    @bulkhead
    async def hold() -> None:
        await go.wait()

    running = [asyncio.create_task(hold()) for _ in range(2)]
    await settle(lambda: bulkhead.in_flight == 2)
    queued = [asyncio.create_task(hold()) for _ in range(3)]
    await settle(lambda: bulkhead.queued == 3)
    assert bulkhead_gauges(registry, name) == (2, 3, 2)

    queued[1].cancel()  # cancelled while queued: it leaves the queue, takes nothing
    with pytest.raises(asyncio.CancelledError):
        await queued[1]
    assert bulkhead_gauges(registry, name) == (2, 2, 2)

    running[0].cancel()  # cancelled while running: its permit goes to the first queued
    with pytest.raises(asyncio.CancelledError):
        await running[0]
    assert bulkhead_gauges(registry, name) == (2, 1, 2)

    go.set()
    await asyncio.wait_for(asyncio.gather(running[1], queued[0], queued[2]), 5)
    assert bulkhead_gauges(registry, name) == (0, 0, 2)


def test_a_real_limiters_permits_and_waits_with_threads_in_line(
    registry: CollectorRegistry,
) -> None:
    clock = ManualClock()  # a sleep lasts until the test advances the clock
    name = unique("limiter_threads")

    limiter = RateLimiter(1, burst=1, max_wait=None, name=name, clock=clock)

    @limiter
    def call() -> None:
        return None

    assert permits(registry, name) == 2.0  # idle: 1 + burst
    call()
    assert permits(registry, name) == 1.0
    call()
    assert permits(registry, name) == 0.0
    head = threading.Thread(target=call, daemon=True)
    parked = threading.Thread(target=call, daemon=True)
    try:
        head.start()
        wait_until(lambda: clock.sleeps == [1.0])  # at the head of the line, due at t=1
        parked.start()
        wait_until(lambda: len(limiter._gcra.waiters) == 2)  # behind it, due at t=2
        clock.advance(0.5)
        assert permits(registry, name) == 0.0  # half a permit has refilled, but it is theirs

        clock.advance(0.5)  # the head is admitted at t=1; the parked one heads the line
        head.join(5)
        wait_until(lambda: len(clock.sleeps) == 2)
        assert permits(registry, name) == 0.0
        clock.advance(1.0)  # admitted at t=2
        parked.join(5)
        assert permits(registry, name) == 0.0
    finally:
        clock.advance(2.0)  # whatever happened, no thread is left asleep
        for t in (head, parked):
            if t.ident is not None:  # started
                t.join(5)
                assert not t.is_alive()
    assert permits(registry, name) == 2.0  # idle again

    buckets, count, total = histogram(registry, WAIT, name)
    assert buckets == cumulative(0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2)
    assert (count, total) == (2, 3.0)  # 1 s and 2 s


async def test_a_real_limiters_permits_and_waits_with_tasks_and_a_cancelled_one(
    registry: CollectorRegistry,
) -> None:
    clock = ManualClock()
    name = unique("limiter_tasks")
    limiter = RateLimiter(1, max_wait=None, name=name, clock=clock)

    @limiter
    async def call() -> None:
        return None

    assert permits(registry, name) == 1.0
    await call()
    b, c, d = (asyncio.create_task(call()) for _ in range(3))
    await settle(lambda: clock.sleeps == [1.0] and len(limiter._gcra.waiters) == 3)
    clock.advance(0.5)
    assert permits(registry, name) == 0.0
    c.cancel()  # parked behind b: it leaves the line, takes nothing, is not observed
    with pytest.raises(asyncio.CancelledError):
        await c
    clock.advance(0.5)
    await asyncio.wait_for(b, 5)  # admitted at t=1
    await settle(lambda: len(clock.sleeps) == 2)
    assert permits(registry, name) == 0.0
    clock.advance(1.0)
    await asyncio.wait_for(d, 5)  # admitted at t=2: c's turn was given to it
    assert permits(registry, name) == 0.0
    clock.advance(1.0)
    assert permits(registry, name) == 1.0

    buckets, count, total = histogram(registry, WAIT, name)
    assert buckets == cumulative(0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2)
    assert (count, total) == (2, 3.0)


def test_a_real_breakers_rates_are_exposed_in_percent(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    name = unique("breaker_percent")

    @CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=100.0,
        window_size=4,
        minimum_calls=4,
        slow_call_duration=1.0,
        name=name,
        clock=clock,
    )
    def call(fail: bool, seconds: float) -> None:
        clock.advance(seconds)
        if fail:
            raise OSError("down")

    for fail, seconds in ((True, 0.0), (True, 0.0), (False, 1.0), (False, 0.0)):
        with contextlib.suppress(OSError):
            call(fail, seconds)
    _, samples = scrape(registry)
    assert value(samples, "resilience_circuitbreaker_state", policy=name, state="closed") == 1
    assert value(samples, "resilience_circuitbreaker_failure_rate", policy=name) == 50.0
    assert value(samples, "resilience_circuitbreaker_slow_call_rate", policy=name) == 25.0
