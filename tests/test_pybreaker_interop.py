"""resilience.pybreaker: a pybreaker breaker publishing our events."""

from __future__ import annotations

import subprocess
import sys

import pybreaker
import pytest

from resilience import CircuitRejected, CircuitStateChanged
from resilience._core.events import EVENTS
from resilience.pybreaker import PybreakerListener
from resilience.testing import CapturingListener, FakeClock


class Boom(Exception):
    pass


def guarded(cb: pybreaker.CircuitBreaker) -> object:
    @cb
    def query(fail: bool) -> str:
        if fail:
            raise Boom
        return "rows"

    return query


def changes(events: CapturingListener) -> list[tuple[str, str, str]]:
    return [(e.from_state, e.to_state, e.reason) for e in events.of_type(CircuitStateChanged)]


def test_state_changes_become_events(clock: FakeClock, events: CapturingListener) -> None:
    listener = PybreakerListener(name="db", clock=clock)
    cb = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=30, listeners=[listener])
    query = guarded(cb)
    with pytest.raises(Boom):
        query(True)  # type: ignore[operator]
    clock.advance(1)
    with pytest.raises(pybreaker.CircuitBreakerError):
        query(True)  # type: ignore[operator]  # the failure that trips
    cb.half_open()
    assert query(False) == "rows"  # type: ignore[operator]
    assert changes(events) == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]
    first = events.of_type(CircuitStateChanged)[0]
    assert (first.policy, first.strategy, first.time) == ("db", "circuit_breaker", 1.0)
    assert (first.failure_rate, first.slow_call_rate) == (None, None)
    cb.open()
    assert changes(events)[-1] == ("closed", "open", "manual")
    cb.half_open()
    with pytest.raises(pybreaker.CircuitBreakerError):
        query(True)  # type: ignore[operator]
    assert changes(events)[-1] == ("half_open", "open", "probe_failed")


def test_policy_name_defaults(events: CapturingListener) -> None:
    named = pybreaker.CircuitBreaker(name="cache", listeners=[PybreakerListener()])
    named.open()
    anonymous = pybreaker.CircuitBreaker(listeners=[PybreakerListener()])
    anonymous.open()
    assert [e.policy for e in events.of_type(CircuitStateChanged)] == ["cache", "pybreaker"]


def test_rejections_are_published_with_retry_after(
    clock: FakeClock, events: CapturingListener
) -> None:
    listener = PybreakerListener(name="db", clock=clock)
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=30, listeners=[listener])
    query = guarded(cb)
    with pytest.raises(pybreaker.CircuitBreakerError), listener.rejections(cb):
        query(True)  # type: ignore[operator]  # trips: not a rejection
    assert events.of_type(CircuitRejected) == []
    clock.advance(10)
    with pytest.raises(pybreaker.CircuitBreakerError), listener.rejections(cb):
        query(False)  # type: ignore[operator]
    [rejected] = events.of_type(CircuitRejected)
    assert (rejected.policy, rejected.reason, rejected.state) == ("db", "circuit_open", "open")
    assert (rejected.retry_after, rejected.time) == (20.0, 10.0)
    assert listener.retry_after(cb) == 20.0
    cb.close()
    assert listener.retry_after(cb) is None


def test_rejections_as_a_decorator(clock: FakeClock, events: CapturingListener) -> None:
    listener = PybreakerListener(name="db", clock=clock)
    cb = pybreaker.CircuitBreaker(fail_max=1, listeners=[listener])

    @listener.rejections(cb)
    @cb
    def query() -> str:
        return "rows"

    assert query() == "rows"
    cb.open()
    for _ in range(2):
        with pytest.raises(pybreaker.CircuitBreakerError):
            query()
    assert len(events.of_type(CircuitRejected)) == 2


def test_retry_after_unknown_when_opened_before_listening(clock: FakeClock) -> None:
    cb = pybreaker.CircuitBreaker()
    cb.open()
    listener = PybreakerListener(clock=clock)
    cb.add_listener(listener)
    assert listener.retry_after(cb) is None


def test_listener_errors_do_not_reach_pybreaker(clock: FakeClock) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    cb = pybreaker.CircuitBreaker(fail_max=1, listeners=[PybreakerListener(name="x")])
    query = guarded(cb)
    with EVENTS.subscribed(broken, policy="x"), pytest.raises(pybreaker.CircuitBreakerError):
        query(True)  # type: ignore[operator]
    assert cb.current_state == "open"


def test_validation() -> None:
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        PybreakerListener(name="")
    with pytest.raises(TypeError, match="clock must be a Clock"):
        PybreakerListener(clock=object())  # type: ignore[arg-type]
    assert repr(PybreakerListener(name="db")) == "PybreakerListener(name='db')"


def test_importing_resilience_does_not_import_pybreaker() -> None:
    code = "import resilience, sys; assert 'pybreaker' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
