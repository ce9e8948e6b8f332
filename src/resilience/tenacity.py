"""Interoperability with tenacity.

- :func:`wait_schedule` turns a tenacity ``wait_*`` object (``wait_exponential(...)``,
  ``wait_fixed(1) + wait_random(0, 1)`` …) into a :class:`~resilience.Schedule`, so
  existing tenacity configuration can drive a :class:`~resilience.Retry`. ``Retry``
  does this by itself when given a tenacity wait as ``backoff=``.

Needs the ``tenacity`` extra: ``pip install resilience[tenacity]``.
"""

from __future__ import annotations

from typing import Any

import tenacity as _tenacity

from ._core.clock import Rng
from .backoff import AttemptInfo

__all__ = ["wait_schedule", "TenacityWait"]


class TenacityWait:
    """A :class:`~resilience.Schedule` backed by a tenacity ``wait_*`` object.

    The wait is handed a ``tenacity.RetryCallState`` filled from the attempt: the
    attempt number, the outcome (exception or result) and the seconds since the start.
    Its randomness comes from tenacity's own, not from ``rng``.
    """

    __slots__ = ("wait",)

    def __init__(self, wait: Any) -> None:
        if not callable(wait):
            raise TypeError(f"wait must be a tenacity wait_* object, got {wait!r}")
        self.wait = wait

    def delay(self, info: AttemptInfo, rng: Rng) -> float:
        state = _tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = info.attempt
        state.idle_for = 0.0
        fut: _tenacity.Future = _tenacity.Future(info.attempt)
        if info.error is not None:
            fut.set_exception(info.error)
        else:
            fut.set_result(info.result)
        state.outcome = fut
        state.outcome_timestamp = state.start_time + info.elapsed
        d = float(self.wait(state))
        return d if d > 0.0 else 0.0

    def __repr__(self) -> str:
        return f"TenacityWait({self.wait!r})"


def wait_schedule(wait: Any) -> TenacityWait:
    """Adapt a tenacity ``wait_*`` object for ``Retry(backoff=...)``."""
    return TenacityWait(wait)
