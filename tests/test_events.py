"""The event stream: exact events, subscription per policy and global, failing listeners."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

import resilience
import resilience.fallback
import resilience.retry
import resilience.timeout
from resilience import (
    Backoff,
    CallRejected,
    Event,
    EventBus,
    Fallback,
    FallbackUsed,
    GiveUpReason,
    Retry,
    RetryGaveUp,
    RetryScheduled,
    Severity,
    StateChanged,
    TimedOut,
    Timeout,
    TimeoutExceededError,
)
from resilience._core.events import EVENTS
from resilience.testing import CapturingListener, FakeClock, capture_events


class Failing:
    def __init__(self, failures: int, result: Any = "ok") -> None:
        self.failures = failures
        self.raised: list[BaseException] = []
        self.result = result

    def __call__(self) -> Any:
        if len(self.raised) < self.failures:
            self.raised.append(ConnectionError(len(self.raised) + 1))
            raise self.raised[-1]
        return self.result


# -- exact events ---------------------------------------------------------------------------------


def test_retry_scheduled_fields(clock: FakeClock, events: CapturingListener) -> None:
    work = Failing(2)
    retry = Retry(on=ConnectionError, backoff=Backoff.constant(0.5), clock=clock, name="db")
    assert retry(work)() == "ok"
    assert events.events == [
        RetryScheduled(
            policy="db",
            strategy="retry",
            time=0.0,
            attempt=1,
            delay=0.5,
            error=work.raised[0],
            hinted=False,
        ),
        RetryScheduled(
            policy="db",
            strategy="retry",
            time=0.5,
            attempt=2,
            delay=0.5,
            error=work.raised[1],
            hinted=False,
        ),
    ]
    assert events.events[0].error is work.raised[0]


def test_retry_gave_up_fields(clock: FakeClock, events: CapturingListener) -> None:
    work = Failing(5)
    retry = Retry(
        on=ConnectionError, attempts=2, backoff=Backoff.constant(1), clock=clock, name="db"
    )
    with pytest.raises(ConnectionError):
        retry(work)()
    gave_up = events.of_type(RetryGaveUp)
    assert gave_up == [
        RetryGaveUp(
            policy="db",
            strategy="retry",
            time=1.0,
            attempts=2,
            reason=GiveUpReason.ATTEMPTS,
            error=work.raised[1],
        )
    ]
    assert gave_up[0].severity is Severity.WARNING


def test_timed_out_fields_sync(clock: FakeClock, events: CapturingListener) -> None:
    @Timeout(2, clock=clock, name="report")
    def slow() -> None:
        clock.advance(3)

    with pytest.raises(TimeoutExceededError):
        slow()
    assert events.events == [
        TimedOut(policy="report", strategy="timeout", time=3.0, timeout=2.0, elapsed=3.0)
    ]


def test_fallback_used_fields(clock: FakeClock, events: CapturingListener) -> None:
    err = KeyError("k")

    @Fallback("v", on=KeyError, clock=clock, name="cache")
    def fails() -> str:
        clock.advance(1)
        raise err

    @Fallback("v", on=(), on_result=lambda r: r is None, clock=clock, name="cache")
    def empty() -> None:
        return None

    assert fails() == "v"
    assert empty() == "v"
    assert events.events == [
        FallbackUsed(policy="cache", strategy="fallback", time=1.0, error=err, result=None),
        FallbackUsed(policy="cache", strategy="fallback", time=1.0, error=None, result=None),
    ]


def test_events_are_frozen_and_name_their_source() -> None:
    e = RetryScheduled(
        policy="p", strategy="s", time=1.0, attempt=1, delay=0.1, error=None, hinted=False
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.attempt = 2  # type: ignore[misc]
    assert e.source == "p/s"
    assert isinstance(e, Event)
    assert e.severity is Severity.INFO
    assert TimedOut.severity is Severity.WARNING
    assert FallbackUsed.severity is Severity.INFO
    assert CallRejected.severity is StateChanged.severity is Severity.WARNING
    assert int(Severity.ERROR) == logging.ERROR


# -- subscription ---------------------------------------------------------------------------------


def event(policy: str) -> Event:
    return StateChanged(policy=policy, strategy="s", time=0.0, from_state="a", to_state="b")


def test_global_and_per_policy_listeners() -> None:
    bus = EventBus()
    everything, only_a = CapturingListener(), CapturingListener()
    bus.subscribe(everything)
    bus.subscribe(only_a, policy="a")
    ea, eb = event("a"), event("b")
    bus.publish(ea)
    bus.publish(eb)
    assert everything.events == [ea, eb]
    assert only_a.events == [ea]
    assert bus.wants("a")
    assert bus.wants("zzz")  # a global listener wants everything


def test_wants_is_false_with_nobody_listening() -> None:
    bus = EventBus()
    assert not bus.wants("a")
    listener = CapturingListener()
    bus.subscribe(listener, policy="a")
    assert bus.wants("a")
    assert not bus.wants("b")
    bus.unsubscribe(listener, policy="a")
    assert not bus.wants("a")


def test_unsubscribe_stops_delivery_and_ignores_unknown_listeners() -> None:
    bus = EventBus()
    first, second = CapturingListener(), CapturingListener()
    bus.subscribe(first)
    bus.subscribe(second)
    bus.subscribe(first, policy="a")
    bus.unsubscribe(first)
    bus.publish(event("a"))
    assert len(first.events) == 1  # still subscribed to "a"
    assert len(second.events) == 1
    bus.unsubscribe(first, policy="a")
    bus.unsubscribe(CapturingListener())
    bus.unsubscribe(CapturingListener(), policy="nope")
    bus.publish(event("a"))
    assert len(first.events) == 1
    assert len(second.events) == 2


def test_a_bound_method_can_be_unsubscribed() -> None:
    # Every `obj.method` is a new object: unsubscribing must match it by equality.
    class Sink:
        def __init__(self) -> None:
            self.events: list[Event] = []

        def on_event(self, e: Event) -> None:
            self.events.append(e)

    bus = EventBus()
    sink = Sink()
    bus.subscribe(sink.on_event)
    bus.subscribe(sink.on_event, policy="a")
    bus.publish(event("a"))
    bus.unsubscribe(sink.on_event)
    bus.unsubscribe(sink.on_event, policy="a")
    bus.publish(event("a"))
    assert len(sink.events) == 2
    assert not bus.wants("a")


def test_subscribed_context_manager() -> None:
    bus = EventBus()
    listener = CapturingListener()
    with bus.subscribed(listener, policy="x"):
        bus.publish(event("x"))
    bus.publish(event("x"))
    assert len(listener.events) == 1


def test_subscribe_refuses_non_callables() -> None:
    with pytest.raises(TypeError, match="listener must be callable"):
        EventBus().subscribe("print")  # type: ignore[arg-type]


def test_module_level_subscribe_per_policy(clock: FakeClock) -> None:
    mine, global_ = CapturingListener(), CapturingListener()
    resilience.subscribe(mine, policy="mine")
    resilience.subscribe(global_)
    try:
        Retry(on=ConnectionError, clock=clock, name="mine")(Failing(1))()
        Retry(on=ConnectionError, clock=clock, name="other")(Failing(1))()
    finally:
        resilience.unsubscribe(mine, policy="mine")
        resilience.unsubscribe(global_)
    assert [e.policy for e in mine.events] == ["mine"]
    assert [e.policy for e in global_.events] == ["mine", "other"]
    Retry(on=ConnectionError, clock=clock, name="mine")(Failing(1))()
    assert len(mine.events) == 1


def test_capture_events_for_one_policy(clock: FakeClock) -> None:
    with capture_events(policy="a") as captured:
        Retry(on=ConnectionError, clock=clock, name="a")(Failing(1))()
        Retry(on=ConnectionError, clock=clock, name="b")(Failing(1))()
    assert [e.policy for e in captured.events] == ["a"]
    assert not EVENTS.wants("a")


# -- failing listeners ----------------------------------------------------------------------------


def test_a_failing_listener_never_breaks_the_call_and_is_logged_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken(event: Event) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("listener bug")

    after = CapturingListener()
    resilience.subscribe(broken)
    resilience.subscribe(after)
    try:
        with caplog.at_level(logging.ERROR, logger="resilience"):
            retry = Retry(on=ConnectionError, attempts=4, clock=clock, name="x")
            assert retry(Failing(3))() == "ok"
    finally:
        resilience.unsubscribe(broken)
        resilience.unsubscribe(after)
    assert calls == 3  # it was given every event
    assert len(after.events) == 3  # and the listeners after it were too
    records = [r for r in caplog.records if r.name == "resilience"]
    assert len(records) == 1
    assert "listener" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


def test_each_failing_listener_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()

    def one(event: Event) -> None:
        raise ValueError

    def two(event: Event) -> None:
        raise KeyError

    bus.subscribe(one)
    bus.subscribe(two, policy="p")
    with caplog.at_level(logging.ERROR, logger="resilience"):
        for _ in range(3):
            bus.publish(event("p"))
    assert len(caplog.records) == 2


def test_no_event_is_built_without_a_listener(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_be_built(**kwargs: Any) -> None:
        raise AssertionError("an event was built with nobody listening")

    monkeypatch.setattr(resilience.retry, "RetryScheduled", must_not_be_built)
    monkeypatch.setattr(resilience.retry, "RetryGaveUp", must_not_be_built)
    monkeypatch.setattr(resilience.timeout, "TimedOut", must_not_be_built)
    monkeypatch.setattr(resilience.fallback, "FallbackUsed", must_not_be_built)
    assert not EVENTS.wants("quiet")
    calls = 0

    @Fallback("fb", on=TimeoutExceededError, name="quiet", clock=clock)
    @Timeout(1, clock=clock, name="quiet")
    @Retry(on=ConnectionError, attempts=2, clock=clock, name="quiet")
    def work() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError  # retried: RetryScheduled
        clock.advance(5)
        return "late"  # too late: TimedOut, then FallbackUsed

    assert work() == "fb"
    assert calls == 2

    @Retry(on=ConnectionError, attempts=1, clock=clock, name="quiet")
    def gives_up() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        gives_up()
