"""Outcome classification: known failures are not retried; BaseException passes untouched."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from resilience import Classifier, Fallback, Outcome, Pipeline, Retry, Timeout
from resilience.testing import CapturingListener, FakeClock

# -- the classifier -------------------------------------------------------------------------------


def test_default_classifier() -> None:
    c = Classifier()
    assert c.classify_exception(ValueError()) is Outcome.UNKNOWN_FAILURE
    assert c.classify_result(None) is Outcome.SUCCESS
    assert c.classify_result(500) is Outcome.SUCCESS


def test_known_types_and_predicate() -> None:
    c = Classifier(known=(ValueError, KeyError), known_if=lambda e: "4xx" in str(e))
    assert c.classify_exception(ValueError()) is Outcome.KNOWN_FAILURE
    assert c.classify_exception(UnicodeDecodeError("a", b"", 0, 1, "x")) is Outcome.KNOWN_FAILURE
    assert c.classify_exception(OSError("4xx answer")) is Outcome.KNOWN_FAILURE
    assert c.classify_exception(OSError("5xx answer")) is Outcome.UNKNOWN_FAILURE
    assert Classifier(known=ValueError).classify_exception(ValueError()) is Outcome.KNOWN_FAILURE


def test_result_classification() -> None:
    def by_status(status: int) -> Outcome:
        if status >= 500:
            return Outcome.UNKNOWN_FAILURE
        if status >= 400:
            return Outcome.KNOWN_FAILURE
        return Outcome.SUCCESS

    c = Classifier(result=by_status)
    assert [c.classify_result(s) for s in (200, 404, 503)] == [
        Outcome.SUCCESS,
        Outcome.KNOWN_FAILURE,
        Outcome.UNKNOWN_FAILURE,
    ]
    bad = Classifier(result=lambda r: "fine")
    with pytest.raises(TypeError, match="must return an Outcome"):
        bad.classify_result(1)


def test_classifier_is_frozen() -> None:
    c = Classifier(known=(ValueError,))
    with pytest.raises(AttributeError):
        c.known = ()  # type: ignore[misc]


# -- known failures are never retried -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_known_failures_are_raised_at_once(
    clock: FakeClock, events: CapturingListener, mode: str
) -> None:
    calls = 0
    err = ValueError("bad input")

    def body() -> None:
        nonlocal calls
        calls += 1
        raise err

    retry = Retry(on=Exception, classifier=Classifier(known=(ValueError,)), clock=clock)
    with pytest.raises(ValueError) as info:
        if mode == "sync":
            retry(body)()
        else:

            async def abody() -> None:
                body()

            await retry(abody)()
    assert info.value is err
    assert calls == 1
    assert clock.sleeps == []
    assert events.events == []
    assert not hasattr(err, "__notes__")


def test_a_known_failure_after_unknown_ones_stops_the_retry(clock: FakeClock) -> None:
    errors = [OSError("flaky"), ValueError("rejected"), OSError("never reached")]
    calls = 0

    classifier = Classifier(known_if=lambda e: isinstance(e, ValueError))

    @Retry(on=Exception, attempts=5, classifier=classifier, clock=clock)
    def work() -> None:
        nonlocal calls
        calls += 1
        raise errors.pop(0)

    with pytest.raises(ValueError, match="rejected"):
        work()
    assert calls == 2


def test_known_failures_in_attempt_blocks(clock: FakeClock) -> None:
    entered = 0
    retry = Retry(on=Exception, classifier=Classifier(known=(KeyError,)), clock=clock)
    with pytest.raises(KeyError):
        for attempt in retry.attempts():
            with attempt:
                entered += 1
                raise KeyError
    assert entered == 1


# -- BaseException that is not Exception passes straight through ----------------------------------

BASE_EXCEPTIONS = [
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
]


def drive_without_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends for real, outside any event loop.

    KeyboardInterrupt and SystemExit raised inside an asyncio task are re-raised out of
    the event loop itself; driving the coroutine by hand keeps them inside the test.
    """
    try:
        while True:
            coro.send(None)
    except StopIteration as done:
        return done.value
    finally:
        coro.close()


STRATEGIES = {
    "retry": lambda clock: Retry(on=BaseException, attempts=5, clock=clock),
    "retry-full": lambda clock: Retry(on=lambda e: True, attempts=5, total_timeout=60, clock=clock),
    "retry-on-result": lambda clock: Retry(on=BaseException, on_result=lambda r: True, clock=clock),
    "fallback-value": lambda clock: Fallback("substitute", on=BaseException, clock=clock),
    "fallback-handler": lambda clock: Fallback(
        on=lambda e: True, handler=lambda e: "substitute", clock=clock
    ),
    "timeout": lambda clock: Timeout(5, clock=clock),
    "pipeline": lambda clock: Pipeline(
        Fallback("substitute", on=BaseException),
        Timeout(5, clock=clock),
        Retry(on=BaseException, clock=clock),
    ),
}
NEEDS_A_TASK = {"timeout", "pipeline"}


@pytest.mark.parametrize("kind", BASE_EXCEPTIONS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("which", STRATEGIES)
def test_base_exceptions_pass_through_sync(
    clock: FakeClock, events: CapturingListener, kind: type[BaseException], which: str
) -> None:
    calls = 0
    err = kind()

    def body() -> None:
        nonlocal calls
        calls += 1
        raise err

    with pytest.raises(kind) as info:
        STRATEGIES[which](clock)(body)()
    assert info.value is err
    assert calls == 1
    assert not hasattr(err, "__notes__")
    assert err.__context__ is None
    assert clock.sleeps == []
    assert events.events == []


@pytest.mark.parametrize("kind", BASE_EXCEPTIONS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("which", sorted(set(STRATEGIES) - NEEDS_A_TASK))
def test_base_exceptions_pass_through_async(
    clock: FakeClock, events: CapturingListener, kind: type[BaseException], which: str
) -> None:
    calls = 0
    err = kind()

    async def body() -> None:
        nonlocal calls
        calls += 1
        raise err

    with pytest.raises(kind) as info:
        drive_without_loop(STRATEGIES[which](clock)(body)())
    assert info.value is err
    assert calls == 1
    assert not hasattr(err, "__notes__")
    assert clock.sleeps == []
    assert events.events == []


@pytest.mark.parametrize("which", STRATEGIES)
async def test_cancelled_error_passes_through_async_strategies_in_a_task(
    clock: FakeClock, events: CapturingListener, which: str
) -> None:
    calls = 0
    err = asyncio.CancelledError("from the work")

    async def body() -> None:
        nonlocal calls
        calls += 1
        raise err

    with pytest.raises(asyncio.CancelledError) as info:
        await STRATEGIES[which](clock)(body)()
    assert info.value is err
    assert calls == 1
    assert events.events == []
    assert clock.pending_timers == 0
