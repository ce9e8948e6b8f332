"""Waiters: callers parked until a strategy hands them their turn.

A bulkhead queues callers until a permit frees; a rate limiter queues them until their
turn comes. Threads and asyncio tasks (of any number of event loops) may share one
strategy, so a waiter hides how it is woken:

- :class:`ThreadWaiter` waits on a ``threading.Condition`` bound to the strategy's lock;
- :class:`TaskWaiter` awaits a future of its own event loop, resolved in place when the
  waker runs on that loop's thread and through ``call_soon_threadsafe`` otherwise.

The strategy's decision object sets :attr:`Waiter.granted` under its lock, then calls
:meth:`Waiter.wake` (still under the lock). ``granted`` is the truth; a wake-up without
it is spurious (a timer, a timeout) and the waiter checks its clock again.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .clock import Clock, SystemClock, TimerHandle

__all__ = ["Waiter", "ThreadWaiter", "TaskWaiter", "arm_timer"]


class Waiter:
    """One parked caller. ``granted`` is set, under the owner's lock, when its turn comes."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        self.granted = False

    def wake(self) -> bool:
        """Wake the waiter; ``False`` if it can never run again (its event loop is closed)."""
        raise NotImplementedError

    def poke(self) -> None:
        """Wake the waiter from a timer so that it looks at the clock again."""
        raise NotImplementedError


class ThreadWaiter(Waiter):
    """A thread parked on a ``threading.Condition`` that shares the owner's lock."""

    __slots__ = ("_cond", "_lock")

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__()
        self._lock = lock
        self._cond = threading.Condition(lock)

    def wait(self, seconds: float | None) -> None:
        """Block until woken or ``seconds`` of real time pass; the owner's lock is held."""
        self._cond.wait(seconds)

    def wake(self) -> bool:
        self._cond.notify()
        return True

    def poke(self) -> None:
        with self._lock:
            self._cond.notify()


def _resolve(waiter: TaskWaiter) -> None:
    fut = waiter.future
    if not fut.done():
        fut.set_result(None)


class TaskWaiter(Waiter):
    """An asyncio task parked on a future of its running loop.

    The future is replaced (:meth:`renew`) after a spurious wake-up; a wake always
    resolves the current one, whichever thread it comes from.
    """

    __slots__ = ("future", "loop", "thread")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.future: asyncio.Future[None] = self.loop.create_future()

    def renew(self) -> None:
        """A fresh future to wait on after a spurious wake-up."""
        self.future = self.loop.create_future()

    def wake(self) -> bool:
        try:
            if threading.get_ident() == self.thread:
                _resolve(self)
            else:
                self.loop.call_soon_threadsafe(_resolve, self)
        except RuntimeError:  # the loop is closed: the task will never resume
            return False
        return True

    def poke(self) -> None:
        self.wake()


def arm_timer(clock: Clock, when: float, callback: Any, *, in_loop: bool) -> TimerHandle | None:
    """Call ``callback`` once ``clock.now() >= when``; ``None`` if the clock cannot.

    Async waiters always get a timer (``Clock.call_at`` runs on the running loop). A
    thread already waits with a real timeout, so it only needs a timer from a clock that
    is not the system clock (a :class:`~resilience.testing.FakeClock` fires it when
    advanced); a clock that cannot schedule outside an event loop is simply not asked.
    """
    if not in_loop and isinstance(clock, SystemClock):
        return None
    try:
        return clock.call_at(when, callback)
    except RuntimeError:
        if in_loop:
            raise
        return None
