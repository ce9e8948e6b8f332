"""The logging listener: a line per state change, give-up, budget exhaustion, rejection burst."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import resilience.log
from resilience import Retry, RetryBudget
from resilience._core.clock import TimerHandle
from resilience.log import LogListener
from resilience.testing import FakeClock
from telemetry_standins import Breaker, Limiter, StandInRejected, unique


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


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a line, without their ``resilience_`` prefix."""
    prefix = "resilience_"
    return {k[len(prefix) :]: v for k, v in vars(record).items() if k.startswith(prefix)}


def rejection(
    policy: str, reason: str = "rate_limited", strategy: str = "rate_limiter"
) -> StandInRejected:
    return StandInRejected(
        policy=policy, strategy=strategy, time=0.0, reason=reason, retry_after=1.5
    )


def reject(
    caplog: pytest.LogCaptureFixture,
    listener: LogListener,
    policy: str,
    times: int,
    **kwargs: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="resilience")
    for _ in range(times):
        listener(rejection(policy, **kwargs))


def counts(caplog: pytest.LogCaptureFixture, policy: str) -> list[tuple[str, int]]:
    """Each rejection line of ``policy``: the first of a burst, or a tail; and its count."""
    return [
        (
            "first" if "further rejections" in r.getMessage() else "tail",
            r.resilience_count,  # type: ignore[attr-defined]
        )
        for r in records(caplog, policy)
    ]


def total(caplog: pytest.LogCaptureFixture, policy: str) -> int:
    """The rejections the lines of ``policy`` account for."""
    return sum(count for _, count in counts(caplog, policy))


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` in real time (for timers on threads); whether it came true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


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


def test_a_burst_then_quiet_reports_its_tail_once(logged: pytest.LogCaptureFixture) -> None:
    name = unique("limited")
    clock = FakeClock()
    resilience.log.enable(rejection_interval=10.0, clock=clock)
    limiter = Limiter(name=name, clock=clock)
    limiter.rejecting = True

    @limiter
    def call() -> int:
        return 1

    for _ in range(40):
        with pytest.raises(Exception, match="rate_limited"):
            call()
    assert [r.getMessage() for r in records(logged, name)] == [
        f"{name}/rate_limiter: call rejected (rate_limited); "
        "further rejections are summarised every 10 s",
    ]
    clock.advance(9.999)
    assert len(records(logged, name)) == 1  # the interval is not over
    clock.advance(0.001)  # it is, and no rejection came: the tail is written anyway
    clock.advance(60.0)
    first, tail = records(logged, name)
    assert tail.getMessage() == (
        f"{name}/rate_limiter: 39 more call(s) rejected (rate_limited) since the last "
        "such line; summarised every 10 s"
    )
    assert fields(first) == {
        "event": "StandInRejected",
        "policy": name,
        "strategy": "rate_limiter",
        "reason": "rate_limited",
        "retry_after": 1.5,
        "count": 1,
        "interval": 10.0,
    }
    assert fields(tail) == {**fields(first), "count": 39}
    assert tail.levelno == logging.WARNING
    assert clock.pending_timers == 0


def test_a_burst_spanning_several_intervals_gets_a_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    listener = LogListener(rejection_interval=10.0, clock=clock)
    name = unique("long_burst")
    reject(caplog, listener, name, 5)  # t=0: the first line, 4 counted
    clock.advance(10.0)  # t=10: their line; the next interval starts
    reject(caplog, listener, name, 3)  # counted, not logged at once
    clock.advance(9.0)
    reject(caplog, listener, name, 2)  # t=19
    clock.advance(1.0)  # t=20: 5 more
    clock.advance(10.0)  # t=30: a quiet interval, no line
    clock.advance(5.0)
    reject(caplog, listener, name, 1)  # t=35: a new burst, logged at once
    clock.advance(10.0)  # t=45: nothing counted, no line
    assert counts(caplog, name) == [("first", 1), ("tail", 4), ("tail", 5), ("first", 1)]


def test_bursts_of_two_policies_interleaved_stay_apart(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    listener = LogListener(rejection_interval=10.0, clock=clock)
    a, b = unique("policy_a"), unique("policy_b")
    reject(caplog, listener, a, 2)  # t=0
    clock.advance(4.0)
    for _ in range(3):
        reject(caplog, listener, b, 1)  # t=4: b's burst starts on its own
        reject(caplog, listener, a, 1)
    clock.advance(6.0)  # t=10: a's interval ends, b's goes on
    assert counts(caplog, a) == [("first", 1), ("tail", 4)]
    assert counts(caplog, b) == [("first", 1)]
    clock.advance(4.0)  # t=14
    assert counts(caplog, b) == [("first", 1), ("tail", 2)]
    assert counts(caplog, a) == [("first", 1), ("tail", 4)]
    assert clock.pending_timers == 0


def test_each_reason_of_a_policy_has_its_own_burst(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    listener = LogListener(rejection_interval=10.0, clock=clock)
    name = unique("two_reasons")
    reject(caplog, listener, name, 3)
    reject(caplog, listener, name, 2, reason="bulkhead_full", strategy="bulkhead")
    clock.advance(10.0)
    lines = [
        (r.resilience_strategy, r.resilience_reason, r.resilience_count)  # type: ignore[attr-defined]
        for r in records(caplog, name)
    ]
    assert lines == [
        ("rate_limiter", "rate_limited", 1),
        ("bulkhead", "bulkhead_full", 1),
        ("rate_limiter", "rate_limited", 2),
        ("bulkhead", "bulkhead_full", 1),
    ]


def test_close_writes_the_pending_tail_and_then_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    listener = LogListener(rejection_interval=10.0, clock=clock)
    name = unique("closing")
    reject(caplog, listener, name, 6)
    assert clock.pending_timers == 1
    listener.close()  # at once, not at the end of the interval
    assert counts(caplog, name) == [("first", 1), ("tail", 5)]
    assert clock.pending_timers == 0
    listener.close()
    reject(caplog, listener, name, 3)
    clock.advance(60.0)
    assert counts(caplog, name) == [("first", 1), ("tail", 5)]


def test_flush_writes_the_tail_and_the_burst_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    listener = LogListener(rejection_interval=10.0, clock=clock)
    name = unique("flushed")
    reject(caplog, listener, name, 4)
    clock.advance(3.0)
    listener.flush()
    listener.flush()  # nothing pending: no line
    assert counts(caplog, name) == [("first", 1), ("tail", 3)]
    reject(caplog, listener, name, 2)  # still in the interval: counted
    clock.advance(7.0)
    assert counts(caplog, name) == [("first", 1), ("tail", 3), ("tail", 2)]


def test_disable_writes_the_pending_tail(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="resilience")
    clock = FakeClock()
    name = unique("disabled")
    limiter = Limiter(name=name, clock=clock)
    limiter.rejecting = True

    @limiter
    def call() -> int:
        return 1

    resilience.log.enable(rejection_interval=10.0, clock=clock)
    try:
        for _ in range(3):
            with pytest.raises(Exception, match="rate_limited"):
                call()
        resilience.log.enable(rejection_interval=10.0, clock=clock)  # replaced: flushed
        assert counts(caplog, name) == [("first", 1), ("tail", 2)]
        for _ in range(3):
            with pytest.raises(Exception, match="rate_limited"):
                call()
    finally:
        resilience.log.disable()
    expected = [("first", 1), ("tail", 2), ("first", 1), ("tail", 2)]
    assert counts(caplog, name) == expected
    clock.advance(60.0)
    assert counts(caplog, name) == expected
    assert clock.pending_timers == 0


class LateClock(FakeClock):
    """A clock whose timers fire only when told, and cannot be cancelled any more."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: list[Callable[[], object]] = []

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        self.callbacks.append(callback)
        return self

    def cancel(self) -> None:
        pass


def test_a_rejection_after_the_interval_writes_a_late_timers_tail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = LateClock()
    listener = LogListener(rejection_interval=10.0, clock=clock)
    name = unique("late")
    reject(caplog, listener, name, 4)  # t=0
    clock.advance(12.0)  # the timer is late
    reject(caplog, listener, name, 1)  # t=12: writes the tail; counted in [10, 20)
    assert counts(caplog, name) == [("first", 1), ("tail", 3)]
    stale, current = clock.callbacks
    stale()  # fires after all: the tail is written already
    assert counts(caplog, name) == [("first", 1), ("tail", 3)]
    current()
    assert counts(caplog, name) == [("first", 1), ("tail", 3), ("tail", 1)]


class YieldingClock(FakeClock):
    """A fake clock that lets other threads run whenever it is read."""

    def now(self) -> float:
        time.sleep(0)
        return super().now()

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        time.sleep(0)
        return super().call_at(when, callback)


def test_rejections_from_many_threads_are_all_counted(
    caplog: pytest.LogCaptureFixture, eager_switching: None
) -> None:
    clock = YieldingClock()
    listener = LogListener(rejection_interval=10.0, clock=clock)
    a, b = unique("threads_a"), unique("threads_b")
    caplog.set_level(logging.DEBUG, logger="resilience")
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        for _ in range(100):
            listener(rejection(a if i % 2 else b))

    for _ in range(4):  # the first interval, then three the burst goes on into
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert clock.pending_timers == 2  # one timer per burst, however many threads
        clock.advance(10.0)
    expected = [("first", 1), ("tail", 399), ("tail", 400), ("tail", 400), ("tail", 400)]
    assert counts(caplog, a) == expected
    assert counts(caplog, b) == expected


def test_the_system_clock_ends_intervals_on_a_thread(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="resilience")
    listener = LogListener(rejection_interval=0.05)
    name = unique("real_time")

    def work() -> None:
        for _ in range(100):
            listener(rejection(name))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # No rejection comes after these: timers alone write what is left.
    assert wait_for(lambda: total(caplog, name) >= 400)
    time.sleep(0.2)
    assert total(caplog, name) == 400
    assert all(count >= 1 for _, count in counts(caplog, name))


def test_the_system_clock_ends_intervals_under_asyncio(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="resilience")
    listener = LogListener(rejection_interval=0.05)
    name = unique("real_time_async")

    async def main() -> None:
        for _ in range(10):
            listener(rejection(name))
        # The loop is busy, then idle: neither keeps the tail from being written.
        deadline = time.monotonic() + 10.0
        while total(caplog, name) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert total(caplog, name) == 10


def test_pending_tails_are_written_at_exit() -> None:
    script = textwrap.dedent(
        """
        import logging
        import resilience.log
        from resilience import CallRejected

        logging.basicConfig(format="%(message)s")
        listener = resilience.log.enable(rejection_interval=3600)
        for _ in range(5):
            listener(CallRejected(
                policy="exiting", strategy="bulkhead", time=0.0,
                reason="bulkhead_full", retry_after=None,
            ))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr.splitlines() == [
        "exiting/bulkhead: call rejected (bulkhead_full); "
        "further rejections are summarised every 3600 s",
        "exiting/bulkhead: 4 more call(s) rejected (bulkhead_full) since the last such "
        "line; summarised every 3600 s",
    ]


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


def test_rejection_interval_and_clock_are_validated() -> None:
    with pytest.raises(ValueError, match="rejection_interval"):
        LogListener(rejection_interval=0)
    with pytest.raises(TypeError, match="clock must be a Clock"):
        LogListener(clock=10.0)  # type: ignore[arg-type]
