"""Small stand-in strategies for the telemetry tests, and a reader of the exposition.

The stand-ins follow the contracts the real breaker, bulkhead and rate limiter publish
(a ``CallRejected`` with their reason, ``StateChanged`` between breaker states, a
snapshot with their ``kind`` and fields) without depending on those modules.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from resilience import CallRejected, RejectedError, StateChanged, Strategy
from resilience._core.events import EVENTS
from resilience._core.strategy import Scope
from resilience.testing import FakeClock

_ids = itertools.count(1)


def unique(prefix: str) -> str:
    """A policy name no other test uses (counters live for the whole process)."""
    return f"{prefix}_{next(_ids)}"


def histogram(
    registry: CollectorRegistry, name: str, policy: str
) -> tuple[dict[str, float], float, float]:
    """One policy's series of histogram ``name``, scraped from ``registry`` and parsed back.

    Answers the cumulative counts by ``le`` (as exposed: ``"0.25"``, ``"+Inf"``), the
    ``_count`` and the ``_sum``; ``({}, 0.0, 0.0)`` when the policy has no series.
    """
    buckets: dict[str, float] = {}
    count = total = 0.0
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for s in family.samples:
            if s.labels.get("policy") != policy:
                continue
            if s.name == f"{name}_bucket":
                buckets[s.labels["le"]] = s.value
            elif s.name == f"{name}_count":
                count = s.value
            elif s.name == f"{name}_sum":
                total = s.value
    return buckets, count, total


@dataclass(frozen=True, slots=True, kw_only=True)
class StandInRejected(CallRejected):
    """What a rejecting stand-in publishes (like ``CircuitRejected``, ``BulkheadRejected``)."""


class StandInError(RejectedError):
    pass


class Gate(Strategy):
    """Passes calls through, or rejects them with ``reason`` while ``rejecting`` is set."""

    kind: ClassVar[str] = "gate"
    reason: ClassVar[str] = "gate_closed"

    def __init__(self, *, name: str | None = None, clock: FakeClock | None = None) -> None:
        super().__init__(name=name)
        self.clock = clock or FakeClock()
        self.rejecting = False
        self.retry_after: float | None = 1.5
        self.rejected = 0
        self.scopes: list[Scope] = []

    def _reject(self, scope: Scope) -> RejectedError:
        self.rejected += 1
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                StandInRejected(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self.clock.now(),
                    reason=self.reason,
                    retry_after=self.retry_after,
                )
            )
        return StandInError(
            f"{scope.policy}: rejected ({self.reason})",
            policy=scope.policy,
            retry_after=self.retry_after,
        )

    def _wrap_sync(self, fn: Callable[..., Any], scope: Scope) -> Callable[..., Any]:
        self.scopes.append(scope)

        def gate(*args: Any, **kwargs: Any) -> Any:
            if self.rejecting:
                raise self._reject(scope)
            return fn(*args, **kwargs)

        return gate

    def _wrap_async(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], scope: Scope
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        self.scopes.append(scope)

        async def gate(*args: Any, **kwargs: Any) -> Any:
            if self.rejecting:
                raise self._reject(scope)
            return await fn(*args, **kwargs)

        return gate


class Breaker(Gate):
    kind: ClassVar[str] = "circuit_breaker"
    reason: ClassVar[str] = "circuit_open"

    def __init__(self, *, name: str | None = None, clock: FakeClock | None = None) -> None:
        super().__init__(name=name, clock=clock)
        self.state = "closed"
        self.failure_rate = 0.0

    def move(self, to_state: str) -> None:
        """Change state and publish it, as the real breaker does."""
        scope = self.scopes[-1]
        EVENTS.publish(
            StateChanged(
                policy=scope.policy,
                strategy=scope.strategy,
                time=self.clock.now(),
                from_state=self.state,
                to_state=to_state,
            )
        )
        self.state = to_state
        self.rejecting = to_state in ("open", "forced_open")

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "failure_rate": self.failure_rate,
            "slow_call_rate": 25.0,  # percent, as the real breaker reports it
            "calls_in_window": 10,
            "failed_calls": 5,
            "slow_calls": 2,
            "not_permitted_calls": self.rejected,
            "open_until": None,
            "half_open_in_flight": 0,
            "transitions": 1,
            "last_transition_age": 3.0,
        }


class Bulkhead(Gate):
    kind: ClassVar[str] = "bulkhead"
    reason: ClassVar[str] = "bulkhead_full"

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "max_concurrent": 10,
            "max_queued": 5,
            "in_flight": 7,
            "queued": 2,
            "rejected": self.rejected,
        }


class Limiter(Gate):
    kind: ClassVar[str] = "rate_limiter"
    reason: ClassVar[str] = "rate_limited"

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "rate": 100.0,
            "period": 1.0,
            "burst": 10,
            "available": 4.0,
            "rejected": self.rejected,
        }
