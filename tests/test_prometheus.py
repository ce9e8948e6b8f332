"""The Prometheus exposition after scripted scenarios under the fake clock, parsed back."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import resilience.prometheus
from conftest import need_server
from resilience import Backoff, Fallback, Pipeline, Retry, RetryBudget, Timeout
from resilience._metrics import READERS
from resilience.testing import FakeClock
from telemetry_standins import Breaker, Bulkhead, Limiter, unique

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    resilience.prometheus.enable(reg)
    try:
        yield reg
    finally:
        resilience.prometheus.disable(reg)


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
    breaker.failure_rate = 0.5
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
    assert value(samples, "resilience_circuitbreaker_failure_rate", policy=name) == 0.5
    assert value(samples, "resilience_circuitbreaker_slow_call_rate", policy=name) == 0.25

    assert value(samples, "resilience_bulkhead_in_flight", policy=name) == 7
    assert value(samples, "resilience_bulkhead_queued", policy=name) == 2
    assert value(samples, "resilience_bulkhead_max_concurrent", policy=name) == 10
    assert value(samples, "resilience_ratelimiter_available_permits", policy=name) == 4

    wait = "resilience_ratelimiter_wait_seconds"
    assert value(samples, f"{wait}_count", policy=name) == 1
    assert value(samples, f"{wait}_sum", policy=name) == 1.5
    assert value(samples, f"{wait}_bucket", policy=name, le="1.0") == 0
    assert value(samples, f"{wait}_bucket", policy=name, le="2.5") == 1


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_prometheus_server_scrapes_the_metrics(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        need_server("the prometheus server binary", FileNotFoundError("prometheus not on PATH"))
        return
    name = unique("scraped")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    for _ in range(3):
        ok()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    target = f"127.0.0.1:{server.server_address[1]}"
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: resilience\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log_file = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    query = f'resilience_calls_total{{policy="{name}",outcome="success"}}'
    result: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not result:
            time.sleep(0.5)
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=2
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                result = json.loads(response.text)["data"]["result"]
    finally:
        proc.terminate()
        proc.wait(10)
        log_file.close()
        server.shutdown()
        server.server_close()
        thread.join(5)
    log = (tmp_path / "prometheus.log").read_text()[-2000:]
    assert result, f"Prometheus never scraped {query}; its log ends with:\n{log}"
    assert result[0]["value"][1] == "3"  # type: ignore[index]
