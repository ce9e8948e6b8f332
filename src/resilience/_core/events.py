"""One event stream for everything the library does on its own.

Every strategy publishes small frozen events (``RetryScheduled``, ``TimedOut``,
``FallbackUsed``, later ``CircuitOpened``, ``BulkheadRejected`` …). Metrics, tracing,
logging and user callbacks are all *listeners* on this one stream; they attach to one
policy or to all. A listener that raises never breaks the call: the error is logged
once per listener and the event goes on to the others. When nobody listens, no event
object is even built (strategies ask :meth:`EventBus.wants` first).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

# The bus lives in its own module so that subscribing loads no dataclass machinery; it
# is re-exported here, where every pattern imports it from.
from .bus import EVENTS, EventBus, subscribe, unsubscribe

__all__ = [
    "Event",
    "CallRejected",
    "StateChanged",
    "Severity",
    "Listener",
    "EventBus",
    "EVENTS",
    "subscribe",
    "unsubscribe",
]


class Severity(enum.IntEnum):
    """How much an event matters to an operator; values match :mod:`logging` levels."""

    DEBUG = 10
    INFO = 20
    WARNING = 30
    ERROR = 40


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event.

    Attributes:
        policy: the policy's name (the pipeline's, or the strategy's when used alone).
        strategy: the strategy's name inside the policy (``"retry"``, ``"timeout"`` …).
        time: the strategy clock's monotonic time when it happened.
    """

    severity: ClassVar[Severity] = Severity.INFO

    policy: str
    strategy: str
    time: float

    @property
    def source(self) -> str:
        """``policy/strategy``: how telemetry names the strategy that acted."""
        return f"{self.policy}/{self.strategy}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(Event):
    """A strategy refused to run a call so that the caller fails fast.

    Each rejecting strategy publishes its own subclass (``CircuitRejected``,
    ``BulkheadRejected``, ``RateLimited`` …); telemetry counts them all by ``reason``.

    Attributes:
        reason: a short stable label: ``circuit_open``, ``bulkhead_full``,
            ``rate_limited`` …
        retry_after: seconds until trying again may succeed, or ``None``.
    """

    severity: ClassVar[Severity] = Severity.WARNING

    reason: str
    retry_after: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(Event):
    """A stateful strategy moved from ``from_state`` to ``to_state`` (e.g. a breaker opening)."""

    severity: ClassVar[Severity] = Severity.WARNING

    from_state: str
    to_state: str


Listener = Callable[[Event], object]
"""What :func:`subscribe` takes: a callable receiving each :class:`Event`."""
