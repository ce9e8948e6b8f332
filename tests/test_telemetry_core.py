"""The policy wrapper, its outcome classification and the registry of named policies."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilience import (
    CircuitBreaker,
    CircuitOpenError,
    Classifier,
    Outcome,
    Pipeline,
    Retry,
    Strategy,
    Timeout,
    deadline,
)
from resilience._core.telemetry import CALL_OUTCOMES, POLICIES, STATS, TELEMETRY
from resilience.testing import FakeClock
from telemetry_standins import Gate, unique


@pytest.fixture
def counting() -> Iterator[None]:
    """Count and time calls, as an exporter does, for the duration of one test."""
    TELEMETRY.acquire_metrics(durations=True)
    try:
        yield
    finally:
        TELEMETRY.release_metrics(durations=True)


def calls(policy: str, strategy: str) -> dict[str, int]:
    stats = STATS.get(policy, strategy)
    return {name: stats.calls(i) for i, name in enumerate(CALL_OUTCOMES)}


def test_off_by_default_and_the_wrapper_keeps_the_function() -> None:
    assert TELEMETRY.mode == 0
    name = unique("plain")

    @Retry(on=OSError, name=name)
    def add(a: int, b: int = 1) -> int:
        """Adds."""
        return a + b

    assert add(2, b=3) == 5
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    assert calls(name, "retry")["success"] == 0  # nothing counted while off


def test_enabling_after_decoration_counts_every_outcome(counting: None) -> None:
    name = unique("outcomes")
    clock = FakeClock()
    gate = Gate(clock=clock)
    classifier = Classifier(known=(ValueError,))

    @Pipeline(gate, Retry(on=OSError, attempts=1, classifier=classifier, clock=clock), name=name)
    def work(what: str) -> str:
        clock.advance(0.5)
        if what == "known":
            raise ValueError("bad input")
        if what == "unknown":
            raise OSError("down")
        if what == "cancel":
            raise KeyboardInterrupt
        return what

    assert work("ok") == "ok"
    assert work("ok") == "ok"
    with pytest.raises(ValueError):
        work("known")
    with pytest.raises(OSError):
        work("unknown")
    with pytest.raises(KeyboardInterrupt):
        work("cancel")
    gate.rejecting = True
    with pytest.raises(Exception, match="rejected"):
        work("ok")

    assert calls(name, "pipeline") == {
        "success": 2,
        "known_failure": 1,
        "unknown_failure": 1,
        "rejected": 1,
        "cancelled": 1,
    }
    # Durations come from the policy's clock: five calls of 0.5 s, one rejected at once.
    stats = STATS.get(name, "pipeline")
    assert sum(stats.seconds(o) for o in range(len(CALL_OUTCOMES))) == 5 * 0.5
    assert stats.slots(0)[(500_000_000).bit_length()] == 2


def test_result_classifier_decides_the_outcome_of_returned_values(counting: None) -> None:
    name = unique("results")
    classifier = Classifier(
        result=lambda r: Outcome.UNKNOWN_FAILURE if r >= 500 else Outcome.SUCCESS
    )

    @Retry(on=OSError, attempts=1, classifier=classifier, name=name)
    def status(code: int) -> int:
        return code

    assert [status(200), status(503), status(201)] == [200, 503, 201]
    assert calls(name, "retry")["success"] == 2
    assert calls(name, "retry")["unknown_failure"] == 1


async def test_async_calls_are_counted(counting: None) -> None:
    name = unique("async")

    @Timeout(5.0, name=name)
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise OSError("no")
        return x

    assert await fetch(1) == 1
    with pytest.raises(OSError):
        await fetch(-1)
    assert calls(name, "timeout") == {
        "success": 1,
        "known_failure": 0,
        "unknown_failure": 1,
        "rejected": 0,
        "cancelled": 0,
    }


def test_counting_without_durations_keeps_the_histogram_empty() -> None:
    name = unique("untimed")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    TELEMETRY.acquire_metrics(durations=False)
    try:
        ok()
        ok()
    finally:
        TELEMETRY.release_metrics(durations=False)
    stats = STATS.get(name, "retry")
    assert stats.calls(0) == 2
    assert stats.timed(0) == 0


def test_call_and_acall_are_instrumented(counting: None) -> None:
    retry = Retry(on=OSError, name=unique("call"))

    def one() -> int:
        return 1

    async def two() -> int:
        return 2

    assert retry.call(one) == 1
    assert asyncio.run(retry.acall(two)) == 2
    assert calls(retry.name or "", "retry")["success"] == 2


def test_registry_holds_policies_weakly_by_name() -> None:
    name = unique("registry")
    retry = Retry(on=OSError)

    @Pipeline(retry, name=name)
    def a() -> None: ...

    def b() -> None: ...

    decorated_b = retry(b)
    names = [n for n, _ in POLICIES.items()]
    assert name in names  # the decorated function keeps the inline pipeline alive
    assert any(n.endswith("b") and s is retry for n, s in POLICIES.items())
    del a, decorated_b, retry
    gc.collect()
    assert name not in [n for n, _ in POLICIES.items()]


def test_the_registry_keeps_one_entry_per_strategy_and_name() -> None:
    name = unique("shared")
    retry = Retry(on=OSError, name=name)

    @retry
    def a() -> None: ...

    @retry
    def b() -> None: ...

    assert [s for n, s in POLICIES.items() if n == name] == [retry]


def test_a_broken_classifier_does_not_break_the_call(counting: None) -> None:
    name = unique("broken")

    def explode(exc: BaseException) -> bool:
        raise RuntimeError("classifier bug")

    @Retry(on=OSError, attempts=1, classifier=Classifier(known_if=explode), name=name)
    def fail() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        fail()
    assert calls(name, "retry")["unknown_failure"] == 1


def test_concurrent_calls_lose_no_count(counting: None) -> None:
    name = unique("threads")

    @Retry(on=OSError, name=name)
    def ok() -> int:
        return 1

    def hammer() -> None:
        for _ in range(20_000):
            ok()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = STATS.get(name, "retry")
    assert stats.calls(0) == 80_000
    assert stats.timed(0) == 80_000


# -- the policy gate fused into the outermost strategy -------------------------------------------


def timed_calls(policy: str, strategy: str) -> list[int]:
    """Per outcome: how many calls have a duration in the histogram."""
    stats = STATS.get(policy, strategy)
    return [stats.timed(o) for o in range(len(CALL_OUTCOMES))]


def scenario(what: str) -> str:
    if what == "fail":
        raise OSError("down")
    if what == "late":
        time.sleep(0.01)
    if what == "cancel":
        raise KeyboardInterrupt
    return what


SCENARIOS = ["ok", "ok", "fail", "late", "cancel"]


def run_all(call: Callable[[str], object]) -> None:
    for what in SCENARIOS:
        with contextlib.suppress(OSError, KeyboardInterrupt):  # TimeoutError is an OSError
            call(what)


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
@pytest.mark.parametrize(
    ("make", "real_time"),
    [
        pytest.param(lambda: Timeout(0.005), True, id="timeout"),
        pytest.param(
            lambda: Pipeline(Timeout(0.005), Retry(on=ValueError)), True, id="timeout-first"
        ),
        # Not the system clock: the Timeout leaves metrics to the observer.
        pytest.param(lambda: Timeout(0.005, clock=FakeClock()), False, id="timeout-fake-clock"),
        pytest.param(lambda: Retry(on=ValueError), True, id="retry"),
        pytest.param(
            lambda: CircuitBreaker(failure_threshold=None, failure_rate_threshold=100),
            True,
            id="breaker",
        ),
    ],
)
def test_a_fused_gate_records_what_the_separate_wrapper_records(
    make: Callable[[], Strategy], real_time: bool, durations: bool
) -> None:
    fused, separate = make(), make()
    fused.name, separate.name = unique("fused"), unique("separate")
    decorated = fused(scenario)
    TELEMETRY.acquire_metrics(durations=durations)
    try:
        run_all(decorated)
        run_all(lambda what: separate.call(scenario, what))
    finally:
        TELEMETRY.release_metrics(durations=durations)
    kind = fused.kind
    assert calls(fused.name, kind) == calls(separate.name, kind)
    assert sum(calls(fused.name, kind).values()) == len(SCENARIOS)
    expected = [n if durations else 0 for n in calls(fused.name, kind).values()]
    assert timed_calls(fused.name, kind) == expected
    assert timed_calls(separate.name, kind) == expected
    if durations and real_time:  # the late call took >= 10 ms, whoever measured it
        for name in (fused.name, separate.name):
            stats = STATS.get(name, kind)
            assert sum(stats.seconds(o) for o in range(len(CALL_OUTCOMES))) >= 0.01


def test_a_fused_gate_counts_nothing_while_off() -> None:
    name = unique("fused_off")
    run_all(Pipeline(Timeout(0.005), Retry(on=ValueError), name=name)(scenario))
    assert calls(name, "pipeline") == dict.fromkeys(CALL_OUTCOMES, 0)


def test_a_caller_deadline_already_past_is_counted_once(counting: None) -> None:
    name = unique("past")
    clock = FakeClock()

    @Timeout(1.0, name=name)
    def work() -> int:
        raise AssertionError("started after the caller's deadline")

    with deadline(0.5, clock=clock):
        clock.advance(1)
        with pytest.raises(TimeoutError):
            work()
    assert calls(name, "timeout")["unknown_failure"] == 1


class Observer:
    """A tracing observer that records what it is told."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, str | None]] = []

    def begin(self, scope: Any) -> object | None:
        return scope

    def end(self, handle: object, outcome: str, error: BaseException | None) -> None:
        self.ended.append((outcome, type(error).__name__ if error else None))


@pytest.mark.parametrize("make", [lambda: Timeout(5.0), lambda: Retry(on=ValueError)])
def test_tracing_goes_through_the_observer(make: Callable[[], Strategy]) -> None:
    strategy = make()
    decorated = strategy(scenario)
    observer = Observer()
    TELEMETRY.set_observer(observer)
    try:
        assert decorated("ok") == "ok"
        with pytest.raises(OSError):
            decorated("fail")
    finally:
        TELEMETRY.set_observer(None)
    assert observer.ended == [("success", None), ("unknown_failure", "OSError")]


async def test_async_fused_gates_count(counting: None) -> None:
    name = unique("async_fused")

    @Pipeline(CircuitBreaker(), Retry(on=ValueError), Timeout(5.0), name=name)
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        if x < 0:
            raise OSError("no")
        return x

    assert await fetch(1) == 1
    with pytest.raises(OSError):
        await fetch(-1)
    assert calls(name, "pipeline")["success"] == 1
    assert calls(name, "pipeline")["unknown_failure"] == 1
    assert timed_calls(name, "pipeline")[:3] == [1, 0, 1]


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
async def test_a_fused_breaker_counts_its_rejections(durations: bool) -> None:
    fused = CircuitBreaker(name=unique("fused_open"))
    separate = CircuitBreaker(name=unique("separate_open"))

    def work() -> int:
        return 1

    async def awork() -> int:
        return 1

    decorated, adecorated = fused(work), fused(awork)
    fused.open()
    separate.open()
    TELEMETRY.acquire_metrics(durations=durations)
    try:
        for run in (decorated, lambda: separate.call(work)):
            with pytest.raises(CircuitOpenError):
                run()
        with pytest.raises(CircuitOpenError):
            await adecorated()
        with pytest.raises(CircuitOpenError):
            await separate.acall(awork)
    finally:
        TELEMETRY.release_metrics(durations=durations)
    for b in (fused, separate):
        assert calls(b.name or "", "circuit_breaker")["rejected"] == 2
        assert timed_calls(b.name or "", "circuit_breaker")[3] == (2 if durations else 0)


async def ascenario(what: str) -> str:
    await asyncio.sleep(0)
    if what == "flaky":  # fails on every other call: a retry gets it on its second try
        ascenario_calls.append(what)
        if len(ascenario_calls) % 2:
            raise ValueError("flaky")
    if what == "fail":
        raise OSError("down")
    if what == "cancel":
        raise asyncio.CancelledError
    return what


ascenario_calls: list[str] = []
ASYNC_SCENARIOS = ["ok", "flaky", "fail", "cancel"]


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: Retry(on=ValueError),
        lambda: Pipeline(Retry(on=ValueError), Timeout(5.0)),
        lambda: CircuitBreaker(failure_threshold=None, failure_rate_threshold=100),
        lambda: Timeout(5.0),
    ],
    ids=["retry", "retry-first", "breaker", "timeout"],
)
async def test_async_fused_gates_record_what_the_separate_wrapper_records(
    make: Callable[[], Strategy], durations: bool
) -> None:
    fused, separate = make(), make()
    fused.name, separate.name = unique("afused"), unique("aseparate")
    decorated = fused(ascenario)
    TELEMETRY.acquire_metrics(durations=durations)
    try:
        for what in ASYNC_SCENARIOS:
            for run in (decorated, lambda w: separate.acall(ascenario, w)):
                ascenario_calls.clear()
                with contextlib.suppress(OSError, ValueError, asyncio.CancelledError):
                    await run(what)
    finally:
        TELEMETRY.release_metrics(durations=durations)
    kind = fused.kind
    assert calls(fused.name, kind) == calls(separate.name, kind)
    assert sum(calls(fused.name, kind).values()) == len(ASYNC_SCENARIOS)
    assert calls(fused.name, kind)["cancelled"] == 1
    expected = [n if durations else 0 for n in calls(fused.name, kind).values()]
    assert timed_calls(fused.name, kind) == expected
    assert timed_calls(separate.name, kind) == expected
