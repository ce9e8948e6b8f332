"""Interoperability with pybreaker: keep a pybreaker breaker, get our events.

:class:`PybreakerListener` is a ``pybreaker.CircuitBreakerListener`` that publishes
:class:`~resilience.CircuitStateChanged` on every state change of the breakers it is
added to, so the Prometheus and OpenTelemetry listeners of ``resilience`` see them::

    import pybreaker
    from resilience.pybreaker import PybreakerListener

    listener = PybreakerListener(name="db")
    db_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, listeners=[listener])

pybreaker decides that a call is rejected *before* it tells its listeners about the
call, so a listener cannot see rejections. :meth:`PybreakerListener.rejections` fills
the gap: a context manager (or decorator) that publishes
:class:`~resilience.CircuitRejected` when pybreaker refuses a call inside it.

Needs the ``pybreaker`` extra: ``pip install resilience[pybreaker]``.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pybreaker as _pybreaker

from ._core.clock import SYSTEM_CLOCK, Clock
from ._core.events import EVENTS
from ._core.options import to_name
from .circuit_breaker import CircuitRejected, CircuitState, CircuitStateChanged

__all__ = ["PybreakerListener"]

T = TypeVar("T")

_STATES = {
    _pybreaker.STATE_CLOSED: CircuitState.CLOSED.value,
    _pybreaker.STATE_OPEN: CircuitState.OPEN.value,
    _pybreaker.STATE_HALF_OPEN: CircuitState.HALF_OPEN.value,
}

# The pybreaker breaker that last admitted a call in this context: a CircuitBreakerError
# raised after admission is a trip, not a rejection.
_ADMITTED: contextvars.ContextVar[object] = contextvars.ContextVar(
    "resilience_pybreaker_admitted", default=None
)


def _state_name(state: Any) -> str:
    name = getattr(state, "name", state)
    return _STATES.get(name, str(name))


class PybreakerListener(_pybreaker.CircuitBreakerListener):
    """Publish a pybreaker breaker's state changes (and, with :meth:`rejections`, its
    rejections) as ``resilience`` events.

    Parameters:
        name: the policy name of the events; default: the pybreaker breaker's ``name``,
            else ``"pybreaker"``.
        clock: the clock that stamps the events and measures ``retry_after`` (tests).

    Events carry ``strategy="circuit_breaker"``. pybreaker counts consecutive failures
    only, so ``failure_rate`` and ``slow_call_rate`` are ``None``; ``reason`` is
    ``consecutive_failures``, ``open_duration_elapsed``, ``probes_succeeded``,
    ``probe_failed`` or ``manual``, read from the transition and the breaker's counters.
    """

    def __init__(self, name: str | None = None, *, clock: Clock | None = None) -> None:
        self.name = to_name("name", name)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        # When each breaker last opened, on our clock: what retry_after is measured from.
        self._opened: weakref.WeakKeyDictionary[_pybreaker.CircuitBreaker, float] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"PybreakerListener(name={self.name!r})"

    def _policy(self, cb: _pybreaker.CircuitBreaker) -> str:
        return self.name or cb.name or "pybreaker"

    # -- pybreaker's listener API -------------------------------------------------------------
    def before_call(
        self, cb: _pybreaker.CircuitBreaker, func: Callable[..., T], *args: Any, **kwargs: Any
    ) -> None:
        _ADMITTED.set(cb)

    def state_change(
        self,
        cb: _pybreaker.CircuitBreaker,
        old_state: _pybreaker.CircuitBreakerState | None,
        new_state: _pybreaker.CircuitBreakerState,
    ) -> None:
        now = self._clock.now()
        old = _state_name(old_state) if old_state is not None else None
        new = _state_name(new_state)
        if new == CircuitState.OPEN.value:
            self._opened[cb] = now
        if old is None or old == new:
            return
        policy = self._policy(cb)
        if not EVENTS.wants(policy):
            return
        EVENTS.publish(
            CircuitStateChanged(
                policy=policy,
                strategy="circuit_breaker",
                time=now,
                from_state=old,
                to_state=new,
                reason=_reason(cb, old, new),
                failure_rate=None,
                slow_call_rate=None,
            )
        )

    # -- rejections -----------------------------------------------------------------------------
    def retry_after(self, cb: _pybreaker.CircuitBreaker) -> float | None:
        """Seconds until ``cb`` lets a trial call through (``None`` if not known)."""
        opened = self._opened.get(cb)
        if opened is None or cb.current_state != _pybreaker.STATE_OPEN:
            return None
        return max(0.0, opened + float(cb.reset_timeout) - self._clock.now())

    @contextmanager
    def rejections(self, cb: _pybreaker.CircuitBreaker) -> Iterator[None]:
        """Publish :class:`~resilience.CircuitRejected` when ``cb`` refuses a call here.

        Use it around calls through ``cb`` (``with listener.rejections(cb): query()``)
        or as a decorator outside pybreaker's (``@listener.rejections(cb)`` above
        ``@cb``). The ``CircuitBreakerError`` still propagates; the one pybreaker raises
        when a failure trips the breaker is not a rejection and publishes nothing.
        """
        token = _ADMITTED.set(None)
        try:
            yield
        except _pybreaker.CircuitBreakerError:
            if _ADMITTED.get() is not cb:
                policy = self._policy(cb)
                if EVENTS.wants(policy):
                    EVENTS.publish(
                        CircuitRejected(
                            policy=policy,
                            strategy="circuit_breaker",
                            time=self._clock.now(),
                            reason="circuit_open",
                            retry_after=self.retry_after(cb),
                            state=CircuitState.OPEN.value,
                        )
                    )
            raise
        finally:
            _ADMITTED.reset(token)


def _reason(cb: _pybreaker.CircuitBreaker, old: str, new: str) -> str:
    if old == CircuitState.HALF_OPEN.value:
        return "probe_failed" if new == CircuitState.OPEN.value else "probes_succeeded"
    if old == CircuitState.OPEN.value and new == CircuitState.HALF_OPEN.value:
        return "open_duration_elapsed"
    if new == CircuitState.OPEN.value and cb.fail_counter >= cb.fail_max:
        return "consecutive_failures"
    return "manual"
