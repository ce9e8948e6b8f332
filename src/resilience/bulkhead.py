"""Bulkhead: bound how many calls run at once, with an optional bounded queue.

Parts: :class:`Bulkhead` (options + the two thin drivers + ``with`` / ``async with``),
the events :class:`BulkheadRejected` and :class:`BulkheadWaited`, and the error
:class:`BulkheadFullError`.

Every decision is made by :class:`_Permits`, a decision object with no I/O: it counts
the calls in flight, keeps the FIFO of waiters and hands a released permit straight to
the first waiter. The sync driver parks a thread on a ``threading.Condition``; the async
driver parks a task on a future of its running loop. Both kinds of waiter may queue on
the same bulkhead: a permit released by a thread wakes a task through
``call_soon_threadsafe`` and the other way round.

Under the GIL the uncontended path takes no lock: taking a free permit and giving one
back while nobody queues are each one check and one update of ``in_flight`` with no
thread switch possible in between, and a caller that may queue joins the queue before
it looks for a free permit (see :meth:`_Permits.join`). Free-threaded builds take the
lock for every decision.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

from ._core.clock import SYSTEM_CLOCK, Clock, TimerHandle
from ._core.deadline import DEADLINE
from ._core.errors import RejectedError, TimeoutExceededError
from ._core.events import EVENTS, CallRejected, Event
from ._core.options import to_int, to_seconds
from ._core.strategy import AnyCallable, AsyncCallable, GatedStrategy, Scope
from ._core.telemetry import NEVER, PolicyGate, unobserved
from ._core.waiters import TaskWaiter, ThreadWaiter, Waiter, arm_timer

__all__ = ["Bulkhead", "BulkheadFullError", "BulkheadRejected", "BulkheadWaited"]

# Whether the GIL serialises bytecodes (always before 3.13; 3.13t may run without it).
_GIL: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class BulkheadFullError(RejectedError):
    """The bulkhead had no free permit and no room (or no time) left to queue.

    ``max_concurrent`` and ``max_queued`` are the bulkhead's limits; ``waited`` is how
    long the call queued before giving up (0 when it was rejected at once).
    ``retry_after`` is ``None``: when a permit frees depends on the calls in flight.
    """

    max_concurrent: int
    max_queued: int
    waited: float

    def __init__(
        self,
        message: str,
        *,
        policy: str = "",
        max_concurrent: int,
        max_queued: int,
        waited: float = 0.0,
    ) -> None:
        super().__init__(message, policy=policy, retry_after=None)
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.waited = waited


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadRejected(CallRejected):
    """A call was rejected with :class:`BulkheadFullError` (``reason="bulkhead_full"``).

    ``waited`` is the time it spent queued first (0 when it was rejected at once).
    """

    max_concurrent: int
    max_queued: int
    waited: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadWaited(Event):
    """A queued call got its permit after ``waited`` seconds in the queue."""

    waited: float


class _Permits:
    """The bulkhead's decision object: permits in use and the FIFO of waiters.

    No I/O and no waiting: every method is called with ``lock`` held and answers with
    the waiter (if any) that the driver must wake. Invariant: waiters queue only while
    every permit is in use, because a released permit goes straight to the first waiter
    (so ``in_flight`` does not drop and a newcomer cannot jump the queue).

    Under the GIL the drivers also take and give back permits *without* the lock, each
    as one check and one update with no thread switch in between (no call, no backward
    jump, nothing allocated that the collector tracks): ``in_flight < max_concurrent``
    then ``in_flight += 1``; ``not waiters`` then ``in_flight -= 1``. Every locked
    update of ``in_flight`` is such a step too, so none is ever lost; :meth:`join`
    keeps the invariant against them. (A Python trace function, as a debugger sets,
    runs between lines and may switch threads there: exactness under one is not
    promised.)
    """

    __slots__ = ("in_flight", "lock", "max_concurrent", "max_queued", "rejected", "waiters")

    def __init__(self, max_concurrent: int, max_queued: int) -> None:
        self.lock = threading.Lock()
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.in_flight = 0
        self.rejected = 0
        # Never replaced: the drivers bind it once.
        self.waiters: collections.deque[Waiter] = collections.deque()

    def try_take(self) -> bool:
        """Take a free permit if there is one."""
        if self.in_flight < self.max_concurrent:
            self.in_flight += 1
            return True
        return False

    def join(self, waiter: Waiter, *, wait: bool = True) -> bool:
        """Queue ``waiter``, or grant it a permit that is free after all.

        ``False`` (and a rejection counted) when no permit is free and the queue is full,
        or ``wait`` is false. The waiter is queued *before* the permits are looked at: a
        lock-free release that sees the queue empty has given its permit back by then
        (and the look below finds it); one that comes later sees the queue and takes the
        lock, to hand its permit to the first waiter. Looking first and queueing after
        could park a waiter next to a free permit until some later call ends (for ever,
        if none comes).
        """
        waiters = self.waiters
        waiters.append(waiter)
        if self.in_flight < self.max_concurrent:  # freed since the caller last looked
            self.in_flight += 1
            waiters.pop()  # the lock is held: ``waiter`` is still the last one
            waiter.granted = True
            return True
        if wait and len(waiters) <= self.max_queued:
            return True
        waiters.pop()
        self.rejected += 1
        return False

    def release(self) -> Waiter | None:
        """Give a permit back: to the first waiter (returned, to be woken) or to the pool."""
        if self.waiters:
            waiter = self.waiters.popleft()
            waiter.granted = True
            return waiter
        self.in_flight -= 1
        return None

    def leave(self, waiter: Waiter) -> Waiter | None:
        """``waiter`` stops waiting (timeout, deadline, cancellation, a closed loop).

        A waiter that was already handed a permit passes it on: it must not keep a
        permit it will not use.
        """
        if waiter.granted:
            waiter.granted = False
            return self.release()
        with contextlib.suppress(ValueError):  # every waiter is queued until granted
            self.waiters.remove(waiter)
        return None

    def give_up(self, waiter: Waiter) -> None:
        """``waiter`` ran out of time before a permit came: a rejection."""
        self.waiters.remove(waiter)
        self.rejected += 1


def _wake(permits: _Permits, waiter: Waiter | None) -> None:
    # A waiter whose event loop has closed can never run: pass its permit on.
    while waiter is not None and not waiter.wake():
        waiter = permits.leave(waiter)


class Bulkhead(GatedStrategy):
    """Run at most ``max_concurrent`` calls at once; queue up to ``max_queued`` more.

    Parameters:
        max_concurrent: calls allowed to run at the same time, ``>= 1``.
        max_queued: calls allowed to wait for a permit, ``>= 0``; default 0 (a call
            that finds every permit in use is rejected at once).
        queue_timeout: the longest a call waits in the queue, ``> 0`` seconds (float
            or ``timedelta``); default ``None``: until a permit frees. Either way a
            call never waits past the caller's deadline (:func:`resilience.remaining`).
            Needs ``max_queued >= 1``.
        name: the policy name when used alone (default: the function's qualified name;
            ``"bulkhead"`` for ``with`` blocks).
        clock: injected time (tests).

    A call that cannot get a permit raises :class:`BulkheadFullError`. Queued callers
    get permits first come, first served. One bulkhead may be shared by threads and by
    asyncio tasks (of one or several event loops) at the same time; every kind of
    caller draws on the same permits and the same queue.

    A permit is given back on every path: return, exception, cancellation while queued
    or while running. When the call raises :class:`~resilience.TimeoutExceededError`
    from a thread-mode :class:`~resilience.Timeout` whose worker thread still runs, the
    permit is kept until that thread finishes.
    """

    kind: ClassVar[str] = "bulkhead"
    __slots__ = ("_clock", "_cm_scope", "_permits", "_queue_timeout")

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queued: int = 0,
        queue_timeout: float | timedelta | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        limit = to_int("max_concurrent", max_concurrent, minimum=1)
        queued = to_int("max_queued", max_queued, minimum=0)
        self._queue_timeout = (
            None
            if queue_timeout is None
            else to_seconds("queue_timeout", queue_timeout, exclusive_minimum=True)
        )
        if self._queue_timeout is not None and queued == 0:
            raise ValueError(
                f"queue_timeout={queue_timeout!r} needs max_queued >= 1 (got max_queued=0): "
                "without a queue no call ever waits"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        self._permits = _Permits(limit, queued)
        self._cm_scope = Scope(self.name or self.kind, self.kind)

    def __repr__(self) -> str:
        p = self._permits
        return (
            f"Bulkhead({p.max_concurrent}"
            + (f", max_queued={p.max_queued}" if p.max_queued else "")
            + (f", queue_timeout={self._queue_timeout:g}" if self._queue_timeout else "")
            + (f", name={self.name!r}" if self.name else "")
            + ")"
        )

    # -- configuration and live state -------------------------------------------------------
    @property
    def max_concurrent(self) -> int:
        """Calls allowed to run at the same time."""
        return self._permits.max_concurrent

    @property
    def max_queued(self) -> int:
        """Calls allowed to wait for a permit."""
        return self._permits.max_queued

    @property
    def queue_timeout(self) -> float | None:
        """The longest a call waits in the queue, in seconds (``None``: no limit)."""
        return self._queue_timeout

    @property
    def in_flight(self) -> int:
        """Permits in use now (calls running, or holding a permit for a running thread)."""
        return self._permits.in_flight

    @property
    def queued(self) -> int:
        """Calls waiting for a permit now."""
        return len(self._permits.waiters)

    def snapshot(self) -> dict[str, Any]:
        p = self._permits
        with p.lock:
            return {
                "kind": self.kind,
                "name": self.name,
                "max_concurrent": p.max_concurrent,
                "max_queued": p.max_queued,
                "in_flight": p.in_flight,
                "queued": len(p.waiters),
                "rejected": p.rejected,
            }

    # -- shared decisions -----------------------------------------------------------------
    def _wait_budget(self) -> float | None:
        """How long a call may queue: ``queue_timeout`` capped by the caller's deadline."""
        limit = self._queue_timeout
        d = DEADLINE.get()
        if d is None:
            return limit
        left = d.when - d.clock.now()
        if left <= 0.0:
            return 0.0
        return left if limit is None or left < limit else limit

    def _release(self) -> None:
        p = self._permits
        if _GIL and not p.waiters:
            # Nobody queues: back to the pool without the lock (see _Permits).
            p.in_flight -= 1
            return
        with p.lock:
            _wake(p, p.release())

    def _release_later(self, _fut: Future[Any]) -> None:
        self._release()

    def _leave(self, waiter: Waiter) -> None:
        p = self._permits
        with p.lock:
            _wake(p, p.leave(waiter))

    def _finish(self, exc: BaseException | None) -> None:
        """Give the permit back, or hand it to the worker thread that still runs the call."""
        if isinstance(exc, TimeoutExceededError):
            pending = exc.pending
            if pending is not None and not pending.done():
                # The thread-mode timeout's worker still runs our call: it keeps the permit.
                pending.add_done_callback(self._release_later)
                return
        self._release()

    def _rejected(self, scope: Scope, waited: float, why: str) -> BulkheadFullError:
        p = self._permits
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                BulkheadRejected(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._clock.now(),
                    reason="bulkhead_full",
                    retry_after=None,
                    max_concurrent=p.max_concurrent,
                    max_queued=p.max_queued,
                    waited=waited,
                )
            )
        return BulkheadFullError(
            f"{scope.policy}/{scope.strategy}: {why} "
            f"(max_concurrent={p.max_concurrent}, max_queued={p.max_queued})",
            policy=scope.policy,
            max_concurrent=p.max_concurrent,
            max_queued=p.max_queued,
            waited=waited,
        )

    def _waited(self, scope: Scope, start: float) -> None:
        if EVENTS.wants(scope.policy):
            now = self._clock.now()
            EVENTS.publish(
                BulkheadWaited(
                    policy=scope.policy, strategy=scope.strategy, time=now, waited=now - start
                )
            )

    def _join(self, waiter: Waiter, budget: float | None) -> str | None:
        """Take a permit, or queue ``waiter``; the lock is held. Answers why it was refused."""
        p = self._permits
        if p.join(waiter, wait=budget != 0.0):
            return None
        if budget == 0.0 and p.max_queued:
            return "every permit is in use and the caller's deadline leaves no time to queue"
        if p.max_queued:
            return f"every permit is in use and {p.max_queued} calls are already queued"
        return "every permit is in use"

    def _try_take(self) -> bool:
        """Take a free permit if there is one: no queue, no waiting."""
        p = self._permits
        if _GIL:
            if p.in_flight < p.max_concurrent:  # one step under the GIL (see _Permits)
                p.in_flight += 1
                return True
            return False
        with p.lock:
            return p.try_take()

    # -- sync driver ------------------------------------------------------------------------
    def _acquire_sync(self, scope: Scope) -> None:
        if not self._try_take():
            self._acquire_sync_slow(scope)

    def _acquire_sync_slow(self, scope: Scope) -> None:
        p = self._permits
        clock = self._clock
        budget = self._wait_budget() if p.max_queued else 0.0
        start = clock.now()
        waiter = ThreadWaiter(p.lock)
        with p.lock:
            why = self._join(waiter, budget)
        if why is not None:
            raise self._rejected(scope, 0.0, why)
        if waiter.granted:  # a permit freed between the fast path and the queue
            return
        give_up = None if budget is None else start + budget
        timer: TimerHandle | None = None
        if give_up is not None:
            timer = arm_timer(clock, give_up, waiter.poke, in_loop=False)
        try:
            with p.lock:
                while not waiter.granted:
                    if give_up is None:
                        waiter.wait(None)
                        continue
                    left = give_up - clock.now()
                    if left <= 0.0:
                        p.give_up(waiter)
                        break
                    waiter.wait(left)
                granted = waiter.granted
        except BaseException:  # interrupted while parked: never keep or lose a permit
            self._leave(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not granted:
            waited = clock.now() - start
            raise self._rejected(scope, waited, f"no permit freed within {waited:.3f} s")
        self._waited(scope, start)

    # The drivers: under the GIL the closure takes and gives back its permit inline,
    # without the lock (see _Permits), and only a call that finds every permit in use,
    # or a queue to hand its permit to, goes through the methods above. As a policy's
    # outermost strategy the closure also carries the policy's gate (see PolicyGate);
    # further in it has no such code at all, so the fast path is written twice. A call
    # without keyword arguments is passed on as ``fn(*args)``: ``fn(*args, **kwargs)``
    # copies the (empty) dict on every call, in every layer of a pipeline.
    def _sync_driver(self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None) -> AnyCallable:
        if not _GIL:
            return self._sync_locked(fn, scope, gate)
        p = self._permits
        limit = p.max_concurrent
        waiters = p.waiters
        slow = self._acquire_sync_slow
        finish = self._finish
        release = self._release

        if gate is None:

            def bulkhead_sync(*args: Any, **kwargs: Any) -> Any:
                if p.in_flight < limit:
                    p.in_flight += 1
                else:
                    slow(scope)
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                except BaseException as exc:
                    finish(exc)
                    raise
                if waiters:
                    release()  # to the first waiter, under the lock
                else:
                    p.in_flight -= 1
                return result

            return bulkhead_sync

        switch = gate.switch
        observed = gate.observe_sync(self._sync_driver(fn, scope, None))

        def bulkhead_sync_policy(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return observed(args, kwargs)
            if p.in_flight < limit:
                p.in_flight += 1
            else:
                slow(scope)
            try:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:
                finish(exc)
                raise
            if waiters:
                release()
            else:
                p.in_flight -= 1
            return result

        return bulkhead_sync_policy

    def _sync_locked(self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None) -> AnyCallable:
        """The driver of a free-threaded build: every decision under the lock."""
        acquire = self._acquire_sync
        finish = self._finish
        release = self._release
        switch = NEVER if gate is None else gate.switch
        observed = (
            unobserved if gate is None else gate.observe_sync(self._sync_locked(fn, scope, None))
        )

        def bulkhead_sync_locked(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return observed(args, kwargs)
            acquire(scope)
            try:
                result = fn(*args, **kwargs) if kwargs else fn(*args)
            except BaseException as exc:
                finish(exc)
                raise
            release()
            return result

        return bulkhead_sync_locked

    # -- async driver -----------------------------------------------------------------------
    async def _acquire_async(self, scope: Scope) -> None:
        if not self._try_take():
            await self._acquire_async_slow(scope)

    async def _acquire_async_slow(self, scope: Scope) -> None:
        p = self._permits
        clock = self._clock
        budget = self._wait_budget() if p.max_queued else 0.0
        start = clock.now()
        waiter = TaskWaiter()
        with p.lock:
            why = self._join(waiter, budget)
        if why is not None:
            raise self._rejected(scope, 0.0, why)
        if waiter.granted:
            return
        give_up = None if budget is None else start + budget
        timer = None if give_up is None else clock.call_at(give_up, waiter.poke)
        try:
            while True:
                await waiter.future
                with p.lock:
                    if waiter.granted:
                        granted = True
                        break
                    if give_up is not None and clock.now() >= give_up:
                        p.give_up(waiter)
                        granted = False
                        break
                    waiter.renew()
                # Woken early (a timer that fired a hair before the clock agreed): re-arm.
                if give_up is not None:
                    if timer is not None:
                        timer.cancel()
                    timer = clock.call_at(give_up, waiter.poke)
        except BaseException:  # cancelled while queued: a granted permit is passed on
            self._leave(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not granted:
            waited = clock.now() - start
            raise self._rejected(scope, waited, f"no permit freed within {waited:.3f} s")
        self._waited(scope, start)

    def _async_driver(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        if not _GIL:
            return self._async_locked(fn, scope, gate)
        p = self._permits
        limit = p.max_concurrent
        waiters = p.waiters
        slow = self._acquire_async_slow
        finish = self._finish
        release = self._release

        if gate is None:

            async def bulkhead_async(*args: Any, **kwargs: Any) -> Any:
                if p.in_flight < limit:
                    p.in_flight += 1
                else:
                    await slow(scope)
                try:
                    result = await fn(*args, **kwargs) if kwargs else await fn(*args)
                except BaseException as exc:
                    finish(exc)
                    raise
                if waiters:
                    release()
                else:
                    p.in_flight -= 1
                return result

            return bulkhead_async

        switch = gate.switch
        observed = gate.observe_async(self._async_driver(fn, scope, None))

        async def bulkhead_async_policy(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return await observed(args, kwargs)
            if p.in_flight < limit:
                p.in_flight += 1
            else:
                await slow(scope)
            try:
                result = await fn(*args, **kwargs) if kwargs else await fn(*args)
            except BaseException as exc:
                finish(exc)
                raise
            if waiters:
                release()
            else:
                p.in_flight -= 1
            return result

        return bulkhead_async_policy

    def _async_locked(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        """The async driver of a free-threaded build: every decision under the lock."""
        acquire = self._acquire_async
        finish = self._finish
        release = self._release
        switch = NEVER if gate is None else gate.switch
        observed = (
            unobserved if gate is None else gate.observe_async(self._async_locked(fn, scope, None))
        )

        async def bulkhead_async_locked(*args: Any, **kwargs: Any) -> Any:
            if switch.mode:
                return await observed(args, kwargs)
            await acquire(scope)
            try:
                result = await fn(*args, **kwargs) if kwargs else await fn(*args)
            except BaseException as exc:
                finish(exc)
                raise
            release()
            return result

        return bulkhead_async_locked

    # -- context managers -------------------------------------------------------------------
    def __enter__(self) -> Bulkhead:
        """``with bulkhead:`` holds a permit for the block."""
        self._acquire_sync(self._cm_scope)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)

    async def __aenter__(self) -> Bulkhead:
        """``async with bulkhead:`` holds a permit for the block."""
        if not self._try_take():  # (no second coroutine on the fast path)
            await self._acquire_async_slow(self._cm_scope)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(exc)
