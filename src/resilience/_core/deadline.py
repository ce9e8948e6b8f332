"""The caller's deadline, flowing down into every inner call.

A deadline is an absolute time on a :class:`~resilience.Clock`, kept in a
``contextvars.ContextVar`` so that it follows the call into threads started with a
copied context and into asyncio tasks. :class:`~resilience.Timeout` and the
:func:`deadline` context manager set it; nested deadlines take the minimum; user code
and adapters read what is left with :func:`remaining`.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager

from .clock import SYSTEM_CLOCK, Clock
from .options import to_seconds

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING``, without importing ``typing``
if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import timedelta

__all__ = ["Deadline", "deadline", "remaining", "current_deadline"]


class Deadline:
    """An absolute point in time on ``clock`` by which the call must be done."""

    __slots__ = ("clock", "when")

    # Timeout's hot path builds instances with ``object.__new__`` and sets both slots
    # itself (~40 ns cheaper): keep ``__init__`` free of any other work.
    def __init__(self, when: float, clock: Clock) -> None:
        self.when = when
        self.clock = clock

    def remaining(self) -> float:
        """Seconds left; negative once it has passed."""
        return self.when - self.clock.now()

    def expired(self) -> bool:
        return self.clock.now() >= self.when

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "resilience_deadline", default=None
)


def current_deadline() -> Deadline | None:
    """The deadline in force for the current context, or ``None``."""
    return DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (never below 0), or ``None`` if none is set.

    Adapters use it to cap their own I/O timeouts; user code can use it to skip work
    that cannot finish in time.
    """
    d = DEADLINE.get()
    if d is None:
        return None
    left = d.when - d.clock.now()
    return left if left > 0.0 else 0.0


def tighten(seconds: float, clock: Clock) -> tuple[Deadline, contextvars.Token[Deadline | None]]:
    """Set the deadline to ``now + seconds`` unless an earlier one is already in force."""
    outer = DEADLINE.get()
    # Compare the time left, not the absolute times: the outer deadline may be on another
    # clock (a fake one in tests) whose origin has nothing to do with ``clock``'s.
    if outer is not None and outer.when - outer.clock.now() <= seconds:
        return outer, DEADLINE.set(outer)
    d = Deadline(clock.now() + seconds, clock)
    return d, DEADLINE.set(d)


@contextmanager
def deadline(seconds: float | timedelta, *, clock: Clock | None = None) -> Iterator[Deadline]:
    """Run the block under a deadline ``seconds`` from now (or the outer one, if earlier).

    It only *sets* the deadline, for inner strategies and adapters to honour; to cut a
    call short use :class:`~resilience.Timeout`.
    """
    secs = to_seconds("seconds", seconds, minimum=0.0)
    if clock is not None and not isinstance(clock, Clock):
        raise TypeError(f"clock must be a Clock, got {clock!r}")
    d, token = tighten(secs, clock or SYSTEM_CLOCK)
    try:
        yield d
    finally:
        DEADLINE.reset(token)
