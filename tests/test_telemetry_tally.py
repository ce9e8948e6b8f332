"""Metrics recorded on the fused fast path, checked against what happened.

Every call of a scripted scenario is timed from outside on the same fake clock and its
outcome read from what it raised; the counters, the duration histogram and its sum
must agree exactly, for each strategy that serves metrics in its own closure, sync and
async, timed and counted only, and under threads switching every microsecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from resilience import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    Classifier,
    Fallback,
    Outcome,
    Pipeline,
    Retry,
    Strategy,
    Timeout,
)
from resilience import _metrics as metrics
from resilience._core.telemetry import (
    CALL_OUTCOMES,
    QUICK,
    QUICK_SLOT,
    SLOTS,
    STATS,
    SUCCESS,
    TELEMETRY,
    UNKNOWN,
)
from resilience.testing import FakeClock
from telemetry_standins import unique

OUTCOMES = range(len(CALL_OUTCOMES))


# -- the oracle -----------------------------------------------------------------------------------


class Record:
    """Per outcome, the duration of every call, measured around the decorated function."""

    def __init__(self) -> None:
        self.durations: dict[str, list[float]] = {name: [] for name in CALL_OUTCOMES}

    def add(self, outcome: str, seconds: float) -> None:
        self.durations[outcome].append(seconds)


def outcome_of(error: BaseException | None) -> str:
    if error is None:
        return "success"
    if isinstance(error, CircuitOpenError):
        return "rejected"
    if isinstance(error, ValueError):
        return "known_failure"
    if isinstance(error, Exception):
        return "unknown_failure"
    return "cancelled"


def expected_buckets(durations: list[float]) -> list[tuple[float, int]]:
    """The exposed cumulative buckets of ``durations``: ``le = 2**b`` ns counts the ones
    whose duration in ns has at most ``b`` bits."""
    bits = [math.trunc(d * 1e9).bit_length() for d in durations]
    buckets = [(2**b / 1e9, sum(1 for n in bits if n <= b)) for b in range(17, 36)]
    return [*buckets, (math.inf, len(durations))]


def exposed(policy: str) -> tuple[list[tuple[float, int]], float]:
    family = metrics.read("resilience_call_duration_seconds")
    for labels, histogram in family.histograms:
        if labels == (policy,):
            return histogram
    return [], 0.0


def check(policy: str, kind: str, record: Record, *, durations: bool) -> None:
    stats = STATS.get(policy, kind)
    for i, name in enumerate(CALL_OUTCOMES):
        seen = record.durations[name]
        assert stats.calls(i) == len(seen), name
        assert stats.timed(i) == (len(seen) if durations else 0), name
        assert stats.seconds(i) == pytest.approx(sum(seen) if durations else 0.0, abs=1e-12)
    every = [d for name in CALL_OUTCOMES for d in record.durations[name]]
    buckets, total = exposed(policy)
    if durations:
        assert buckets == expected_buckets(every)
        assert total == pytest.approx(sum(every), abs=1e-12)
    else:
        assert buckets == expected_buckets([])
        assert total == 0.0


@contextlib.contextmanager
def metrics_on(*, durations: bool) -> Iterator[None]:
    TELEMETRY.acquire_metrics(durations=durations)
    try:
        yield
    finally:
        TELEMETRY.release_metrics(durations=durations)


# -- the scenario ---------------------------------------------------------------------------------

# What the function does on each step, on the fake clock. "flaky" fails on its first
# attempt and succeeds on the next: a retry turns it into a success of three parts.
STEPS = ["ok", "quick", "edge", "slow", "fail", "known", "flaky", "cancel", "open", "ok"]
ADVANCE = {
    "quick": 100e-6,  # below the first bucket bound (131.072 µs): the quick path
    "edge": 131e-6,  # still below it
    "slow": 0.5,
    "fail": 0.125,
    "known": 0.03125,
    "flaky": 0.125,
    "cancel": 0.0625,
}


def scripted(clock: FakeClock) -> Callable[[str], str]:
    flaky_attempts: list[int] = []

    def work(step: str) -> str:
        clock.advance(ADVANCE.get(step, 0.0))
        if step == "fail":
            raise OSError("down")
        if step == "known":
            raise ValueError("bad input")
        if step == "flaky":
            flaky_attempts.append(1)
            if len(flaky_attempts) % 2:
                raise OSError("flaky")
        if step == "cancel":
            raise KeyboardInterrupt
        return step

    return work


def ascripted(clock: FakeClock) -> Callable[[str], Awaitable[str]]:
    work = scripted(clock)

    async def awork(step: str) -> str:
        await asyncio.sleep(0)
        try:
            return work(step)
        except KeyboardInterrupt:
            raise asyncio.CancelledError from None

    return awork


def retry(clock: FakeClock) -> Retry:
    return Retry(
        on=OSError,
        attempts=2,
        backoff=Backoff.constant(0.25),
        classifier=Classifier(known=(ValueError,)),
        clock=clock,
    )


def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=100,
        classifier=Classifier(known=(ValueError,)),
        clock=clock,
    )


FRONTS: dict[str, Callable[[FakeClock], Strategy]] = {
    "retry": retry,
    "breaker": breaker,
    "retry-first": lambda clock: Pipeline(retry(clock), breaker(clock)),
    "breaker-first": lambda clock: Pipeline(breaker(clock), retry(clock)),
    # A Fallback has no fused closure: the separate policy wrapper records the calls.
    "wrapper-first": lambda clock: Pipeline(
        Fallback("never", on=LookupError), retry(clock), breaker(clock)
    ),
}


def breakers(strategy: Strategy) -> list[CircuitBreaker]:
    if isinstance(strategy, CircuitBreaker):
        return [strategy]
    return [s for s in getattr(strategy, "strategies", ()) if isinstance(s, CircuitBreaker)]


def steps_for(strategy: Strategy) -> list[str]:
    return [s for s in STEPS if s != "open" or breakers(strategy)]


def named(make: Callable[[FakeClock], Strategy], clock: FakeClock) -> Strategy:
    strategy = make(clock)
    strategy.name = unique("tally")
    return strategy


# -- sync and async, timed and counted ------------------------------------------------------------


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
@pytest.mark.parametrize("front", FRONTS)
def test_fused_closures_record_every_call_exactly(front: str, durations: bool) -> None:
    clock = FakeClock()
    strategy = named(FRONTS[front], clock)
    decorated = strategy(scripted(clock))
    record = Record()
    with metrics_on(durations=durations):
        for step in steps_for(strategy):
            for b in breakers(strategy):
                b.open() if step == "open" else b.close()
            t0 = clock.now()
            error: BaseException | None = None
            try:
                decorated(step)
            except BaseException as exc:  # the oracle classifies it
                error = exc
            record.add(outcome_of(error), clock.now() - t0)
    assert len(record.durations["success"]) >= 4
    check(strategy.name or "", strategy.kind, record, durations=durations)


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
@pytest.mark.parametrize("front", FRONTS)
async def test_async_fused_closures_record_every_call_exactly(front: str, durations: bool) -> None:
    clock = FakeClock()
    strategy = named(FRONTS[front], clock)
    decorated = strategy(ascripted(clock))
    record = Record()
    with metrics_on(durations=durations):
        for step in steps_for(strategy):
            for b in breakers(strategy):
                b.open() if step == "open" else b.close()
            t0 = clock.now()
            error: BaseException | None = None
            try:
                await decorated(step)
            except BaseException as exc:  # the oracle classifies it
                error = exc
            record.add(outcome_of(error), clock.now() - t0)
    assert record.durations["cancelled"]
    check(strategy.name or "", strategy.kind, record, durations=durations)


def test_a_retried_success_is_timed_whole() -> None:
    clock = FakeClock()
    strategy = named(retry, clock)
    decorated = strategy(scripted(clock))
    with metrics_on(durations=True):
        assert decorated("flaky") == "flaky"
    stats = STATS.get(strategy.name or "", "retry")
    # Two attempts of 0.125 s and the 0.25 s wait between them, in one success.
    assert (stats.calls(SUCCESS), stats.seconds(SUCCESS)) == (1, 0.5)
    assert stats.slots(SUCCESS)[(500_000_000).bit_length()] == 1


def test_a_call_below_the_first_bound_is_counted_in_the_first_bucket() -> None:
    clock = FakeClock()
    strategy = named(retry, clock)
    decorated = strategy(scripted(clock))
    with metrics_on(durations=True):
        decorated("edge")
        decorated("ok")
    stats = STATS.get(strategy.name or "", "retry")
    assert stats.ok_quick == 2.0  # the quick path, no bucket computed
    assert stats.slots(SUCCESS)[QUICK_SLOT] == 2
    assert stats.seconds(SUCCESS) == pytest.approx(131e-6, abs=1e-15)
    buckets, _ = exposed(strategy.name or "")
    assert buckets[0] == (2**17 / 1e9, 2)


# -- a Timeout in front shares its reads of the system clock --------------------------------------


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
def test_a_timeout_in_front_records_with_its_own_clock_reads(durations: bool) -> None:
    name = unique("tally_timeout")

    @Pipeline(Timeout(5.0), Retry(on=ValueError), name=name)
    def work(step: str) -> str:
        if step == "slow":
            time.sleep(0.002)
        if step == "fail":
            raise OSError("down")
        if step == "cancel":
            raise KeyboardInterrupt
        return step

    outside: dict[str, list[float]] = {name: [] for name in CALL_OUTCOMES}
    with metrics_on(durations=durations):
        for step in ["ok", "slow", "fail", "cancel", "ok"]:
            t0 = time.monotonic()
            error: BaseException | None = None
            try:
                work(step)
            except BaseException as exc:  # the oracle classifies it
                error = exc
            outside[outcome_of(error)].append(time.monotonic() - t0)
    stats = STATS.get(name, "pipeline")
    for i, outcome in enumerate(CALL_OUTCOMES):
        assert stats.calls(i) == len(outside[outcome])
        assert stats.timed(i) == (len(outside[outcome]) if durations else 0)
        # Timed inside the call: never longer than seen from outside.
        assert 0 <= stats.seconds(i) <= sum(outside[outcome])
    if durations:
        assert stats.seconds(SUCCESS) >= 0.002  # the slow call slept 2 ms
        assert sum(stats.slots(SUCCESS)[QUICK_SLOT + 1 : SLOTS]) >= 1  # in a later bucket


# -- threads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
def test_threads_lose_no_count(eager_switching: None, durations: bool) -> None:
    name = unique("tally_threads")
    attempts = threading.local()

    @Pipeline(
        Retry(on=OSError, attempts=2, backoff=Backoff.constant(0.0)),
        CircuitBreaker(failure_threshold=None, failure_rate_threshold=100),
        name=name,
    )
    def work(i: int) -> int:
        if i % 10 == 0:
            raise OSError("always")  # both attempts fail
        if i % 10 == 1:
            attempts.n = getattr(attempts, "n", 0) + 1
            if attempts.n % 2:
                raise OSError("once")  # the retry succeeds
        return i

    per_thread, threads = 2_000, 8

    def hammer() -> None:
        for i in range(per_thread):
            with contextlib.suppress(OSError):
                work(i)

    with metrics_on(durations=durations):
        workers = [threading.Thread(target=hammer) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=60)
            assert not t.is_alive()
    stats = STATS.get(name, "pipeline")
    failures = threads * per_thread // 10
    successes = threads * per_thread - failures
    assert (stats.calls(SUCCESS), stats.calls(UNKNOWN)) == (successes, failures)
    if durations:
        assert (stats.timed(SUCCESS), stats.timed(UNKNOWN)) == (successes, failures)
        assert stats.seconds(SUCCESS) > 0
    else:
        assert stats.timed(SUCCESS) == stats.timed(UNKNOWN) == 0
        assert stats.ok_untimed == successes


# -- every way of recording lands in one histogram -------------------------------------------------


def test_the_success_counters_and_the_histogram_add_up() -> None:
    name = unique("tally_merge")
    stats = STATS.get(name, "retry")
    stats.record_seconds(SUCCESS, 0.5)  # as the generic wrapper records: slot 29, 0.5 s
    stats.count(SUCCESS)  # the generic wrapper, counting only
    stats.ok_quick += 1.0  # the tally: a quick success of 100 µs
    stats.ok_seconds += 100e-6
    stats.slower(0.25)  # the tally: a slower success of 0.25 s
    stats.ok_seconds += 0.25
    stats.ok_untimed += 1  # the tally, counting only
    stats.record_seconds(UNKNOWN, 0.125)  # a failure timed in seconds
    assert stats.calls(SUCCESS) == 5
    assert stats.timed(SUCCESS) == 3
    assert stats.seconds(SUCCESS) == pytest.approx(0.75 + 100e-6)
    assert stats.calls(UNKNOWN) == stats.timed(UNKNOWN) == 1
    buckets, total = exposed(name)
    assert buckets == expected_buckets([0.5, 100e-6, 0.25, 0.125])
    assert total == pytest.approx(0.875 + 100e-6)
    family = metrics.read("resilience_calls")
    counts = {labels[2]: n for labels, n in family.samples if labels[:2] == (name, "retry")}
    assert counts == {**dict.fromkeys(CALL_OUTCOMES, 0.0), "success": 5.0, "unknown_failure": 1.0}


def by_code(code: int) -> Outcome:
    if code >= 500:
        return Outcome.UNKNOWN_FAILURE
    if code >= 400:
        return Outcome.KNOWN_FAILURE
    return Outcome.SUCCESS


@pytest.mark.parametrize(
    "make",
    [
        lambda c: Pipeline(Timeout(5.0), Retry(on=OSError, attempts=1, classifier=c)),
        lambda c: Retry(on=OSError, attempts=1, classifier=c),
        lambda c: CircuitBreaker(classifier=c),
    ],
    ids=["timeout-first", "retry", "breaker"],
)
def test_a_result_classifier_sends_fused_calls_to_the_observer(
    make: Callable[[Classifier], Strategy],
) -> None:
    strategy = make(Classifier(result=by_code))
    strategy.name = unique("tally_results")

    @strategy
    def status(code: int) -> int:
        return code

    with metrics_on(durations=True):
        assert [status(200), status(503), status(404), status(201)] == [200, 503, 404, 201]
    stats = STATS.get(strategy.name, strategy.kind)
    assert [stats.calls(i) for i in OUTCOMES] == [2, 1, 1, 0, 0]
    assert [stats.timed(i) for i in OUTCOMES] == [2, 1, 1, 0, 0]


def test_quick_is_the_first_exposed_bound() -> None:
    assert QUICK == 2**QUICK_SLOT / 1e9 == metrics.DURATION_BUCKETS[0]
