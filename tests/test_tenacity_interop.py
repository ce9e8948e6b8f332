"""tenacity wait_* objects drive a Retry's backoff."""

from __future__ import annotations

import pytest
import tenacity

from resilience import Retry
from resilience.tenacity import TenacityWait, wait_schedule
from resilience.testing import FakeClock


class Always:
    def __init__(self) -> None:
        self.raised: list[BaseException] = []

    def __call__(self) -> None:
        self.raised.append(ConnectionError(len(self.raised) + 1))
        raise self.raised[-1]


def sleeps_of(wait: object, clock: FakeClock, attempts: int = 4) -> list[float]:
    with pytest.raises(ConnectionError):
        Retry(on=ConnectionError, attempts=attempts, backoff=wait, clock=clock)(Always())()
    return clock.sleeps


def test_wait_fixed(clock: FakeClock) -> None:
    assert sleeps_of(tenacity.wait_fixed(2), clock) == [2.0, 2.0, 2.0]


def test_wait_exponential(clock: FakeClock) -> None:
    wait = tenacity.wait_exponential(multiplier=1, min=0, max=5)
    assert sleeps_of(wait, clock, attempts=6) == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_wait_fixed_plus_wait_random(clock: FakeClock) -> None:
    sleeps = sleeps_of(tenacity.wait_fixed(1) + tenacity.wait_random(0, 0.5), clock, attempts=30)
    assert len(sleeps) == 29
    assert all(1.0 <= s <= 1.5 for s in sleeps)
    assert len(set(sleeps)) > 1  # the random part is really drawn


async def test_async_calls_use_the_tenacity_wait(clock: FakeClock) -> None:
    calls = 0

    @Retry(
        on=ConnectionError, backoff=tenacity.wait_incrementing(start=1, increment=2), clock=clock
    )
    async def work() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError
        return "ok"

    assert await work() == "ok"
    assert clock.sleeps == [1.0, 3.0]


class WaitFromError(tenacity.wait.wait_base):
    """A user's own tenacity wait: reads the outcome, as tenacity waits may."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, BaseException | None, float]] = []

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        assert retry_state.outcome is not None
        self.seen.append(
            (
                retry_state.attempt_number,
                retry_state.outcome.exception(),
                retry_state.seconds_since_start or 0.0,
            )
        )
        return 0.5 * retry_state.attempt_number


def test_a_custom_tenacity_wait_subclass_is_accepted(clock: FakeClock) -> None:
    wait = WaitFromError()
    work = Always()
    with pytest.raises(ConnectionError):
        Retry(on=ConnectionError, attempts=3, backoff=wait, clock=clock, total_timeout=60)(work)()
    assert clock.sleeps == [0.5, 1.0]
    assert [(n, e) for n, e, _ in wait.seen] == [(1, work.raised[0]), (2, work.raised[1])]
    assert [round(t, 6) for _, _, t in wait.seen] == [0.0, 0.5]


def test_a_tenacity_wait_sees_results_too(clock: FakeClock) -> None:
    results: list[object] = []

    class WaitOnResult(tenacity.wait.wait_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> float:
            assert retry_state.outcome is not None
            results.append(retry_state.outcome.result())
            return 1.0

    answers = iter([None, None, "x"])
    retry = Retry(on=(), on_result=lambda r: r is None, backoff=WaitOnResult(), clock=clock)
    assert retry(lambda: next(answers))() == "x"
    assert results == [None, None]


def test_wait_schedule_adapter(clock: FakeClock) -> None:
    schedule = wait_schedule(tenacity.wait_fixed(3))
    assert isinstance(schedule, TenacityWait)
    assert repr(schedule).startswith("TenacityWait(<tenacity.wait.wait_fixed")
    assert sleeps_of(schedule, clock, attempts=2) == [3.0]
    with pytest.raises(TypeError, match="wait must be a tenacity wait"):
        TenacityWait(3)


def test_negative_waits_become_zero(clock: FakeClock) -> None:
    assert sleeps_of(tenacity.wait_fixed(-1), clock, attempts=2) == [0.0]
