"""resilience.testing and the clock: FakeClock, set_testing()/no_wait(), capture_events()."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import resilience._core.clock as clock_module
from conftest import run_threads
from resilience import Backoff, Clock, Retry, RetryScheduled, SystemClock, TimedOut, Timeout
from resilience.testing import (
    CapturingListener,
    FakeClock,
    capture_events,
    no_wait,
    set_testing,
)

# -- FakeClock ------------------------------------------------------------------------------------


def test_fake_clock_sleeps_advance_time_and_are_recorded() -> None:
    clock = FakeClock(start=100)
    assert clock.now() == 100.0
    clock.sleep(1.5)
    clock.sleep(0)
    clock.sleep(-1)  # recorded as asked, but time never goes back
    assert clock.now() == 101.5
    assert clock.sleeps == [1.5, 0, -1]
    assert isinstance(clock, Clock)
    assert repr(clock) == "FakeClock(now=101.5)"


async def test_fake_clock_async_sleeps_advance_time_and_yield() -> None:
    clock = FakeClock()
    order: list[str] = []

    async def other() -> None:
        order.append("other ran")

    task = asyncio.create_task(other())
    await clock.asleep(2)
    order.append("after sleep")
    await task
    assert order == ["other ran", "after sleep"]
    assert clock.now() == 2.0
    assert clock.sleeps == [2]


def test_timers_fire_in_order_at_their_time() -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []

    def at(tag: str) -> None:
        fired.append((tag, clock.now()))

    clock.call_at(3, lambda: at("c"))
    clock.call_at(1, lambda: at("a"))
    clock.call_at(2, lambda: at("b1"))
    clock.call_at(2, lambda: at("b2"))  # same time: in the order they were set
    cancelled = clock.call_at(1.5, lambda: at("never"))
    cancelled.cancel()
    assert clock.pending_timers == 4
    clock.advance(2.5)
    assert fired == [("a", 1.0), ("b1", 2.0), ("b2", 2.0)]
    assert clock.now() == 2.5
    clock.advance(0.5)
    assert fired[-1] == ("c", 3.0)
    assert clock.pending_timers == 0
    clock.advance(100)
    assert len(fired) == 4


def test_a_timer_set_by_a_timer_fires_in_the_same_advance_if_due() -> None:
    clock = FakeClock()
    fired: list[tuple[str, float]] = []

    def first() -> None:
        fired.append(("first", clock.now()))
        clock.call_at(clock.now() + 1, lambda: fired.append(("chained", clock.now())))
        clock.call_at(clock.now() + 10, lambda: fired.append(("later", clock.now())))

    clock.call_at(1, first)
    clock.call_at(3, lambda: fired.append(("third", clock.now())))
    clock.advance(5)
    assert fired == [("first", 1.0), ("chained", 2.0), ("third", 3.0)]
    assert clock.now() == 5.0
    clock.advance(10)
    assert fired[-1] == ("later", 11.0)


def test_sync_sleep_fires_due_timers() -> None:
    clock = FakeClock()
    fired: list[float] = []
    clock.call_at(1, lambda: fired.append(clock.now()))
    clock.sleep(3)
    assert fired == [1.0]
    assert clock.now() == 3.0


async def test_async_sleep_stops_at_a_timer_that_cancels_the_sleeper() -> None:
    clock = FakeClock()
    later: list[float] = []
    task = asyncio.current_task()
    assert task is not None
    clock.call_at(2, task.cancel)
    clock.call_at(4, lambda: later.append(clock.now()))
    with pytest.raises(asyncio.CancelledError):
        await clock.asleep(10)
    getattr(task, "uncancel", lambda: 0)()  # withdraw our own request (Python 3.11+)
    assert clock.now() == 2.0
    assert later == []  # time never reached the later timer
    await clock.asleep(3)
    assert later == [4.0]
    assert clock.now() == 5.0


async def test_async_sleep_goes_on_past_timers_for_other_tasks() -> None:
    clock = FakeClock()
    never = asyncio.Event()
    other = asyncio.create_task(never.wait())
    await asyncio.sleep(0)
    clock.call_at(1, other.cancel)
    await clock.asleep(3)
    assert clock.now() == 3.0
    with pytest.raises(asyncio.CancelledError):
        await other


async def test_a_past_due_timer_fires_on_the_next_loop_iteration() -> None:
    clock = FakeClock(start=5)
    fired: list[float] = []
    clock.call_at(1, lambda: fired.append(clock.now()))
    assert fired == []
    await asyncio.sleep(0)
    assert fired == [5.0]


def test_advance_refuses_negative_time() -> None:
    with pytest.raises(ValueError, match="seconds must be >= 0"):
        FakeClock().advance(-1)


# -- the system clock and the no-wait switch ------------------------------------------------------


@pytest.fixture
def recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Record (instead of doing) every real sleep the system clock asks for."""
    sleeps: list[float] = []
    real_asyncio_sleep = asyncio.sleep

    def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def fake_asleep(seconds: float) -> None:
        sleeps.append(seconds)
        await real_asyncio_sleep(0)

    monkeypatch.setattr(time, "sleep", fake_sleep)
    monkeypatch.setattr(asyncio, "sleep", fake_asleep)
    before = clock_module.SWITCHES.no_wait
    try:
        yield sleeps
    finally:
        set_testing(before)


def failing_twice() -> Callable[[], str]:
    calls = 0

    def work() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError
        return f"ok after {calls}"

    return work


def test_system_clock_sleeps_for_real_unless_testing(recorded_sleeps: list[float]) -> None:
    retry = Retry(on=ConnectionError, backoff=Backoff.constant(5))
    assert retry(failing_twice())() == "ok after 3"
    assert recorded_sleeps == [5.0, 5.0]


def test_set_testing_removes_every_wait(recorded_sleeps: list[float]) -> None:
    set_testing(True)
    retry = Retry(on=ConnectionError, backoff=Backoff.constant(5))
    assert retry(failing_twice())() == "ok after 3"
    assert recorded_sleeps == []  # retried all the same, without sleeping
    set_testing(False)
    assert retry(failing_twice())() == "ok after 3"
    assert recorded_sleeps == [5.0, 5.0]


async def test_set_testing_removes_every_async_wait(recorded_sleeps: list[float]) -> None:
    retry = Retry(on=ConnectionError, backoff=Backoff.constant(5))
    work = failing_twice()

    async def awork() -> str:
        return work()

    set_testing(True)
    assert await retry(awork)() == "ok after 3"
    assert recorded_sleeps == [0, 0]  # a zero sleep still lets other tasks run


def test_no_wait_is_a_block_and_restores_the_previous_state(recorded_sleeps: list[float]) -> None:
    retry = Retry(on=ConnectionError, backoff=Backoff.constant(5))
    with no_wait():
        assert retry(failing_twice())() == "ok after 3"
        with no_wait():
            pass
        assert clock_module.SWITCHES.no_wait
    assert not clock_module.SWITCHES.no_wait
    with pytest.raises(KeyError), no_wait():
        raise KeyError
    assert not clock_module.SWITCHES.no_wait
    set_testing(True)
    with no_wait():
        pass
    assert clock_module.SWITCHES.no_wait  # it was on before the block
    assert recorded_sleeps == []


def test_no_wait_leaves_timeouts_and_fake_clocks_alone(recorded_sleeps: list[float]) -> None:
    clock = FakeClock()
    with no_wait():
        clock.sleep(3)
        assert Timeout(1).seconds == 1.0
    assert clock.sleeps == [3]
    assert clock.now() == 3.0


def test_system_clock() -> None:
    c = SystemClock()
    assert isinstance(c, Clock)
    assert repr(c) == "SystemClock()"
    a = c.now()
    assert c.now() >= a


# -- capture_events -------------------------------------------------------------------------------


def test_capture_events_collects_in_order_and_filters_by_type(clock: FakeClock) -> None:
    with capture_events() as captured:
        Retry(on=ConnectionError, clock=clock, name="c")(failing_twice())()
    assert [type(e) for e in captured.events] == [RetryScheduled, RetryScheduled]
    assert captured.of_type(RetryScheduled) == captured.events
    assert captured.of_type(TimedOut) == []
    captured.clear()
    assert captured.events == []


def test_a_capturing_listener_is_a_plain_callable() -> None:
    listener = CapturingListener()
    e = TimedOut(policy="p", strategy="timeout", time=0.0, timeout=1.0, elapsed=1.0)
    listener(e)
    assert listener.events == [e]


def test_advances_from_several_threads_add_up(eager_switching: None) -> None:
    clock = FakeClock()
    fired: list[float] = []
    for when in (10.0, 250.0, 799.0):
        clock.call_at(when, lambda: fired.append(clock.now()))
    run_threads(8, lambda: [clock.advance(0.5) for _ in range(200)])
    assert clock.now() == 800.0  # 8 threads x 200 x 0.5 s, none lost
    assert fired == [10.0, 250.0, 799.0]
    assert clock.pending_timers == 0


def test_sleeps_from_several_threads_overlap_like_real_ones() -> None:
    clock = FakeClock()
    b_slept = threading.Event()

    def b() -> None:
        clock.sleep(1.0)  # starts at 0.5, while A's sleep is still under way
        b_slept.set()

    # A sleeps from 0 to 1; a timer at 0.5, inside A's sleep, lets B sleep 1 s then.
    clock.call_at(0.5, lambda: (threading.Thread(target=b).start(), b_slept.wait(5)))
    clock.sleep(1.0)
    assert b_slept.is_set()
    assert clock.sleeps == [1.0, 1.0]
    assert clock.now() == 1.5  # B's sleep ended at 0.5 + 1, not after A's (2.0)
    clock.advance(1.0)  # an advance after the sleeps starts where they left time
    assert clock.now() == 2.5
