"""RateLimiter: exact GCRA limits under the fake clock, waiting, rejecting, cancelling."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import resilience
from conftest import ManualClock, run_threads, settle, wait_until
from resilience import (
    Pipeline,
    RateLimited,
    RateLimitedError,
    RateLimiter,
    RateLimitWaited,
    RejectedError,
    Retry,
    deadline,
)
from resilience._core.telemetry import CALL_OUTCOMES, STATS, TELEMETRY
from resilience._core.waiters import Waiter
from resilience.testing import CapturingListener, FakeClock

T = TypeVar("T")

SNAPSHOT_KEYS = {"kind", "name", "rate", "period", "burst", "available", "rejected"}


async def within(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    """Await with a real-time bound, so that a stuck line fails the test instead of hanging."""
    return await asyncio.wait_for(awaitable, seconds)


def line(limiter: RateLimiter) -> int:
    """Callers waiting in the limiter's line."""
    return len(limiter._gcra.waiters)


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"rate": 0}, ValueError, ["rate", ">= 1", "0"]),
        ({"rate": 1.5}, TypeError, ["rate", "int", "1.5"]),
        ({"rate": 1, "period": 0}, ValueError, ["period", ">= 1e-06", "0"]),
        ({"rate": 1, "period": float("inf")}, ValueError, ["period", "finite", "inf"]),
        ({"rate": 1, "period": "1s"}, TypeError, ["period", "'1s'"]),
        ({"rate": 1, "burst": -1}, ValueError, ["burst", ">= 0", "-1"]),
        ({"rate": 1, "burst": 0.5}, TypeError, ["burst", "int", "0.5"]),
        ({"rate": 1, "max_wait": -1}, ValueError, ["max_wait", ">= 0", "-1"]),
        ({"rate": 1, "clock": "system"}, TypeError, ["clock"]),
    ],
)
def test_options_are_validated_with_the_parameter_named(
    kwargs: dict[str, Any], exc: type[Exception], words: list[str]
) -> None:
    with pytest.raises(exc) as info:
        RateLimiter(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_repr_properties_and_exports() -> None:
    from datetime import timedelta

    limiter = RateLimiter(5, period=timedelta(seconds=2), burst=3, max_wait=None, name="api")
    assert repr(limiter) == "RateLimiter(5, period=2, burst=3, max_wait=None, name='api')"
    assert (limiter.rate, limiter.period, limiter.burst, limiter.max_wait) == (5, 2.0, 3, None)
    for name in ("RateLimiter", "RateLimitedError", "RateLimited", "RateLimitWaited"):
        assert name in resilience.__all__
    assert issubclass(RateLimitedError, RejectedError)
    assert issubclass(RateLimited, resilience.CallRejected)


def test_snapshot_has_exactly_the_documented_keys(clock: FakeClock) -> None:
    limiter = RateLimiter(10, burst=2, name="api", clock=clock)
    snap = limiter.snapshot()
    assert set(snap) == SNAPSHOT_KEYS
    assert snap == {
        "kind": "rate_limiter",
        "name": "api",
        "rate": 10,
        "period": 1.0,
        "burst": 2,
        "available": 3.0,
        "rejected": 0,
    }


# -- the algorithm, exactly -------------------------------------------------------------------


def test_an_idle_limiter_admits_one_plus_burst_at_once_then_one_per_interval(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(10, burst=2, clock=clock)  # interval: 0.1 s
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert limiter.available == 0.0
    clock.advance(0.05)
    assert limiter.available == 0.5
    assert not limiter.try_acquire()
    clock.advance(0.05)
    assert limiter.available == 1.0
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    clock.advance(0.3)
    assert limiter.available == 3.0
    clock.advance(10)
    assert limiter.available == 3.0, "an idle limiter never banks more than 1 + burst"
    assert limiter.snapshot()["rejected"] == 3


def test_no_float_drift_over_many_intervals(clock: FakeClock) -> None:
    limiter = RateLimiter(10, clock=clock)
    admitted = 0
    for _ in range(10_000):
        if limiter.try_acquire():
            admitted += 1
        clock.advance(0.1)  # 0.1 is not exact in binary; the limiter counts microseconds
    assert admitted == 10_000


def test_rejection_carries_the_exact_time_until_a_permit(
    clock: FakeClock, events: CapturingListener
) -> None:
    limiter = RateLimiter(2, period=1.0, name="api", clock=clock)

    @limiter
    def call() -> str:
        return "ok"

    assert call() == "ok"
    clock.advance(0.2)
    with pytest.raises(RateLimitedError) as info:
        call()
    err = info.value
    assert err.retry_after == 0.3
    assert err.policy == "api"
    assert "no permit is available" in str(err)
    [event] = events.of_type(RateLimited)
    assert (event.source, event.reason, event.retry_after) == (
        "api/rate_limiter",
        "rate_limited",
        0.3,
    )
    clock.advance(0.299999)
    with pytest.raises(RateLimitedError):
        call()
    clock.advance(0.000001)
    assert call() == "ok"
    assert limiter.snapshot()["rejected"] == 2


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(1, 6),
    burst=st.integers(0, 4),
    period_ms=st.integers(1, 2_000),
    gaps_us=st.lists(st.integers(0, 700_000), min_size=1, max_size=80),
)
def test_any_window_of_one_period_admits_at_most_rate_plus_burst(
    rate: int, burst: int, period_ms: int, gaps_us: list[int]
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, period=period_ms / 1000, burst=burst, clock=clock)
    period_us = period_ms * 1000
    now_us = 0
    admitted: list[int] = []
    for gap in gaps_us:
        now_us += gap
        clock.advance(max(0.0, now_us / 1e6 - clock.now()))  # float error: < 1 µs
        if limiter.try_acquire():
            admitted.append(now_us)
    for i, start in enumerate(admitted):
        in_window = sum(1 for t in admitted[i:] if t < start + period_us)
        assert in_window <= rate + burst
    # ...and the limit is reached: an idle limiter admits 1 + burst at once.
    fresh = RateLimiter(rate, period=period_ms / 1000, burst=burst, clock=FakeClock())
    assert sum(fresh.try_acquire() for _ in range(burst + 5)) == burst + 1


@settings(max_examples=150, deadline=None)
@given(
    rate=st.integers(1, 5),
    burst=st.integers(0, 3),
    period_ms=st.integers(1, 1_000),
    gaps_us=st.lists(st.integers(0, 400_000), min_size=1, max_size=40),
)
def test_waiting_callers_keep_the_same_limit(
    rate: int, burst: int, period_ms: int, gaps_us: list[int]
) -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate, period=period_ms / 1000, burst=burst, max_wait=None, clock=clock)
    admitted: list[int] = []

    @limiter
    def call() -> None:
        admitted.append(round(clock.now() * 1e6))

    for gap in gaps_us:
        clock.advance(gap / 1e6)
        call()
    assert len(admitted) == len(gaps_us)
    period_us = period_ms * 1000
    for i, start in enumerate(admitted):
        in_window = sum(1 for t in admitted[i:] if t < start + period_us)
        assert in_window <= rate + burst


@settings(max_examples=150, deadline=None)
@given(
    rate=st.integers(1, 5),
    burst=st.integers(0, 3),
    period_ms=st.integers(1, 1_000),
    taken=st.integers(1, 12),
    gap_us=st.integers(0, 100_000),
)
def test_retry_after_is_neither_early_nor_late(
    rate: int, burst: int, period_ms: int, taken: int, gap_us: int
) -> None:
    clock = FakeClock(start=3.0)
    limiter = RateLimiter(rate, period=period_ms / 1000, burst=burst, clock=clock)
    for _ in range(taken):
        limiter.try_acquire()
    clock.advance(gap_us / 1e6)
    try:
        limiter.acquire()
    except RateLimitedError as exc:
        wait = exc.retry_after
    else:
        return
    assert wait > 0
    clock.advance(wait - 1e-6)
    assert not limiter.try_acquire()
    clock.advance(1e-6)
    assert limiter.try_acquire()


# -- waiting --------------------------------------------------------------------------------------


def test_sync_callers_wait_their_exact_turn(clock: FakeClock, events: CapturingListener) -> None:
    limiter = RateLimiter(10, max_wait=1.0, name="api", clock=clock)
    times: list[float] = []

    @limiter
    def call() -> None:
        times.append(round(clock.now(), 9))

    for _ in range(4):
        call()
    assert times == [0.0, 0.1, 0.2, 0.3]
    assert clock.sleeps == [0.1, 0.1, 0.1]
    waited = events.of_type(RateLimitWaited)
    assert [round(e.waited, 9) for e in waited] == [0.1, 0.1, 0.1]
    assert not events.of_type(RateLimited)


def test_a_wait_longer_than_max_wait_is_rejected_at_once(clock: FakeClock) -> None:
    limiter = RateLimiter(1, period=10, max_wait=5, clock=clock)
    limiter.acquire()
    with pytest.raises(RateLimitedError, match=r"no permit within 5\.0+ s") as info:
        limiter.acquire()
    assert info.value.retry_after == 10.0
    assert clock.sleeps == [], "it never sleeps for a permit it cannot get in time"
    assert line(limiter) == 0


def test_the_callers_deadline_bounds_the_wait(clock: FakeClock) -> None:
    limiter = RateLimiter(10, max_wait=None, clock=clock)
    limiter.acquire()
    with deadline(0.05, clock=clock), pytest.raises(RateLimitedError) as info:
        limiter.acquire()
    assert info.value.retry_after == 0.1
    assert clock.sleeps == []
    with deadline(0.1, clock=clock):
        limiter.acquire()  # exactly in time
    assert clock.sleeps == [0.1]
    with deadline(1.0, clock=clock):
        clock.advance(1.0)
        assert limiter.try_acquire()
        with pytest.raises(RateLimitedError, match="deadline leaves no time"):
            limiter.acquire()


async def test_async_callers_wait_first_come_first_served(clock: FakeClock) -> None:
    limiter = RateLimiter(10, burst=1, max_wait=None, clock=clock)
    admitted: list[tuple[int, float]] = []

    @limiter
    async def call(i: int) -> None:
        admitted.append((i, round(clock.now(), 9)))

    await within(asyncio.gather(*(call(i) for i in range(6))))
    assert admitted == [(0, 0.0), (1, 0.0), (2, 0.1), (3, 0.2), (4, 0.3), (5, 0.4)]
    assert line(limiter) == 0


async def test_async_with_and_aacquire(clock: FakeClock) -> None:
    limiter = RateLimiter(1, period=1.0, clock=clock)
    async with limiter:
        pass
    with pytest.raises(RateLimitedError):
        await limiter.aacquire()
    clock.advance(1.0)
    await limiter.aacquire()
    with pytest.raises(RateLimitedError):
        async with limiter:
            pass  # pragma: no cover


def test_with_block_takes_a_permit(clock: FakeClock) -> None:
    limiter = RateLimiter(1, clock=clock)
    with limiter:
        pass
    with pytest.raises(RateLimitedError), limiter:
        pass  # pragma: no cover


def test_no_wait_skips_the_sleep_but_keeps_the_accounting() -> None:
    from resilience.testing import no_wait

    limiter = RateLimiter(1, period=3600.0, max_wait=None)  # the system clock
    with no_wait():
        limiter.acquire()
        limiter.acquire()  # would sleep an hour: the sleep is skipped, the permit is taken
        limiter.acquire()
    assert limiter.available == 0.0
    assert not limiter.try_acquire(), "the permits of the skipped hours were spent"
    assert line(limiter) == 0


# -- cancellation: a waiter never consumes a permit -----------------------------------------------


async def test_cancelling_the_sleeping_head_hands_its_turn_on() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=1.0, max_wait=None, clock=clock)
    admitted: list[tuple[str, float]] = []

    @limiter
    async def call(name: str) -> None:
        admitted.append((name, clock.now()))

    await call("a")
    b = asyncio.create_task(call("b"))
    c = asyncio.create_task(call("c"))
    await settle(lambda: line(limiter) == 2 and clock.sleeps == [1.0])
    b.cancel()  # b sleeps at the head of the line until t=1
    with pytest.raises(asyncio.CancelledError):
        await b
    await settle(lambda: clock.sleeps == [1.0, 1.0])
    assert line(limiter) == 1
    clock.advance(1.0)
    await within(c)
    assert admitted == [("a", 0.0), ("c", 1.0)], "c gets the slot b gave up"
    assert limiter.available == 0.0
    clock.advance(1.0)
    assert limiter.try_acquire(), "b's cancelled wait consumed nothing"


async def test_cancelling_a_parked_waiter_consumes_nothing() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=1.0, max_wait=None, clock=clock)
    admitted: list[tuple[str, float]] = []

    @limiter
    async def call(name: str) -> None:
        admitted.append((name, clock.now()))

    await call("a")
    tasks = {n: asyncio.create_task(call(n)) for n in "bcd"}
    await settle(lambda: line(limiter) == 3)
    tasks["c"].cancel()  # parked behind b
    with pytest.raises(asyncio.CancelledError):
        await tasks["c"]
    assert line(limiter) == 2
    clock.advance(1.0)
    await within(tasks["b"])
    await settle(lambda: len(clock.sleeps) == 2)
    clock.advance(1.0)
    await within(tasks["d"])
    assert admitted == [("a", 0.0), ("b", 1.0), ("d", 2.0)]
    assert line(limiter) == 0
    assert clock.pending_timers == 0


async def test_cancelling_the_head_lets_the_next_waiter_in_early(
    events: CapturingListener,
) -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=1.0, max_wait=3.0, name="api", clock=clock)
    limiter.acquire()
    b = asyncio.create_task(limiter.aacquire())
    c = asyncio.create_task(limiter.aacquire())  # due at t=2: within max_wait when it lines up
    await settle(lambda: line(limiter) == 2)
    b.cancel()  # c, parked behind b and due at t=2, moves up to b's slot
    with pytest.raises(asyncio.CancelledError):
        await b
    await settle(lambda: len(clock.sleeps) == 2)
    clock.advance(1.0)
    await c  # admitted at t=1 in b's place
    assert clock.now() == 1.0
    assert [e.waited for e in events.of_type(RateLimitWaited)] == [1.0]


async def test_a_parked_waiter_times_out_without_consuming() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=10.0, max_wait=15.0, clock=clock)
    limiter.acquire()
    head = asyncio.create_task(limiter.aacquire())  # due at t=10
    await settle(lambda: clock.sleeps == [10.0])
    late = asyncio.create_task(limiter.aacquire())  # due at t=20 > 15: rejected at once
    with pytest.raises(RateLimitedError) as info:
        await late
    assert info.value.retry_after == 20.0
    assert line(limiter) == 1
    clock.advance(10.0)
    await within(head)
    assert line(limiter) == 0


def test_sync_waiters_take_turns_within_their_deadlines() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=1.0, max_wait=None, clock=clock)
    limiter.acquire()
    outcomes: dict[str, object] = {}

    def waiter(name: str, budget: float) -> None:
        with deadline(budget, clock=clock):
            try:
                limiter.acquire()
                outcomes[name] = clock.now()
            except RateLimitedError as exc:
                outcomes[name] = exc

    head = threading.Thread(target=waiter, args=("head", 100.0))
    head.start()
    wait_until(lambda: clock.sleeps == [1.0])
    parked = threading.Thread(target=waiter, args=("parked", 2.0))
    parked.start()
    wait_until(lambda: line(limiter) == 2)
    clock.advance(1.0)  # head admitted at t=1; parked becomes head, due at t=2
    head.join(2)
    wait_until(lambda: len(clock.sleeps) == 2)
    clock.advance(1.0)
    parked.join(2)
    assert outcomes == {"head": 1.0, "parked": 2.0}
    assert line(limiter) == 0


def test_a_sync_waiter_delayed_past_its_deadline_gives_up() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=1.0, max_wait=None, clock=clock)
    limiter.acquire()
    outcomes: dict[str, object] = {}

    def waiter(name: str, budget: float) -> None:
        with deadline(budget, clock=clock):
            try:
                limiter.acquire()
                outcomes[name] = clock.now()
            except RateLimitedError as exc:
                outcomes[name] = exc

    head = threading.Thread(target=waiter, args=("head", 100.0))
    head.start()
    wait_until(lambda: clock.sleeps == [1.0])
    parked = threading.Thread(target=waiter, args=("parked", 2.0))
    parked.start()
    wait_until(lambda: line(limiter) == 2)
    clock.advance(3.0)  # the head wakes late, at t=3: parked's deadline (t=2) has passed
    head.join(2)
    parked.join(2)
    assert outcomes["head"] == 3.0
    err = outcomes["parked"]
    assert isinstance(err, RateLimitedError)
    assert err.retry_after == 1.0
    assert line(limiter) == 0
    assert limiter.snapshot()["rejected"] == 1


async def test_an_async_waiter_delayed_past_max_wait_gives_up() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=1.0, max_wait=2.0, clock=clock)
    limiter.acquire()
    head = asyncio.create_task(limiter.aacquire())
    await settle(lambda: clock.sleeps == [1.0])
    parked = asyncio.create_task(limiter.aacquire())
    await settle(lambda: line(limiter) == 2)
    clock.advance(3.0)  # parked's give-up timer fires at t=2, before the head gets in
    await within(head)
    with pytest.raises(RateLimitedError) as info:
        await parked
    assert info.value.retry_after == 1.0
    assert line(limiter) == 0
    assert clock.pending_timers == 0


class _StuckHead(Waiter):
    """A head of the line that never moves (its thread is stuck elsewhere)."""

    def wake(self) -> bool:  # pragma: no cover - nobody is behind it to hand a turn over
        return True

    def poke(self) -> None:  # pragma: no cover
        pass


def _stick_a_head(limiter: RateLimiter) -> None:
    with limiter._gcra.lock:
        limiter._gcra.line_up(_StuckHead())


async def test_an_async_waiter_parked_behind_a_stuck_head_gives_up_in_time(
    clock: FakeClock,
) -> None:
    limiter = RateLimiter(1, period=1.0, max_wait=2.0, clock=clock)
    limiter.acquire()
    _stick_a_head(limiter)
    task = asyncio.create_task(limiter.aacquire())  # due at t=2 if the head moved on time
    await settle(lambda: line(limiter) == 2)
    clock.advance(1.999)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.001)
    with pytest.raises(RateLimitedError) as info:
        await task
    assert info.value.retry_after == 1.0
    assert line(limiter) == 1
    assert clock.pending_timers == 0


def test_a_sync_waiter_parked_behind_a_stuck_head_gives_up_in_time(clock: FakeClock) -> None:
    limiter = RateLimiter(1, period=1.0, max_wait=2.0, clock=clock)
    limiter.acquire()
    _stick_a_head(limiter)
    errors: list[RateLimitedError] = []

    def parked() -> None:
        try:
            limiter.acquire()
        except RateLimitedError as exc:
            errors.append(exc)

    t = threading.Thread(target=parked)
    t.start()
    wait_until(lambda: line(limiter) == 2)
    clock.advance(2.0)
    t.join(2)
    [err] = errors
    assert err.retry_after == 1.0
    assert line(limiter) == 1


def test_no_time_left_and_callers_in_line_means_rejected_not_queued(clock: FakeClock) -> None:
    limiter = RateLimiter(1, burst=3, max_wait=None, clock=clock)
    _stick_a_head(limiter)  # a permit is free, but it belongs to the caller in line
    with deadline(1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(RateLimitedError, match="deadline leaves no time") as info:
            limiter.acquire()
    assert info.value.retry_after == 1e-6
    assert line(limiter) == 1


def test_new_callers_never_jump_the_line() -> None:
    clock = ManualClock()
    limiter = RateLimiter(1, period=1.0, max_wait=None, clock=clock)
    limiter.acquire()
    t = threading.Thread(target=limiter.acquire)
    t.start()
    wait_until(lambda: clock.sleeps == [1.0])
    # The permit is due at t=1 and belongs to the sleeping head, even if it wakes late.
    clock._now = 1.0  # time moves, but the head's timer has not fired yet
    assert not limiter.try_acquire()
    assert limiter.available == 0.0
    clock.advance(0.0)
    t.join(2)
    assert line(limiter) == 0


# -- composition ------------------------------------------------------------------------------


def test_retry_waits_exactly_the_retry_after_hint(clock: FakeClock) -> None:
    limiter = RateLimiter(1, period=2.0, clock=clock)

    @Pipeline(Retry(on=RateLimitedError, attempts=2, clock=clock), limiter, name="api")
    def call() -> float:
        return clock.now()

    assert call() == 0.0
    assert call() == 2.0
    assert clock.sleeps == [2.0]


def test_events_in_a_pipeline_carry_the_pipeline_name(
    clock: FakeClock, events: CapturingListener
) -> None:
    limiter = RateLimiter(1, clock=clock)

    @Pipeline(limiter, name="search")
    def search() -> None:
        return None

    search()
    with pytest.raises(RateLimitedError) as info:
        search()
    assert info.value.policy == "search"
    [event] = events.of_type(RateLimited)
    assert event.source == "search/rate_limiter"


# -- real concurrency -----------------------------------------------------------------------------


async def test_threads_and_tasks_share_one_limiter() -> None:
    limiter = RateLimiter(1_000, max_wait=None)
    admitted: list[str] = []
    guard = threading.Lock()

    def thread_main() -> None:
        for _ in range(10):
            limiter.acquire()
            with guard:
                admitted.append("thread")

    async def task_main() -> None:
        await limiter.aacquire()
        admitted.append("task")

    threads = [threading.Thread(target=thread_main) for _ in range(4)]
    for t in threads:
        t.start()
    await within(asyncio.gather(*(task_main() for _ in range(60))))
    for t in threads:
        await asyncio.to_thread(t.join, 10)
    assert admitted.count("thread") == 40
    assert admitted.count("task") == 60
    assert line(limiter) == 0
    assert limiter.snapshot()["rejected"] == 0


async def test_many_cancelled_waiters_leave_no_trace() -> None:
    limiter = RateLimiter(2_000, max_wait=None)  # one permit per 0.5 ms
    admitted: list[int] = []

    @limiter
    async def call(i: int) -> None:
        admitted.append(i)

    tasks = [asyncio.create_task(call(i)) for i in range(300)]
    await asyncio.sleep(0)
    for i in range(1, 300, 3):
        tasks[i].cancel()
    results = await within(asyncio.gather(*tasks, return_exceptions=True))
    cancelled = {i for i, r in enumerate(results) if isinstance(r, asyncio.CancelledError)}
    # On the real clock a loaded machine may admit the first one or two before the
    # cancellations land; every later one is still waiting then.
    assert set(range(7, 300, 3)) <= cancelled <= set(range(1, 300, 3))
    assert sorted(admitted) == [i for i in range(300) if i not in cancelled]
    assert admitted == sorted(admitted), "first come, first served"
    assert line(limiter) == 0
    assert limiter.snapshot()["rejected"] == 0


# -- the lock-free path under the GIL --------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["lock-free", "locked"])
def lock_free(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both drivers: lock-free (the GIL) and locked (a free-threaded build), built per test."""
    if request.param and not resilience.rate_limit._GIL:
        pytest.skip("the lock-free drivers need the GIL")
    monkeypatch.setattr(resilience.rate_limit, "_GIL", request.param)
    return bool(request.param)


def test_admissions_are_exact_with_threads_switching_every_microsecond(
    eager_switching: None, lock_free: bool, clock: FakeClock, events: CapturingListener
) -> None:
    # 15 threads take permits every way there is (decorated, try_acquire, acquire, with),
    # one more runs an event loop whose tasks take them the async ways, while the clock
    # moves on by single intervals. A permit taken twice (a lost update of ``tat``), or
    # a permit lost, shows in the total: every permit there was, and none more, is taken.
    burst = 120_000
    limiter = RateLimiter(1_000, burst=burst, clock=clock)  # one permit per 1 ms
    advanced = 0
    totals: list[tuple[int, int, int]] = []  # (admitted, refused, refusals published)

    @limiter
    def call() -> None:
        return None

    @limiter
    async def acall() -> None:
        return None

    def take(i: int) -> None:
        how = i % 8
        if how < 5:
            call()
        elif how == 5:
            limiter.acquire()
        elif how == 6:
            with limiter:
                pass
        elif not limiter.try_acquire():
            raise LookupError  # refused, unpublished

    def hammer_threads() -> None:
        nonlocal advanced
        admitted = refused = published = 0
        for i in range(10_000):
            try:
                take(i)
                admitted += 1
            except RateLimitedError:
                refused += 1
                published += 1
            except LookupError:
                refused += 1
            if i % 97 == 0:
                with lock:  # advanced counts exactly what the clock moved
                    clock.advance(0.001)
                    advanced += 1
        totals.append((admitted, refused, published))

    async def hammer_tasks() -> None:
        async def one() -> tuple[int, int]:
            admitted = refused = 0
            for i in range(150):
                try:
                    await (acall() if i % 2 else limiter.aacquire())
                    admitted += 1
                except RateLimitedError:
                    refused += 1
                await asyncio.sleep(0)
            return admitted, refused

        for admitted, refused in await asyncio.gather(*(one() for _ in range(20))):
            totals.append((admitted, refused, refused))

    lock = threading.Lock()
    starts = iter(range(16))

    def hammer() -> None:
        if next(starts) == 0:
            asyncio.run(hammer_tasks())
        else:
            hammer_threads()

    run_threads(16, hammer)
    admitted, refused, published = (sum(t[i] for t in totals) for i in range(3))
    assert admitted + refused == 15 * 10_000 + 20 * 150
    assert refused > 0, "the burst was never used up: nothing raced at its end"
    # The clock is still now: what is left can be taken, one at a time, and no more.
    left = 0
    while limiter.try_acquire():
        left += 1
    assert admitted + left == 1 + burst + advanced
    assert limiter.snapshot()["rejected"] == refused + 1
    assert len(events.of_type(RateLimited)) == published


# -- telemetry: the policy gate fused into the limiter's closure -----------------------------------


def _outcomes(policy: str) -> dict[str, int]:
    counted = STATS.get(policy, "rate_limiter")
    return {o: counted.calls(i) for i, o in enumerate(CALL_OUTCOMES)}


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
async def test_the_fused_gate_records_what_the_separate_wrapper_records(
    clock: FakeClock, durations: bool
) -> None:
    # One permit each, then none: ok, a failure, a rejection.
    fused, separate, afused = (RateLimiter(1, burst=1, clock=clock) for _ in range(3))
    fused.name, separate.name = f"fused-limiter-{durations}", f"separate-limiter-{durations}"
    afused.name = f"fused-async-limiter-{durations}"

    def work(what: str) -> str:
        if what == "fail":
            raise OSError("down")
        return what

    async def awork(what: str) -> str:
        return work(what)

    decorated, adecorated = fused(work), afused(awork)
    TELEMETRY.acquire_metrics(durations=durations)
    try:
        for what in ("ok", "fail", "refused"):
            with contextlib.suppress(OSError, RateLimitedError):
                decorated(what)
            with contextlib.suppress(OSError, RateLimitedError):
                separate.call(work, what)
            with contextlib.suppress(OSError, RateLimitedError):
                await adecorated(what)
    finally:
        TELEMETRY.release_metrics(durations=durations)
    expected = _outcomes(separate.name)
    assert expected["success"] == 1
    assert expected["rejected"] == 1
    assert sum(expected.values()) == 3
    assert _outcomes(fused.name) == expected
    assert _outcomes(afused.name) == expected
