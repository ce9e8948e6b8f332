"""Helpers for testing code that uses resilience.

- :class:`FakeClock`: time that only moves when something sleeps on it or you
  :meth:`~FakeClock.advance` it; timers (async timeouts) fire deterministically.
- :func:`set_testing` / :func:`no_wait`: remove every wait of every strategy that uses
  the system clock, for a whole test suite or one block (retries still happen, at once).
- :func:`capture_events`: collect the events strategies publish.

::

    from resilience.testing import no_wait

    def test_checkout_retries():
        with no_wait():
            assert checkout() == "ok"
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ._core.clock import SWITCHES, TimerHandle, real_asleep
from ._core.events import EVENTS, Event

__all__ = ["FakeClock", "set_testing", "no_wait", "capture_events", "CapturingListener"]

E = TypeVar("E", bound=Event)


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "loop")

    def __init__(
        self, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None
    ) -> None:
        self.callback = callback
        self.cancelled = False
        self.loop = loop

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> bool:
        """Fire once; ``False`` if the timer was cancelled (or has fired) already."""
        if self.cancelled:
            return False
        self.cancelled = True
        self.callback()
        return True


class FakeClock:
    """A clock for tests: sleeping advances time instantly.

    ``sleeps`` records every sleep requested, in order, so tests can assert exact
    backoff schedules. :meth:`advance` moves time by hand and fires due timers in order.

    It is safe to share between threads: calls of :meth:`advance` add up (two threads
    advancing by 1 s move time by 2 s), while sleeps overlap as real ones do (two
    threads sleeping 1 s at once both wake at 1 s).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._horizon = self._now  # where the latest advance() is taking time
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that falls due on the way."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            # From where the latest advance is taking time, so that advances made at
            # once from several threads add up instead of landing on the same time.
            target = max(self._now, self._horizon) + seconds
            self._horizon = target
        self._run_until(target)

    def _run_until(self, target: float) -> None:
        # One timer at a time, so that a timer set by a firing one fires too if it is due.
        while (timer := self._pop_due(target)) is not None:
            timer.run()

    def _pop_due(self, target: float) -> _FakeTimer | None:
        """The next timer due by ``target``, with time moved to it; else move to ``target``."""
        with self._lock:
            if not self._timers or self._timers[0][0] > target:
                self._now = max(self._now, target)
                return None
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            return timer

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            target = self._now + max(0.0, seconds)
        self._run_until(target)

    async def asleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            target = self._now + max(0.0, seconds)
        # Yield after each timer that fires: one that cancels this task (a timeout) must
        # interrupt the sleep at its own time, before time jumps on and later timers fire.
        while (timer := self._pop_due(target)) is not None:
            if timer.run():
                await real_asleep(0)
        await real_asleep(0)

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        timer = _FakeTimer(callback, loop)
        with self._lock:
            if when <= self._now and loop is not None:
                loop.call_soon(timer.run)
            else:
                heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    @property
    def pending_timers(self) -> int:
        """Timers scheduled and not yet fired or cancelled."""
        with self._lock:
            return sum(1 for _, _, t in self._timers if not t.cancelled)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:g})"


def set_testing(on: bool) -> None:
    """Switch every wait of the system clock off (``True``) or back on (``False``).

    Retries still retry and limits still apply; only the sleeping is skipped. Typical use
    is a session-wide pytest fixture.
    """
    SWITCHES.no_wait = bool(on)


@contextmanager
def no_wait() -> Iterator[None]:
    """Skip every wait of the system clock inside the block."""
    before = SWITCHES.no_wait
    SWITCHES.no_wait = True
    try:
        yield
    finally:
        SWITCHES.no_wait = before


class CapturingListener:
    """A listener that keeps every event it is given, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of_type(self, kind: type[E]) -> list[E]:
        """The captured events of one type."""
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


@contextmanager
def capture_events(policy: str | None = None) -> Iterator[CapturingListener]:
    """Capture the events of every policy (or of ``policy``) published inside the block."""
    listener = CapturingListener()
    with EVENTS.subscribed(listener, policy=policy):
        yield listener
