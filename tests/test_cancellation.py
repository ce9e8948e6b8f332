"""Cancellation: a cancelled task stops at once, raises CancelledError, and is never retried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from resilience import Backoff, Clock, Fallback, Pipeline, Retry, Timeout, TimeoutExceededError
from resilience.testing import FakeClock


class BlockingClock:
    """A clock whose async sleeps last until cancelled: only a cancellation ends them."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.sleeping = asyncio.Event()
        self.woke = False

    def now(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        raise AssertionError("a sync sleep in an async call")

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        await asyncio.get_running_loop().create_future()
        self.woke = True

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(3600, callback)


async def assert_stops_cancelled(task: asyncio.Task[object]) -> None:
    """The task ends, cancelled; bounded, so a cancellation that is swallowed and retried
    fails the test instead of hanging it."""
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=1)
        pytest.fail("the task did not stop when it was cancelled")
    assert task.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_blocking_clock_is_a_clock() -> None:
    assert isinstance(BlockingClock(), Clock)


async def test_cancelled_during_a_retry_sleep() -> None:
    clock = BlockingClock()
    calls = 0

    @Retry(on=ConnectionError, attempts=10, clock=clock)
    async def work() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError

    task = asyncio.create_task(work())
    await clock.sleeping.wait()
    task.cancel()
    await assert_stops_cancelled(task)
    assert calls == 1
    assert len(clock.sleeps) == 1
    assert not clock.woke


async def test_cancelled_during_a_real_retry_sleep() -> None:
    failed = asyncio.Event()
    calls = 0

    @Retry(on=ConnectionError, backoff=Backoff.constant(60))
    async def work() -> None:
        nonlocal calls
        calls += 1
        failed.set()
        raise ConnectionError

    task = asyncio.create_task(work())
    await failed.wait()
    await asyncio.sleep(0)  # the retry is now in its 60 s sleep
    task.cancel()
    await assert_stops_cancelled(task)
    assert calls == 1


async def test_cancelled_during_an_attempt_block_sleep() -> None:
    clock = BlockingClock()
    entered = 0

    async def work() -> None:
        nonlocal entered
        async for attempt in Retry(on=ConnectionError, clock=clock).attempts():
            with attempt:
                entered += 1
                raise ConnectionError

    task = asyncio.create_task(work())
    await clock.sleeping.wait()
    task.cancel()
    await assert_stops_cancelled(task)
    assert entered == 1


async def test_cancelled_while_the_work_runs_is_not_retried(clock: FakeClock) -> None:
    running = asyncio.Event()
    calls = 0

    # Even strategies told to handle BaseException leave a cancellation alone.
    @Pipeline(
        Fallback("fallback", on=BaseException),
        Retry(on=BaseException, attempts=5, clock=clock),
        Timeout(60, clock=clock),
    )
    async def work() -> None:
        nonlocal calls
        calls += 1
        running.set()
        await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(work())
    await running.wait()
    task.cancel()
    await assert_stops_cancelled(task)
    assert calls == 1
    assert clock.sleeps == []
    assert clock.pending_timers == 0


async def test_cancelled_inside_a_timeout_is_not_a_timeout(clock: FakeClock) -> None:
    running = asyncio.Event()
    calls = 0

    @Retry(on=TimeoutError, attempts=5, clock=clock)
    @Timeout(10, clock=clock)
    async def work() -> None:
        nonlocal calls
        calls += 1
        running.set()
        await clock.asleep(5)
        await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(work())
    await running.wait()
    await asyncio.sleep(0)
    task.cancel()
    await assert_stops_cancelled(task)
    assert calls == 1
    assert clock.pending_timers == 0


async def test_a_timeout_inside_a_retry_is_retried_but_a_cancellation_is_not(
    clock: FakeClock,
) -> None:
    calls = 0

    @Retry(on=TimeoutError, attempts=3, backoff=Backoff.constant(1), clock=clock)
    @Timeout(2, clock=clock)
    async def slow() -> None:
        nonlocal calls
        calls += 1
        await clock.asleep(5)

    with pytest.raises(TimeoutExceededError):
        await slow()
    assert calls == 3  # the timeouts were retried ...
    task = asyncio.current_task()
    assert task is not None
    cancelling = getattr(task, "cancelling", lambda: 0)  # Python 3.11+
    assert cancelling() == 0  # ... and none of them left a cancellation behind
