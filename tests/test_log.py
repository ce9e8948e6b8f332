"""The logging listener: a line per state change, give-up, budget exhaustion, rejection burst."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

import resilience.log
from resilience import Retry, RetryBudget
from resilience.testing import FakeClock
from telemetry_standins import Breaker, Limiter, unique


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="resilience")
    resilience.log.enable(rejection_interval=10.0)
    try:
        yield caplog
    finally:
        resilience.log.disable()


def records(caplog: pytest.LogCaptureFixture, policy: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "resilience_policy", None) == policy]


def test_nothing_is_logged_for_successful_calls(logged: pytest.LogCaptureFixture) -> None:
    name = unique("quiet")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    for _ in range(5):
        ok()
    assert records(logged, name) == []


def test_a_give_up_is_one_line_with_structured_fields(logged: pytest.LogCaptureFixture) -> None:
    name = unique("gives_up")
    clock = FakeClock()

    @Retry(on=OSError, attempts=2, clock=clock, name=name)
    def fail() -> None:
        raise ConnectionResetError("peer said no")

    with pytest.raises(ConnectionResetError):
        fail()
    [record] = records(logged, name)
    assert record.levelno == logging.WARNING
    assert record.name == "resilience"
    assert record.getMessage() == (
        f"{name}/retry: gave up after 2 attempt(s) (attempts): ConnectionResetError"
    )
    assert record.resilience_event == "RetryGaveUp"  # type: ignore[attr-defined]
    assert record.resilience_attempts == 2  # type: ignore[attr-defined]
    assert record.resilience_reason == "attempts"  # type: ignore[attr-defined]
    assert record.resilience_error_type == "ConnectionResetError"  # type: ignore[attr-defined]


def test_budget_exhaustion_has_its_own_line(logged: pytest.LogCaptureFixture) -> None:
    name = unique("budget")
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)

    @Retry(on=OSError, budget=budget, clock=clock, name=name)
    def fail() -> None:
        raise OSError("down")

    with pytest.raises(OSError):
        fail()
    [record] = records(logged, name)
    assert "retry budget exhausted" in record.getMessage()
    assert record.resilience_reason == "budget"  # type: ignore[attr-defined]


def test_state_changes_are_logged_one_line_each(logged: pytest.LogCaptureFixture) -> None:
    name = unique("breaker")
    breaker = Breaker(name=name)

    @breaker
    def call() -> int:
        return 1

    breaker.move("open")
    breaker.move("half_open")
    breaker.move("closed")
    lines = [(r.levelno, r.getMessage()) for r in records(logged, name)]
    assert lines == [
        (logging.WARNING, f"{name}/circuit_breaker: closed -> open"),
        (logging.WARNING, f"{name}/circuit_breaker: open -> half_open"),
        (logging.INFO, f"{name}/circuit_breaker: half_open -> closed"),
    ]


def test_rejections_are_summarised_per_interval(logged: pytest.LogCaptureFixture) -> None:
    name = unique("limited")
    clock = FakeClock()
    limiter = Limiter(name=name, clock=clock)
    limiter.rejecting = True

    @limiter
    def call() -> int:
        return 1

    def reject(times: int) -> None:
        for _ in range(times):
            with pytest.raises(Exception, match="rate_limited"):
                call()

    reject(1)  # logged at once
    reject(40)  # within the interval: counted
    clock.advance(9.0)
    reject(5)  # still within
    clock.advance(2.0)
    reject(1)  # past the interval: one summary line with the count
    lines = records(logged, name)
    assert [r.getMessage() for r in lines] == [
        f"{name}/rate_limiter: call rejected (rate_limited); "
        "further rejections are summarised every 10 s",
        f"{name}/rate_limiter: 46 call(s) rejected since the last such line 11.0 s ago "
        "(rate_limited)",
    ]
    assert lines[1].resilience_count == 46  # type: ignore[attr-defined]
    assert lines[1].resilience_retry_after == 1.5  # type: ignore[attr-defined]


def test_disable_stops_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="resilience")
    name = unique("off")
    breaker = Breaker(name=name)

    @breaker
    def call() -> int:
        return 1

    resilience.log.enable()
    resilience.log.disable()
    breaker.move("open")
    assert records(caplog, name) == []


def test_rejection_interval_is_validated() -> None:
    with pytest.raises(ValueError, match="rejection_interval"):
        resilience.log.LogListener(rejection_interval=0)
