"""Log what the strategies decide, through the stdlib ``logging`` module.

::

    import resilience.log

    resilience.log.enable()      # lines go to the "resilience" logger

One line per state change (a breaker opening or closing), per retry that gives up, per
exhausted retry budget, and per *burst* of rejections: the first rejection of a policy is
logged at once, further ones are counted and summarised in at most one line per policy
every ``rejection_interval`` seconds. Nothing is logged for a call that succeeds.

Every line carries structured fields in ``extra`` (``resilience_event``,
``resilience_policy``, ``resilience_strategy`` and the event's own fields), for JSON
formatters. The module is named ``log`` so that it never shadows the stdlib ``logging``.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from ._core.events import EVENTS, CallRejected, Event, StateChanged
from ._core.options import to_seconds
from ._core.telemetry import error_type
from .retry import GiveUpReason, RetryGaveUp

__all__ = ["LogListener", "enable", "disable"]


class LogListener:
    """The listener :func:`enable` subscribes; usable alone with :func:`resilience.subscribe`.

    Parameters:
        logger: where the lines go; default ``logging.getLogger("resilience")``.
        rejection_interval: seconds between two rejection lines of one policy, ``> 0``;
            default 10. Measured on the clock of the strategy that rejected.
    """

    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        rejection_interval: float | timedelta = 10.0,
    ) -> None:
        self.logger = logger if logger is not None else logging.getLogger("resilience")
        self.rejection_interval = to_seconds(
            "rejection_interval", rejection_interval, exclusive_minimum=True
        )
        # policy -> [time of the last line, rejections not logged since, reasons seen]
        self._bursts: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, RetryGaveUp):
            self._gave_up(event)
        elif isinstance(event, CallRejected):
            self._rejected(event)

    def _extra(self, event: Event, **fields: Any) -> dict[str, Any]:
        extra = {
            "resilience_event": type(event).__name__,
            "resilience_policy": event.policy,
            "resilience_strategy": event.strategy,
        }
        extra.update({f"resilience_{k}": v for k, v in fields.items()})
        return extra

    def _state_changed(self, event: StateChanged) -> None:
        self.logger.log(
            int(event.severity) if event.to_state != "closed" else logging.INFO,
            "%s: %s -> %s",
            event.source,
            event.from_state,
            event.to_state,
            extra=self._extra(event, from_state=event.from_state, to_state=event.to_state),
        )

    def _gave_up(self, event: RetryGaveUp) -> None:
        error = error_type(event.error) if event.error is not None else None
        extra = self._extra(
            event, attempts=event.attempts, reason=event.reason.value, error_type=error
        )
        if event.reason is GiveUpReason.BUDGET:
            self.logger.warning(
                "%s: retry budget exhausted after %d attempt(s); failing fast with %s",
                event.source,
                event.attempts,
                error or "the last result",
                extra=extra,
            )
            return
        self.logger.log(
            int(event.severity),
            "%s: gave up after %d attempt(s) (%s): %s",
            event.source,
            event.attempts,
            event.reason.value,
            error or "the last result",
            extra=extra,
        )

    def _rejected(self, event: CallRejected) -> None:
        with self._lock:
            burst = self._bursts.get(event.policy)
            if burst is not None and event.time - burst[0] < self.rejection_interval:
                burst[1] += 1
                burst[2].add(event.reason)
                return
            count = 1 + (burst[1] if burst is not None else 0)
            reasons = {event.reason} | (burst[2] if burst is not None else set())
            since = event.time - burst[0] if burst is not None else 0.0
            self._bursts[event.policy] = [event.time, 0, set()]
        extra = self._extra(
            event,
            reason=event.reason,
            retry_after=event.retry_after,
            count=count,
            reasons=sorted(reasons),
        )
        if burst is None:
            self.logger.log(
                int(event.severity),
                "%s: call rejected (%s); further rejections are summarised every %g s",
                event.source,
                event.reason,
                self.rejection_interval,
                extra=extra,
            )
        else:
            self.logger.log(
                int(event.severity),
                "%s: %d call(s) rejected since the last such line %.1f s ago (%s)",
                event.source,
                count,
                since,
                ", ".join(sorted(reasons)),
                extra=extra,
            )


_lock = threading.Lock()
_listener: LogListener | None = None


def enable(
    *, logger: logging.Logger | None = None, rejection_interval: float | timedelta = 10.0
) -> LogListener:
    """Log state changes, give-ups, exhausted budgets and rejection bursts of every policy.

    Enabling again replaces the previous listener.
    """
    global _listener
    listener = LogListener(logger=logger, rejection_interval=rejection_interval)
    with _lock:
        if _listener is not None:
            EVENTS.unsubscribe(_listener)
        _listener = listener
        EVENTS.subscribe(listener)
    return listener


def disable() -> None:
    """Stop logging events."""
    global _listener
    with _lock:
        if _listener is not None:
            EVENTS.unsubscribe(_listener)
            _listener = None
