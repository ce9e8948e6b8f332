"""Log what the strategies decide, through the stdlib ``logging`` module.

::

    import resilience.log

    resilience.log.enable()      # lines go to the "resilience" logger

One line per state change (a breaker opening or closing), per retry that gives up, per
exhausted retry budget, and per *burst* of rejections: the first rejection of a policy's
strategy for one reason is logged at once; the ones that follow within
``rejection_interval`` seconds are counted, and their count is logged in one line when
the interval ends, whether or not another rejection comes. A burst that goes on gets one
such line per interval. Nothing is logged for a call that succeeds.

Every line carries structured fields in ``extra`` (``resilience_event``,
``resilience_policy``, ``resilience_strategy`` and the event's own fields), for JSON
formatters. The module is named ``log`` so that it never shadows the stdlib ``logging``.
"""

from __future__ import annotations

import atexit
import logging
import threading
from datetime import timedelta
from typing import Any

from ._core.clock import SYSTEM_CLOCK, Clock, SystemClock, TimerHandle
from ._core.events import EVENTS, CallRejected, Event, StateChanged
from ._core.options import to_seconds
from ._core.telemetry import error_type
from .retry import GiveUpReason, RetryGaveUp

__all__ = ["LogListener", "enable", "disable"]


class _Burst:
    """The rejections of one policy, strategy and reason inside the current interval."""

    __slots__ = ("armed", "count", "end", "last", "timer")

    def __init__(self, end: float) -> None:
        self.end = end  # when the current interval ends (the listener's clock)
        self.count = 0  # rejections not logged yet
        self.last: CallRejected | None = None  # the latest of them, for the summary
        self.timer: TimerHandle | None = None  # set while ``count > 0``
        self.armed = 0  # tells a stale timer (cancelled too late) from the current one


_Tail = tuple[CallRejected, int]


class LogListener:
    """The listener :func:`enable` subscribes; usable alone with :func:`resilience.subscribe`.

    Parameters:
        logger: where the lines go; default ``logging.getLogger("resilience")``.
        rejection_interval: seconds, ``> 0``, default 10: after a rejection line of one
            policy, strategy and reason, the next one comes when this interval ends (a
            summary of the rejections counted meanwhile, if any), never sooner.
        clock: measures the intervals and ends them; default the system clock, whose
            timers run on a daemon thread, so the summary of a burst is written in sync
            and asyncio programs alike, even if no other rejection comes. Another clock
            is asked through :meth:`Clock.call_at`
            (:class:`~resilience.testing.FakeClock` fires those when advanced); if it
            needs a running event loop and there is none, a thread timer is used.

    Call :meth:`flush` to write the pending summaries at once, and :meth:`close` when
    done with a listener that is no longer subscribed.
    """

    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        rejection_interval: float | timedelta = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self.logger = logger if logger is not None else logging.getLogger("resilience")
        self.rejection_interval = to_seconds(
            "rejection_interval", rejection_interval, exclusive_minimum=True
        )
        self._clock = clock or SYSTEM_CLOCK
        self._bursts: dict[tuple[str, str, str], _Burst] = {}
        self._closed = False
        # Rejections arrive from many threads and timers fire on their own: this lock
        # guards the bursts. Lines are written after it is released, so a handler that
        # blocks (or publishes events itself) holds up no other caller.
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if self._closed:
            return
        if isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, RetryGaveUp):
            self._gave_up(event)
        elif isinstance(event, CallRejected):
            self._rejected(event)

    def flush(self) -> None:
        """Write the summary of every burst with rejections not logged yet, now.

        The bursts go on: rejections in the rest of their interval are counted afresh.
        """
        with self._lock:
            tails = [t for b in self._bursts.values() if (t := self._end_tail(b)) is not None]
        for tail in tails:
            self._log_tail(*tail)

    def close(self) -> None:
        """Flush, cancel the timers, and write nothing more. Closing again does nothing."""
        with self._lock:
            self._closed = True
            tails = [t for b in self._bursts.values() if (t := self._end_tail(b)) is not None]
            self._bursts.clear()
        for tail in tails:
            self._log_tail(*tail)

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
        key = (event.policy, event.strategy, event.reason)
        tail: _Tail | None = None
        with self._lock:
            if self._closed:
                return
            now = self._clock.now()
            burst = self._bursts.get(key)
            if burst is not None and now >= burst.end:
                # The interval is over and its timer has not run yet (a thread that is
                # late): write its summary here; the timer will find nothing to do.
                tail = self._end_tail(burst)
                if tail is not None:
                    burst.end += self.rejection_interval
            if burst is None or now >= burst.end:
                first = True
                self._bursts[key] = _Burst(now + self.rejection_interval)
            else:
                first = False
                burst.count += 1
                burst.last = event
                if burst.timer is None:
                    burst.armed += 1
                    burst.timer = self._arm(burst.end, key, burst, burst.armed)
        if tail is not None:
            self._log_tail(*tail)
        if first:
            self._log_rejections(event, 1, first=True)

    def _arm(
        self, when: float, key: tuple[str, str, str], burst: _Burst, armed: int
    ) -> TimerHandle:
        """A one-shot timer that ends ``burst``'s interval at ``when``."""

        def fire() -> None:
            self._interval_ended(key, burst, armed)

        clock = self._clock
        if not isinstance(clock, SystemClock):
            try:
                return clock.call_at(when, fire)
            except RuntimeError:  # a clock that needs a running event loop: real time
                pass
        # A thread rather than the event loop: a sync program has none, and a loop that
        # stops or blocks must not keep the summary from being written.
        timer = threading.Timer(max(0.0, when - clock.now()), fire)
        timer.daemon = True
        timer.start()
        return timer

    def _interval_ended(self, key: tuple[str, str, str], burst: _Burst, armed: int) -> None:
        with self._lock:
            if self._bursts.get(key) is not burst or burst.armed != armed:
                return  # closed, or the burst went on without this timer
            tail = self._end_tail(burst)
            if tail is None:
                return  # flushed, or summarised by a rejection that came first
            # The next interval starts where this one ended: a rejection right after
            # this line is counted, not logged at once.
            burst.end += self.rejection_interval
        self._log_tail(*tail)

    def _end_tail(self, burst: _Burst) -> _Tail | None:
        """Take the rejections ``burst`` has not logged, and stop its timer (lock held)."""
        if burst.timer is not None:
            burst.timer.cancel()
            burst.timer = None
        if burst.count == 0 or burst.last is None:
            return None
        tail = (burst.last, burst.count)
        burst.count = 0
        burst.last = None
        return tail

    def _log_tail(self, event: CallRejected, count: int) -> None:
        self._log_rejections(event, count, first=False)

    def _log_rejections(self, event: CallRejected, count: int, *, first: bool) -> None:
        """The line of a burst's first rejection, or of the ``count`` held back since."""
        args: tuple[object, ...]
        if first:
            message = "%s: call rejected (%s); further rejections are summarised every %g s"
            args = (event.source, event.reason, self.rejection_interval)
        else:
            message = (
                "%s: %d more call(s) rejected (%s) since the last such line; summarised every %g s"
            )
            args = (event.source, count, event.reason, self.rejection_interval)
        self.logger.log(
            int(event.severity),
            message,
            *args,
            extra=self._extra(
                event,
                reason=event.reason,
                retry_after=event.retry_after,
                count=count,
                interval=self.rejection_interval,
            ),
        )


_lock = threading.Lock()
_listener: LogListener | None = None
_at_exit = False


def enable(
    *,
    logger: logging.Logger | None = None,
    rejection_interval: float | timedelta = 10.0,
    clock: Clock | None = None,
) -> LogListener:
    """Log state changes, give-ups, exhausted budgets and rejection bursts of every policy.

    Enabling again replaces the previous listener, which is closed (its pending
    summaries written). At interpreter exit the pending summaries are written too.
    """
    global _listener, _at_exit
    listener = LogListener(logger=logger, rejection_interval=rejection_interval, clock=clock)
    with _lock:
        previous, _listener = _listener, listener
        if previous is not None:
            EVENTS.unsubscribe(previous)
        EVENTS.subscribe(listener)
        if not _at_exit:
            # Timers run on daemon threads, which exit does not wait for. Registered
            # after ``logging``'s own hook, so this one runs first, with handlers open.
            atexit.register(_flush_at_exit)
            _at_exit = True
    if previous is not None:
        previous.close()
    return listener


def disable() -> None:
    """Stop logging events, after writing the pending summaries of rejection bursts."""
    global _listener
    with _lock:
        previous, _listener = _listener, None
        if previous is not None:
            EVENTS.unsubscribe(previous)
    if previous is not None:
        previous.close()


def _flush_at_exit() -> None:
    listener = _listener
    if listener is not None:
        listener.flush()
