"""What the Redis-backed strategies share: the link to Redis and its two events.

:class:`_Link` says whether Redis may be tried now (with backoff after a failure, one
probe at a time); :class:`SharedStateLost` and :class:`SharedStateRestored` make an
outage and its end visible, once each, with one log line.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from ._core.events import EVENTS, StateChanged
from ._core.strategy import Scope

logger = logging.getLogger("resilience")


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedStateLost(StateChanged):
    """Redis could not be reached: the strategy runs on its local fallback (or refuses).

    ``from_state="shared"``, ``to_state`` is ``"local"`` (``fail_open``) or
    ``"closed"`` (``fail_closed``); ``error`` names the Redis error.
    """

    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedStateRestored(StateChanged):
    """Redis answered again: the strategy is back on the shared state."""

    outage: float


class _Link:
    """Whether Redis is usable now, and when to try it again after a failure.

    After an error every call goes to the fallback without touching Redis until the
    backoff has passed; then one call (the probe) tries Redis while the others still
    use the fallback, so an outage costs at most one command timeout per backoff.
    """

    __slots__ = (
        "backoff",
        "down_since",
        "lock",
        "max_backoff",
        "min_backoff",
        "probing",
        "retry_at",
    )

    def __init__(self, min_backoff: float, max_backoff: float) -> None:
        self.lock = threading.Lock()
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.backoff = min_backoff
        self.down_since: float | None = None
        self.retry_at = 0.0
        self.probing = False

    def may_try(self, now: float) -> bool:
        """Whether this call may use Redis (a probe is granted to one call at a time)."""
        if self.down_since is None:
            return True
        with self.lock:
            if self.probing or now < self.retry_at:
                return False
            self.probing = True
            return True

    def failed(self, now: float) -> bool:
        """Record a failure; answers whether Redis was up until now (the outage begins)."""
        with self.lock:
            self.probing = False
            began = self.down_since is None
            if began:
                self.down_since = now
                self.backoff = self.min_backoff
            else:
                self.backoff = min(self.backoff * 2.0, self.max_backoff)
            self.retry_at = now + self.backoff
            return began

    def worked(self, now: float) -> float | None:
        """Record a success; answers the outage's length when it just ended."""
        if self.down_since is None:
            return None
        with self.lock:
            since, self.down_since = self.down_since, None
            self.probing = False
            return None if since is None else now - since


def _report_lost(
    scope: Scope,
    now: float,
    to_state: str,
    exc: BaseException,
    meanwhile: str = "deciding locally",
) -> None:
    """An outage began: one warning and one :class:`SharedStateLost`."""
    logger.warning(
        "resilience: %s/%s cannot reach Redis (%r); %s until it answers again",
        scope.policy,
        scope.strategy,
        exc,
        meanwhile,
    )
    if EVENTS.wants(scope.policy):
        EVENTS.publish(
            SharedStateLost(
                policy=scope.policy,
                strategy=scope.strategy,
                time=now,
                from_state="shared",
                to_state=to_state,
                error=type(exc).__name__,
            )
        )


def _report_restored(
    scope: Scope, now: float, from_state: str, outage: float, what: str = "the state"
) -> None:
    """An outage ended: one warning and one :class:`SharedStateRestored`."""
    logger.warning(
        "resilience: %s/%s reaches Redis again after %.3f s; %s is shared again",
        scope.policy,
        scope.strategy,
        outage,
        what,
    )
    if EVENTS.wants(scope.policy):
        EVENTS.publish(
            SharedStateRestored(
                policy=scope.policy,
                strategy=scope.strategy,
                time=now,
                from_state=from_state,
                to_state="shared",
                outage=outage,
            )
        )
