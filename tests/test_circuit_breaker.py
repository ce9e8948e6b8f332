"""CircuitBreaker: every transition under the fake clock, windows, options, forms, events."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import resilience.circuit_breaker as cb_module
from resilience import (
    CallRejected,
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitOpenError,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
    Classifier,
    Outcome,
    Pipeline,
    RejectedError,
    Retry,
    StateChanged,
)
from resilience._core.events import EVENTS
from resilience.testing import CapturingListener, FakeClock


class Boom(Exception):
    """An unknown failure of the dependency."""


class BadInput(Exception):
    """A known failure: the caller's fault, not the dependency's."""


class Stop(BaseException):
    """A BaseException that is not an Exception (like KeyboardInterrupt)."""


def breaker(clock: FakeClock, **options: Any) -> CircuitBreaker:
    return CircuitBreaker(name="svc", clock=clock, **options)


def runner(b: CircuitBreaker, clock: FakeClock) -> Any:
    """A guarded function: ``call(outcome, took)`` runs for ``took`` seconds of fake time
    and then raises ``outcome`` if it is an exception, else returns it."""

    @b
    def call(outcome: Any = "ok", took: float = 0.0) -> Any:
        if took:
            clock.advance(took)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call


def outcome(call: Any, what: Any = "ok", took: float = 0.0) -> str:
    """Run ``call`` and name what happened: ``ok``, ``failed``, ``rejected`` …"""
    try:
        call(what, took)
    except CircuitOpenError:
        return "rejected"
    except Boom:
        return "failed"
    except BadInput:
        return "known"
    except Stop:
        return "stopped"
    return "ok"


def trip(call: Any, times: int) -> None:
    for _ in range(times):
        assert outcome(call, Boom()) == "failed"


def changes(events: CapturingListener) -> list[tuple[str, str, str]]:
    return [(e.from_state, e.to_state, e.reason) for e in events.of_type(CircuitStateChanged)]


# -- options ---------------------------------------------------------------------------------


def test_defaults() -> None:
    o = CircuitBreakerOptions()
    assert o.failure_threshold == 5
    assert o.failure_rate_threshold == 50.0
    assert o.window_type is cb_module.WindowType.COUNT
    assert o.window_size == 100
    assert o.slow_call_duration is None
    assert o.open_duration == 30.0
    assert o.open_duration_multiplier == 1.0
    assert o.half_open_probes == 1
    assert o.max_half_open_wait == 60.0
    assert o.ignore == ()
    b = CircuitBreaker()
    assert b.state is CircuitState.CLOSED
    assert b.options == o
    assert b._machine._min_calls == 10
    assert b._machine._max_open == 300.0
    assert CircuitBreaker(window_size=4)._machine._min_calls == 4
    assert CircuitBreaker(open_duration=600)._machine._max_open == 600.0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"failure_threshold": 0},
            ValueError,
            "failure_threshold must be between 1 and 1000000, got 0",
        ),
        ({"failure_threshold": True}, TypeError, "failure_threshold must be an int, got bool True"),
        (
            {"failure_rate_threshold": 0},
            ValueError,
            "failure_rate_threshold must be a finite number > 0 and <= 100, got 0",
        ),
        (
            {"failure_rate_threshold": 101},
            ValueError,
            "failure_rate_threshold must be a finite number > 0 and <= 100, got 101",
        ),
        (
            {"window_type": "sliding"},
            ValueError,
            "window_type must be 'count' or 'time', got 'sliding'",
        ),
        ({"window_size": 0}, ValueError, "window_size must be between 1 and 1000000, got 0"),
        (
            {"window_size": 10.5},
            TypeError,
            "window_size must be an int number of calls for a count window, got float 10.5",
        ),
        (
            {"window_type": "time", "window_size": 0},
            ValueError,
            "window_size must be > 0 seconds, got 0",
        ),
        (
            {"window_type": "time", "window_size": "10s"},
            TypeError,
            "window_size must be a number of seconds",
        ),
        ({"minimum_calls": 0}, ValueError, "minimum_calls must be between 1 and 1000000, got 0"),
        (
            {"window_size": 20, "minimum_calls": 21},
            ValueError,
            r"minimum_calls must be <= window_size \(20\) for a count window, got 21",
        ),
        ({"slow_call_duration": 0}, ValueError, "slow_call_duration must be > 0 seconds, got 0"),
        (
            {"slow_call_rate_threshold": 0},
            ValueError,
            "slow_call_rate_threshold must be a finite number > 0",
        ),
        ({"open_duration": -1}, ValueError, "open_duration must be > 0 seconds, got -1"),
        (
            {"open_duration": "5"},
            TypeError,
            "open_duration must be a number of seconds or a datetime.timedelta, got str '5'",
        ),
        (
            {"open_duration_multiplier": 0.5},
            ValueError,
            "open_duration_multiplier must be a finite number >= 1 and <= 1000, got 0.5",
        ),
        ({"max_open_duration": 5}, ValueError, "max_open_duration must be >= 30 seconds, got 5"),
        (
            {"half_open_probes": 0},
            ValueError,
            "half_open_probes must be between 1 and 10000, got 0",
        ),
        ({"max_half_open_wait": 0}, ValueError, "max_half_open_wait must be > 0 seconds, got 0"),
        (
            {"ignore": ValueError("x")},
            TypeError,
            "ignore must be an exception type or a tuple of them",
        ),
        ({"classifier": "x"}, TypeError, "classifier must be a Classifier or None, got 'x'"),
        (
            {"failure_threshold": None, "failure_rate_threshold": None},
            ValueError,
            "at least one trip rule is needed",
        ),
    ],
)
def test_bad_options_name_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CircuitBreakerOptions(**kwargs)
    with pytest.raises(error, match=message):
        CircuitBreaker(**kwargs)


def test_bad_breaker_arguments() -> None:
    with pytest.raises(TypeError, match="options must be a CircuitBreakerOptions or None"):
        CircuitBreaker({"failure_threshold": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock must be a Clock"):
        CircuitBreaker(clock=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        CircuitBreaker(name="")


def test_options_are_frozen_and_overridable(clock: FakeClock) -> None:
    shared = CircuitBreakerOptions(failure_threshold=2, open_duration=timedelta(seconds=5))
    assert shared.open_duration == timedelta(seconds=5)
    with pytest.raises(AttributeError):
        shared.failure_threshold = 3  # type: ignore[misc]
    b = CircuitBreaker(shared, open_duration=7, name="a", clock=clock)
    assert b.options.failure_threshold == 2
    assert b.options.open_duration == 7
    assert shared.open_duration == timedelta(seconds=5)
    c = CircuitBreaker(shared, name="b", clock=clock)
    assert c.options is shared
    c.open()
    assert c.snapshot()["open_until"] == 5.0
    assert CircuitBreakerOptions(ignore=KeyError).ignore == (KeyError,)
    timed = CircuitBreakerOptions(window_type="time", window_size=timedelta(minutes=1))
    assert timed.window_type is cb_module.WindowType.TIME


# -- consecutive failures, open, half-open ----------------------------------------------------


def test_consecutive_failures_trip_and_success_resets_the_count(
    clock: FakeClock, events: CapturingListener
) -> None:
    b = breaker(clock, failure_threshold=3, failure_rate_threshold=None)
    call = runner(b, clock)
    trip(call, 2)
    assert outcome(call) == "ok"
    assert b.snapshot()["consecutive_failures"] == 0
    trip(call, 2)
    assert b.state is CircuitState.CLOSED
    assert outcome(call, Boom()) == "failed"  # the third in a row
    assert b.state is CircuitState.OPEN
    assert changes(events) == [("closed", "open", "consecutive_failures")]
    assert outcome(call) == "rejected"


def test_rejection_carries_exact_retry_after(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10)
    call = runner(b, clock)
    clock.advance(100)
    trip(call, 1)
    clock.advance(4)
    with pytest.raises(CircuitOpenError) as info:
        call()
    err = info.value
    assert isinstance(err, RejectedError)
    assert err.retry_after == 6.0
    assert err.state is CircuitState.OPEN
    assert err.policy == "svc"
    assert str(err) == "circuit breaker 'svc' is open; next probe in 6 s"
    assert repr(err) == "CircuitOpenError(\"circuit breaker 'svc' is open; next probe in 6 s\")"
    snap = b.snapshot()
    assert snap["open_until"] == 6.0
    assert snap["not_permitted_calls"] == 1
    assert snap["last_transition_age"] == 4.0
    [rejected] = events.of_type(CircuitRejected)
    assert isinstance(rejected, CallRejected)
    assert (rejected.policy, rejected.strategy) == ("svc", "circuit_breaker")
    assert (rejected.reason, rejected.retry_after, rejected.state, rejected.time) == (
        "circuit_open",
        6.0,
        "open",
        104.0,
    )


def test_open_to_half_open_exactly_at_open_duration(
    clock: FakeClock, events: CapturingListener
) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10)
    call = runner(b, clock)
    trip(call, 1)
    clock.advance(9.5)
    assert outcome(call) == "rejected"
    clock.advance(0.5)
    assert outcome(call) == "ok"  # the probe, at exactly t=10
    assert b.state is CircuitState.CLOSED
    assert changes(events) == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "closed", "probes_succeeded"),
    ]
    assert [e.time for e in events.of_type(CircuitStateChanged)] == [0.0, 10.0, 10.0]
    snap = b.snapshot()
    assert snap["transitions"] == 3
    assert (snap["calls_in_window"], snap["failed_calls"]) == (0, 0)  # a fresh window


def test_state_property_reads_half_open_once_the_time_is_up(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10)
    trip(runner(b, clock), 1)
    clock.advance(10)
    assert b.state is CircuitState.HALF_OPEN
    assert b.snapshot()["open_until"] is None


def test_failed_probe_reopens_and_open_duration_grows_to_the_cap(
    clock: FakeClock, events: CapturingListener
) -> None:
    b = breaker(
        clock,
        failure_threshold=1,
        open_duration=10,
        open_duration_multiplier=2,
        max_open_duration=50,
    )
    call = runner(b, clock)
    trip(call, 1)
    seen = []
    for _ in range(5):
        seen.append(b.snapshot()["open_until"])
        clock.advance(seen[-1])
        assert outcome(call, Boom()) == "failed"  # the probe fails
    assert seen == [10.0, 20.0, 40.0, 50.0, 50.0]
    assert [c[2] for c in changes(events)[1:3]] == ["open_duration_elapsed", "probe_failed"]
    clock.advance(50)
    assert outcome(call) == "ok"
    assert b.state is CircuitState.CLOSED
    trip(call, 1)  # closing reset the growth
    assert b.snapshot()["open_until"] == 10.0


def test_half_open_admits_exactly_half_open_probes(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10, half_open_probes=3)
    trip(runner(b, clock), 1)
    clock.advance(10)
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(b)  # three probes in flight
        assert b.snapshot()["half_open_in_flight"] == 3
        with pytest.raises(CircuitOpenError) as info:
            b.__enter__()
        assert info.value.state is CircuitState.HALF_OPEN
        assert info.value.retry_after is None
        assert b.state is CircuitState.HALF_OPEN
    assert b.state is CircuitState.CLOSED  # all three succeeded
    assert b.snapshot()["not_permitted_calls"] == 1


def test_probes_that_succeed_do_not_free_their_slots(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10, half_open_probes=2)
    call = runner(b, clock)
    trip(call, 1)
    clock.advance(10)
    with b:
        pass  # one probe succeeded
    assert b.state is CircuitState.HALF_OPEN
    with b:
        with pytest.raises(CircuitOpenError):
            call()  # the second slot is taken
    assert b.state is CircuitState.CLOSED


def test_one_failing_probe_reopens_even_after_others_succeeded(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10, half_open_probes=2)
    trip(runner(b, clock), 1)
    clock.advance(10)
    with ExitStack() as stack:
        stack.enter_context(b)
        with pytest.raises(Boom), b:
            raise Boom
        assert b.state is CircuitState.OPEN
    # The other probe's success came after the failure: it is ignored.
    assert b.state is CircuitState.OPEN
    assert b.snapshot()["open_until"] == 10.0


def test_a_success_racing_a_failure_resolves_to_the_failure(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10, half_open_probes=2)
    trip(runner(b, clock), 1)
    clock.advance(10)
    m = b._machine
    first, second = m.acquire(clock.now()), m.acquire(clock.now())
    assert isinstance(first, tuple)  # the first carries the open -> half_open transition
    first_permit = first[0]
    assert first_permit is not None
    assert second == first_permit
    assert m.on_success(first_permit, clock.now(), 0.0) is None
    t = m.on_failure(second, Boom(), clock.now(), 0.0)
    assert t is not None
    assert (t.from_state, t.to_state, t.reason) == ("half_open", "open", "probe_failed")
    assert b.state is CircuitState.OPEN


def test_a_hung_probe_cannot_wedge_the_breaker(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(
        clock,
        failure_threshold=1,
        open_duration=10,
        open_duration_multiplier=2,
        max_half_open_wait=30,
    )
    call = runner(b, clock)
    trip(call, 1)
    clock.advance(10)
    with ExitStack() as hung:
        hung.enter_context(b)  # the probe, which will not report back in time
        clock.advance(29)
        assert outcome(call) == "rejected"
        assert b.snapshot()["half_open_in_flight"] == 1
        clock.advance(1)  # max_half_open_wait after the probe started
        with pytest.raises(CircuitOpenError) as info:
            call()
        assert info.value.state is CircuitState.OPEN
        assert info.value.retry_after == 20.0  # re-opened, for a grown open duration
        assert changes(events)[-1] == ("half_open", "open", "probe_timeout")
        transitions = b.snapshot()["transitions"]
    # The stale probe finally succeeds: its report belongs to an old epoch.
    assert b.state is CircuitState.OPEN
    assert b.snapshot()["transitions"] == transitions
    clock.advance(20)
    assert outcome(call) == "ok"
    assert b.state is CircuitState.CLOSED


def test_snapshot_alone_recovers_a_hung_probe(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10, max_half_open_wait=5)
    trip(runner(b, clock), 1)
    clock.advance(10)
    with ExitStack() as hung:
        hung.enter_context(b)
        clock.advance(5)
        snap = b.snapshot()
        assert (snap["state"], snap["half_open_in_flight"], snap["open_until"]) == ("open", 0, 10.0)


def test_calls_admitted_before_a_trip_report_into_nothing(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2, open_duration=10)
    call = runner(b, clock)
    with ExitStack() as slow_call:
        slow_call.enter_context(b)  # admitted while closed
        trip(call, 2)
        assert b.state is CircuitState.OPEN
        clock.advance(10)
        assert b.state is CircuitState.HALF_OPEN
    # Its success is from the closed epoch: it neither closes the breaker nor counts.
    snap = b.snapshot()
    assert (snap["state"], snap["half_open_in_flight"]) == ("half_open", 0)
    assert outcome(call) == "ok"
    assert b.state is CircuitState.CLOSED


# -- sliding windows -------------------------------------------------------------------------


def test_count_window_needs_minimum_calls(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(
        clock, failure_threshold=None, failure_rate_threshold=50, window_size=4, minimum_calls=4
    )
    call = runner(b, clock)
    trip(call, 3)
    assert b.state is CircuitState.CLOSED  # 100 % of 3 calls, under minimum_calls
    snap = b.snapshot()
    assert (snap["calls_in_window"], snap["failed_calls"], snap["failure_rate"]) == (3, 3, 100.0)
    trip(call, 1)
    assert b.state is CircuitState.OPEN
    [changed] = events.of_type(CircuitStateChanged)
    assert (changed.reason, changed.failure_rate, changed.slow_call_rate) == (
        "failure_rate",
        100.0,
        0.0,
    )


def test_count_window_slides(clock: FakeClock) -> None:
    b = breaker(
        clock, failure_threshold=None, failure_rate_threshold=50, window_size=4, minimum_calls=4
    )
    call = runner(b, clock)
    for what in (Boom(), "ok", "ok", "ok", "ok"):
        outcome(call, what)
    snap = b.snapshot()  # exactly four calls later, the failure has left the window
    assert (snap["calls_in_window"], snap["failed_calls"]) == (4, 0)
    for what in (Boom(), "ok"):
        outcome(call, what)
    snap = b.snapshot()
    # The first failure left the window four calls later; the last four are ok ok Boom ok.
    assert (snap["calls_in_window"], snap["failed_calls"], snap["failure_rate"]) == (4, 1, 25.0)
    outcome(call, Boom())  # ok Boom ok Boom: 50 %
    assert b.state is CircuitState.OPEN


def test_rates_trip_on_the_failure_that_reaches_them(clock: FakeClock) -> None:
    # A success never opens the breaker, even when it completes minimum_calls.
    b = breaker(
        clock, failure_threshold=None, failure_rate_threshold=50, window_size=4, minimum_calls=4
    )
    call = runner(b, clock)
    for what in (Boom(), "ok", Boom(), "ok"):
        outcome(call, what)
    assert b.snapshot()["failure_rate"] == 50.0
    assert b.state is CircuitState.CLOSED
    outcome(call, Boom())
    assert b.state is CircuitState.OPEN


def test_time_window_forgets_calls_older_than_window_size(clock: FakeClock) -> None:
    b = breaker(
        clock,
        failure_threshold=None,
        failure_rate_threshold=50,
        window_type="time",
        window_size=10,
        minimum_calls=3,
    )
    call = runner(b, clock)
    clock.advance(0.5)
    trip(call, 2)  # two failures in the bucket [0, 1)
    clock.advance(9.49)  # t = 9.99
    assert b.snapshot()["calls_in_window"] == 2
    clock.advance(0.01)  # t = 10: the bucket [0, 1) leaves the window
    snap = b.snapshot()
    assert (snap["calls_in_window"], snap["failed_calls"]) == (0, 0)
    assert outcome(call, Boom()) == "failed"
    assert b.state is CircuitState.CLOSED  # one call: under minimum_calls
    assert outcome(call) == "ok"
    assert outcome(call, Boom()) == "failed"  # 2 of 3 in the window
    assert b.state is CircuitState.OPEN


def test_time_window_rolls_bucket_by_bucket(clock: FakeClock) -> None:
    b = breaker(
        clock,
        failure_threshold=None,
        failure_rate_threshold=90,
        window_type="time",
        window_size=timedelta(seconds=5),
        minimum_calls=1,
    )
    call = runner(b, clock)
    for second in range(5):  # two calls at t = 0.5, 1.5, 2.5, 3.5 and 4.5
        clock.advance(0.5 if second == 0 else 1)
        outcome(call)
        outcome(call, Boom())
    clock.advance(0.5)
    assert b.snapshot()["calls_in_window"] == 10  # t = 5: the window is (0, 5]
    for left in (8, 6, 4, 2, 0):
        clock.advance(1)
        snap = b.snapshot()
        assert (snap["calls_in_window"], snap["failed_calls"]) == (left, left // 2)
    assert b.state is CircuitState.CLOSED


def test_slow_call_rate_trips(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(
        clock,
        failure_threshold=None,
        failure_rate_threshold=None,
        slow_call_duration=2,
        slow_call_rate_threshold=50,
        window_size=10,
        minimum_calls=2,
    )
    call = runner(b, clock)
    assert outcome(call, "ok", took=1.99) == "ok"
    assert b.snapshot()["slow_calls"] == 0
    assert outcome(call, "ok", took=2.0) == "ok"  # at the threshold: slow
    assert b.state is CircuitState.OPEN
    [changed] = events.of_type(CircuitStateChanged)
    assert (changed.reason, changed.slow_call_rate, changed.failure_rate) == (
        "slow_call_rate",
        50.0,
        0.0,
    )


def test_a_slow_failure_is_both_failed_and_slow(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=5, slow_call_duration=1, window_size=10)
    call = runner(b, clock)
    outcome(call, Boom(), took=3)
    snap = b.snapshot()
    assert (snap["failed_calls"], snap["slow_calls"], snap["slow_call_rate"]) == (1, 1, 100.0)


def test_a_slow_probe_reopens(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(clock, failure_threshold=1, slow_call_duration=5, open_duration=10)
    call = runner(b, clock)
    trip(call, 1)
    clock.advance(10)
    assert outcome(call, "ok", took=6) == "ok"
    assert b.state is CircuitState.OPEN
    assert changes(events)[-1] == ("half_open", "open", "probe_slow")


def test_known_failures_and_ignored_types_count_as_nothing(clock: FakeClock) -> None:
    b = breaker(
        clock, failure_threshold=1, ignore=KeyError, classifier=Classifier(known=(BadInput,))
    )
    call = runner(b, clock)
    for error in (BadInput(), KeyError("k")):
        with pytest.raises((BadInput, KeyError)):
            call(error)
    snap = b.snapshot()
    assert (snap["state"], snap["calls_in_window"], snap["consecutive_failures"]) == (
        "closed",
        0,
        0,
    )


def test_known_failure_of_a_probe_gives_the_slot_back(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10, ignore=KeyError)
    call = runner(b, clock)
    trip(call, 1)
    clock.advance(10)
    with pytest.raises(KeyError):
        call(KeyError("k"))
    snap = b.snapshot()
    assert (snap["state"], snap["half_open_in_flight"]) == ("half_open", 0)
    assert outcome(call) == "ok"  # the next caller probes at once
    assert b.state is CircuitState.CLOSED


def test_result_classifier(clock: FakeClock) -> None:
    def status(result: int) -> Outcome:
        if result >= 500:
            return Outcome.UNKNOWN_FAILURE
        return Outcome.KNOWN_FAILURE if result >= 400 else Outcome.SUCCESS

    b = breaker(clock, failure_threshold=2, classifier=Classifier(result=status))
    call = runner(b, clock)
    assert call(404) == 404
    assert b.snapshot()["calls_in_window"] == 0
    assert call(503) == 503
    assert call(200) == 200
    assert b.snapshot()["consecutive_failures"] == 0
    call(500)
    call(502)
    assert b.state is CircuitState.OPEN


def test_base_exceptions_are_never_failures_and_release_the_probe(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10)
    call = runner(b, clock)
    assert outcome(call, Stop()) == "stopped"
    assert b.snapshot()["calls_in_window"] == 0
    trip(call, 1)
    clock.advance(10)
    assert outcome(call, Stop()) == "stopped"  # the probe was interrupted
    snap = b.snapshot()
    assert (snap["state"], snap["half_open_in_flight"]) == ("half_open", 0)
    assert outcome(call) == "ok"
    assert b.state is CircuitState.CLOSED


# -- manual control --------------------------------------------------------------------------


def test_open_then_probe(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(clock, open_duration=10)
    call = runner(b, clock)
    b.open()
    b.open()  # already open: nothing happens
    assert changes(events) == [("closed", "open", "manual")]
    assert b.snapshot()["open_until"] == 10.0
    assert outcome(call) == "rejected"
    clock.advance(10)
    assert outcome(call) == "ok"
    assert b.state is CircuitState.CLOSED


def test_isolate_holds_open_until_closed(clock: FakeClock) -> None:
    b = breaker(clock, open_duration=1)
    call = runner(b, clock)
    b.isolate()
    clock.advance(1000)
    with pytest.raises(CircuitOpenError) as info:
        call()
    assert (info.value.state, info.value.retry_after) == (CircuitState.FORCED_OPEN, None)
    assert str(info.value) == "circuit breaker 'svc' is forced_open"
    snap = b.snapshot()
    assert (snap["state"], snap["open_until"], snap["not_permitted_calls"]) == (
        "forced_open",
        None,
        1,
    )
    b.close()
    assert outcome(call) == "ok"


def test_disable_records_nothing(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1)
    call = runner(b, clock)
    b.disable()
    trip(call, 5)
    snap = b.snapshot()
    assert (snap["state"], snap["calls_in_window"], snap["consecutive_failures"]) == (
        "disabled",
        0,
        0,
    )


def test_metrics_only_records_but_never_trips(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, window_size=10, minimum_calls=1)
    call = runner(b, clock)
    b.metrics_only()
    trip(call, 3)
    outcome(call)
    snap = b.snapshot()
    assert (snap["state"], snap["calls_in_window"], snap["failed_calls"]) == (
        "metrics_only",
        4,
        3,
    )
    assert snap["failure_rate"] == 75.0
    b.close()  # closing starts a fresh window
    assert b.snapshot()["calls_in_window"] == 0


def test_reset_is_a_new_breaker(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=10)
    call = runner(b, clock)
    trip(call, 1)
    outcome(call)
    b.reset()
    assert changes(events)[-1] == ("open", "closed", "manual")
    snap = b.snapshot()
    assert {k: snap[k] for k in ("state", "not_permitted_calls", "transitions")} == {
        "state": "closed",
        "not_permitted_calls": 0,
        "transitions": 0,
    }
    assert snap["last_transition_age"] is None
    events.clear()
    b.reset()  # already closed: no event
    assert changes(events) == []


def test_reset_forgets_calls_in_flight(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1)
    call = runner(b, clock)
    with pytest.raises(Boom), b:
        b.reset()
        raise Boom
    assert b.state is CircuitState.CLOSED
    assert outcome(call) == "ok"


# -- forms -----------------------------------------------------------------------------------


async def test_async_function(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2, open_duration=5)

    @b
    async def fetch(fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise Boom
        return "data"

    assert await fetch(False) == "data"
    for _ in range(2):
        with pytest.raises(Boom):
            await fetch(True)
    with pytest.raises(CircuitOpenError) as info:
        await fetch(False)
    assert info.value.retry_after == 5.0
    clock.advance(5)
    assert await fetch(False) == "data"
    assert b.state is CircuitState.CLOSED


async def test_cancelled_async_probe_gives_its_slot_back(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=5)
    started = asyncio.Event()

    @b
    async def fetch(hang: bool) -> str:
        if hang:
            started.set()
            await asyncio.Event().wait()
        return "data"

    b.open()
    clock.advance(5)
    probe = asyncio.create_task(fetch(True))
    await started.wait()
    assert b.snapshot()["half_open_in_flight"] == 1
    with pytest.raises(CircuitOpenError):
        await fetch(False)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    snap = b.snapshot()
    assert (snap["state"], snap["half_open_in_flight"], snap["calls_in_window"]) == (
        "half_open",
        0,
        0,
    )
    assert await fetch(False) == "data"
    assert b.state is CircuitState.CLOSED


async def test_async_with_block(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=5)
    async with b:
        pass
    with pytest.raises(Boom):
        async with b:
            raise Boom
    with pytest.raises(CircuitOpenError):
        async with b:
            raise AssertionError("not run")
    clock.advance(5)

    async def probe() -> None:
        async with b:
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    assert b.snapshot()["half_open_in_flight"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.snapshot()["half_open_in_flight"] == 0


def test_methods_share_one_circuit(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2)

    class Client:
        def __init__(self, up: bool) -> None:
            self.up = up

        @b
        def get(self, key: str) -> str:
            """Fetch a key."""
            if not self.up:
                raise Boom
            return key

    assert Client.get.__doc__ == "Fetch a key."
    assert Client.get.__name__ == "get"
    down, up = Client(False), Client(True)
    for _ in range(2):
        with pytest.raises(Boom):
            down.get("k")
    with pytest.raises(CircuitOpenError) as info:
        up.get("k")
    assert info.value.policy == "svc"


def test_policy_defaults_to_the_function_name(clock: FakeClock, events: CapturingListener) -> None:
    b = CircuitBreaker(failure_threshold=1, clock=clock)

    @b
    def lookup() -> None:
        raise Boom

    with pytest.raises(Boom):
        lookup()
    [changed] = events.of_type(CircuitStateChanged)
    assert (
        changed.source
        == "test_policy_defaults_to_the_function_name.<locals>.lookup/circuit_breaker"
    )
    b.close()  # a manual change is told in the scope the breaker was first used in
    assert events.of_type(CircuitStateChanged)[-1].policy == changed.policy


@pytest.mark.parametrize("is_async", [False, True])
def test_a_member_of_a_pipeline_tells_every_transition_under_the_pipelines_name(
    clock: FakeClock, events: CapturingListener, is_async: bool
) -> None:
    b = CircuitBreaker(failure_threshold=1, open_duration=5.0, clock=clock)
    policy = Pipeline(Retry(on=KeyError, attempts=1), b, name="orders")

    def lookup() -> None:
        raise Boom

    async def alookup() -> None:
        raise Boom

    if is_async:
        with pytest.raises(Boom):
            asyncio.run(policy(alookup)())
    else:
        with pytest.raises(Boom):
            policy(lookup)()
    clock.advance(5.0)
    assert b.state is CircuitState.HALF_OPEN  # found on a read, not by a call
    b.isolate()  # a manual change
    assert [(e.policy, e.to_state) for e in events.of_type(CircuitStateChanged)] == [
        ("orders", "open"),
        ("orders", "half_open"),
        ("orders", "forced_open"),
    ]


def test_with_block_and_call(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1)
    with b as entered:
        assert entered is b
    assert b.call(lambda x: x + 1, 1) == 2
    with pytest.raises(Boom), b:
        raise Boom
    with pytest.raises(CircuitOpenError):
        b.call(lambda: 1)


def test_with_blocks_must_exit_in_order(clock: FakeClock) -> None:
    a, b = breaker(clock), breaker(clock)
    a.__enter__()
    b.__enter__()
    with pytest.raises(RuntimeError, match="exited in the order they were entered"):
        a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    a.__exit__(None, None, None)


def test_retry_waits_exactly_until_the_probe(clock: FakeClock, events: CapturingListener) -> None:
    b = CircuitBreaker(failure_threshold=1, open_duration=10, clock=clock)
    retry = Retry(on=CircuitOpenError, attempts=2, clock=clock)
    attempts = []

    @Pipeline(retry, b, name="payments")
    def pay() -> str:
        attempts.append(clock.now())
        return "paid"

    b.open()
    clock.advance(3)
    assert pay() == "paid"
    assert clock.sleeps == [7.0]
    assert attempts == [10.0]
    [rejected] = events.of_type(CircuitRejected)
    assert rejected.source == "payments/circuit_breaker"


def test_in_a_pipeline_events_name_the_pipeline(
    clock: FakeClock, events: CapturingListener
) -> None:
    b = CircuitBreaker(failure_threshold=1, clock=clock, name="db")

    @Pipeline(b, name="orders")
    def load() -> None:
        raise Boom

    with pytest.raises(Boom):
        load()
    assert events.of_type(CircuitStateChanged)[0].source == "orders/db"


# -- events and snapshot ---------------------------------------------------------------------


def test_event_types() -> None:
    assert issubclass(CircuitStateChanged, StateChanged)
    assert issubclass(CircuitRejected, CallRejected)
    e = CircuitRejected(
        policy="p", strategy="s", time=0.0, reason="circuit_open", retry_after=None, state="open"
    )
    with pytest.raises(AttributeError):
        e.state = "closed"  # type: ignore[misc]
    assert not hasattr(e, "__dict__")
    with pytest.raises(TypeError):
        CircuitRejected("p", "s", 0.0, "circuit_open", None, "open")  # type: ignore[call-arg]


def test_every_transition_is_one_event(clock: FakeClock, events: CapturingListener) -> None:
    b = breaker(clock, failure_threshold=1, open_duration=1)
    call = runner(b, clock)
    trip(call, 1)
    clock.advance(1)
    outcome(call, Boom())
    b.isolate()
    b.disable()
    b.metrics_only()
    b.close()
    assert changes(events) == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_duration_elapsed"),
        ("half_open", "open", "probe_failed"),
        ("open", "forced_open", "manual"),
        ("forced_open", "disabled", "manual"),
        ("disabled", "metrics_only", "manual"),
        ("metrics_only", "closed", "manual"),
    ]
    assert b.snapshot()["transitions"] == 7


def test_no_listener_builds_no_event(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []

    def spy(cls: type) -> Any:
        def make(**kwargs: Any) -> Any:
            built.append(cls)
            return cls(**kwargs)

        return make

    monkeypatch.setattr(cb_module, "CircuitRejected", spy(CircuitRejected))
    monkeypatch.setattr(cb_module, "CircuitStateChanged", spy(CircuitStateChanged))
    b = breaker(clock, failure_threshold=1)
    call = runner(b, clock)
    assert not EVENTS.wants("svc")
    trip(call, 1)
    assert outcome(call) == "rejected"
    assert built == []
    listener = CapturingListener()
    with EVENTS.subscribed(listener, policy="svc"):
        assert outcome(call) == "rejected"
    assert built == [CircuitRejected]


def test_listener_errors_never_break_the_breaker(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    b = breaker(clock, failure_threshold=1, open_duration=1)
    call = runner(b, clock)
    with caplog.at_level(logging.ERROR, logger="resilience"), EVENTS.subscribed(broken):
        trip(call, 1)
        assert outcome(call) == "rejected"
        clock.advance(1)
        assert outcome(call) == "ok"
        b.open()
    assert b.snapshot()["transitions"] == 4
    assert len([r for r in caplog.records if "listener" in r.getMessage()]) == 1


def test_snapshot_keys_and_json(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=3, slow_call_duration=1, window_size=10, minimum_calls=5)
    call = runner(b, clock)
    snap = b.snapshot()
    assert snap == {
        "kind": "circuit_breaker",
        "name": "svc",
        "state": "closed",
        "failure_rate": 0.0,
        "slow_call_rate": 0.0,
        "calls_in_window": 0,
        "failed_calls": 0,
        "slow_calls": 0,
        "consecutive_failures": 0,
        "not_permitted_calls": 0,
        "open_until": None,
        "half_open_in_flight": 0,
        "transitions": 0,
        "last_transition_age": None,
    }
    outcome(call, "ok", took=2)
    outcome(call, Boom())
    outcome(call)
    outcome(call)
    snap = b.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert (snap["failure_rate"], snap["slow_call_rate"], snap["calls_in_window"]) == (
        25.0,
        25.0,
        4,
    )


def test_a_rejection_makes_no_reference_cycle(clock: FakeClock) -> None:
    # An error kept in a local of a frame it passes through would be kept alive by its
    # own traceback: garbage for the cycle collector on every rejected call.
    b = breaker(clock)
    call = runner(b, clock)
    b.open()
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            assert outcome(call) == "rejected"
            with pytest.raises(CircuitOpenError), b:
                pass
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_repr(clock: FakeClock) -> None:
    b = breaker(clock)
    assert repr(b) == "CircuitBreaker(state='closed', name='svc')"
    b.isolate()
    assert re.search("forced_open", repr(b))


def test_error_built_by_hand() -> None:
    err = CircuitOpenError("custom", policy="p", state=CircuitState.HALF_OPEN)
    assert (str(err), err.policy, err.state, err.retry_after) == (
        "custom",
        "p",
        CircuitState.HALF_OPEN,
        None,
    )
    assert str(CircuitOpenError(policy="p", retry_after=1.5)) == (
        "circuit breaker 'p' is open; next probe in 1.5 s"
    )


# -- the breaker against a model -------------------------------------------------------------

MODEL = {
    "failure_threshold": 3,
    "failure_rate_threshold": 50.0,
    "window_size": 5,
    "minimum_calls": 3,
    "slow_call_duration": 2.0,
    "slow_call_rate_threshold": 60.0,
    "open_duration": 10.0,
    "open_duration_multiplier": 2.0,
    "max_open_duration": 35.0,
    "half_open_probes": 2,
    "max_half_open_wait": 15.0,
}


class Model:
    """The breaker's rules written the plain way: a list for the window, no epochs
    parity, no lock-free paths."""

    def __init__(self) -> None:
        self.state = "closed"
        self.epoch = 0
        self.window: list[tuple[bool, bool]] = []
        self.consecutive = 0
        self.open_until = 0.0
        self.level = 0
        self.in_flight = 0
        self.succeeded = 0
        self.deadline = 0.0
        self.not_permitted = 0
        self.transitions = 0

    def open_for(self) -> float:
        grown = MODEL["open_duration"] * MODEL["open_duration_multiplier"] ** self.level
        return min(grown, MODEL["max_open_duration"])

    def to(self, new: str, now: float) -> None:
        if new == "open":
            self.open_until = now + self.open_for()
        elif new == "closed":
            self.window = []
            self.consecutive = 0
            self.level = 0
        self.in_flight = self.succeeded = 0
        self.state = new
        self.epoch += 1
        self.transitions += 1

    def reopen(self, now: float) -> None:
        if self.open_for() < MODEL["max_open_duration"]:
            self.level += 1
        self.to("open", now)

    def poll(self, now: float) -> None:
        if self.state == "open" and now >= self.open_until:
            self.to("half_open", now)
        elif self.state == "half_open" and self.in_flight and now >= self.deadline:
            self.reopen(now)

    def acquire(self, now: float) -> tuple[int | None, str, float | None]:
        if self.state == "open" and now < self.open_until:
            self.not_permitted += 1
            return None, "open", self.open_until - now
        if self.state in ("closed", "metrics_only", "disabled"):
            return self.epoch, self.state, None
        self.poll(now)
        if self.state == "half_open" and self.in_flight + self.succeeded < 2:
            self.in_flight += 1
            self.deadline = now + MODEL["max_half_open_wait"]
            return self.epoch, self.state, None
        self.not_permitted += 1
        return None, self.state, (self.open_until - now if self.state == "open" else None)

    def record(self, failed: bool, slow: bool, now: float) -> None:
        self.window = [*self.window, (failed, slow)][-5:]
        if failed:
            self.consecutive += 1
        if self.state == "metrics_only":
            return
        calls = len(self.window)
        failures = sum(f for f, _ in self.window)
        slows = sum(s for _, s in self.window)
        trips = (
            (failed and self.consecutive >= 3)
            or (failed and calls >= 3 and failures * 100 >= 50 * calls)
            or (slow and calls >= 3 and slows * 100 >= 60 * calls)
        )
        if trips:
            self.to("open", now)

    def success(self, epoch: int, now: float, took: float) -> None:
        if epoch != self.epoch:
            return
        if self.state in ("closed", "metrics_only"):
            self.consecutive = 0
            if took < 2.0:
                self.window = [*self.window, (False, False)][-5:]
            else:
                self.record(False, True, now)
        elif self.state == "half_open":
            self.in_flight -= 1
            if took >= 2.0:
                self.reopen(now)
            else:
                self.succeeded += 1
                if self.succeeded >= 2:
                    self.to("closed", now)

    def failure(self, epoch: int, now: float, took: float) -> None:
        if epoch != self.epoch:
            return
        if self.state in ("closed", "metrics_only"):
            self.record(True, took >= 2.0, now)
        elif self.state == "half_open":
            self.in_flight -= 1
            self.reopen(now)

    def release(self, epoch: int) -> None:
        if epoch == self.epoch and self.state == "half_open":
            self.in_flight -= 1

    def force(self, new: str, now: float) -> None:
        if self.state != new:
            if new == "open":
                self.level = 0
            self.to(new, now)

    def reset(self, now: float) -> None:
        self.to("closed", now)
        self.not_permitted = 0
        self.transitions = 0


# Mostly fast successes, so that windows fill and slide between the trips.
HOW = st.sampled_from(["success"] * 5 + ["failure", "failure", "ignored", "release"])
TOOK = st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 3.0])


class BreakerAgainstModel(RuleBasedStateMachine):
    """Drive the decision protocol and the manual controls; the breaker and the model
    must agree on every decision and on the snapshot after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(name="model", clock=self.clock, ignore=KeyError, **MODEL)
        self.machine = self.breaker._machine
        self.model = Model()
        self.held: list[tuple[int, int]] = []  # (the breaker's permit, the model's epoch)

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 5.0, 10.0, 20.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(how=HOW, took=TOOK)
    def call(self, how: str, took: float) -> None:
        """A whole call: acquire, and report at once if admitted."""
        held = len(self.held)
        self.acquire()
        if len(self.held) > held:
            self.report(len(self.held) - 1, how, took)

    @rule()
    def acquire(self) -> None:
        now = self.clock.now()
        decision = self.machine.acquire(now)
        expected, state, retry_after = self.model.acquire(now)
        if isinstance(decision, int):
            permit: int | None = decision
        else:
            permit, got_state, got_retry_after, _ = decision
            if permit is None:
                assert got_state.value == state
                assert got_retry_after == pytest.approx(retry_after)
        assert (permit is None) == (expected is None)
        if permit is not None and expected is not None:
            self.held.append((permit, expected))

    @precondition(lambda self: self.held)
    @rule(pick=st.integers(min_value=0), how=HOW, took=TOOK)
    def report(self, pick: int, how: str, took: float) -> None:
        permit, epoch = self.held.pop(pick % len(self.held))
        now = self.clock.now()
        if how == "success":
            self.machine.on_success(permit, now, took)
            self.model.success(epoch, now, took)
        elif how == "failure":
            self.machine.on_failure(permit, Boom(), now, took)
            self.model.failure(epoch, now, took)
        elif how == "ignored":
            self.machine.on_failure(permit, KeyError("k"), now, took)
            self.model.release(epoch)
        else:
            self.machine.release(permit)
            self.model.release(epoch)

    @rule(action=st.sampled_from(["open", "close", "isolate", "disable", "metrics_only", "reset"]))
    def manual(self, action: str) -> None:
        getattr(self.breaker, action)()
        now = self.clock.now()
        if action == "reset":
            self.model.reset(now)
        else:
            target = {"close": "closed", "isolate": "forced_open", "disable": "disabled"}.get(
                action, action
            )
            self.model.force(target, now)

    @invariant()
    def agree(self) -> None:
        now = self.clock.now()
        self.model.poll(now)
        snap = self.breaker.snapshot()
        m = self.model
        calls = len(m.window)
        assert snap["state"] == m.state
        assert snap["calls_in_window"] == calls
        assert snap["failed_calls"] == sum(f for f, _ in m.window)
        assert snap["slow_calls"] == sum(s for _, s in m.window)
        assert snap["consecutive_failures"] == m.consecutive
        assert snap["not_permitted_calls"] == m.not_permitted
        assert snap["half_open_in_flight"] == m.in_flight
        assert snap["transitions"] == m.transitions
        expected_open = max(0.0, m.open_until - now) if m.state == "open" else None
        assert snap["open_until"] == pytest.approx(expected_open)
        assert 0 <= m.in_flight <= 2


BreakerAgainstModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
test_breaker_against_model = BreakerAgainstModel.TestCase
