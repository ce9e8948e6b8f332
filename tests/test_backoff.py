"""Backoff schedules: the formulas, the cap, and properties that hold for every input."""

from __future__ import annotations

import contextlib
import random
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import AttemptInfo, Backoff, BackoffKind, Jitter, Retry, Schedule
from resilience.testing import FakeClock


def info(attempt: int, previous: float = 0.0) -> AttemptInfo:
    return AttemptInfo(attempt=attempt, elapsed=0.0, previous_delay=previous, error=None)


def test_base_delays_by_kind() -> None:
    constant = Backoff.constant(0.5)
    linear = Backoff.linear(0.5, max_delay=1.75)
    exponential = Backoff.exponential(0.25, multiplier=3, max_delay=5)
    assert [constant.base_delay(n) for n in range(1, 5)] == [0.5] * 4
    assert [linear.base_delay(n) for n in range(1, 6)] == [0.5, 1.0, 1.5, 1.75, 1.75]
    assert [exponential.base_delay(n) for n in range(1, 6)] == [0.25, 0.75, 2.25, 5.0, 5.0]


def test_no_jitter_returns_the_base_delay() -> None:
    b = Backoff.exponential(1, max_delay=100, jitter="none")
    assert [b.delay(info(n), random.Random(0)) for n in (1, 2, 3, 8)] == [1.0, 2.0, 4.0, 100.0]


def test_full_and_equal_jitter_draw_once_per_delay() -> None:
    full = Backoff.exponential(2, max_delay=100, jitter=Jitter.FULL)
    equal = Backoff.exponential(2, max_delay=100, jitter=Jitter.EQUAL)
    draws = random.Random(3)
    r1, r2 = draws.random(), draws.random()
    rng = random.Random(3)
    assert full.delay(info(3), rng) == pytest.approx(8 * r1)
    assert equal.delay(info(3), rng) == pytest.approx(4 + 4 * r2)


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    b = Backoff.exponential(1, max_delay=20, jitter="decorrelated")
    draws = random.Random(8)
    r1, r2, r3 = draws.random(), draws.random(), draws.random()
    rng = random.Random(8)
    assert b.delay(info(1, previous=0.0), rng) == pytest.approx(1 + 2 * r1)  # [base, 3 base]
    assert b.delay(info(2, previous=5.0), rng) == pytest.approx(1 + 14 * r2)  # [base, 3 prev]
    assert b.delay(info(3, previous=50.0), rng) == pytest.approx(min(20.0, 1 + 149 * r3))


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    b = Backoff.exponential(0.1, multiplier=10, max_delay=30, jitter="none")
    assert b.delay(info(10_000), random.Random(0)) == 30.0
    # 3 ** 700 does not fit in a float: the delay is the cap, not an OverflowError.
    assert Backoff.exponential(1, multiplier=3, max_delay=10).base_delay(701) == 10.0
    assert Backoff.exponential(0, multiplier=3, max_delay=10).base_delay(701) == 0.0
    assert Backoff.exponential(0.1, multiplier=1, max_delay=30).base_delay(10_000) == 0.1
    assert Backoff.linear(1, max_delay=60).base_delay(10**9) == 60.0


def test_constructors_and_repr() -> None:
    b = Backoff(
        "linear", delay=timedelta(milliseconds=200), max_delay=3, multiplier=1.5, jitter="equal"
    )
    assert (b.kind, b.base, b.max_delay, b.multiplier, b.jitter) == (
        BackoffKind.LINEAR,
        0.2,
        3.0,
        1.5,
        Jitter.EQUAL,
    )
    assert repr(b) == ("Backoff('linear', delay=0.2, max_delay=3, multiplier=1.5, jitter='equal')")
    assert Backoff() == Backoff.exponential()
    assert Backoff.constant(1).jitter is Jitter.NONE
    assert Backoff.constant(1).max_delay == 1.0
    assert Backoff.linear().jitter is Jitter.FULL
    assert isinstance(Backoff(), Schedule)
    assert hash(Backoff.constant(1)) == hash(Backoff.constant(1))


def test_a_long_retry_with_a_large_multiplier_keeps_going(clock: FakeClock) -> None:
    calls = 0

    @Retry(
        on=ValueError,
        attempts=None,
        total_timeout=timedelta(hours=1),
        backoff=Backoff.exponential(0.5, multiplier=3, max_delay=1, jitter="none"),
        clock=clock,
    )
    def down_for_a_while() -> str:
        nonlocal calls
        calls += 1
        if calls < 1000:
            raise ValueError
        return "back"

    assert down_for_a_while() == "back"
    assert clock.sleeps[-1] == 1.0


# -- properties -----------------------------------------------------------------------------------

kinds = st.sampled_from(list(BackoffKind))
jitters = st.sampled_from(list(Jitter))
durations = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    base = draw(durations)
    cap = draw(st.floats(min_value=base, max_value=1e5, allow_nan=False, allow_infinity=False))
    return Backoff(
        draw(kinds),
        delay=base,
        max_delay=cap,
        multiplier=draw(st.floats(min_value=1.0, max_value=100.0)),
        jitter=draw(jitters),
    )


@given(
    backoff=backoffs(),
    attempt=st.integers(min_value=1, max_value=100_000),
    previous=st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_every_delay_is_between_zero_and_max_delay(
    backoff: Backoff, attempt: int, previous: float, seed: int
) -> None:
    d = backoff.delay(info(attempt, previous), random.Random(seed))
    assert 0.0 <= d <= backoff.max_delay


@settings(max_examples=60, deadline=None)
@given(
    backoff=backoffs(),
    attempts=st.integers(min_value=1, max_value=12),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_attempts_never_exceed_the_limit(backoff: Backoff, attempts: int, seed: int) -> None:
    clock = FakeClock()
    calls = 0

    @Retry(on=ValueError, attempts=attempts, backoff=backoff, clock=clock, rng=random.Random(seed))
    def always_fails() -> None:
        nonlocal calls
        calls += 1
        raise ValueError

    with pytest.raises(ValueError):
        always_fails()
    assert calls == attempts
    assert len(clock.sleeps) == attempts - 1
    assert all(0.0 <= s <= backoff.max_delay for s in clock.sleeps)


@settings(max_examples=60, deadline=None)
@given(
    backoff=backoffs(),
    total=st.floats(min_value=0.001, max_value=1e5, allow_nan=False, allow_infinity=False),
    attempts=st.none() | st.integers(min_value=1, max_value=50),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_total_sleep_never_exceeds_total_timeout(
    backoff: Backoff, total: float, attempts: int | None, seed: int
) -> None:
    clock = FakeClock()
    calls = 0

    @Retry(
        on=ValueError,
        attempts=attempts,
        total_timeout=total,
        backoff=backoff,
        clock=clock,
        rng=random.Random(seed),
    )
    def fails_while_time_allows() -> None:
        nonlocal calls
        calls += 1
        # A zero backoff would retry for ever under attempts=None: bound it by hand.
        if calls < 200:
            raise ValueError

    with contextlib.suppress(ValueError):
        fails_while_time_allows()
    assert sum(clock.sleeps) < total
    assert clock.now() < total
    if attempts is not None:
        assert calls <= attempts


@settings(max_examples=40, deadline=None)
@given(
    backoff=backoffs(),
    attempts=st.integers(min_value=1, max_value=8),
    seed=st.integers(min_value=0, max_value=2**32),
)
async def test_async_attempts_never_exceed_the_limit(
    backoff: Backoff, attempts: int, seed: int
) -> None:
    clock = FakeClock()
    calls = 0

    @Retry(on=ValueError, attempts=attempts, backoff=backoff, clock=clock, rng=random.Random(seed))
    async def always_fails() -> None:
        nonlocal calls
        calls += 1
        raise ValueError

    with pytest.raises(ValueError):
        await always_fails()
    assert calls == attempts
    assert all(0.0 <= s <= backoff.max_delay for s in clock.sleeps)
