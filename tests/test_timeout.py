"""Timeout: cancelling coroutines, cooperative deadlines and worker threads for sync calls.

Async and deadline-mode tests run on the fake clock. Thread-mode tests use the real clock
with durations of at most 0.2 s and assert what happened, never how fast.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from datetime import timedelta
from typing import Any

import pytest

from resilience import (
    Deadline,
    TimedOut,
    Timeout,
    TimeoutExceededError,
    TimeoutMode,
    current_deadline,
    deadline,
    remaining,
)
from resilience.testing import CapturingListener, FakeClock

NEEDS_UNCANCEL = pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="telling an outer cancellation from our own needs Task.uncancel() (3.11+)",
)


def cancel_requests(task: asyncio.Task[Any] | None) -> int:
    """Cancellation requests still pending on ``task`` (Python 3.11+; 0 on 3.10)."""
    assert task is not None
    cancelling = getattr(task, "cancelling", None)
    return int(cancelling()) if cancelling is not None else 0


# -- async: the work is cancelled -----------------------------------------------------------------


async def test_async_timeout_cancels_the_work(clock: FakeClock) -> None:
    seen: list[str] = []

    @Timeout(1, clock=clock, name="slow")
    async def slow() -> str:
        try:
            await clock.asleep(5)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("finished")
        return "late"

    with pytest.raises(TimeoutExceededError) as info:
        await slow()
    err = info.value
    assert isinstance(err, TimeoutError)
    assert seen == ["cancelled"]
    # The sleep was cut short at the deadline.
    assert clock.now() == 1.0
    assert (err.timeout, err.elapsed, err.policy, err.result, err.pending) == (
        1.0,
        1.0,
        "slow",
        None,
        None,
    )
    assert str(err) == (
        "slow/timeout: the call did not finish within its deadline (1 s timeout, 1.000 s elapsed)"
    )
    assert clock.pending_timers == 0


async def test_async_timeout_on_the_real_clock() -> None:
    never = asyncio.Event()

    @Timeout(0.05)
    async def hang() -> None:
        await never.wait()

    with pytest.raises(TimeoutExceededError):
        await hang()
    assert cancel_requests(asyncio.current_task()) == 0


async def test_async_call_in_time_returns_and_cancels_its_timer(clock: FakeClock) -> None:
    @Timeout(2, clock=clock)
    async def quick(x: int) -> int:
        await clock.asleep(1.5)
        return x * 2

    assert await quick(21) == 42
    assert clock.pending_timers == 0
    clock.advance(10)  # the cancelled timer must not fire into a later await
    await asyncio.sleep(0)


async def test_a_timeout_never_surfaces_as_cancelled_error(clock: FakeClock) -> None:
    @Timeout(1, clock=clock)
    async def slow() -> None:
        await clock.asleep(5)

    for _ in range(3):
        with pytest.raises(TimeoutExceededError):
            await slow()
    assert cancel_requests(asyncio.current_task()) == 0
    await asyncio.sleep(0)  # no cancellation left pending on the caller's task


async def test_the_innermost_timeout_that_fires_raises(clock: FakeClock) -> None:
    @Timeout(3, clock=clock, name="outer")
    @Timeout(1, clock=clock, name="inner")
    async def slow() -> None:
        await clock.asleep(5)

    with pytest.raises(TimeoutExceededError) as info:
        await slow()
    assert (info.value.policy, info.value.timeout, info.value.elapsed) == ("inner", 1.0, 1.0)
    assert clock.now() == 1.0


async def test_an_outer_timeout_firing_first_raises_its_own_error(clock: FakeClock) -> None:
    @Timeout(1, clock=clock, name="outer")
    @Timeout(3, clock=clock, name="inner")
    async def slow() -> None:
        await clock.asleep(5)

    with pytest.raises(TimeoutExceededError) as info:
        await slow()
    # The inner one runs under the outer, earlier deadline; the outer one converts.
    assert (info.value.policy, info.value.timeout, info.value.elapsed) == ("outer", 1.0, 1.0)
    assert clock.now() == 1.0


async def test_an_outer_cancellation_stays_a_cancellation(clock: FakeClock) -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    @Timeout(10, clock=clock)
    async def hang() -> None:
        started.set()
        await never.wait()

    task = asyncio.create_task(hang())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending_timers == 0


@NEEDS_UNCANCEL
async def test_an_outer_cancellation_racing_the_timer_stays_a_cancellation(
    clock: FakeClock,
) -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    @Timeout(1, clock=clock)
    async def hang() -> None:
        started.set()
        await never.wait()

    task = asyncio.create_task(hang())
    await started.wait()
    clock.advance(1)  # the timeout fires ...
    task.cancel()  # ... and the caller cancels before the task runs again
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_work_that_swallows_the_cancellation_keeps_its_result(clock: FakeClock) -> None:
    @Timeout(1, clock=clock)
    async def stubborn() -> str:
        try:
            await clock.asleep(5)
        except asyncio.CancelledError:
            return "partial"
        return "full"

    assert await stubborn() == "partial"
    assert cancel_requests(asyncio.current_task()) == 0


@NEEDS_UNCANCEL
@pytest.mark.parametrize("form", ["decorator", "async-with"])
async def test_work_that_turns_the_cancellation_into_its_own_error(
    clock: FakeClock, form: str
) -> None:
    # Some clients map a cancellation to their own error. That error passes through, and
    # the timeout's cancel request is withdrawn all the same: a stale request would make
    # an enclosing asyncio.timeout() report its own expiry as a CancelledError.
    class ClientClosed(Exception):
        pass

    async def mapping() -> None:
        try:
            await clock.asleep(5)
        except asyncio.CancelledError:
            raise ClientClosed from None

    with pytest.raises(ClientClosed):
        if form == "decorator":
            await Timeout(1, clock=clock)(mapping)()
        else:
            async with Timeout(1, clock=clock):
                await mapping()
    assert cancel_requests(asyncio.current_task()) == 0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await asyncio.sleep(1)


async def test_an_expired_deadline_does_not_start_async_work(clock: FakeClock) -> None:
    calls = 0

    @Timeout(5, clock=clock)
    async def work() -> None:
        nonlocal calls
        calls += 1

    with deadline(1, clock=clock):
        clock.advance(1)
        with pytest.raises(TimeoutExceededError):
            await work()
    assert calls == 0


async def test_async_timeout_publishes_timed_out(
    clock: FakeClock, events: CapturingListener
) -> None:
    @Timeout(timedelta(milliseconds=250), clock=clock, name="api")
    async def slow() -> None:
        await clock.asleep(1)

    with pytest.raises(TimeoutExceededError):
        await slow()
    assert events.events == [
        TimedOut(policy="api", strategy="timeout", time=0.25, timeout=0.25, elapsed=0.25)
    ]


# -- async with -----------------------------------------------------------------------------------


async def test_async_with_cancels_the_block(clock: FakeClock) -> None:
    reached = False
    with pytest.raises(TimeoutExceededError) as info:
        async with Timeout(2, clock=clock, name="block") as d:
            assert isinstance(d, Deadline)
            assert remaining() == 2.0
            await clock.asleep(3)
            reached = True
    assert not reached
    assert (info.value.policy, info.value.elapsed) == ("block", 2.0)
    assert current_deadline() is None


async def test_async_with_in_time(clock: FakeClock) -> None:
    async with Timeout(2, clock=clock):
        await clock.asleep(1)
    assert current_deadline() is None
    assert clock.pending_timers == 0


async def test_async_with_lets_the_blocks_error_through_and_cleans_up(clock: FakeClock) -> None:
    t = Timeout(2, clock=clock)
    with pytest.raises(KeyError):
        async with t:
            raise KeyError("mine")
    assert current_deadline() is None
    # The stack of entered blocks is clean: the same and other timeouts still work.
    async with t, Timeout(1, clock=clock):
        assert remaining() == 1.0
    assert current_deadline() is None


async def test_nested_async_with_blocks(clock: FakeClock) -> None:
    with pytest.raises(TimeoutExceededError) as info:
        async with Timeout(5, clock=clock, name="outer"):
            with pytest.raises(TimeoutExceededError) as inner:
                async with Timeout(1, clock=clock, name="inner"):
                    await clock.asleep(2)
            assert inner.value.policy == "inner"
            assert remaining() == 4.0
            await clock.asleep(10)
    assert info.value.policy == "outer"
    assert clock.now() == 5.0


async def test_async_with_outer_cancellation_stays_a_cancellation(clock: FakeClock) -> None:
    started = asyncio.Event()

    async def body() -> None:
        async with Timeout(10, clock=clock):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_concurrent_async_with_blocks_are_independent(clock: FakeClock) -> None:
    t = Timeout(1, clock=clock)
    gate = asyncio.Event()

    async def block(n: int) -> float | None:
        async with t:
            await gate.wait()
            return remaining()

    tasks = [asyncio.create_task(block(n)) for n in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == [1.0] * 5


# -- sync: the cooperative deadline mode ----------------------------------------------------------


def test_deadline_mode_keeps_a_late_result_on_the_error(clock: FakeClock) -> None:
    @Timeout(1, clock=clock, name="report")
    def slow() -> dict[str, int]:
        assert remaining() == 1.0
        clock.advance(1.5)
        assert remaining() == 0.0
        return {"rows": 3}

    with pytest.raises(TimeoutExceededError) as info:
        slow()
    assert info.value.result == {"rows": 3}
    assert info.value.elapsed == 1.5
    assert current_deadline() is None


def test_deadline_mode_in_time(clock: FakeClock) -> None:
    @Timeout(1, clock=clock)
    def quick(a: int, *, b: int) -> int:
        clock.advance(0.5)
        return a + b

    assert quick(1, b=2) == 3


def test_deadline_mode_lets_errors_through(clock: FakeClock) -> None:
    err = LookupError("x")

    @Timeout(1, clock=clock)
    def fails() -> None:
        clock.advance(2)
        raise err

    with pytest.raises(LookupError) as info:
        fails()
    assert info.value is err
    assert current_deadline() is None


def test_deadline_mode_does_not_start_past_the_deadline(clock: FakeClock) -> None:
    calls = 0

    @Timeout(1, clock=clock)
    def work() -> None:
        nonlocal calls
        calls += 1

    with deadline(0.5, clock=clock):
        clock.advance(0.5)
        with pytest.raises(TimeoutExceededError):
            work()
    assert calls == 0


def test_with_block_sync(clock: FakeClock) -> None:
    t = Timeout(1, clock=clock, name="blk")
    with t as d:
        assert d.remaining() == 1.0
        clock.advance(0.5)
    with pytest.raises(TimeoutExceededError) as info, t:
        clock.advance(2)
    assert (info.value.policy, info.value.elapsed) == ("blk", 2.0)
    assert current_deadline() is None


def test_with_block_lets_the_blocks_error_through_and_cleans_up(clock: FakeClock) -> None:
    t = Timeout(1, clock=clock)
    with pytest.raises(ZeroDivisionError), t:
        clock.advance(5)  # late *and* failing: the block's own error wins
        _ = 1 / 0
    assert current_deadline() is None
    with t:
        pass


def test_with_block_past_an_expired_deadline_raises_at_entry(clock: FakeClock) -> None:
    t = Timeout(1, clock=clock)
    entered = False
    with deadline(1, clock=clock):
        clock.advance(1)
        with pytest.raises(TimeoutExceededError), t:
            entered = True
        assert remaining() == 0.0
    assert not entered
    assert current_deadline() is None
    with t:  # the failed entry left nothing behind
        pass


def test_with_blocks_must_exit_in_order(clock: FakeClock) -> None:
    a, b = Timeout(1, clock=clock), Timeout(2, clock=clock)
    a.__enter__()
    b.__enter__()
    with pytest.raises(RuntimeError, match="order"):
        a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    a.__exit__(None, None, None)
    assert current_deadline() is None


def test_thread_mode_cannot_guard_a_with_block() -> None:
    with pytest.raises(TypeError, match="thread-mode"), Timeout(1, mode="thread"):
        pass


# -- sync: the thread mode (real clock, small durations) ------------------------------------------

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_thread_mode_raises_at_the_deadline_while_the_worker_runs_on() -> None:
    release = threading.Event()
    seen: dict[str, Any] = {}
    t = Timeout(0.2, mode="thread", name="blocking")

    @t
    def blocking(x: int) -> int:
        seen["thread"] = threading.current_thread().name
        seen["request_id"] = REQUEST_ID.get()
        seen["remaining"] = remaining()
        release.wait(5)
        return x + 1

    t(lambda: None)()  # an idle worker is ready, so the call starts at once
    token = REQUEST_ID.set("r-42")
    try:
        with pytest.raises(TimeoutExceededError) as info:
            blocking(1)
        pending = info.value.pending
        assert pending is not None
        assert not pending.done()  # the caller got the error; the worker still runs
    finally:
        REQUEST_ID.reset(token)
        release.set()
    assert pending.result(timeout=5) == 2
    assert seen["thread"].startswith("resilience-timeout")
    assert seen["request_id"] == "r-42"
    assert seen["remaining"] is not None
    assert 0.0 <= seen["remaining"] <= 0.2
    t.close()


def test_thread_mode_returns_results_and_raises_errors() -> None:
    t = Timeout(0.2, mode=TimeoutMode.THREAD)
    err = ValueError("from the worker")

    @t
    def ok(x: int) -> int:
        return x * 3

    @t
    def bad() -> None:
        raise err

    assert ok(5) == 15
    with pytest.raises(ValueError) as info:
        bad()
    assert info.value is err
    t.close()
    assert ok(2) == 6  # the pool is rebuilt on demand
    t.close()


def test_thread_mode_drops_a_call_still_queued() -> None:
    release = threading.Event()
    ran: list[str] = []
    t = Timeout(0.2, mode="thread", max_workers=1)

    @t
    def work(tag: str) -> None:
        ran.append(tag)
        release.wait(5)

    t(lambda: None)()  # the one worker is up and idle
    try:
        with pytest.raises(TimeoutExceededError) as first:
            work("first")
        with pytest.raises(TimeoutExceededError) as second:
            work("second")
    finally:
        release.set()
    assert first.value.pending is not None
    assert second.value.pending is None  # it never started, so nothing runs on
    first.value.pending.result(timeout=5)
    t.close()
    assert ran == ["first"]


def test_thread_mode_does_not_start_past_the_deadline(clock: FakeClock) -> None:
    ran = False

    @Timeout(1, mode="thread", clock=clock)
    def work() -> None:
        nonlocal ran
        ran = True

    with deadline(0.5, clock=clock):
        clock.advance(1)
        with pytest.raises(TimeoutExceededError):
            work()
    assert not ran


# -- misc -----------------------------------------------------------------------------------------


def test_repr_and_snapshot() -> None:
    assert repr(Timeout(1.5)) == "Timeout(1.5, mode='deadline')"
    assert repr(Timeout(2, mode="thread", name="x")) == "Timeout(2, mode='thread', name='x')"
    assert Timeout(1).snapshot() == {"kind": "timeout", "name": None}


def test_timeout_error_is_a_builtin_timeout_error() -> None:
    err = TimeoutExceededError("m", policy="p", timeout=1.0, elapsed=2.0)
    assert isinstance(err, TimeoutError)
    assert (err.policy, err.timeout, err.elapsed, err.result, err.pending) == (
        "p",
        1.0,
        2.0,
        None,
        None,
    )
