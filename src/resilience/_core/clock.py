"""Time and randomness, injected.

Every strategy reads time through a :class:`Clock` and draws jitter from a
``random.Random``; this is the only module that touches ``time``, ``asyncio.sleep``
or ``random`` directly (ruff's ``banned-api`` enforces it), so tests can swap in
:class:`resilience.testing.FakeClock` and a seeded random source.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = [
    "Clock",
    "Rng",
    "SystemClock",
    "TimerHandle",
    "SYSTEM_CLOCK",
    "default_rng",
    "monotonic_ns",
    "new_rng",
]


class TimerHandle(Protocol):
    """What :meth:`Clock.call_at` returns: a timer that can be cancelled."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds, sleeping, and timers on the running event loop."""

    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` on the running event loop once ``now() >= when``."""
        ...


class _Switches:
    """Process-wide switches, flipped by :mod:`resilience.testing`."""

    __slots__ = ("no_wait",)

    def __init__(self) -> None:
        self.no_wait = False


SWITCHES = _Switches()


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.sleep`` and ``asyncio.sleep``.

    When :func:`resilience.testing.set_testing` is on, sleeps return at once.
    """

    __slots__ = ()

    # The builtin itself, not a method calling it: no Python frame on hot paths.
    now = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and not SWITCHES.no_wait:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        if SWITCHES.no_wait:
            seconds = 0
        import asyncio  # imported on first use: ``import resilience`` stays cheap

        await asyncio.sleep(seconds)

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        import asyncio

        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.monotonic()), callback)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK: Clock = SystemClock()


def monotonic_ns(clock: Clock) -> Callable[[], int]:
    """A function returning ``clock``'s time in integer nanoseconds, for hot paths.

    For the system clock it is ``time.monotonic_ns`` itself (no Python frame); any other
    clock (a ``FakeClock`` in tests) is read through ``now()`` and rounded.
    """
    if type(clock) is SystemClock:
        return time.monotonic_ns
    now = clock.now
    return lambda: round(now() * 1e9)


Rng = random.Random
"""The type of a random source: ``random.Random`` or a subclass."""

_DEFAULT_RNG = random.Random()


def default_rng() -> random.Random:
    """The shared random source used for jitter unless a strategy is given ``rng=``."""
    return _DEFAULT_RNG


def new_rng(seed: int | None = None) -> random.Random:
    """A new random source, seeded for reproducible jitter in tests."""
    return random.Random(seed)


def real_sleep(seconds: float) -> None:
    """Sleep on the real clock, ignoring the testing switch (for internal polling)."""
    time.sleep(seconds)


async def real_asleep(seconds: float) -> None:
    """Yield to the event loop for ``seconds`` of real time."""
    import asyncio

    await asyncio.sleep(seconds)
