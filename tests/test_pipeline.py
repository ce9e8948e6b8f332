"""Strategies and pipelines as decorators: metadata, methods, order, naming, call()/acall()."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest

from resilience import (
    Backoff,
    Fallback,
    FallbackUsed,
    Pipeline,
    Retry,
    RetryGaveUp,
    RetryScheduled,
    Strategy,
    Timeout,
)
from resilience._core.strategy import AnyCallable, AsyncCallable, Scope
from resilience.testing import CapturingListener, FakeClock


class Recorder(Strategy):
    """A strategy that logs when the call enters and leaves it, and the scope it was given."""

    kind: ClassVar[str] = "recorder"

    def __init__(self, log: list[str], *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.log = log
        self.scopes: list[tuple[str, str]] = []

    def __repr__(self) -> str:
        return f"Recorder({self.label})"

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        self.scopes.append((scope.policy, scope.strategy))

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.log.append(f"{self.label}>")
            try:
                return fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.label}")

        return recorded

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        self.scopes.append((scope.policy, scope.strategy))

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            self.log.append(f"{self.label}>")
            try:
                return await fn(*args, **kwargs)
            finally:
                self.log.append(f"<{self.label}")

        return recorded


def strategies(clock: FakeClock) -> list[Strategy]:
    return [
        Retry(on=ValueError, clock=clock),
        Timeout(1, clock=clock),
        Fallback(0, on=ValueError),
        Pipeline(Timeout(1, clock=clock), Retry(on=ValueError, clock=clock), name="p"),
    ]


# -- decorating keeps the function's identity -----------------------------------------------------


def test_sync_functions_keep_their_metadata_and_signature(clock: FakeClock) -> None:
    def original(a: int, b: str = "x", *args: float, c: bool, **kw: object) -> list[int]:
        """The original docstring."""
        return [a]

    for strategy in strategies(clock):
        wrapped = strategy(original)
        assert wrapped is not original
        assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
        assert wrapped.__name__ == "original"
        assert wrapped.__qualname__ == original.__qualname__
        assert wrapped.__doc__ == "The original docstring."
        assert wrapped.__module__ == __name__
        assert inspect.signature(wrapped) == inspect.signature(original)
        assert not inspect.iscoroutinefunction(wrapped)
        assert wrapped(7, c=True) == [7]


async def test_coroutine_functions_stay_coroutine_functions(clock: FakeClock) -> None:
    async def original(a: int, *, b: int = 2) -> int:
        """Async docstring."""
        await asyncio.sleep(0)
        return a * b

    for strategy in strategies(clock):
        wrapped = strategy(original)
        assert inspect.iscoroutinefunction(wrapped)
        assert wrapped.__wrapped__ is original  # type: ignore[attr-defined]
        assert wrapped.__name__ == "original"
        assert wrapped.__doc__ == "Async docstring."
        assert inspect.signature(wrapped) == inspect.signature(original)
        assert await wrapped(3, b=5) == 15


async def test_methods_bind_self(clock: FakeClock) -> None:
    class Service:
        def __init__(self, factor: int) -> None:
            self.factor = factor
            self.calls = 0

        @Pipeline(Fallback(-1, on=KeyError), Retry(on=ValueError, clock=clock))
        def compute(self, x: int) -> int:
            """Compute."""
            self.calls += 1
            if self.calls == 1:
                raise ValueError("transient")
            return x * self.factor

        @Timeout(1, clock=clock)
        async def acompute(self, x: int) -> int:
            return x + self.factor

        @staticmethod
        @Retry(on=ValueError, clock=clock)
        def static(x: int) -> int:
            return -x

        @classmethod
        @Retry(on=ValueError, clock=clock)
        def make(cls, factor: int) -> Service:
            return cls(factor)

    s = Service(10)
    assert s.compute(4) == 40
    assert s.calls == 2
    assert await s.acompute(1) == 11
    assert Service.compute.__name__ == "compute"
    assert list(inspect.signature(Service.compute).parameters) == ["self", "x"]
    assert list(inspect.signature(s.compute).parameters) == ["x"]
    assert Service.static(3) == s.static(3) == -3
    assert Service.make(2).factor == 2


def test_generator_functions_are_refused(clock: FakeClock) -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def anumbers() -> AsyncIterator[int]:
        yield 1

    for strategy in strategies(clock):
        with pytest.raises(TypeError, match="cannot decorate a generator function") as info:
            strategy(numbers)
        assert "numbers" in str(info.value)
        with pytest.raises(TypeError, match="cannot decorate an async generator function"):
            strategy(anumbers)


def test_call_refuses_generator_functions(clock: FakeClock) -> None:
    # Run through call(), a generator function would return an unconsumed generator: the
    # strategy would never see the work it is meant to guard.
    def numbers() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        Retry(on=ValueError, clock=clock).call(numbers)


async def test_acall_refuses_async_generator_functions(clock: FakeClock) -> None:
    async def anumbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="async generator function"):
        await Retry(on=ValueError, clock=clock).acall(anumbers)  # type: ignore[arg-type]


def test_only_callables_can_be_decorated() -> None:
    with pytest.raises(TypeError, match="decorates a callable"):
        Retry(on=ValueError)(42)  # type: ignore[arg-type]


def test_callable_objects_and_partials(clock: FakeClock) -> None:
    class Adder:
        def __call__(self, a: int, b: int) -> int:
            return a + b

    wrapped = Retry(on=ValueError, clock=clock)(Adder())
    assert wrapped(1, 2) == 3
    partial = Retry(on=ValueError, clock=clock)(functools.partial(Adder(), 10))
    assert partial(5) == 15


# -- call() and acall() ---------------------------------------------------------------------------


def test_call_runs_a_sync_callable_once_through_the_strategy(clock: FakeClock) -> None:
    calls = 0

    def flaky(a: int, *, b: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ValueError
        return a + b

    retry = Retry(on=ValueError, backoff=Backoff.constant(1), clock=clock)
    assert retry.call(flaky, 1, b=2) == 3
    assert calls == 3
    assert clock.sleeps == [1.0, 1.0]


def test_call_refuses_coroutine_functions() -> None:
    async def coro() -> None:
        pass

    with pytest.raises(TypeError, match="acall"):
        Retry(on=ValueError).call(coro)


async def test_acall_runs_a_coroutine_function_once_through_the_strategy(
    clock: FakeClock,
) -> None:
    calls = 0

    async def flaky(a: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise ValueError
        return a

    assert await Retry(on=ValueError, clock=clock).acall(flaky, 9) == 9
    assert calls == 2
    pipeline = Pipeline(Fallback(-1, on=ZeroDivisionError), Timeout(1, clock=clock))

    async def divide(a: int) -> float:
        return 1 / a

    assert await pipeline.acall(divide, 0) == -1


def test_call_checks_what_cannot_work_in_a_sync_call() -> None:
    async def handler(exc: BaseException) -> int:
        return 0

    with pytest.raises(TypeError, match="async"):
        Pipeline(Fallback(on=ValueError, handler=handler)).call(lambda: 1)


# -- order ----------------------------------------------------------------------------------------


def test_pipeline_composes_outermost_first() -> None:
    log: list[str] = []
    a, b, c = Recorder(log, name="a"), Recorder(log, name="b"), Recorder(log, name="c")

    @Pipeline(a, b, c)
    def work() -> str:
        log.append("call")
        return "ok"

    assert work() == "ok"
    assert log == ["a>", "b>", "c>", "call", "<c", "<b", "<a"]


async def test_async_pipeline_composes_outermost_first() -> None:
    log: list[str] = []

    @Pipeline(Recorder(log, name="a"), Recorder(log, name="b"))
    async def work() -> str:
        log.append("call")
        return "ok"

    assert await work() == "ok"
    assert log == ["a>", "b>", "call", "<b", "<a"]


def test_nested_pipelines_keep_their_order() -> None:
    log: list[str] = []
    inner = Pipeline(Recorder(log, name="b"), Recorder(log, name="c"))

    @Pipeline(Recorder(log, name="a"), inner, Recorder(log, name="d"))
    def work() -> None:
        log.append("call")

    work()
    assert log == ["a>", "b>", "c>", "d>", "call", "<d", "<c", "<b", "<a"]


def test_order_is_observable_with_retry_and_fallback(clock: FakeClock) -> None:
    calls = 0

    def failing() -> str:
        nonlocal calls
        calls += 1
        raise ValueError

    retry = Retry(on=ValueError, attempts=3, backoff=Backoff.constant(0), clock=clock)
    fallback = Fallback("substitute", on=ValueError)

    # Fallback outside the retry: the retry runs out first, then the fallback answers.
    assert Pipeline(fallback, retry)(failing)() == "substitute"
    assert calls == 3
    # Fallback inside the retry: it answers the first failure, so nothing is retried.
    calls = 0
    assert Pipeline(retry, fallback)(failing)() == "substitute"
    assert calls == 1


def test_pipeline_repr_shows_the_order() -> None:
    log: list[str] = []
    p = Pipeline(Recorder(log, name="outer"), Recorder(log, name="inner"), name="payments")
    assert repr(p) == "Pipeline(Recorder(outer), Recorder(inner), name='payments')"
    assert repr(Pipeline(Timeout(2), Pipeline(Fallback(0, on=OSError)))) == (
        "Pipeline(Timeout(2, mode='deadline'), Pipeline(Fallback(0, on=<class 'OSError'>)))"
    )
    assert len(p) == 2
    assert p.strategies[0].name == "outer"


def test_pipeline_snapshot_lists_its_strategies() -> None:
    p = Pipeline(Timeout(1), Retry(on=OSError, name="r"), name="api")
    assert p.snapshot() == {
        "kind": "pipeline",
        "name": "api",
        "strategies": [
            {"kind": "timeout", "name": None},
            {"kind": "retry", "name": "r", "attempts": 3},
        ],
    }


def test_pipeline_takes_only_strategies() -> None:
    with pytest.raises(TypeError, match=r"strategies\[1\] must be a Strategy"):
        Pipeline(Timeout(1), print)  # type: ignore[arg-type]


def test_an_empty_pipeline_returns_the_function_itself() -> None:
    def work() -> int:
        return 1

    assert Pipeline()(work) is work


# -- naming: policy and strategy labels -----------------------------------------------------------


def test_scopes_name_the_policy_and_the_strategy() -> None:
    log: list[str] = []
    plain, named = Recorder(log), Recorder(log, name="audit")
    inner_plain, inner_named = Recorder(log), Recorder(log)

    @Pipeline(
        plain,
        named,
        Pipeline(inner_plain),
        Pipeline(inner_named, name="inner"),
        name="payments",
    )
    def work() -> None:
        pass

    assert plain.scopes == [("payments", "recorder")]
    assert named.scopes == [("payments", "audit")]
    assert inner_plain.scopes == [("payments", "recorder")]
    assert inner_named.scopes == [("inner", "recorder")]

    alone, alone_named = Recorder(log), Recorder(log, name="solo")
    alone(work)
    alone_named(work)
    assert alone.scopes == [(work.__qualname__, "recorder")]
    assert alone_named.scopes == [("solo", "recorder")]

    unnamed = Recorder(log)
    Pipeline(unnamed)(work)
    assert unnamed.scopes == [(work.__qualname__, "recorder")]


def test_events_carry_the_pipeline_name_and_the_strategy_label(
    clock: FakeClock, events: CapturingListener
) -> None:
    attempts = 0

    @Pipeline(
        Fallback("cached", on=ValueError, name="cache", clock=clock),
        Retry(on=ValueError, attempts=2, backoff=Backoff.constant(0), clock=clock, name="db"),
        name="payments",
    )
    def charge() -> str:
        nonlocal attempts
        attempts += 1
        raise ValueError

    assert charge() == "cached"
    assert [(type(e), e.policy, e.strategy, e.source) for e in events.events] == [
        (RetryScheduled, "payments", "db", "payments/db"),
        (RetryGaveUp, "payments", "db", "payments/db"),
        (FallbackUsed, "payments", "cache", "payments/cache"),
    ]


def test_a_strategy_alone_names_the_policy_after_the_function(
    clock: FakeClock, events: CapturingListener
) -> None:
    def lookup() -> None:
        raise ValueError

    with pytest.raises(ValueError):
        Retry(on=ValueError, attempts=2, backoff=Backoff.constant(0), clock=clock)(lookup)()
    assert {(e.policy, e.strategy) for e in events.events} == {(lookup.__qualname__, "retry")}
