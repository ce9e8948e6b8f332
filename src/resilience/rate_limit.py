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

Under the GIL a call that finds nobody in line is admitted without the lock: reading
``tat``, deciding and moving it on is one step with no thread switch possible in
between (see :class:`_Gcra`). Free-threaded builds take the lock for every decision.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

from ._core.clock import SYSTEM_CLOCK, Clock, TimerHandle, monotonic_ns
from ._core.deadline import DEADLINE
from ._core.errors import RejectedError
from ._core.events import EVENTS, CallRejected, Event
from ._core.options import to_int, to_seconds
from ._core.strategy import AnyCallable, AsyncCallable, GatedStrategy, Scope
from ._core.telemetry import NEVER, PolicyGate, unobserved
from ._core.waiters import TaskWaiter, ThreadWaiter, Waiter, arm_timer

__all__ = ["RateLimiter", "RateLimitedError", "RateLimited", "RateLimitWaited"]

_US = 1_000_000
"""Microseconds per second: the limiter's unit of time."""

# Whether the GIL serialises bytecodes (always before 3.13; 3.13t may run without it).
_GIL: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


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

    Time ``t`` seconds is its whole microseconds times ``rate``: ``t`` is taken to the
    nanosecond (``round(t * 1e9)``: how :func:`~resilience._core.clock.monotonic_ns`
    reads an injected clock, and what ``time.monotonic_ns`` answers for the system's)
    and cut to the microsecond (``// 1000``), so the hot path reads ``monotonic_ns``
    and divides integers instead of calling ``round()``. The emission interval
    (``period / rate``) is ``period_us`` units and the tolerance ``burst * period_us``:
    all integers. ``tat`` is the theoretical arrival time: a call at ``now`` is admitted
    when ``max(tat, now) - now <= tolerance``, which moves ``tat`` one interval on.

    No I/O: every method is called with ``lock`` held. Under the GIL the drivers also
    admit a call without the lock when nobody is in line: ``not waiters``, the check of
    ``tat`` and its update run with no thread switch in between (no call, no backward
    jump, nothing allocated that the collector tracks), and so does every locked update
    of ``tat`` (:meth:`take`), so no update is lost and no permit is taken twice. While
    anyone is in line, every caller takes the lock and lines up behind: the head of the
    line may take its permit with ``force`` because nobody else can take one meanwhile.
    (A Python trace function, as a debugger sets, runs between lines and may switch
    threads there: exactness under one is not promised.)
    """

    __slots__ = ("interval", "lock", "rate", "rejected", "tat", "tolerance", "waiters")

    def __init__(self, rate: int, period_us: int, burst: int, now: float) -> None:
        self.lock = threading.Lock()
        self.rate = rate
        self.interval = period_us
        self.tolerance = burst * period_us
        self.tat = self.units(now)
        self.rejected = 0
        # Never replaced: the drivers bind it once.
        self.waiters: collections.deque[Waiter] = collections.deque()

    def units(self, now: float) -> int:
        """``now`` (seconds) in units: what the drivers compute from nanoseconds."""
        return round(now * 1e9) // 1000 * self.rate

    def seconds(self, units: int) -> float:
        """``units`` as seconds, rounded up to a whole microsecond (never short)."""
        return -(-units // self.rate) / _US

    def take(self, now: int, *, force: bool = False) -> int:
        """Admit a call at ``now`` (answer 0) or answer the units until it could be.

        ``force`` admits the head of the line after it slept the wait it was given:
        nobody else can take a permit meanwhile, so the permit is its own even if the
        clock came back a hair early (or not at all, under ``testing.no_wait()``).
        """
        tat = self.tat if self.tat > now else now
        wait = tat - self.tolerance - now
        if wait > 0 and not force:
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
        free = self.tolerance + self.interval - used
        return free / self.interval if free > 0 else 0.0

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


class RateLimiter(GatedStrategy):
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
    __slots__ = (
        "_burst",
        "_clock",
        "_cm_scope",
        "_gcra",
        "_max_wait",
        "_now_ns",
        "_period",
        "_rate",
    )

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
        self._now_ns = monotonic_ns(self._clock)  # what _Gcra.units() computes
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
        if budget is not None and (seconds > budget or budget == 0.0):
            g.rejected += 1
            # With callers in line, a permit free right now is theirs: come back shortly.
            return seconds if seconds > 0.0 else 1e-6
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

    def _step(
        self, scope: Scope, waiter: Waiter, give_up: float | None, start: float, slept: bool
    ) -> float | None:
        """The next step of a caller in line: ``None`` once admitted, else seconds to sleep.

        Raises :class:`RateLimitedError` (after leaving the line) when the permit would
        come after ``give_up``.
        """
        g = self._gcra
        clock = self._clock
        with g.lock:
            now = clock.now()
            if waiter.granted:  # the head of the line
                wait = g.take(g.units(now), force=slept)
                if wait == 0:
                    _wake(g, g.leave(waiter))
                    return None
                seconds = g.seconds(wait)
                if give_up is None or now + seconds <= give_up:
                    return seconds
            else:  # its time ran out before it reached the head
                seconds = g.seconds(g.delay(g.units(now), g.waiters.index(waiter)))
            g.rejected += 1
            _wake(g, g.leave(waiter))
        raise self._rejected(scope, max(seconds, 1e-6), f"no permit within {now - start:.6f} s")

    def _take_now(self) -> bool:
        """Take a permit if one is free now and nobody is in line: no waiting, no count."""
        g = self._gcra
        now = self._now_ns() // 1000 * g.rate
        if _GIL:
            tat = g.tat
            if tat - g.tolerance <= now and not g.waiters:  # one step (see _Gcra)
                g.tat = (tat if tat > now else now) + g.interval
                return True
            return False
        with g.lock:
            return not g.waiters and g.take(now) == 0

    # -- sync driver ------------------------------------------------------------------------
    def _acquire_sync(self, scope: Scope) -> None:
        if not self._take_now():
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
            slept = False
            while (seconds := self._step(scope, waiter, give_up, start, slept)) is not None:
                clock.sleep(seconds)  # at the head of the line, until it is due
                slept = True
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

    # The drivers: under the GIL the closure admits a call inline, without the lock (see
    # _Gcra); only a call that is refused at once or must wait, or that finds callers in
    # line, goes through the methods above. As a policy's outermost strategy the closure
    # also carries the policy's gate (see PolicyGate); further in it has no such code at
    # all, so the fast path is written twice. A call without keyword arguments is passed
    # on as ``fn(*args)``: ``fn(*args, **kwargs)`` copies the (empty) dict on every call.
    def _sync_driver(self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None) -> AnyCallable:
        if not _GIL:
            return self._sync_locked(fn, scope, gate)
        g = self._gcra
        waiters = g.waiters
        rate, interval, tolerance = g.rate, g.interval, g.tolerance
        now_ns = monotonic_ns(self._clock)
        slow = self._acquire_sync_slow

        if gate is None:

            def rate_limited_sync(*args: Any, **kwargs: Any) -> Any:
                t = now_ns() // 1000 * rate
                tat = g.tat
                if tat - tolerance <= t and not waiters:
                    g.tat = (tat if tat > t else t) + interval
                else:
                    slow(scope)
                return fn(*args, **kwargs) if kwargs else fn(*args)

            return rate_limited_sync

        switch = gate.switch
        observed = gate.observe_sync(self._sync_driver(fn, scope, None))

        def rate_limited_sync_policy(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return observed(args, kwargs)
            t = now_ns() // 1000 * rate
            tat = g.tat
            if tat - tolerance <= t and not waiters:
                g.tat = (tat if tat > t else t) + interval
            else:
                slow(scope)
            return fn(*args, **kwargs) if kwargs else fn(*args)

        return rate_limited_sync_policy

    def _sync_locked(self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None) -> AnyCallable:
        """The driver of a free-threaded build: every decision under the lock."""
        acquire = self._acquire_sync
        switch = NEVER if gate is None else gate.switch
        observed = (
            unobserved if gate is None else gate.observe_sync(self._sync_locked(fn, scope, None))
        )

        def rate_limited_sync_locked(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return observed(args, kwargs)
            acquire(scope)
            return fn(*args, **kwargs) if kwargs else fn(*args)

        return rate_limited_sync_locked

    # -- async driver -----------------------------------------------------------------------
    async def _acquire_async(self, scope: Scope) -> None:
        if not self._take_now():
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
            slept = False
            while (seconds := self._step(scope, waiter, give_up, start, slept)) is not None:
                await clock.asleep(seconds)  # at the head of the line, until it is due
                slept = True
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

    def _async_driver(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        if not _GIL:
            return self._async_locked(fn, scope, gate)
        g = self._gcra
        waiters = g.waiters
        rate, interval, tolerance = g.rate, g.interval, g.tolerance
        now_ns = monotonic_ns(self._clock)
        slow = self._acquire_async_slow

        if gate is None:

            async def rate_limited_async(*args: Any, **kwargs: Any) -> Any:
                t = now_ns() // 1000 * rate
                tat = g.tat
                if tat - tolerance <= t and not waiters:
                    g.tat = (tat if tat > t else t) + interval
                else:
                    await slow(scope)
                return await fn(*args, **kwargs) if kwargs else await fn(*args)

            return rate_limited_async

        switch = gate.switch
        observed = gate.observe_async(self._async_driver(fn, scope, None))

        async def rate_limited_async_policy(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return await observed(args, kwargs)
            t = now_ns() // 1000 * rate
            tat = g.tat
            if tat - tolerance <= t and not waiters:
                g.tat = (tat if tat > t else t) + interval
            else:
                await slow(scope)
            return await fn(*args, **kwargs) if kwargs else await fn(*args)

        return rate_limited_async_policy

    def _async_locked(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        """The async driver of a free-threaded build: every decision under the lock."""
        acquire = self._acquire_async
        switch = NEVER if gate is None else gate.switch
        observed = (
            unobserved if gate is None else gate.observe_async(self._async_locked(fn, scope, None))
        )

        async def rate_limited_async_locked(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return await observed(args, kwargs)
            await acquire(scope)
            return await fn(*args, **kwargs) if kwargs else await fn(*args)

        return rate_limited_async_locked

    # -- direct use ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a permit if one is available now; never waits, raises nothing."""
        # _take_now() inlined: this is a hot path of its own.
        g = self._gcra
        now = self._now_ns() // 1000 * g.rate
        if _GIL:
            tat = g.tat
            if tat - g.tolerance <= now and not g.waiters:  # one step (see _Gcra)
                g.tat = (tat if tat > now else now) + g.interval
                return True
            g.rejected += 1  # one step too
            return False
        with g.lock:
            if not g.waiters and g.take(now) == 0:
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
        if not self._take_now():  # (no second coroutine on the fast path)
            await self._acquire_async_slow(self._cm_scope)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
