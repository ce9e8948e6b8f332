"""Retry: schedules, what is retried, hints, exhaustion, budgets and attempt blocks.

Every test runs on the fake clock: a schedule is asserted through ``clock.sleeps``, never
through wall-clock time. Tests marked with ``mode`` run the same scenario through the
sync driver and the async driver.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from resilience import (
    Backoff,
    GiveUpReason,
    RetryBudget,
    RetryGaveUp,
    RetryScheduled,
)
from resilience import Retry as _Retry
from resilience.testing import CapturingListener, FakeClock

MODES = ["sync", "async"]


def Retry(clock: FakeClock, **kwargs: Any) -> _Retry:
    """A Retry on the fake clock with a name, so events are easy to find."""
    kwargs.setdefault("name", "svc")
    return _Retry(clock=clock, **kwargs)


async def drive(strategy: Any, body: Callable[[], Any], mode: str) -> Any:
    """Run ``body`` once through ``strategy``, decorated as a sync or a coroutine function."""
    if mode == "sync":

        def sync_fn() -> Any:
            return body()

        return strategy(sync_fn)()

    async def async_fn() -> Any:
        await asyncio.sleep(0)
        return body()

    return await strategy(async_fn)()


class Flaky:
    """Fails with the errors it is given, in order, then returns ``result``; records calls."""

    def __init__(self, *errors: BaseException, result: Any = "ok") -> None:
        self.errors = list(errors)
        self.raised: list[BaseException] = []
        self.calls = 0
        self.result = result

    def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            exc = self.errors.pop(0)
            self.raised.append(exc)
            raise exc
        return self.result


class Always:
    """Raises a new ``kind`` error on every call, numbered from 1; records them."""

    def __init__(self, kind: type[Exception] = ValueError) -> None:
        self.kind = kind
        self.raised: list[BaseException] = []

    @property
    def calls(self) -> int:
        return len(self.raised)

    def __call__(self) -> Any:
        exc = self.kind(len(self.raised) + 1)
        self.raised.append(exc)
        raise exc


# -- schedules ------------------------------------------------------------------------------------


def expected_schedule(
    kind: str, jitter: str, base: float, cap: float, mult: float, retries: int, seed: int
) -> list[float]:
    """The delays a Backoff should produce, computed here from its documented formulas."""
    draws = random.Random(seed)
    out: list[float] = []
    previous = 0.0
    for n in range(1, retries + 1):
        if kind == "constant":
            d = base
        elif kind == "linear":
            d = base * n
        else:
            d = base * mult ** (n - 1)
        d = min(d, cap)
        if jitter == "full":
            d = d * draws.random()
        elif jitter == "equal":
            d = d / 2 + d / 2 * draws.random()
        elif jitter == "decorrelated":
            low = base
            high = 3 * max(previous, base)
            d = min(cap, low + (high - low) * draws.random())
        out.append(d)
        previous = d
    return out


@pytest.mark.parametrize("kind", ["constant", "linear", "exponential"])
@pytest.mark.parametrize("jitter", ["none", "full", "equal", "decorrelated"])
@pytest.mark.parametrize("mode", MODES)
async def test_schedule_is_exact_under_a_seeded_random(
    clock: FakeClock, kind: str, jitter: str, mode: str
) -> None:
    cap = 2.5 if kind != "constant" else 0.5
    backoff = Backoff(kind, delay=0.5, max_delay=cap, multiplier=3.0, jitter=jitter)
    retry = Retry(clock, on=ValueError, attempts=7, backoff=backoff, rng=random.Random(99))
    work = Always()

    with pytest.raises(ValueError):
        await drive(retry, work, mode)

    assert work.calls == 7
    expected = expected_schedule(kind, jitter, 0.5, cap, 3.0, 6, seed=99)
    assert clock.sleeps == pytest.approx(expected)


def test_no_jitter_schedules_by_hand(clock: FakeClock) -> None:
    cases = {
        "constant": (Backoff.constant(0.2), [0.2, 0.2, 0.2, 0.2]),
        "linear": (Backoff.linear(0.2, max_delay=0.7, jitter="none"), [0.2, 0.4, 0.6, 0.7]),
        "exponential": (
            Backoff.exponential(0.1, multiplier=3, max_delay=2, jitter="none"),
            [0.1, 0.3, 0.9, 2.0],
        ),
    }
    for backoff, expected in cases.values():
        clock.sleeps.clear()
        with pytest.raises(ValueError):
            Retry(clock, on=ValueError, attempts=5, backoff=backoff)(Always())()
        assert clock.sleeps == pytest.approx(expected)


def test_max_delay_caps_the_exponential_growth(clock: FakeClock) -> None:
    backoff = Backoff.exponential(1, max_delay=5, jitter="none")
    with pytest.raises(ValueError):
        Retry(clock, on=ValueError, attempts=7, backoff=backoff)(Always())()
    assert clock.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_the_default_backoff_is_exponential_with_full_jitter(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        Retry(clock, on=ValueError, attempts=4, rng=random.Random(5))(Always())()
    assert clock.sleeps == pytest.approx(expected_schedule("exponential", "full", 0.1, 10, 2, 3, 5))


def test_a_custom_schedule_sees_each_attempt(clock: FakeClock) -> None:
    seen: list[tuple[int, float, float, str]] = []

    class Recording:
        def delay(self, info: Any, rng: random.Random) -> float:
            seen.append((info.attempt, info.elapsed, info.previous_delay, str(info.error)))
            return 1.5

    with pytest.raises(ValueError):
        Retry(clock, on=ValueError, attempts=3, backoff=Recording(), total_timeout=60)(Always())()
    assert seen == [(1, 0.0, 0.0, "1"), (2, 1.5, 1.5, "2")]
    assert clock.sleeps == [1.5, 1.5]


# -- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_total_timeout_stops_before_a_wait_would_cross_it(
    clock: FakeClock, events: CapturingListener, mode: str
) -> None:
    retry = Retry(
        clock, on=ValueError, attempts=None, total_timeout=3.5, backoff=Backoff.constant(1)
    )
    work = Always()
    with pytest.raises(ValueError) as info:
        await drive(retry, work, mode)
    assert work.calls == 4
    assert clock.sleeps == [1.0, 1.0, 1.0]
    assert info.value is work.raised[-1]
    (gave_up,) = events.of_type(RetryGaveUp)
    assert gave_up.reason is GiveUpReason.TOTAL_TIMEOUT
    assert gave_up.attempts == 4


def test_a_wait_ending_exactly_at_total_timeout_gives_up_for_total_timeout(
    clock: FakeClock, events: CapturingListener
) -> None:
    # At t=2 the next 1 s wait would leave nothing of the 3 s: the reason is the retry's own
    # total_timeout, not the deadline it also sets for inner calls.
    retry = Retry(clock, on=ValueError, attempts=10, total_timeout=3, backoff=Backoff.constant(1))
    with pytest.raises(ValueError):
        retry(Always())()
    assert clock.sleeps == [1.0, 1.0]
    (gave_up,) = events.of_type(RetryGaveUp)
    assert gave_up.reason is GiveUpReason.TOTAL_TIMEOUT


def test_total_timeout_accepts_timedelta(clock: FakeClock) -> None:
    retry = Retry(
        clock, on=ValueError, attempts=None, total_timeout=timedelta(seconds=2.5),
        backoff=Backoff.constant(1),
    )  # fmt: skip
    with pytest.raises(ValueError):
        retry(Always())()
    assert clock.sleeps == [1.0, 1.0]


def test_attempts_one_never_retries(clock: FakeClock, events: CapturingListener) -> None:
    work = Always()
    with pytest.raises(ValueError) as info:
        Retry(clock, on=ValueError, attempts=1)(work)()
    assert work.calls == 1
    assert clock.sleeps == []
    assert info.value.__notes__ == ["resilience: svc/retry gave up after 1 attempt(s) (attempts)"]
    assert [e.reason for e in events.of_type(RetryGaveUp)] == [GiveUpReason.ATTEMPTS]


# -- what is retried ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_retries_the_listed_exception_types_until_success(
    clock: FakeClock, mode: str
) -> None:
    work = Flaky(ValueError("a"), KeyError("b"), result=42)
    retry = Retry(clock, on=(ValueError, KeyError), attempts=3, backoff=Backoff.constant(0.1))
    assert await drive(retry, work, mode) == 42
    assert work.calls == 3
    assert clock.sleeps == [0.1, 0.1]


@pytest.mark.parametrize("mode", MODES)
async def test_an_error_not_listed_is_raised_at_once(clock: FakeClock, mode: str) -> None:
    boom = TypeError("bug")
    work = Flaky(boom)
    with pytest.raises(TypeError) as info:
        await drive(Retry(clock, on=ValueError), work, mode)
    assert info.value is boom
    assert work.calls == 1
    assert not hasattr(boom, "__notes__")


@pytest.mark.parametrize("mode", MODES)
async def test_retries_what_the_predicate_accepts(clock: FakeClock, mode: str) -> None:
    def transient(exc: BaseException) -> bool:
        return isinstance(exc, OSError) and exc.errno == 11

    retry = Retry(clock, on=transient, attempts=5, backoff=Backoff.constant(0))
    work = Flaky(OSError(11, "again"), OSError(11, "again"), OSError(2, "missing"))
    with pytest.raises(OSError) as info:
        await drive(retry, work, mode)
    assert info.value.errno == 2
    assert work.calls == 3


@pytest.mark.parametrize("mode", MODES)
async def test_retries_results_and_returns_the_first_accepted(clock: FakeClock, mode: str) -> None:
    answers = iter([None, None, "done"])
    calls = 0

    def body() -> Any:
        nonlocal calls
        calls += 1
        return next(answers)

    retry = Retry(clock, on=(), on_result=lambda r: r is None, backoff=Backoff.constant(1))
    assert await drive(retry, body, mode) == "done"
    assert calls == 3
    assert clock.sleeps == [1.0, 1.0]


@pytest.mark.parametrize("mode", MODES)
async def test_on_result_exhaustion_returns_the_last_result(
    clock: FakeClock, events: CapturingListener, mode: str
) -> None:
    results: list[object] = []

    def body() -> object:
        results.append(object())
        return results[-1]

    retry = Retry(clock, on=(), on_result=lambda r: True, attempts=3, backoff=Backoff.constant(1))
    assert await drive(retry, body, mode) is results[-1]
    assert len(results) == 3
    (gave_up,) = events.of_type(RetryGaveUp)
    assert (gave_up.attempts, gave_up.reason, gave_up.error) == (3, GiveUpReason.ATTEMPTS, None)


@pytest.mark.parametrize("mode", MODES)
async def test_on_result_and_errors_mix_in_one_call(clock: FakeClock, mode: str) -> None:
    steps: list[Any] = [ValueError("x"), "retry me", "fine"]

    def body() -> Any:
        step = steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    retry = Retry(clock, on=ValueError, on_result=lambda r: r == "retry me", attempts=3)
    assert await drive(retry, body, mode) == "fine"
    assert steps == []


# -- retry_after hints ----------------------------------------------------------------------------


class Throttled(Exception):
    def __init__(self, retry_after: Any) -> None:
        super().__init__(f"retry after {retry_after!r}")
        self.retry_after = retry_after


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (2.5, 2.5),
        (3, 3.0),
        (timedelta(milliseconds=1500), 1.5),
        (-4.0, 0.0),
        (500.0, 60.0),  # clamped by the default max_retry_after
    ],
)
async def test_a_retry_after_attribute_replaces_the_backoff(
    clock: FakeClock, events: CapturingListener, mode: str, hint: Any, expected: float
) -> None:
    work = Flaky(Throttled(hint))
    retry = Retry(clock, on=Throttled, backoff=Backoff.constant(0.1))
    assert await drive(retry, work, mode) == "ok"
    assert clock.sleeps == [expected]
    (scheduled,) = events.of_type(RetryScheduled)
    assert scheduled.hinted is True
    assert scheduled.delay == expected


@pytest.mark.parametrize("hint", [None, "soon", float("nan"), float("inf"), True])
def test_unusable_hints_fall_back_to_the_backoff(
    clock: FakeClock, events: CapturingListener, hint: Any
) -> None:
    work = Flaky(Throttled(hint))
    Retry(clock, on=Throttled, backoff=Backoff.constant(0.1))(work)()
    assert clock.sleeps == [0.1]
    assert [e.hinted for e in events.of_type(RetryScheduled)] == [False]


def test_max_retry_after_clamps_hints(clock: FakeClock) -> None:
    work = Flaky(Throttled(30), Throttled(timedelta(minutes=5)))
    retry = Retry(clock, on=Throttled, max_retry_after=timedelta(seconds=4))
    retry(work)()
    assert clock.sleeps == [4.0, 4.0]


def test_a_custom_extractor_reads_the_hint(clock: FakeClock) -> None:
    class Busy(Exception):
        pass

    busy = Busy()
    busy.args = ("wait", 7)
    seen: list[BaseException] = []

    def extract(exc: BaseException) -> float:
        seen.append(exc)
        return float(exc.args[1])

    Retry(clock, on=Busy, retry_after=extract)(Flaky(busy))()
    assert clock.sleeps == [7.0]
    assert seen == [busy]


def test_retry_after_none_ignores_hints(clock: FakeClock, events: CapturingListener) -> None:
    work = Flaky(Throttled(30), Throttled(30))
    Retry(clock, on=Throttled, retry_after=None, backoff=Backoff.constant(0.25))(work)()
    assert clock.sleeps == [0.25, 0.25]
    assert not any(e.hinted for e in events.of_type(RetryScheduled))


def test_a_hint_can_come_from_a_result(clock: FakeClock) -> None:
    class Response:
        def __init__(self, status: int, retry_after: float | None = None) -> None:
            self.status = status
            self.retry_after = retry_after

    answers = iter([Response(503, 2.0), Response(200)])
    retry = Retry(clock, on=(), on_result=lambda r: r.status == 503)
    assert retry(lambda: next(answers))().status == 200
    assert clock.sleeps == [2.0]


# -- exhaustion re-raises the last error itself ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "full-path"])
async def test_exhaustion_reraises_the_last_exception_itself(
    clock: FakeClock, mode: str, fast: bool
) -> None:
    causes: list[BaseException] = []

    def body() -> None:
        cause = OSError(len(causes) + 1)
        causes.append(cause)
        raise ValueError(f"attempt {len(causes)}") from cause

    # total_timeout (or on_result, or a budget) takes the full driver; without, the fast one.
    extra: dict[str, Any] = {} if fast else {"total_timeout": 100}
    retry = Retry(clock, on=ValueError, attempts=3, backoff=Backoff.constant(1), **extra)
    with pytest.raises(ValueError, match="attempt 3") as info:
        await drive(retry, body, mode)

    err = info.value
    assert err.__cause__ is causes[-1]
    # The earlier attempts' errors are not chained onto the one the caller gets.
    assert err.__context__ is None
    assert err.__notes__ == ["resilience: svc/retry gave up after 3 attempt(s) (attempts)"]


def test_notes_accumulate_through_nested_retries(clock: FakeClock) -> None:
    work = Always()
    inner = Retry(clock, on=ValueError, attempts=2, backoff=Backoff.constant(0), name="inner")
    outer = Retry(clock, on=ValueError, attempts=2, backoff=Backoff.constant(0), name="outer")
    with pytest.raises(ValueError) as info:
        outer(inner(work))()
    assert work.calls == 4
    assert info.value.__notes__ == [
        "resilience: inner/retry gave up after 2 attempt(s) (attempts)",
        "resilience: outer/retry gave up after 2 attempt(s) (attempts)",
    ]


def test_the_note_never_replaces_the_error(clock: FakeClock) -> None:
    # An exception whose __notes__ is not a list cannot take a note (PEP 678); the caller
    # must still get that exception, with its own notes untouched.
    err = ValueError("odd notes")
    err.__notes__ = ("kept",)  # type: ignore[attr-defined]
    with pytest.raises(ValueError) as info:
        Retry(clock, on=ValueError, attempts=2)(Flaky(err, err))()
    assert info.value is err
    assert err.__notes__ == ("kept",)  # type: ignore[attr-defined]


class NoAddNote(ValueError):
    """Behaves like an exception on Python 3.10, where ``add_note`` does not exist."""

    add_note = None  # type: ignore[assignment]


def test_the_note_is_added_by_hand_where_add_note_is_missing(clock: FakeClock) -> None:
    errors = [NoAddNote(1), NoAddNote(2)]
    errors[1].__notes__ = ["from the user"]
    with pytest.raises(NoAddNote) as info:
        Retry(clock, on=ValueError, attempts=2)(Flaky(*errors))()
    assert info.value is errors[1]
    assert info.value.__notes__ == [
        "from the user",
        "resilience: svc/retry gave up after 2 attempt(s) (attempts)",
    ]
    first = NoAddNote(3)
    with pytest.raises(NoAddNote):
        Retry(clock, on=ValueError, attempts=1)(Flaky(first))()
    assert first.__notes__ == ["resilience: svc/retry gave up after 1 attempt(s) (attempts)"]


# -- the retry budget -----------------------------------------------------------------------------


def test_budget_allows_a_ratio_of_requests(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0, window=10, clock=clock)
    for _ in range(4):
        budget.deposit()
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]
    assert budget.snapshot() == {"requests": 4, "retries": 2, "available": 0.0}


def test_budget_floor_allows_retries_without_traffic(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.5, window=10, clock=clock)
    assert [budget.try_withdraw() for _ in range(6)] == [True] * 5 + [False]


def test_budget_window_rolls_on_the_clock(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, window=10, clock=clock)
    budget.deposit()  # t=0
    clock.advance(5)
    budget.deposit()  # t=5
    assert budget.try_withdraw()  # t=5: 2 requests
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(5.5)  # t=10.5: the first second of history has gone, with its request
    assert budget.snapshot() == {"requests": 1, "retries": 2, "available": 0.0}
    clock.advance(5)  # t=15.5: the retries made at t=5 have gone too
    assert budget.snapshot() == {"requests": 0, "retries": 0, "available": 0.0}
    budget.deposit()
    assert budget.try_withdraw()


def test_budget_forgets_everything_after_a_long_pause(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, window=10, clock=clock)
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(9.5)
    assert not budget.try_withdraw()
    clock.advance(1_000_000)
    assert budget.try_withdraw()
    assert budget.snapshot()["retries"] == 1


@pytest.mark.parametrize("mode", MODES)
async def test_an_empty_budget_fails_fast_with_the_original_error(
    clock: FakeClock, events: CapturingListener, mode: str
) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    work = Always()
    retry = Retry(clock, on=ValueError, attempts=5, budget=budget, backoff=Backoff.constant(1))
    with pytest.raises(ValueError) as info:
        await drive(retry, work, mode)
    assert work.calls == 1
    assert info.value is work.raised[0]
    assert clock.sleeps == []
    (gave_up,) = events.of_type(RetryGaveUp)
    assert (gave_up.reason, gave_up.attempts, gave_up.error) == (
        GiveUpReason.BUDGET,
        1,
        work.raised[0],
    )
    assert "(budget)" in info.value.__notes__[0]


def test_a_budget_is_shared_by_the_retries_that_use_it(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.3, window=10, clock=clock)  # 3 retries
    first = Retry(clock, on=ValueError, attempts=3, budget=budget, backoff=Backoff.constant(0))
    second = Retry(clock, on=ValueError, attempts=3, budget=budget, backoff=Backoff.constant(0))
    a, b = Always(), Always()
    with pytest.raises(ValueError):
        first(a)()
    with pytest.raises(ValueError):
        second(b)()
    assert (a.calls, b.calls) == (3, 2)
    assert budget.snapshot()["requests"] == 2


# -- attempt blocks -------------------------------------------------------------------------------


def test_attempt_blocks_retry_until_the_block_succeeds(clock: FakeClock) -> None:
    work = Flaky(ValueError(1), ValueError(2))
    numbers: list[int] = []
    retry = Retry(clock, on=ValueError, backoff=Backoff.constant(0.5))
    for attempt in retry.attempts():
        with attempt:
            numbers.append(attempt.number)
            result = work()
    assert result == "ok"
    assert numbers == [1, 2, 3]
    assert clock.sleeps == [0.5, 0.5]


async def test_async_attempt_blocks_retry_until_the_block_succeeds(clock: FakeClock) -> None:
    work = Flaky(ValueError(1))
    numbers: list[int] = []
    retry = Retry(clock, on=ValueError, backoff=Backoff.constant(0.5))
    async for attempt in retry.attempts():
        with attempt:
            numbers.append(attempt.number)
            await asyncio.sleep(0)
            result = work()
    assert result == "ok"
    assert numbers == [1, 2]
    assert clock.sleeps == [0.5]


def test_attempt_blocks_give_up_with_the_last_error(
    clock: FakeClock, events: CapturingListener
) -> None:
    work = Always()
    retry = Retry(clock, on=ValueError, attempts=3, backoff=Backoff.constant(1))
    with pytest.raises(ValueError) as info:
        for attempt in retry.attempts(name="block"):
            with attempt:
                work()
    assert info.value is work.raised[-1]
    assert work.calls == 3
    assert info.value.__notes__ == ["resilience: block/retry gave up after 3 attempt(s) (attempts)"]
    assert [e.policy for e in events.events] == ["block"] * 3


async def test_async_attempt_blocks_give_up_with_the_last_error(clock: FakeClock) -> None:
    work = Always()
    retry = Retry(clock, on=ValueError, attempts=3, backoff=Backoff.constant(1))
    with pytest.raises(ValueError) as info:
        async for attempt in retry.attempts():
            with attempt:
                work()
    assert info.value is work.raised[-1]
    assert work.calls == 3
    assert clock.sleeps == [1.0, 1.0]


@pytest.mark.parametrize("error", [TypeError("bug"), KeyboardInterrupt()])
def test_attempt_blocks_do_not_retry_other_errors(clock: FakeClock, error: BaseException) -> None:
    entered = 0
    with pytest.raises(type(error)) as info:
        for attempt in Retry(clock, on=ValueError).attempts():
            with attempt:
                entered += 1
                raise error
    assert info.value is error
    assert entered == 1


def test_attempt_blocks_use_the_budget(clock: FakeClock) -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)
    work = Always()
    with pytest.raises(ValueError):
        for attempt in Retry(clock, on=ValueError, budget=budget).attempts():
            with attempt:
                work()
    assert work.calls == 1
    assert budget.snapshot()["requests"] == 1


def test_attempt_blocks_stop_at_total_timeout(clock: FakeClock) -> None:
    work = Always()
    retry = Retry(
        clock, on=ValueError, attempts=None, total_timeout=2.5, backoff=Backoff.constant(1)
    )
    with pytest.raises(ValueError):
        for attempt in retry.attempts():
            with attempt:
                work()
    assert work.calls == 3


# -- methods and repr -----------------------------------------------------------------------------


def test_retry_decorates_methods_with_per_instance_state(clock: FakeClock) -> None:
    class Client:
        def __init__(self, failures: int) -> None:
            self.failures = failures
            self.calls = 0

        @_Retry(on=ConnectionError, attempts=4, backoff=Backoff.constant(0.1), clock=clock)
        def fetch(self, key: str) -> str:
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionError(key)
            return key.upper()

    a, b = Client(2), Client(0)
    assert a.fetch("x") == "X"
    assert b.fetch(key="y") == "Y"
    assert (a.calls, b.calls) == (3, 1)


def test_repr_and_properties(clock: FakeClock) -> None:
    budget = RetryBudget(clock=clock)
    retry = _Retry(
        on=ValueError,
        attempts=4,
        backoff=Backoff.constant(1),
        total_timeout=9,
        budget=budget,
        name="db",
        clock=clock,
    )
    assert repr(retry) == (
        "Retry(on=<class 'ValueError'>, attempts=4, backoff=Backoff('constant', delay=1, "
        "max_delay=1, multiplier=2, jitter='none'), total_timeout=9, name='db')"
    )
    assert retry.attempts_limit == 4
    assert retry.budget is budget
    assert repr(budget) == "RetryBudget(ratio=0.2, min_per_second=10, window=10)"
    assert retry.snapshot() == {
        "kind": "retry",
        "name": "db",
        "attempts": 4,
        "budget": {"requests": 0, "retries": 0, "available": 100.0},
    }
