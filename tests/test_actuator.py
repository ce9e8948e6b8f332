"""resilience.status(): every named policy's snapshot and the recent events, as JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

import resilience
from resilience import Backoff, CircuitBreaker, Pipeline, Retry, RetryBudget, Timeout, actuator
from resilience.testing import FakeClock
from telemetry_standins import Breaker, Bulkhead, unique


@pytest.fixture
def recording() -> Iterator[actuator.EventLog]:
    log = actuator.record_events(limit=3)
    try:
        yield log
    finally:
        actuator.stop_recording()


def entries(status: dict[str, object], policy: str) -> list[dict[str, object]]:
    policies = status["policies"]
    assert isinstance(policies, list)
    return [p for p in policies if p["policy"] == policy]


def test_status_lists_every_named_policy_and_round_trips_through_json() -> None:
    name = unique("orders")
    breaker = Breaker()
    budget = RetryBudget()

    @Pipeline(breaker, Bulkhead(), Retry(on=OSError, budget=budget), Timeout(2.0), name=name)
    def place() -> int:
        return 1

    place()
    breaker.failure_rate = float("nan")  # not enough calls yet: must not break JSON
    status = resilience.status()
    assert json.loads(json.dumps(status, allow_nan=False)) == status
    [entry] = entries(status, name)
    assert entry["kind"] == "pipeline"
    members = {m["kind"]: m for m in entry["strategies"]}  # type: ignore[attr-defined]
    assert members["circuit_breaker"]["state"] == "closed"
    assert members["circuit_breaker"]["failure_rate"] is None
    assert members["circuit_breaker"]["last_transition_age"] == 3.0
    assert members["bulkhead"]["in_flight"] == 7
    assert members["retry"]["budget"] == {"requests": 1, "retries": 0, "available": 100.2}
    assert members["timeout"] == {"kind": "timeout", "name": None}


def test_recent_events_are_kept_json_safe_in_a_ring(recording: actuator.EventLog) -> None:
    name = unique("recent")
    clock = FakeClock()

    @Retry(on=OSError, attempts=3, backoff=Backoff.constant(0.25), clock=clock, name=name)
    def fail() -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError):
        fail()
    with pytest.raises(OSError):
        fail()
    status = resilience.status()
    assert status["recording_events"] is True
    events = status["events"]
    assert json.loads(json.dumps(events, allow_nan=False)) == events
    assert [(e["event"], e["seq"]) for e in events] == [
        ("RetryScheduled", 4),
        ("RetryScheduled", 5),
        ("RetryGaveUp", 6),
    ]
    assert events[0]["error"] == {"type": "OSError", "message": "disk on fire"}
    assert events[0]["delay"] == 0.25
    assert events[2]["reason"] == "attempts"
    assert events[2]["severity"] == "warning"
    assert events[2]["source"] == f"{name}/retry"


def test_status_without_recording_has_no_events() -> None:
    assert resilience.status()["events"] == []
    assert resilience.status()["recording_events"] is False


def test_a_failing_snapshot_is_reported_not_raised() -> None:
    name = unique("broken")

    class Broken(Breaker):
        def snapshot(self) -> dict[str, object]:
            raise RuntimeError("bug")

    @Broken(name=name)
    def call() -> None: ...

    assert entries(resilience.status(), name) == [
        {"policy": name, "kind": "circuit_breaker", "error": "RuntimeError"}
    ]


def test_json_safe_handles_what_events_carry() -> None:
    class Weird:
        def __repr__(self) -> str:
            return "w" * 500

    safe = actuator.json_safe({"inf": float("inf"), "obj": Weird(), "items": (1, {2})})
    assert safe["inf"] is None
    assert len(safe["obj"]) == 200
    assert safe["items"] == [1, [2]]


async def test_asgi_app_serves_status() -> None:
    name = unique("asgi_status")

    @Retry(on=OSError, name=name)
    def ok() -> None: ...

    transport = httpx.ASGITransport(app=actuator.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/status")
        refused = await client.post("/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert entries(response.json(), name)[0]["kind"] == "retry"
    assert refused.status_code == 405


def test_wsgi_app_serves_status() -> None:
    name = unique("wsgi_status")

    @Retry(on=OSError, name=name)
    def ok() -> None: ...

    transport = httpx.WSGITransport(app=actuator.wsgi_app())
    with httpx.Client(transport=transport, base_url="http://test") as client:
        response = client.get("/status")
    assert response.status_code == 200
    assert entries(response.json(), name)[0]["kind"] == "retry"


def test_wall_time_dates_a_real_breakers_last_transition() -> None:
    name = unique("dated")
    breaker = CircuitBreaker(failure_threshold=1, name=name)

    @breaker
    def down() -> None:
        raise ConnectionError("down")

    before = time.time()
    with pytest.raises(ConnectionError):
        down()
    after = time.time()
    status = resilience.status()
    [entry] = entries(status, name)
    assert entry["state"] == "open"
    age = entry["last_transition_age"]
    assert isinstance(age, float)
    assert age >= 0.0
    opened_at = status["wall_time"] - age  # type: ignore[operator]
    # The two clocks are read a few µs apart; 50 ms covers any scheduling in between.
    assert before - 0.05 <= opened_at <= after + 0.05
    assert status["now"] - age == pytest.approx(breaker._machine._last_transition)  # type: ignore[operator]
