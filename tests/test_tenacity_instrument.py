"""resilience.tenacity.instrument(): tenacity retrying objects publish our events."""

from __future__ import annotations

import pytest
import tenacity

from resilience import GiveUpReason, RetryGaveUp, RetryScheduled
from resilience.tenacity import instrument
from resilience.testing import CapturingListener


def test_sync_retrying_publishes_and_keeps_its_own_hooks(events: CapturingListener) -> None:
    seen: list[int] = []
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_fixed(0),
        before_sleep=lambda state: seen.append(state.attempt_number),
        reraise=True,
    )
    assert instrument(retrying, name="legacy") is retrying
    with pytest.raises(OSError):
        for attempt in retrying:
            with attempt:
                raise OSError("down")
    assert seen == [1, 2]  # the original hook still runs
    scheduled = events.of_type(RetryScheduled)
    assert [(e.policy, e.strategy, e.attempt, e.delay) for e in scheduled] == [
        ("legacy", "retry", 1, 0.0),
        ("legacy", "retry", 2, 0.0),
    ]
    assert isinstance(scheduled[0].error, OSError)
    [gave_up] = events.of_type(RetryGaveUp)
    assert (gave_up.attempts, gave_up.reason) == (3, GiveUpReason.ATTEMPTS)


def test_a_decorated_function_and_a_delay_stop(events: CapturingListener) -> None:
    @tenacity.retry(
        stop=tenacity.stop_after_delay(0) | tenacity.stop_after_attempt(5),
        wait=tenacity.wait_none(),
    )
    def slow() -> None:
        raise ValueError("x")

    instrument(slow, name="slow")
    with pytest.raises(tenacity.RetryError):
        slow()
    [gave_up] = events.of_type(RetryGaveUp)
    assert (gave_up.policy, gave_up.reason) == ("slow", GiveUpReason.TOTAL_TIMEOUT)
    assert isinstance(gave_up.error, ValueError)


async def test_async_retrying_with_an_async_hook(events: CapturingListener) -> None:
    seen: list[int] = []

    async def hook(state: tenacity.RetryCallState) -> None:
        seen.append(state.attempt_number)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none(), before_sleep=hook
    )
    instrument(retrying, name="async_legacy")
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise OSError("once")
        return calls

    assert await retrying(flaky) == 2
    assert seen == [1]
    assert [e.attempt for e in events.of_type(RetryScheduled)] == [1]
    assert events.of_type(RetryGaveUp) == []


def test_instrumenting_again_renames_without_double_publishing(
    events: CapturingListener,
) -> None:
    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    instrument(retrying, name="first")
    instrument(retrying, name="second")
    with pytest.raises(tenacity.RetryError):
        retrying(lambda: 1 / 0)
    assert [type(e).__name__ for e in events.events] == ["RetryScheduled", "RetryGaveUp"]
    assert {e.policy for e in events.events} == {"second"}


def test_instrument_refuses_what_is_not_tenacity() -> None:
    with pytest.raises(TypeError, match="tenacity"):
        instrument(object(), name="x")
    with pytest.raises(ValueError, match="name"):
        instrument(tenacity.Retrying(), name="")
