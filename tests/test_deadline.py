"""Deadlines: set by Timeout, deadline() and total_timeout, read by remaining(), kept by Retry."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest

from resilience import (
    Backoff,
    Deadline,
    GiveUpReason,
    Retry,
    RetryGaveUp,
    Timeout,
    current_deadline,
    deadline,
    remaining,
)
from resilience.testing import CapturingListener, FakeClock


def test_nothing_is_set_by_default() -> None:
    assert current_deadline() is None
    assert remaining() is None


def test_deadline_context_manager(clock: FakeClock) -> None:
    with deadline(3, clock=clock) as d:
        assert isinstance(d, Deadline)
        assert current_deadline() is d
        assert remaining() == 3.0
        clock.advance(1)
        assert remaining() == 2.0
        assert d.remaining() == 2.0
        assert not d.expired()
        clock.advance(5)
        assert remaining() == 0.0  # never negative
        assert d.remaining() == -3.0
        assert d.expired()
    assert current_deadline() is None


def test_deadline_accepts_timedelta_and_resets_on_error(clock: FakeClock) -> None:
    with pytest.raises(KeyError), deadline(timedelta(minutes=1), clock=clock):
        assert remaining() == 60.0
        raise KeyError
    assert current_deadline() is None


def test_nested_deadlines_take_the_minimum(clock: FakeClock) -> None:
    with deadline(5, clock=clock) as outer:
        with deadline(2, clock=clock) as inner:
            assert inner is not outer
            assert remaining() == 2.0
        assert current_deadline() is outer
        with deadline(10, clock=clock) as looser:
            assert looser is outer
            assert remaining() == 5.0
        assert remaining() == 5.0


def test_nested_timeouts_take_the_minimum(clock: FakeClock) -> None:
    seen: list[float | None] = []

    def probe() -> None:
        seen.append(remaining())

    Timeout(5, clock=clock)(Timeout(2, clock=clock)(probe))()
    Timeout(2, clock=clock)(Timeout(5, clock=clock)(probe))()
    assert seen == [2.0, 2.0]
    assert current_deadline() is None


async def test_timeout_sets_the_deadline_for_async_work_and_its_tasks(clock: FakeClock) -> None:
    async def child() -> float | None:
        return remaining()

    @Timeout(4, clock=clock)
    async def parent() -> tuple[float | None, float | None]:
        await clock.asleep(1)
        # A task started inside inherits the deadline with the context.
        return remaining(), await asyncio.create_task(child())

    assert await parent() == (3.0, 3.0)
    assert current_deadline() is None


def test_deadlines_on_different_clocks_compare_by_time_left(clock: FakeClock) -> None:
    # An outer deadline on the fake clock and a Timeout on the system clock: the one with
    # less time left wins, whatever the clocks' origins.
    seen: list[float | None] = []

    @Timeout(2)
    def on_system_clock() -> None:
        seen.append(remaining())

    with deadline(5, clock=clock):
        on_system_clock()
    with deadline(1, clock=clock):
        on_system_clock()
    assert seen[0] is not None
    assert 1.0 < seen[0] <= 2.0
    assert seen[1] == 1.0


async def test_async_timeout_under_a_deadline_on_another_clock(clock: FakeClock) -> None:
    @Timeout(2)
    async def on_system_clock() -> float | None:
        return remaining()

    with deadline(5, clock=clock):
        left = await on_system_clock()
    assert left is not None
    assert 1.0 < left <= 2.0


def test_deadline_is_visible_inside_thread_mode_workers() -> None:
    seen: dict[str, Any] = {}
    t = Timeout(0.2, mode="thread")

    @t
    def worker() -> str:
        seen["deadline"] = current_deadline()
        seen["remaining"] = remaining()
        seen["thread"] = threading.current_thread().name
        return "done"

    assert worker() == "done"
    t.close()
    assert isinstance(seen["deadline"], Deadline)
    assert 0.0 <= seen["remaining"] <= 0.2
    assert seen["thread"] != threading.current_thread().name
    assert current_deadline() is None


def test_deadline_set_outside_reaches_a_thread_mode_worker(clock: FakeClock) -> None:
    seen: list[float | None] = []
    t = Timeout(60, mode="thread", clock=clock)

    @t
    def worker() -> None:
        seen.append(remaining())

    with deadline(5, clock=clock):
        worker()
    t.close()
    assert seen == [5.0]


# -- Retry honours the deadline -------------------------------------------------------------------


class Always:
    def __init__(self) -> None:
        self.raised: list[BaseException] = []

    def __call__(self) -> None:
        self.raised.append(ValueError(len(self.raised) + 1))
        raise self.raised[-1]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_retry_never_sleeps_past_the_deadline(
    clock: FakeClock, events: CapturingListener, mode: str
) -> None:
    work = Always()
    retry = Retry(on=ValueError, attempts=10, backoff=Backoff.constant(1), clock=clock, name="r")
    with pytest.raises(ValueError) as info, deadline(2.5, clock=clock):
        if mode == "sync":
            retry(work)()
        else:

            async def awork() -> None:
                work()

            await retry(awork)()
    assert clock.sleeps == [1.0, 1.0]
    assert clock.now() == 2.0
    assert info.value is work.raised[-1]
    assert info.value.__notes__ == ["resilience: r/retry gave up after 3 attempt(s) (deadline)"]
    (gave_up,) = events.of_type(RetryGaveUp)
    assert (gave_up.reason, gave_up.attempts, gave_up.time) == (GiveUpReason.DEADLINE, 3, 2.0)


def test_retry_gives_up_when_a_hint_would_cross_the_deadline(
    clock: FakeClock, events: CapturingListener
) -> None:
    class Busy(Exception):
        retry_after = 10.0

    calls = 0

    @Retry(on=Busy, attempts=5, clock=clock)
    def work() -> None:
        nonlocal calls
        calls += 1
        raise Busy

    with deadline(5, clock=clock), pytest.raises(Busy):
        work()
    assert calls == 1
    assert clock.sleeps == []
    assert [e.reason for e in events.of_type(RetryGaveUp)] == [GiveUpReason.DEADLINE]


def test_retry_inside_a_timeout_stops_at_its_deadline(clock: FakeClock) -> None:
    work = Always()
    retry = Retry(
        on=ValueError, attempts=None, total_timeout=60, backoff=Backoff.constant(1), clock=clock
    )
    policy = Timeout(3.5, clock=clock)(retry(work))
    with pytest.raises(ValueError):
        policy()
    assert len(work.raised) == 4
    assert clock.sleeps == [1.0, 1.0, 1.0]


def test_total_timeout_is_the_deadline_of_the_inner_calls(clock: FakeClock) -> None:
    seen: list[float | None] = []

    @Retry(on=ValueError, total_timeout=10, backoff=Backoff.constant(2), clock=clock)
    def work() -> None:
        seen.append(remaining())
        if len(seen) < 3:
            raise ValueError

    work()
    assert seen == [10.0, 8.0, 6.0]
    assert current_deadline() is None


def test_total_timeout_does_not_loosen_an_outer_deadline(clock: FakeClock) -> None:
    seen: list[float | None] = []

    @Retry(on=ValueError, total_timeout=10, clock=clock)
    def work() -> None:
        seen.append(remaining())

    with deadline(3, clock=clock):
        work()
    assert seen == [3.0]
