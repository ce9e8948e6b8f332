"""Timeout: bound how long a call may take, and pass the deadline down.

Async calls are cancelled at the deadline (``asyncio.timeout`` semantics) and the caller
gets :class:`~resilience.TimeoutExceededError`, a builtin ``TimeoutError``. An outer
cancellation stays a ``CancelledError``; a timeout never surfaces as one.

Sync calls cannot be interrupted safely, so two modes are offered:

- ``mode="deadline"`` (default, cooperative): the deadline is set for inner strategies
  and adapters (:func:`resilience.remaining`), and checked when the call returns; a call
  that returns late raises the timeout error, with the late result kept on it.
- ``mode="thread"``: the call runs in a bounded worker pool and the caller gets the
  timeout error at the deadline. The worker thread **runs on** until the function
  returns (Python cannot kill a thread); a bulkhead around the timeout keeps its permit
  until then, through the error's ``pending`` future.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

from ._core.clock import SYSTEM_CLOCK, Clock, TimerHandle
from ._core.deadline import DEADLINE, Deadline, tighten
from ._core.errors import TimeoutExceededError
from ._core.events import EVENTS, Event, Severity
from ._core.options import to_int, to_seconds
from ._core.strategy import AnyCallable, AsyncCallable, Scope, Strategy
from ._core.telemetry import (
    COUNT_TIME,
    NEVER,
    NEVER_STATS,
    OBSERVED,
    QUICK,
    TRACED,
    PolicyGate,
    unfailed,
    unobserved,
)

__all__ = ["Timeout", "TimeoutMode", "TimedOut"]


class TimeoutMode(str, enum.Enum):
    """How a sync call is bounded (async calls are always cancelled)."""

    DEADLINE = "deadline"
    THREAD = "thread"


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedOut(Event):
    """The call ran past its deadline after ``elapsed`` seconds (``timeout`` configured)."""

    severity: ClassVar[Severity] = Severity.WARNING

    timeout: float
    elapsed: float


class _Entry:
    """Per-entry state of ``with timeout:`` / ``async with timeout:``."""

    __slots__ = ("deadline", "fired", "handle", "owner", "start", "task", "token")

    deadline: Deadline
    start: float
    token: contextvars.Token[Deadline | None]

    def __init__(self, owner: Timeout) -> None:
        self.owner = owner
        self.fired = False
        self.handle: TimerHandle | None = None
        self.task: asyncio.Task[Any] | None = None

    def fire(self) -> None:
        self.fired = True
        if self.task is not None:
            self.task.cancel()


# A stack per context: nested and concurrent ``with`` blocks each find their own entry.
_ENTRIES: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar(
    "resilience_timeout_entries", default=()
)


def _uncancel(task: asyncio.Task[Any]) -> int:
    """Withdraw our own cancel request; the count left is the outer requests (3.11+)."""
    uncancel = getattr(task, "uncancel", None)
    return int(uncancel()) if uncancel is not None else 0


class Timeout(Strategy):
    """Bound a call to ``seconds`` and make that deadline visible to inner calls.

    Parameters:
        seconds: the time allowed, ``> 0`` (float seconds or ``timedelta``).
        mode: for sync calls, ``"deadline"`` (default, cooperative) or ``"thread"``.
        max_workers: size of the worker pool of ``thread`` mode, ``>= 1``; default 32.
        name: the policy name when used alone.
        clock: injected time (tests).

    Nested timeouts take the earlier deadline. A call whose deadline has already
    passed is not started.
    """

    kind: ClassVar[str] = "timeout"
    __slots__ = ("_clock", "_lock", "_max_workers", "_pool", "mode", "seconds")

    def __init__(
        self,
        seconds: float | timedelta,
        *,
        mode: TimeoutMode | str = TimeoutMode.DEADLINE,
        max_workers: int = 32,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        self.seconds = to_seconds("seconds", seconds, exclusive_minimum=True)
        try:
            self.mode = TimeoutMode(mode)
        except ValueError:
            raise ValueError(f"mode must be 'deadline' or 'thread', got {mode!r}") from None
        self._max_workers = to_int("max_workers", max_workers, minimum=1, maximum=10_000)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"Timeout({self.seconds:g}, mode={self.mode.value!r}{name})"

    # -- shared decisions -----------------------------------------------------------------
    def _error(self, scope: Scope, start: float, **extra: Any) -> TimeoutExceededError:
        now = self._clock.now()
        elapsed = now - start
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                TimedOut(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=now,
                    timeout=self.seconds,
                    elapsed=elapsed,
                )
            )
        return TimeoutExceededError(
            f"{scope.policy}/{scope.strategy}: the call did not finish within its deadline "
            f"({self.seconds:g} s timeout, {elapsed:.3f} s elapsed)",
            policy=scope.policy,
            timeout=self.seconds,
            elapsed=elapsed,
            **extra,
        )

    @staticmethod
    def _expired(d: Deadline) -> bool:
        return d.clock.now() >= d.when

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="resilience-timeout"
                )
            return self._pool

    def close(self) -> None:
        """Shut the worker pool of ``thread`` mode down (running calls finish first)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- drivers ----------------------------------------------------------------------------
    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        if self.mode is TimeoutMode.THREAD:
            return self._thread_driver(fn, scope)
        return self._deadline_driver(fn, scope, None)

    def _wrap_sync_policy(self, fn: AnyCallable, scope: Scope, gate: PolicyGate) -> AnyCallable:
        if self.mode is TimeoutMode.THREAD:
            return super()._wrap_sync_policy(fn, scope, gate)
        return self._deadline_driver(fn, scope, gate)

    def _thread_driver(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        clock = self._clock
        seconds = self.seconds
        executor = self._executor

        def timeout_thread(*args: Any, **kwargs: Any) -> Any:
            start = clock.now()
            d, token = tighten(seconds, clock)
            try:
                if self._expired(d):
                    raise self._error(scope, start)
                ctx = contextvars.copy_context()
                fut: Future[Any] = executor().submit(ctx.run, fn, *args, **kwargs)
            finally:
                DEADLINE.reset(token)
            wait((fut,), timeout=max(0.0, d.when - d.clock.now()), return_when=FIRST_COMPLETED)
            if fut.done():
                return fut.result()
            # A call still queued behind busy workers is dropped; a running one runs on.
            if fut.cancel():
                raise self._error(scope, start)
            raise self._error(scope, start, pending=fut)

        return timeout_thread

    def _deadline_driver(
        self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None
    ) -> AnyCallable:
        """The cooperative driver; with ``gate``, the policy's outermost closure.

        The hot path reads the clock twice, builds one :class:`Deadline` and sets the
        context variable once. With metrics on and the system clock on both sides, the
        same two reads time the call for the policy's histogram.
        """
        clock = self._clock
        now = clock.now  # the builtin itself for the system clock
        seconds = self.seconds
        dget, dset, dreset = DEADLINE.get, DEADLINE.set, DEADLINE.reset
        new = object.__new__
        error = self._error
        switch = NEVER
        observed: Callable[[Any, Any], Any] = unobserved
        stats = NEVER_STATS
        failure: Callable[[BaseException, float | None], None] = unfailed
        if gate is not None:
            observed = gate.observe_sync(self._deadline_driver(fn, scope, None))
            stats, _, failure = gate.tally()
            # Another clock than the policy's: every call goes to ``observed``.
            switch = gate.switch if gate.shares(clock) else OBSERVED

        def record(mode: int, err: BaseException, start: float) -> None:
            failure(err, start if mode == COUNT_TIME else None)

        def timed_out(start: float, mode: int, **extra: Any) -> TimeoutExceededError:
            err = error(scope, start, **extra)
            if mode:
                record(mode, err, start)
            return err

        # What only tracing and failures use, in one free variable: a closure's free
        # variables are copied into its frame on every call.
        slow = (observed, record)

        def timeout_deadline(*args: Any, **kwargs: Any) -> Any:
            mode = switch.mode
            if mode and TRACED[mode]:  # tracing, or a result classifier
                return slow[0](args, kwargs)  # observed
            start = now()
            # A caller's deadline on the same clock is compared with ``start``: no more reads.
            d = dget()
            if d is None or d.when - (start if d.clock is clock else d.clock.now()) > seconds:
                # Deadline.__init__ only sets these two slots; this way is ~40 ns cheaper.
                d = new(Deadline)
                d.when = when = start + seconds
                d.clock = clock
            else:
                when = d.when
                if (start if d.clock is clock else d.clock.now()) >= when:
                    raise timed_out(start, mode)  # the caller's deadline has passed: no start
            token = dset(d)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                if mode:
                    slow[1](mode, exc, start)  # record
                raise
            finally:
                dreset(token)
            end = now()
            if (end if d.clock is clock else d.clock.now()) >= when:
                raise timed_out(start, mode, result=result)
            if mode == COUNT_TIME:
                n = end - start
                if n < QUICK:
                    stats.ok_quick += 1.0
                else:
                    stats.slower(n)
                stats.ok_seconds += n
            elif mode:
                stats.ok_untimed += 1
            return result

        return timeout_deadline

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        return self._async_driver(fn, scope, None)

    def _wrap_async_policy(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate
    ) -> AsyncCallable:
        return self._async_driver(fn, scope, gate)

    def _async_driver(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        clock = self._clock
        seconds = self.seconds
        switch = NEVER
        observed: Callable[[Any, Any], Any] = unobserved
        if gate is not None:
            switch = gate.switch
            observed = gate.observe_async(self._async_driver(fn, scope, None))

        async def timeout_async(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return await observed(args, kwargs)
            start = clock.now()
            d, token = tighten(seconds, clock)
            try:
                if d.clock.now() >= d.when:
                    raise self._error(scope, start)
                task = asyncio.current_task()
                if task is None:  # pragma: no cover - always inside a task under asyncio
                    raise RuntimeError("Timeout needs a running asyncio task")
                entry = _Entry(self)
                entry.task = task
                handle = d.clock.call_at(d.when, entry.fire)
                try:
                    result = await fn(*args, **kwargs)
                except asyncio.CancelledError:
                    if entry.fired and _uncancel(task) == 0:
                        raise self._error(scope, start) from None
                    raise
                except BaseException:
                    if entry.fired:
                        # The work turned our cancellation into its own error: withdraw the
                        # request, or an enclosing asyncio.timeout() would misread it.
                        _uncancel(task)
                    raise
                finally:
                    handle.cancel()
                if entry.fired:
                    # The function swallowed our cancellation and returned: keep its result.
                    _uncancel(task)
                return result
            finally:
                DEADLINE.reset(token)

        return timeout_async

    # -- context managers -----------------------------------------------------------------------
    def _enter(self) -> _Entry:
        entry = _Entry(self)
        entry.start = self._clock.now()
        entry.deadline, entry.token = tighten(self.seconds, self._clock)
        _ENTRIES.set((*_ENTRIES.get(), entry))
        return entry

    def _exit(self) -> _Entry:
        stack = _ENTRIES.get()
        if not stack or stack[-1].owner is not self:
            raise RuntimeError("Timeout blocks must be exited in the order they were entered")
        entry = stack[-1]
        _ENTRIES.set(stack[:-1])
        DEADLINE.reset(entry.token)
        return entry

    def __enter__(self) -> Deadline:
        """``with timeout:`` sets the deadline (cooperative, as ``mode="deadline"``)."""
        if self.mode is TimeoutMode.THREAD:
            raise TypeError("a thread-mode Timeout cannot guard a with-block; decorate a function")
        entry = self._enter()
        if self._expired(entry.deadline):
            self._exit()
            raise self._error(Scope(self.name or "timeout", self.kind), entry.start)
        return entry.deadline

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._exit()
        if exc is None and self._expired(entry.deadline):
            raise self._error(Scope(self.name or "timeout", self.kind), entry.start)

    async def __aenter__(self) -> Deadline:
        """``async with timeout:`` cancels the block at the deadline."""
        entry = self._enter()
        if self._expired(entry.deadline):
            self._exit()
            raise self._error(Scope(self.name or "timeout", self.kind), entry.start)
        entry.task = asyncio.current_task()
        entry.handle = entry.deadline.clock.call_at(entry.deadline.when, entry.fire)
        return entry.deadline

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entry = self._exit()
        if entry.handle is not None:
            entry.handle.cancel()
        if not entry.fired or entry.task is None:
            return
        if isinstance(exc, asyncio.CancelledError):
            if _uncancel(entry.task) == 0:
                raise self._error(Scope(self.name or "timeout", self.kind), entry.start) from None
            return
        _uncancel(entry.task)
