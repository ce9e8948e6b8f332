"""Retry: run the call again after an unknown failure, with backoff, within limits.

Parts: :class:`Retry` (options + the two thin drivers), :class:`RetryBudget` (retries
as a share of recent traffic, shared across call sites), the events
:class:`RetryScheduled` and :class:`RetryGaveUp`, and the attempt-block form
``for attempt in retry.attempts(): with attempt: ...``.

Every decision is made by :class:`_RetryCall`, a per-call state object with no I/O that
the sync driver, the async driver and the attempt blocks all share. The success path of
a decorated function is one ``try`` around the call: nothing else runs until an
exception is caught.
"""

from __future__ import annotations

import enum
import math
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

from ._core.clock import SYSTEM_CLOCK, Clock, Rng, default_rng
from ._core.deadline import DEADLINE, tighten
from ._core.events import EVENTS, Event, Severity
from ._core.options import exception_matcher, to_float, to_int, to_seconds
from ._core.outcome import DEFAULT_CLASSIFIER, Classifier, Outcome
from ._core.strategy import AnyCallable, AsyncCallable, GatedStrategy, Scope
from ._core.telemetry import COUNT, COUNT_TIME, NEVER, PolicyGate, unobserved
from .backoff import AttemptInfo, Backoff, Schedule

__all__ = [
    "Retry",
    "RetryBudget",
    "RetryScheduled",
    "RetryGaveUp",
    "GiveUpReason",
    "Attempt",
    "Attempts",
]


class GiveUpReason(str, enum.Enum):
    """Why a retry stopped before the call succeeded."""

    ATTEMPTS = "attempts"
    """``attempts`` calls were made."""
    TOTAL_TIMEOUT = "total_timeout"
    """The next wait would cross the retry's own ``total_timeout``."""
    DEADLINE = "deadline"
    """The next wait (or the server's ``retry_after`` hint) would cross the caller's deadline."""
    BUDGET = "budget"
    """The shared :class:`RetryBudget` had no retry left: failing fast stops a retry storm."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """Attempt ``attempt`` failed; the next one starts after ``delay`` seconds."""

    attempt: int
    delay: float
    error: BaseException | None
    hinted: bool
    """The delay came from a ``retry_after`` hint rather than the backoff schedule."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(Event):
    """The retry stopped after ``attempts`` attempts; the last error (or result) is passed on."""

    severity: ClassVar[Severity] = Severity.WARNING

    attempts: int
    reason: GiveUpReason
    error: BaseException | None


def _add_note(exc: BaseException, note: str) -> None:
    """Annotate the caller's error (PEP 678; the same code on 3.10); never raise or drop notes.

    The error matters more than the note: a ``__notes__`` that is not a list (which makes
    ``add_note`` raise ``TypeError``) is left as it is.
    """
    notes = getattr(exc, "__notes__", None)
    if notes is None:
        exc.__notes__ = [note]  # type: ignore[attr-defined]
    elif isinstance(notes, list):
        notes.append(note)


def _default_retry_after(obj: object) -> object:
    return getattr(obj, "retry_after", None)


class RetryBudget:
    """Retries allowed as a share of recent requests, shared by every retry that uses it.

    Over the last ``window`` seconds, retries may add at most ``ratio`` of the requests
    made, plus ``min_per_second * window`` so that low traffic can still retry. When the
    budget is empty a failing call fails fast with its own error and a
    :class:`RetryGaveUp` event with reason ``budget``. This is what keeps a fleet of
    clients from multiplying an outage with retries (Finagle's ``RetryBudget``).

    Parameters:
        ratio: retries per request, ``0 <= ratio <= 1000``; default 0.2.
        min_per_second: retries always allowed per second, ``>= 0``; default 10.
        window: seconds of history, ``> 0``; default 10.
        clock: the clock (default: the system clock).
    """

    _BUCKETS = 10
    __slots__ = (
        "_clock",
        "_lock",
        "_req",
        "_req_total",
        "_ret",
        "_ret_total",
        "_tick",
        "_width",
        "min_per_second",
        "ratio",
        "window",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: float | timedelta = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.ratio = to_float("ratio", ratio, minimum=0.0, maximum=1000.0)
        self.min_per_second = to_float("min_per_second", min_per_second, minimum=0.0)
        self.window = to_seconds("window", window, minimum=0.0, exclusive_minimum=True)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        self._width = self.window / self._BUCKETS
        self._req = [0] * self._BUCKETS
        self._ret = [0] * self._BUCKETS
        self._req_total = 0
        self._ret_total = 0
        self._tick = math.floor(self._clock.now() / self._width)
        self._lock = threading.Lock()

    def _roll(self) -> int:
        tick = math.floor(self._clock.now() / self._width)
        steps = tick - self._tick
        if steps > 0:
            n = self._BUCKETS
            for i in range(1, min(steps, n) + 1):
                idx = (self._tick + i) % n
                self._req_total -= self._req[idx]
                self._ret_total -= self._ret[idx]
                self._req[idx] = 0
                self._ret[idx] = 0
            self._tick = tick
        return self._tick % self._BUCKETS

    def deposit(self) -> None:
        """Count one request (every call through a retry that uses this budget)."""
        with self._lock:
            idx = self._roll()
            self._req[idx] += 1
            self._req_total += 1

    def try_withdraw(self) -> bool:
        """Take one retry if the budget allows it; ``False`` when it is empty."""
        with self._lock:
            idx = self._roll()
            if self._ret_total + 1 > self._allowed():
                return False
            self._ret[idx] += 1
            self._ret_total += 1
            return True

    def _allowed(self) -> float:
        return self.min_per_second * self.window + self.ratio * self._req_total

    def snapshot(self) -> dict[str, float]:
        """Requests and retries in the window and the retries still available."""
        with self._lock:
            self._roll()
            return {
                "requests": self._req_total,
                "retries": self._ret_total,
                "available": max(0.0, self._allowed() - self._ret_total),
            }

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio:g}, min_per_second={self.min_per_second:g}, "
            f"window={self.window:g})"
        )


class Retry(GatedStrategy):
    """Retry a call after unknown failures, with backoff.

    Parameters:
        on: what to retry; required so that nothing is retried by accident. An exception
            type, a tuple of them, or a predicate taking the exception. Known failures
            (see ``classifier``) are never retried even when they match.
        attempts: total attempts including the first, ``>= 1``; default 3. ``None`` for
            no limit, which needs ``total_timeout``.
        backoff: a :class:`~resilience.Backoff` (default ``Backoff.exponential()``:
            0.1 s doubling up to 10 s, full jitter), any :class:`~resilience.Schedule`,
            or a tenacity ``wait_*`` object.
        total_timeout: seconds (or ``timedelta``) for the whole call including waits,
            ``> 0``; the retry never sleeps past it, and it becomes the deadline of the
            inner calls. Default ``None`` (no limit besides the caller's deadline).
        on_result: predicate on a returned value; ``True`` retries it. When the attempts
            run out the last result is returned.
        retry_after: function of the exception (or result) returning a server hint in
            seconds or as ``timedelta``, which replaces the computed backoff. Default:
            the object's ``retry_after`` attribute (every ``RejectedError`` has one).
            ``None`` ignores hints.
        max_retry_after: upper clamp for hints, ``>= 0``; default 60 s.
        budget: a shared :class:`RetryBudget`; default ``None``.
        classifier: decides known vs unknown failures; default: every ``Exception`` is
            unknown.
        name: the policy name when used alone (default: the function's qualified name).
        clock, rng: injected time and randomness (tests).

    On exhaustion the last exception itself is re-raised (cause chain intact) with a
    PEP 678 note saying how many attempts were made; it is never wrapped.
    """

    kind: ClassVar[str] = "retry"
    __slots__ = (
        "_attempts",
        "_budget",
        "_classifier",
        "_clock",
        "_matches",
        "_max_retry_after",
        "_on_result",
        "_retry_after",
        "_rng",
        "_schedule",
        "_total",
        "on",
    )

    def __init__(
        self,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool],
        attempts: int | None = 3,
        backoff: Schedule | object | None = None,
        total_timeout: float | timedelta | None = None,
        on_result: Callable[[Any], bool] | None = None,
        retry_after: Callable[[Any], object] | None = _default_retry_after,
        max_retry_after: float | timedelta = 60.0,
        budget: RetryBudget | None = None,
        classifier: Classifier | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        rng: Rng | None = None,
    ) -> None:
        super().__init__(name=name)
        self.on = on
        self._matches = exception_matcher("on", on)
        self._attempts = None if attempts is None else to_int("attempts", attempts, minimum=1)
        self._total = (
            None
            if total_timeout is None
            else to_seconds("total_timeout", total_timeout, exclusive_minimum=True)
        )
        if self._attempts is None and self._total is None:
            raise ValueError("attempts=None (no limit) needs a total_timeout")
        self._schedule = _to_schedule(backoff)
        if on_result is not None and not callable(on_result):
            raise TypeError(f"on_result must be a predicate or None, got {on_result!r}")
        self._on_result = on_result
        if retry_after is not None and not callable(retry_after):
            raise TypeError(f"retry_after must be a callable or None, got {retry_after!r}")
        self._retry_after = retry_after
        self._max_retry_after = to_seconds("max_retry_after", max_retry_after)
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget or None, got {budget!r}")
        self._budget = budget
        if classifier is not None and not isinstance(classifier, Classifier):
            raise TypeError(f"classifier must be a Classifier or None, got {classifier!r}")
        self._classifier = classifier or DEFAULT_CLASSIFIER
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        if rng is not None and not isinstance(rng, Rng):
            raise TypeError(f"rng must be a random.Random or None, got {rng!r}")
        self._rng = rng or default_rng()

    def __repr__(self) -> str:
        return (
            f"Retry(on={self.on!r}, attempts={self._attempts}, backoff={self._schedule!r}"
            + (f", total_timeout={self._total:g}" if self._total is not None else "")
            + (f", name={self.name!r}" if self.name else "")
            + ")"
        )

    @property
    def attempts_limit(self) -> int | None:
        """The configured number of attempts (``None``: limited by time only)."""
        return self._attempts

    @property
    def budget(self) -> RetryBudget | None:
        """The shared retry budget, if any."""
        return self._budget

    def snapshot(self) -> dict[str, Any]:
        """Kind, name, the attempts limit and, with a budget, the budget's live counts."""
        snap = super().snapshot()
        snap["attempts"] = self._attempts
        if self._budget is not None:
            snap["budget"] = self._budget.snapshot()
        return snap

    # -- decisions (no I/O) -----------------------------------------------------------------
    def _retryable(self, error: BaseException) -> bool:
        return (
            self._matches(error)
            and self._classifier.classify_exception(error) is Outcome.UNKNOWN_FAILURE
        )

    def _hint(self, error: BaseException | None, result: Any) -> float | None:
        if self._retry_after is None:
            return None
        raw = self._retry_after(error if error is not None else result)
        if isinstance(raw, timedelta):
            secs = raw.total_seconds()
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            secs = float(raw)
        else:
            return None
        secs = max(0.0, secs)
        return secs if secs < self._max_retry_after else self._max_retry_after

    def _decide(
        self,
        attempt: int,
        start: float,
        now: float,
        previous: float,
        error: BaseException | None,
        result: Any,
    ) -> tuple[float, bool] | GiveUpReason:
        """The delay before the next attempt (and whether it was hinted), or why to stop."""
        if self._attempts is not None and attempt >= self._attempts:
            return GiveUpReason.ATTEMPTS
        hint = self._hint(error, result)
        if hint is not None:
            delay = hint
        else:
            info = AttemptInfo(
                attempt=attempt,
                elapsed=now - start,
                previous_delay=previous,
                error=error,
                result=result,
            )
            delay = self._schedule.delay(info, self._rng)
        # A wait that ends at the limit leaves no time for the attempt after it.
        if self._total is not None and now + delay - start >= self._total:
            return GiveUpReason.TOTAL_TIMEOUT
        dl = DEADLINE.get()
        if dl is not None and delay >= dl.when - dl.clock.now():
            return GiveUpReason.DEADLINE
        if self._budget is not None and not self._budget.try_withdraw():
            return GiveUpReason.BUDGET
        return delay, hint is not None

    # -- drivers ----------------------------------------------------------------------------
    # As a policy's outermost strategy, a driver's closure carries the policy's gate
    # (see PolicyGate): ``observed`` is the same closure built without it.
    def _sync_driver(self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None) -> AnyCallable:
        on_result = self._on_result
        clock = self._clock
        retry = self
        switch = NEVER
        observed: Callable[[Any, Any], Any] = unobserved
        if gate is not None:
            switch = gate.switch
            observed = gate.observe_sync(self._sync_driver(fn, scope, None))

        def again(args: Any, kwargs: Any, call: _RetryCall, error: Any, result: Any) -> Any:
            while True:
                delay = call.next_delay(error, result)
                if delay is None:
                    if error is not None:
                        raise error
                    return result
                clock.sleep(delay)
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                    continue
                error = None
                if on_result is None or not on_result(result):
                    return result

        if on_result is None and self._budget is None and self._total is None:
            # The hot path: one try around the call, nothing else until it fails.
            def retry_fast(*args: Any, **kwargs: Any) -> Any:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                return again(args, kwargs, _RetryCall(retry, scope, None), error, None)

            if gate is None:
                return retry_fast
            # The policy's outermost closure: the same, with the gate. What only tracing
            # and failures use is in one free variable (each is copied into every frame).
            stats, _, failure = gate.tally()
            start, record = gate.timer()
            slow = (observed, failure)

            def retry_fast_policy(*args: Any, **kwargs: Any) -> Any:
                mode = switch.mode
                if mode:
                    # Metrics are served in this frame (no observer frame).
                    if mode == COUNT_TIME:
                        t0: float | None = start()
                    elif mode == COUNT:
                        t0 = None
                    else:  # tracing, or a result classifier
                        return slow[0](args, kwargs)  # observed
                    try:
                        result = fn(*args, **kwargs)
                    except Exception as exc:
                        error = exc
                    except BaseException as exc:
                        slow[1](exc, t0)  # failure
                        raise
                    else:
                        if t0 is None:
                            stats.ok_untimed += 1
                            return result
                        record(t0)
                        return result
                    try:
                        result = again(args, kwargs, _RetryCall(retry, scope, None), error, None)
                    except BaseException as exc:
                        slow[1](exc, t0)  # failure
                        raise
                    if t0 is None:
                        stats.ok_untimed += 1
                        return result
                    record(t0)
                    return result
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                return again(args, kwargs, _RetryCall(retry, scope, None), error, None)

            return retry_fast_policy

        budget = self._budget
        total = self._total

        def retry_full(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return observed(args, kwargs)
            if budget is not None:
                budget.deposit()
            start = clock.now()
            token = tighten(total, clock)[1] if total is not None else None
            try:
                call = _RetryCall(retry, scope, start)
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                else:
                    if on_result is None or not on_result(result):
                        return result
                    return again(args, kwargs, call, None, result)
                # Outside the except block: later attempts' errors must not get the first
                # one chained on as their __context__.
                return again(args, kwargs, call, error, None)
            finally:
                if token is not None:
                    DEADLINE.reset(token)

        return retry_full

    def _async_driver(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        on_result = self._on_result
        clock = self._clock
        retry = self
        switch = NEVER
        observed: Callable[[Any, Any], Any] = unobserved
        if gate is not None:
            switch = gate.switch
            observed = gate.observe_async(self._async_driver(fn, scope, None))

        async def again(args: Any, kwargs: Any, call: _RetryCall, error: Any, result: Any) -> Any:
            while True:
                delay = call.next_delay(error, result)
                if delay is None:
                    if error is not None:
                        raise error
                    return result
                await clock.asleep(delay)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                    continue
                error = None
                if on_result is None or not on_result(result):
                    return result

        if on_result is None and self._budget is None and self._total is None:

            async def retry_fast(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                return await again(args, kwargs, _RetryCall(retry, scope, None), error, None)

            if gate is None:
                return retry_fast
            # The policy's outermost closure: the same, with the gate. What only tracing
            # and failures use is in one free variable (each is copied into every frame).
            stats, _, failure = gate.tally()
            start, record = gate.timer()
            slow = (observed, failure)

            async def retry_fast_policy(*args: Any, **kwargs: Any) -> Any:
                mode = switch.mode
                if mode:
                    # Metrics are served in this frame (no observer frame).
                    if mode == COUNT_TIME:
                        t0: float | None = start()
                    elif mode == COUNT:
                        t0 = None
                    else:  # tracing, or a result classifier
                        return await slow[0](args, kwargs)  # observed
                    try:
                        result = await fn(*args, **kwargs)
                    except Exception as exc:
                        error = exc
                    except BaseException as exc:
                        slow[1](exc, t0)  # failure
                        raise
                    else:
                        if t0 is None:
                            stats.ok_untimed += 1
                            return result
                        record(t0)
                        return result
                    try:
                        result = await again(
                            args, kwargs, _RetryCall(retry, scope, None), error, None
                        )
                    except BaseException as exc:
                        slow[1](exc, t0)  # failure
                        raise
                    if t0 is None:
                        stats.ok_untimed += 1
                        return result
                    record(t0)
                    return result
                try:
                    return await fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                return await again(args, kwargs, _RetryCall(retry, scope, None), error, None)

            return retry_fast_policy

        budget = self._budget
        total = self._total

        async def retry_full(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return await observed(args, kwargs)
            if budget is not None:
                budget.deposit()
            start = clock.now()
            token = tighten(total, clock)[1] if total is not None else None
            try:
                call = _RetryCall(retry, scope, start)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                else:
                    if on_result is None or not on_result(result):
                        return result
                    return await again(args, kwargs, call, None, result)
                # Outside the except block (see the sync driver).
                return await again(args, kwargs, call, error, None)
            finally:
                if token is not None:
                    DEADLINE.reset(token)

        return retry_full

    def attempts(self, *, name: str | None = None) -> Attempts:
        """Attempt blocks for code that is not a function.

        ::

            for attempt in retry.attempts():
                with attempt:
                    do_something()

        and ``async for attempt in retry.attempts(): with attempt: ...`` in a coroutine
        (its waits use the async sleep). A block that raises a retryable error is
        suppressed and the loop goes on after the backoff; the last error propagates out
        of the ``with`` when the retry gives up.
        """
        return Attempts(self, Scope(name or self.name or "retry", self.kind))


class _RetryCall:
    """The state of one call through a :class:`Retry`: the shared state machine.

    ``next_delay`` is given each failure and answers with the wait before the next
    attempt, or ``None`` to stop (then the caller raises the error or returns the result).
    """

    __slots__ = ("attempt", "previous", "retry", "scope", "start")

    def __init__(self, retry: Retry, scope: Scope, start: float | None) -> None:
        self.retry = retry
        self.scope = scope
        self.start = start
        self.attempt = 1
        self.previous = 0.0

    def next_delay(self, error: BaseException | None, result: Any) -> float | None:
        retry = self.retry
        if error is not None and not retry._retryable(error):
            return None
        now = retry._clock.now()
        if self.start is None:
            self.start = now
        decision = retry._decide(self.attempt, self.start, now, self.previous, error, result)
        scope = self.scope
        if isinstance(decision, GiveUpReason):
            if error is not None:
                _add_note(
                    error,
                    f"resilience: {scope.policy}/{scope.strategy} gave up after "
                    f"{self.attempt} attempt(s) ({decision.value})",
                )
            if EVENTS.wants(scope.policy):
                EVENTS.publish(
                    RetryGaveUp(
                        policy=scope.policy,
                        strategy=scope.strategy,
                        time=now,
                        attempts=self.attempt,
                        reason=decision,
                        error=error,
                    )
                )
            return None
        delay, hinted = decision
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                RetryScheduled(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=now,
                    attempt=self.attempt,
                    delay=delay,
                    error=error,
                    hinted=hinted,
                )
            )
        self.attempt += 1
        self.previous = delay
        return delay


class Attempt:
    """One attempt of an attempt block; use it as ``with attempt:``."""

    __slots__ = ("_call", "_delay", "number")

    def __init__(self, call: _RetryCall) -> None:
        self._call = call
        self._delay: float | None = None
        self.number = call.attempt
        """1 for the first attempt."""

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        self._delay = self._call.next_delay(exc, None)
        return self._delay is not None

    def __repr__(self) -> str:
        return f"Attempt(number={self.number})"


class Attempts:
    """The iterable returned by :meth:`Retry.attempts` (sync and async)."""

    __slots__ = ("_retry", "_scope")

    def __init__(self, retry: Retry, scope: Scope) -> None:
        self._retry = retry
        self._scope = scope

    def _start(self) -> _RetryCall:
        retry = self._retry
        if retry._budget is not None:
            retry._budget.deposit()
        return _RetryCall(retry, self._scope, retry._clock.now())

    def __iter__(self) -> Iterator[Attempt]:
        call = self._start()
        while True:
            attempt = Attempt(call)
            yield attempt
            if attempt._delay is None:
                return
            self._retry._clock.sleep(attempt._delay)

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        call = self._start()
        while True:
            attempt = Attempt(call)
            yield attempt
            if attempt._delay is None:
                return
            await self._retry._clock.asleep(attempt._delay)


def _is_tenacity_wait(obj: object) -> bool:
    """A tenacity ``wait_*`` object, or a user's subclass of ``tenacity.wait.wait_base``.

    tenacity is not imported for this: whoever holds a tenacity wait has imported it.
    """
    if type(obj).__module__.startswith("tenacity"):
        return True
    wait_module = sys.modules.get("tenacity.wait")
    base = getattr(wait_module, "wait_base", None)
    return isinstance(base, type) and isinstance(obj, base)


def _to_schedule(backoff: object) -> Schedule:
    if backoff is None:
        return Backoff.exponential()
    if isinstance(backoff, Schedule):
        return backoff
    if _is_tenacity_wait(backoff):
        from .tenacity import wait_schedule

        return wait_schedule(backoff)
    raise TypeError(
        "backoff must be a resilience.Backoff, an object with a "
        f"delay(info, rng) method, or a tenacity wait_* object; got {backoff!r}"
    )
