"""Backoff schedules: how long to wait before retry number *n*.

A schedule is a plain object with no I/O: :meth:`Backoff.delay` maps the retry number,
the previous delay and a random source to seconds. ``max_delay`` caps the delay
*before* jitter is drawn, so jitter stays inside the cap and callers never pile up at
the cap together.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from ._core.clock import Rng
from ._core.options import to_float, to_seconds

__all__ = ["AttemptInfo", "Backoff", "BackoffKind", "Jitter", "Schedule"]


class BackoffKind(str, enum.Enum):
    """How the base delay grows: ``delay``, ``delay * n``, ``delay * multiplier ** (n-1)``."""

    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class Jitter(str, enum.Enum):
    """How randomness spreads the delay ``d`` (already capped at ``max_delay``).

    - ``none``: ``d``
    - ``full``: uniform in ``[0, d]`` (AWS "full jitter")
    - ``equal``: ``d/2`` plus uniform in ``[0, d/2]``
    - ``decorrelated``: uniform in ``[delay, 3 * previous]``, capped (AWS "decorrelated
      jitter"); it ignores the kind and grows from the previous delay.
    """

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """What a schedule may look at when computing the next delay.

    ``attempt`` is the number of the attempt that just failed (1 for the first call),
    so the delay computed is the one before attempt ``attempt + 1``.
    """

    attempt: int
    elapsed: float
    previous_delay: float
    error: BaseException | None
    result: Any = None


@runtime_checkable
class Schedule(Protocol):
    """Anything that computes the next delay; :class:`Backoff` is the built-in one."""

    def delay(self, info: AttemptInfo, rng: Rng) -> float: ...


@dataclass(frozen=True, slots=True, init=False)
class Backoff:
    """A backoff schedule. Build one with :meth:`constant`, :meth:`linear` or :meth:`exponential`.

    Parameters:
        kind: ``"constant"``, ``"linear"`` or ``"exponential"`` (default).
        delay: the base delay in seconds (or ``timedelta``), ``>= 0``; default 0.1.
        max_delay: the cap in seconds, ``>= delay``; default 10.
        multiplier: growth factor of ``exponential``, ``>= 1``; default 2.
        jitter: ``"none"``, ``"full"`` (default), ``"equal"`` or ``"decorrelated"``.
    """

    kind: BackoffKind
    base: float
    max_delay: float
    multiplier: float
    jitter: Jitter

    def __init__(
        self,
        kind: BackoffKind | str = BackoffKind.EXPONENTIAL,
        *,
        delay: float | timedelta = 0.1,
        max_delay: float | timedelta = 10.0,
        multiplier: float = 2.0,
        jitter: Jitter | str = Jitter.FULL,
    ) -> None:
        try:
            k = BackoffKind(kind)
        except ValueError:
            allowed = ", ".join(repr(x.value) for x in BackoffKind)
            raise ValueError(f"kind must be one of {allowed}, got {kind!r}") from None
        try:
            j = Jitter(jitter)
        except ValueError:
            allowed = ", ".join(repr(x.value) for x in Jitter)
            raise ValueError(f"jitter must be one of {allowed}, got {jitter!r}") from None
        base = to_seconds("delay", delay, minimum=0.0)
        cap = to_seconds("max_delay", max_delay, minimum=0.0)
        if cap < base:
            raise ValueError(f"max_delay must be >= delay ({base:g} s), got {max_delay!r}")
        mult = to_float("multiplier", multiplier, minimum=1.0)
        object.__setattr__(self, "kind", k)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "max_delay", cap)
        object.__setattr__(self, "multiplier", mult)
        object.__setattr__(self, "jitter", j)

    @classmethod
    def constant(
        cls, delay: float | timedelta = 0.1, *, jitter: Jitter | str = Jitter.NONE
    ) -> Backoff:
        """The same delay before every retry (no jitter unless asked)."""
        d = to_seconds("delay", delay, minimum=0.0)
        return cls(BackoffKind.CONSTANT, delay=d, max_delay=d, jitter=jitter)

    @classmethod
    def linear(
        cls,
        delay: float | timedelta = 0.1,
        *,
        max_delay: float | timedelta = 10.0,
        jitter: Jitter | str = Jitter.FULL,
    ) -> Backoff:
        """``delay * n`` before retry ``n``, capped."""
        return cls(BackoffKind.LINEAR, delay=delay, max_delay=max_delay, jitter=jitter)

    @classmethod
    def exponential(
        cls,
        delay: float | timedelta = 0.1,
        *,
        multiplier: float = 2.0,
        max_delay: float | timedelta = 10.0,
        jitter: Jitter | str = Jitter.FULL,
    ) -> Backoff:
        """``delay * multiplier ** (n - 1)`` before retry ``n``, capped."""
        return cls(
            BackoffKind.EXPONENTIAL,
            delay=delay,
            multiplier=multiplier,
            max_delay=max_delay,
            jitter=jitter,
        )

    def base_delay(self, retry: int) -> float:
        """The capped delay before retry number ``retry`` (1-based), before jitter."""
        if self.kind is BackoffKind.CONSTANT:
            d = self.base
        elif self.kind is BackoffKind.LINEAR:
            d = self.base * retry
        elif self.base == 0.0:
            d = 0.0
        else:
            try:
                d = self.base * self.multiplier ** (retry - 1)
            except OverflowError:  # a long retry with a large multiplier: far past the cap
                d = math.inf
        return d if d < self.max_delay else self.max_delay

    def delay(self, info: AttemptInfo, rng: Rng) -> float:
        """The delay before the attempt after ``info.attempt``; always in ``[0, max_delay]``."""
        j = self.jitter
        cap = self.max_delay
        if j is Jitter.DECORRELATED:
            prev = info.previous_delay if info.previous_delay > self.base else self.base
            high = prev * 3.0
            d = self.base + (high - self.base) * rng.random()
        else:
            d = self.base_delay(info.attempt)
            if j is Jitter.FULL:
                d = d * rng.random()
            elif j is Jitter.EQUAL:
                half = d / 2.0
                d = half + half * rng.random()
        if d > cap:
            return cap
        return d if d > 0.0 else 0.0

    def __repr__(self) -> str:
        return (
            f"Backoff({self.kind.value!r}, delay={self.base:g}, max_delay={self.max_delay:g}, "
            f"multiplier={self.multiplier:g}, jitter={self.jitter.value!r})"
        )
