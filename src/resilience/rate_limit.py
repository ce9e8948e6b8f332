"""Rate limiter: at most ``rate`` calls per ``period`` (plus ``burst``), waiting or failing fast.

Parts: :class:`RateLimiter` (options + the two thin drivers + ``with`` / ``async with``
and :meth:`~RateLimiter.acquire` / :meth:`~RateLimiter.aacquire` /
:meth:`~RateLimiter.try_acquire`), the events :class:`RateLimited` and
:class:`RateLimitWaited`, and the error :class:`RateLimitedError`.

The engine is :class:`_Gcra`, the generic cell rate algorithm: one integer of state
(the *theoretical arrival time* of the next call), no I/O, shared by the sync and the
async driver. Time is counted in whole microseconds and scaled by ``rate`` so that the
emission interval ``period / rate`` is an exact integer: limits hold exactly under a
fake clock, with no float drift, and the same arithmetic ports to a shared store.

Callers that wait line up first come, first served. Only the caller at the head of
the line sleeps (until the limiter can admit it); the others park until the head has
been admitted or has left. A waiter therefore holds nothing while it waits: when it is
cancelled or runs out of time it simply leaves, and it never consumes a permit.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

from ._core.clock import SYSTEM_CLOCK, Clock, TimerHandle
from ._core.deadline import DEADLINE
from ._core.errors import RejectedError
from ._core.events import EVENTS, CallRejected, Event
from ._core.options import to_int, to_seconds
from ._core.strategy import AnyCallable, AsyncCallable, Scope, Strategy
from ._core.waiters import TaskWaiter, ThreadWaiter, Waiter, arm_timer

__all__ = ["RateLimiter", "RateLimitedError", "RateLimited", "RateLimitWaited"]

_US = 1_000_000
"""Microseconds per second: the limiter's unit of time."""


class RateLimitedError(RejectedError):
    """The rate limiter refused the call.

    ``retry_after`` is the number of seconds until the limiter could admit this caller
    (always ``> 0``); :class:`~resilience.Retry` reads it as its next delay.
    """

    retry_after: float

    def __init__(self, message: str, *, policy: str = "", retry_after: float) -> None:
        super().__init__(message, policy=policy, retry_after=retry_after)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimited(CallRejected):
    """A call was rejected with :class:`RateLimitedError` (``reason="rate_limited"``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitWaited(Event):
    """A call waited ``waited`` seconds for its permit and was then admitted."""

    waited: float


class _Gcra:
    """The limiter's decision object (generic cell rate algorithm) and its line of waiters.

    Time ``t`` seconds is ``round(t * 1e6) * rate`` *units*, so the emission interval
    (``period / rate``) is ``period_us`` units and the tolerance ``burst * period_us``:
    all integers. ``tat`` is the theoretical arrival time: a call at ``now`` is admitted
    when ``max(tat, now) - now <= tolerance``, which moves ``tat`` one interval on.

    No I/O: every method is called with ``lock`` held.
    """

    __slots__ = ("interval", "lock", "rate", "rejected", "tat", "tolerance", "waiters")

    def __init__(self, rate: int, period_us: int, burst: int, now: float) -> None:
        self.lock = threading.Lock()
        self.rate = rate
        self.interval = period_us
        self.tolerance = burst * period_us
        self.tat = self.units(now)
        self.rejected = 0
        self.waiters: collections.deque[Waiter] = collections.deque()

    def units(self, now: float) -> int:
        return round(now * _US) * self.rate

    def seconds(self, units: int) -> float:
        """``units`` as seconds, rounded up to a whole microsecond (never short)."""
        return -(-units // self.rate) / _US

    def take(self, now: int) -> int:
        """Admit a call at ``now`` (answer 0) or answer the units until it could be."""
        tat = self.tat if self.tat > now else now
        wait = tat - self.tolerance - now
        if wait > 0:
            return wait
        self.tat = tat + self.interval
        return 0

    def delay(self, now: int, ahead: int) -> int:
        """Units until a caller with ``ahead`` callers before it could be admitted."""
        tat = self.tat if self.tat > now else now
        wait = tat + ahead * self.interval - self.tolerance - now
        return wait if wait > 0 else 0

    def available(self, now: int) -> float:
        """Permits that could be taken at once now; fractional while one refills."""
        used = self.tat - now if self.tat > now else 0
        return (self.tolerance + self.interval - used) / self.interval

    def line_up(self, waiter: Waiter) -> None:
        """Join the line; the first in line is at once its head."""
        if not self.waiters:
            waiter.granted = True
        self.waiters.append(waiter)

    def leave(self, waiter: Waiter) -> Waiter | None:
        """``waiter`` leaves the line (admitted, timed out, cancelled); the next may become head.

        Answers the new head, to be woken.
        """
        waiters = self.waiters
        if waiters and waiters[0] is waiter:
            waiters.popleft()
            waiter.granted = False
            if waiters:
                head = waiters[0]
                head.granted = True
                return head
            return None
        with contextlib.suppress(ValueError):  # a waiter leaves once
            waiters.remove(waiter)
        return None


def _wake(gcra: _Gcra, waiter: Waiter | None) -> None:
    # A head whose event loop has closed can never run: the turn goes to the next.
    while waiter is not None and not waiter.wake():
        waiter = gcra.leave(waiter)


class RateLimiter(Strategy):
    """Admit at most ``rate`` calls per ``period``, plus a ``burst``; wait or fail fast.

    Parameters:
        rate: calls per ``period``, an int ``>= 1``. Calls are spaced ``period / rate``
            apart once the burst is used up.
        period: seconds (float or ``timedelta``), ``>= 1 µs``; default 1 second. Time is
            counted in whole microseconds.
        burst: extra calls allowed back to back, an int ``>= 0``; default 0. A limiter
            that has been idle admits ``1 + burst`` calls at once, and **over any window
            of length** ``period`` **it admits at most** ``rate + burst`` **calls**. With
            ``burst=0`` calls are evenly spaced and no window of length ``period`` holds
            more than ``rate`` of them.
        max_wait: the longest a call waits for a permit: ``0`` (default) rejects at
            once with :class:`RateLimitedError`; a duration ``> 0`` waits up to that;
            ``None`` waits as long as needed. A call never waits past the caller's
            deadline (:func:`resilience.remaining`): when the permit would come too late
            it is rejected at once, with ``retry_after`` saying when to come back.
        name: the policy name when used alone (default: the function's qualified name;
            ``"rate_limiter"`` for ``with`` blocks and ``acquire``).
        clock: injected time (tests).

    A permit is consumed when the call is admitted, whatever the call then does. A
    caller that waits holds nothing: cancelling it (or its deadline) frees its place
    and consumes no permit. One limiter may be shared by threads and asyncio tasks.
    """

    kind: ClassVar[str] = "rate_limiter"
    __slots__ = ("_burst", "_clock", "_cm_scope", "_gcra", "_max_wait", "_period", "_rate")

    def __init__(
        self,
        rate: int,
        *,
        period: float | timedelta = 1.0,
        burst: int = 0,
        max_wait: float | timedelta | None = 0.0,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        self._rate = to_int("rate", rate, minimum=1)
        self._period = to_seconds("period", period, minimum=1e-6)
        self._burst = to_int("burst", burst, minimum=0)
        self._max_wait = None if max_wait is None else to_seconds("max_wait", max_wait)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        period_us = round(self._period * _US)
        self._gcra = _Gcra(self._rate, period_us, self._burst, self._clock.now())
        self._cm_scope = Scope(self.name or self.kind, self.kind)

    def __repr__(self) -> str:
        return (
            f"RateLimiter({self._rate}, period={self._period:g}"
            + (f", burst={self._burst}" if self._burst else "")
            + (
                ", max_wait=None"
                if self._max_wait is None
                else (f", max_wait={self._max_wait:g}" if self._max_wait else "")
            )
            + (f", name={self.name!r}" if self.name else "")
            + ")"
        )

    # -- configuration and live state -------------------------------------------------------
    @property
    def rate(self) -> int:
        """Calls per ``period``."""
        return self._rate

    @property
    def period(self) -> float:
        """The period in seconds."""
        return self._period

    @property
    def burst(self) -> int:
        """Extra calls allowed back to back after an idle spell."""
        return self._burst

    @property
    def max_wait(self) -> float | None:
        """The longest a call waits, in seconds (0: never waits; ``None``: no limit)."""
        return self._max_wait

    @property
    def available(self) -> float:
        """Permits that could be taken at once now (fractional while one refills)."""
        g = self._gcra
        with g.lock:
            if g.waiters:
                return 0.0
            return g.available(g.units(self._clock.now()))

    def snapshot(self) -> dict[str, Any]:
        g = self._gcra
        now = self._clock.now()
        with g.lock:
            available = 0.0 if g.waiters else g.available(g.units(now))
            return {
                "kind": self.kind,
                "name": self.name,
                "rate": self._rate,
                "period": self._period,
                "burst": self._burst,
                "available": available,
                "rejected": g.rejected,
            }

    # -- shared decisions -----------------------------------------------------------------
    def _wait_budget(self) -> float | None:
        """How long a call may wait: ``max_wait`` capped by the caller's deadline."""
        limit = self._max_wait
        if limit == 0.0:
            return 0.0
        d = DEADLINE.get()
        if d is None:
            return limit
        left = d.when - d.clock.now()
        if left <= 0.0:
            return 0.0
        return left if limit is None or left < limit else limit

    def _rejected(self, scope: Scope, retry_after: float, why: str) -> RateLimitedError:
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                RateLimited(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._clock.now(),
                    reason="rate_limited",
                    retry_after=retry_after,
                )
            )
        return RateLimitedError(
            f"{scope.policy}/{scope.strategy}: {why}; a permit is due in {retry_after:.6f} s "
            f"(rate={self._rate} per {self._period:g} s, burst={self._burst})",
            policy=scope.policy,
            retry_after=retry_after,
        )

    def _waited(self, scope: Scope, start: float) -> None:
        if EVENTS.wants(scope.policy):
            now = self._clock.now()
            EVENTS.publish(
                RateLimitWaited(
                    policy=scope.policy, strategy=scope.strategy, time=now, waited=now - start
                )
            )

    def _line_up(self, waiter: Waiter, start: float, budget: float | None) -> float | None:
        """Admit at once (``None``), line ``waiter`` up (``0.0``) or refuse (the wait, ``> 0``).

        The lock is held.
        """
        g = self._gcra
        now = g.units(start)
        ahead = len(g.waiters)
        wait = g.take(now) if ahead == 0 else g.delay(now, ahead)
        if wait == 0 and ahead == 0:
            return None
        seconds = g.seconds(wait)
        if budget is not None and seconds > budget:
            g.rejected += 1
            return seconds
        g.line_up(waiter)
        return 0.0

    def _leave(self, waiter: Waiter) -> None:
        g = self._gcra
        with g.lock:
            _wake(g, g.leave(waiter))

    def _refuse(self, scope: Scope, retry_after: float, budget: float | None) -> RateLimitedError:
        if budget == 0.0 and self._max_wait != 0.0:
            why = "the caller's deadline leaves no time to wait"
        elif budget == 0.0:
            why = "no permit is available"
        else:
            why = f"no permit within {budget:.6f} s"
        return self._rejected(scope, retry_after, why)

    # -- sync driver ------------------------------------------------------------------------
    def _acquire_sync(self, scope: Scope) -> None:
        g = self._gcra
        now = self._clock.now()
        with g.lock:
            if not g.waiters and g.take(g.units(now)) == 0:
                return
        self._acquire_sync_slow(scope)

    def _acquire_sync_slow(self, scope: Scope) -> None:
        g = self._gcra
        clock = self._clock
        budget = self._wait_budget()
        start = clock.now()
        waiter = ThreadWaiter(g.lock)
        with g.lock:
            refused = self._line_up(waiter, start, budget)
        if refused is None:
            return
        if refused > 0.0:
            raise self._refuse(scope, refused, budget)
        give_up = None if budget is None else start + budget
        try:
            if not waiter.granted:
                self._wait_turn_sync(waiter, give_up)
            while True:  # the head of the line: sleep until the limiter can admit it
                with g.lock:
                    if waiter.granted:
                        now = clock.now()
                        wait = g.take(g.units(now))
                        if wait == 0:
                            _wake(g, g.leave(waiter))
                            break
                        seconds = g.seconds(wait)
                        late = give_up is not None and now + seconds > give_up
                    else:  # timed out before reaching the head
                        now = clock.now()
                        seconds = g.seconds(g.delay(g.units(now), g.waiters.index(waiter)))
                        late = True
                    if late:
                        g.rejected += 1
                        _wake(g, g.leave(waiter))
                if late:
                    raise self._rejected(
                        scope, max(seconds, 1e-6), f"no permit within {now - start:.6f} s"
                    )
                clock.sleep(seconds)
        except BaseException as exc:
            if not isinstance(exc, RateLimitedError):
                self._leave(waiter)
            raise
        self._waited(scope, start)

    def _wait_turn_sync(self, waiter: ThreadWaiter, give_up: float | None) -> None:
        """Park until ``waiter`` heads the line or ``give_up`` passes."""
        clock = self._clock
        timer: TimerHandle | None = None
        if give_up is not None:
            timer = arm_timer(clock, give_up, waiter.poke, in_loop=False)
        try:
            with self._gcra.lock:
                while not waiter.granted:
                    if give_up is None:
                        waiter.wait(None)
                        continue
                    left = give_up - clock.now()
                    if left <= 0.0:
                        return
                    waiter.wait(left)
        finally:
            if timer is not None:
                timer.cancel()

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        g = self._gcra
        lock = g.lock
        now = self._clock.now
        slow = self._acquire_sync_slow
        rate = g.rate

        def rate_limited_sync(*args: Any, **kwargs: Any) -> Any:
            t = round(now() * _US) * rate
            with lock:
                if g.waiters:
                    ok = False
                else:
                    tat = g.tat if g.tat > t else t
                    ok = tat - g.tolerance <= t
                    if ok:
                        g.tat = tat + g.interval
            if not ok:
                slow(scope)
            return fn(*args, **kwargs)

        return rate_limited_sync

    # -- async driver -----------------------------------------------------------------------
    async def _acquire_async(self, scope: Scope) -> None:
        g = self._gcra
        now = self._clock.now()
        with g.lock:
            if not g.waiters and g.take(g.units(now)) == 0:
                return
        await self._acquire_async_slow(scope)

    async def _acquire_async_slow(self, scope: Scope) -> None:
        g = self._gcra
        clock = self._clock
        budget = self._wait_budget()
        start = clock.now()
        waiter = TaskWaiter()
        with g.lock:
            refused = self._line_up(waiter, start, budget)
        if refused is None:
            return
        if refused > 0.0:
            raise self._refuse(scope, refused, budget)
        give_up = None if budget is None else start + budget
        try:
            if not waiter.granted:
                await self._wait_turn_async(waiter, give_up)
            while True:  # the head of the line: sleep until the limiter can admit it
                with g.lock:
                    if waiter.granted:
                        now = clock.now()
                        wait = g.take(g.units(now))
                        if wait == 0:
                            _wake(g, g.leave(waiter))
                            break
                        seconds = g.seconds(wait)
                        late = give_up is not None and now + seconds > give_up
                    else:  # timed out before reaching the head
                        now = clock.now()
                        seconds = g.seconds(g.delay(g.units(now), g.waiters.index(waiter)))
                        late = True
                    if late:
                        g.rejected += 1
                        _wake(g, g.leave(waiter))
                if late:
                    raise self._rejected(
                        scope, max(seconds, 1e-6), f"no permit within {now - start:.6f} s"
                    )
                await clock.asleep(seconds)
        except BaseException as exc:
            # Cancelled while waiting: leave the line; no permit was taken.
            if not isinstance(exc, RateLimitedError):
                self._leave(waiter)
            raise
        self._waited(scope, start)

    async def _wait_turn_async(self, waiter: TaskWaiter, give_up: float | None) -> None:
        """Park until ``waiter`` heads the line or ``give_up`` passes."""
        clock = self._clock
        timer = None if give_up is None else clock.call_at(give_up, waiter.poke)
        try:
            while True:
                await waiter.future
                with self._gcra.lock:
                    if waiter.granted or (give_up is not None and clock.now() >= give_up):
                        return
                    waiter.renew()
                if give_up is not None:  # woken a hair early by the timer: re-arm it
                    if timer is not None:
                        timer.cancel()
                    timer = clock.call_at(give_up, waiter.poke)
        finally:
            if timer is not None:
                timer.cancel()

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        g = self._gcra
        lock = g.lock
        now = self._clock.now
        slow = self._acquire_async_slow
        rate = g.rate

        async def rate_limited_async(*args: Any, **kwargs: Any) -> Any:
            t = round(now() * _US) * rate
            with lock:
                if g.waiters:
                    ok = False
                else:
                    tat = g.tat if g.tat > t else t
                    ok = tat - g.tolerance <= t
                    if ok:
                        g.tat = tat + g.interval
            if not ok:
                await slow(scope)
            return await fn(*args, **kwargs)

        return rate_limited_async

    # -- direct use ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a permit if one is available now; never waits, raises nothing."""
        g = self._gcra
        now = self._clock.now()
        with g.lock:
            if not g.waiters and g.take(g.units(now)) == 0:
                return True
            g.rejected += 1
            return False

    def acquire(self) -> None:
        """Take a permit, waiting as configured; raises :class:`RateLimitedError`."""
        self._acquire_sync(self._cm_scope)

    async def aacquire(self) -> None:
        """Take a permit from a coroutine, waiting as configured."""
        await self._acquire_async(self._cm_scope)

    def __enter__(self) -> RateLimiter:
        """``with limiter:`` takes a permit before the block (nothing is given back after)."""
        self._acquire_sync(self._cm_scope)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> RateLimiter:
        """``async with limiter:`` takes a permit before the block."""
        await self._acquire_async(self._cm_scope)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
