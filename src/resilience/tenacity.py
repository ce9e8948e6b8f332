"""Interoperability with tenacity.

- :func:`wait_schedule` turns a tenacity ``wait_*`` object (``wait_exponential(...)``,
  ``wait_fixed(1) + wait_random(0, 1)`` …) into a :class:`~resilience.Schedule`, so
  existing tenacity configuration can drive a :class:`~resilience.Retry`. ``Retry``
  does this by itself when given a tenacity wait as ``backoff=``.
- :func:`instrument` makes an existing ``Retrying`` / ``AsyncRetrying`` object (or a
  function decorated with ``@tenacity.retry``) publish our events, so the metrics, spans
  and log lines of resilience cover code that still retries with tenacity.

Needs the ``tenacity`` extra: ``pip install resilience[tenacity]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity as _tenacity

from ._core.clock import SYSTEM_CLOCK, Rng
from ._core.events import EVENTS
from ._core.options import to_name
from .backoff import AttemptInfo
from .retry import GiveUpReason, RetryGaveUp, RetryScheduled

__all__ = ["wait_schedule", "TenacityWait", "instrument"]

T = TypeVar("T")


class TenacityWait:
    """A :class:`~resilience.Schedule` backed by a tenacity ``wait_*`` object.

    The wait is handed a ``tenacity.RetryCallState`` filled from the attempt: the
    attempt number, the outcome (exception or result) and the seconds since the start.
    Its randomness comes from tenacity's own, not from ``rng``.
    """

    __slots__ = ("wait",)

    def __init__(self, wait: Any) -> None:
        if not callable(wait):
            raise TypeError(f"wait must be a tenacity wait_* object, got {wait!r}")
        self.wait = wait

    def delay(self, info: AttemptInfo, rng: Rng) -> float:
        state = _tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = info.attempt
        state.idle_for = 0.0
        fut: _tenacity.Future = _tenacity.Future(info.attempt)
        if info.error is not None:
            fut.set_exception(info.error)
        else:
            fut.set_result(info.result)
        state.outcome = fut
        state.outcome_timestamp = state.start_time + info.elapsed
        d = float(self.wait(state))
        return d if d > 0.0 else 0.0

    def __repr__(self) -> str:
        return f"TenacityWait({self.wait!r})"


def wait_schedule(wait: Any) -> TenacityWait:
    """Adapt a tenacity ``wait_*`` object for ``Retry(backoff=...)``."""
    return TenacityWait(wait)


# -- instrument: tenacity objects publishing our events ------------------------------------
_MARK = "_resilience_original"


def _outcome_error(state: _tenacity.RetryCallState) -> BaseException | None:
    fut = state.outcome
    return fut.exception() if fut is not None and fut.failed else None


def _reason(stop: Any, state: _tenacity.RetryCallState) -> GiveUpReason:
    """Which kind of limit stopped the retry, for the ``reason`` of :class:`RetryGaveUp`."""
    if isinstance(stop, (_tenacity.stop_after_delay, _tenacity.stop_before_delay)):
        return GiveUpReason.TOTAL_TIMEOUT
    if isinstance(stop, (_tenacity.stop_any, _tenacity.stop_all)):
        for inner in stop.stops:
            try:
                fired = inner(state)
            except Exception:
                continue
            if fired is True:
                return _reason(inner, state)
    return GiveUpReason.ATTEMPTS  # stop_after_attempt, and limits we cannot see into


def _chain_before_sleep(original: Any, policy: str) -> Callable[..., Any]:
    def publish(state: _tenacity.RetryCallState) -> None:
        if EVENTS.wants(policy):
            action = state.next_action
            delay = action.sleep if action is not None else state.upcoming_sleep
            EVENTS.publish(
                RetryScheduled(
                    policy=policy,
                    strategy="retry",
                    time=SYSTEM_CLOCK.now(),
                    attempt=state.attempt_number,
                    delay=float(delay),
                    error=_outcome_error(state),
                    hinted=False,
                )
            )

    hook: Callable[..., Any]
    if original is not None and inspect.iscoroutinefunction(original):

        async def before_sleep_async(state: _tenacity.RetryCallState) -> None:
            publish(state)
            await original(state)

        hook = before_sleep_async
    else:

        def before_sleep(state: _tenacity.RetryCallState) -> None:
            publish(state)
            if original is not None:
                original(state)

        hook = before_sleep
    setattr(hook, _MARK, original)
    return hook


def _chain_stop(original: Any, policy: str) -> Callable[..., Any]:
    def publish(state: _tenacity.RetryCallState, stopped: object) -> None:
        if stopped and EVENTS.wants(policy):
            EVENTS.publish(
                RetryGaveUp(
                    policy=policy,
                    strategy="retry",
                    time=SYSTEM_CLOCK.now(),
                    attempts=state.attempt_number,
                    reason=_reason(original, state),
                    error=_outcome_error(state),
                )
            )

    hook: Callable[..., Any]
    if inspect.iscoroutinefunction(original) or inspect.iscoroutinefunction(
        getattr(original, "__call__", None)  # noqa: B004 - an object's async __call__
    ):

        async def stop_async(state: _tenacity.RetryCallState) -> object:
            stopped = await original(state)
            publish(state, stopped)
            return stopped

        hook = stop_async
    else:

        def stop(state: _tenacity.RetryCallState) -> object:
            stopped = original(state)
            publish(state, stopped)
            return stopped

        hook = stop
    setattr(hook, _MARK, original)
    return hook


def instrument(retrying: T, *, name: str) -> T:
    """Make a tenacity retrying object publish resilience events under policy ``name``.

    ``retrying`` is a ``tenacity.Retrying`` or ``AsyncRetrying``, or a function decorated
    with ``@tenacity.retry(...)`` (its ``.retry`` object is instrumented). Each wait
    publishes :class:`~resilience.RetryScheduled` (from ``before_sleep``) and giving up
    publishes :class:`~resilience.RetryGaveUp` (when ``stop`` fires; the reason is
    ``total_timeout`` for tenacity's delay stops and ``attempts`` otherwise). Hooks the
    object already has still run, after ours. Instrumenting again replaces the name.
    Returns ``retrying`` itself.
    """
    policy = to_name("name", name)
    if policy is None:
        raise TypeError("name must be a non-empty str")
    target: Any = retrying
    if not isinstance(target, _tenacity.BaseRetrying):
        target = getattr(retrying, "retry", None)
        if not isinstance(target, _tenacity.BaseRetrying):
            raise TypeError(
                "instrument() takes a tenacity Retrying / AsyncRetrying object or a function "
                f"decorated with @tenacity.retry, got {retrying!r}"
            )
    before_sleep = getattr(target.before_sleep, _MARK, target.before_sleep)
    stop = getattr(target.stop, _MARK, target.stop)
    target.before_sleep = _chain_before_sleep(before_sleep, policy)
    target.stop = _chain_stop(stop, policy)
    return retrying
