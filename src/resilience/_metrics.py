"""The metric set, read at scrape time; shared by the Prometheus and OpenTelemetry exporters.

Three sources, none of which touches a metrics library while a call runs:

- call counts and durations: the in-process histograms the policy wrappers fill
  (:mod:`resilience._core.telemetry`);
- retries, give-ups, rejections, transitions, timeouts, fallbacks and rate-limiter waits:
  one listener on the event stream (events happen on failure and waiting paths only)
  counting into plain dicts;
- gauges (breaker state and rates, bulkhead usage, limiter permits, retry budget): the
  ``snapshot()`` of every registered policy, read when the scrape asks.

Labels are bounded by construction: policy and strategy names, outcomes, states and
reasons. Never a key, a URL or an exception message.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ._core.events import EVENTS, CallRejected, Event, StateChanged
from ._core.telemetry import CALL_OUTCOMES, POLICIES, QUICK_SLOT, SECONDS, SLOTS, STATS, TELEMETRY
from .fallback import FallbackUsed
from .rate_limit import RateLimitWaited
from .retry import GiveUpReason, RetryGaveUp, RetryScheduled
from .timeout import TimedOut

__all__ = [
    "BREAKER_STATES",
    "DURATION_BUCKETS",
    "WAIT_BUCKETS",
    "Family",
    "collect",
    "enable",
    "disable",
    "read",
]

logger = logging.getLogger("resilience")

BREAKER_STATES: Final = ("closed", "open", "half_open", "forced_open", "disabled", "metrics_only")

_FIRST_SLOT: Final = QUICK_SLOT
_LAST_SLOT: Final = 35
DURATION_BUCKETS: Final = tuple(2**b / 1e9 for b in range(_FIRST_SLOT, _LAST_SLOT + 1))
"""Upper bounds of the call-duration buckets: powers of two nanoseconds, 131 µs to 34 s."""

WAIT_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds of the rate-limiter wait buckets (time a call waited for a permit), in seconds."""

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]
Histogram = tuple[list[tuple[float, int]], float]
"""Cumulative ``(upper bound, count)`` pairs ending with ``+inf``, and the sum."""
Reader = Callable[["Snapshots"], "Family"]


@dataclass(slots=True)
class Family:
    """One metric with its samples: what an exporter renders.

    ``name`` is the Prometheus name without the ``_total`` suffix of counters.
    """

    name: str
    kind: Kind
    help: str
    labels: Labels
    unit: str = ""
    samples: list[tuple[Labels, float]] = field(default_factory=list)
    histograms: list[tuple[Labels, Histogram]] = field(default_factory=list)


# -- the event counters -----------------------------------------------------------------------
class _Counters:
    """Counts events into dicts keyed by label values; subscribed while metrics are on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.retries: dict[Labels, int] = {}
        self.gave_up: dict[Labels, int] = {}
        self.budget: dict[Labels, int] = {}
        self.rejections: dict[Labels, int] = {}
        self.transitions: dict[Labels, int] = {}
        self.timeouts: dict[Labels, int] = {}
        self.fallbacks: dict[Labels, int] = {}
        self.waits: dict[Labels, list[float]] = {}

    @staticmethod
    def _inc(table: dict[Labels, int], key: Labels) -> None:
        table[key] = table.get(key, 0) + 1

    def __call__(self, event: Event) -> None:
        policy = event.policy
        with self.lock:
            if isinstance(event, RetryScheduled):
                self._inc(self.retries, (policy,))
            elif isinstance(event, RetryGaveUp):
                self._inc(self.gave_up, (policy, GiveUpReason(event.reason).value))
                if event.reason is GiveUpReason.BUDGET:
                    self._inc(self.budget, (policy,))
            elif isinstance(event, CallRejected):
                self._inc(self.rejections, (policy, event.reason))
            elif isinstance(event, StateChanged):
                self._inc(self.transitions, (policy, event.from_state, event.to_state))
            elif isinstance(event, TimedOut):
                self._inc(self.timeouts, (policy,))
            elif isinstance(event, FallbackUsed):
                self._inc(self.fallbacks, (policy,))
            elif isinstance(event, RateLimitWaited):
                # Only a call that waited publishes one: the admitted-at-once path pays nothing.
                self._observe_wait((policy,), event.waited)

    def _observe_wait(self, key: Labels, seconds: float) -> None:
        h = self.waits.get(key)
        if h is None:
            h = self.waits[key] = [0.0] * (len(WAIT_BUCKETS) + 2)
        h[bisect.bisect_left(WAIT_BUCKETS, seconds)] += 1
        h[-1] += seconds

    def items(self, table: dict[Labels, int]) -> list[tuple[Labels, float]]:
        with self.lock:
            return sorted((k, float(v)) for k, v in table.items())


COUNTERS: Final = _Counters()

_users = 0
_users_lock = threading.Lock()


def enable(*, durations: bool) -> None:
    """Start recording (reference-counted): call counters, the event listener and, with
    ``durations``, the call-duration histogram (two clock reads per call)."""
    global _users
    with _users_lock:
        _users += 1
        if _users == 1:
            EVENTS.subscribe(COUNTERS)
        TELEMETRY.acquire_metrics(durations=durations)


def disable(*, durations: bool) -> None:
    """Undo one :func:`enable` with the same ``durations``."""
    global _users
    with _users_lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            EVENTS.unsubscribe(COUNTERS)
        TELEMETRY.release_metrics(durations=durations)


# -- readers: one per family ------------------------------------------------------------------
def _calls(snaps: Snapshots) -> Family:
    fam = Family(
        "resilience_calls",
        "counter",
        "Calls through a decorated policy, by outcome.",
        ("policy", "strategy", "outcome"),
    )
    for stats in sorted(STATS.all(), key=lambda s: (s.policy, s.strategy)):
        for i, name in enumerate(CALL_OUTCOMES):
            fam.samples.append(((stats.policy, stats.strategy, name), float(stats.calls(i))))
    return fam


def _durations(snaps: Snapshots) -> Family:
    fam = Family(
        "resilience_call_duration_seconds",
        "histogram",
        "Duration of calls through a decorated policy, retries and waits included.",
        ("policy",),
        unit="seconds",
    )
    counts: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    for stats in STATS.all():
        acc = counts.setdefault(stats.policy, [0] * SLOTS)
        for outcome in range(len(CALL_OUTCOMES)):
            h = stats.slots(outcome)
            for i, v in enumerate(h[:SLOTS]):
                acc[i] += v
            sums[stats.policy] = sums.get(stats.policy, 0.0) + h[SECONDS]
    for policy in sorted(counts):
        acc = counts[policy]
        below = sum(acc[: _FIRST_SLOT + 1])
        buckets = [(DURATION_BUCKETS[0], below)]
        for b in range(_FIRST_SLOT + 1, _LAST_SLOT + 1):
            below += acc[b]
            buckets.append((2**b / 1e9, below))
        buckets.append((math.inf, sum(acc)))
        fam.histograms.append(((policy,), (buckets, sums[policy])))
    return fam


def _waits(snaps: Snapshots) -> Family:
    fam = Family(
        "resilience_ratelimiter_wait_seconds",
        "histogram",
        "Time a call waited for a rate-limiter permit before it was admitted "
        "(calls admitted at once and rejected calls are not observed).",
        ("policy",),
        unit="seconds",
    )
    with COUNTERS.lock:
        waits = {k: list(v) for k, v in COUNTERS.waits.items()}
    for key in sorted(waits):
        h = waits[key]
        acc = 0
        buckets: list[tuple[float, int]] = []
        for bound, n in zip((*WAIT_BUCKETS, math.inf), h[:-1], strict=True):
            acc += int(n)
            buckets.append((bound, acc))
        fam.histograms.append((key, (buckets, h[-1])))
    return fam


def _counter(
    name: str, help: str, labels: Labels, table: Callable[[], dict[Labels, int]]
) -> Reader:
    def read(snaps: Snapshots) -> Family:
        return Family(name, "counter", help, labels, samples=COUNTERS.items(table()))

    return read


# -- gauges from snapshots ----------------------------------------------------------------------
# Strategies whose snapshot() raised, logged once each (weakly: a new strategy at a
# dropped one's address is logged too).
_failed_snapshots: weakref.WeakSet[Any] = weakref.WeakSet()


class Snapshots:
    """The snapshots of one scrape, taken once on first use and shared by every gauge."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: list[tuple[str, dict[str, Any]]] | None = None

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if self._items is None:
            self._items = list(_snapshots())
        return iter(self._items)


def _snapshots() -> Iterator[tuple[str, dict[str, Any]]]:
    """``(policy, snapshot)`` of every registered strategy and of each pipeline member."""
    for policy, strategy in POLICIES.items():
        try:
            snap = strategy.snapshot()
        except Exception:
            if strategy not in _failed_snapshots:
                _failed_snapshots.add(strategy)
                logger.exception("resilience: snapshot() of %r raised; it is skipped", strategy)
            continue
        yield from _walk(policy, snap)


def _walk(policy: str, snap: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield policy, snap
    if snap.get("kind") == "pipeline":
        inner = snap.get("name") or policy
        for s in snap.get("strategies") or ():
            if isinstance(s, dict):
                yield from _walk(inner, s)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


_GAUGES: Final = (
    # name, help, snapshot kind, snapshot key
    (
        "resilience_circuitbreaker_failure_rate",
        "Failure rate of the breaker's sliding window, as its snapshot reports it.",
        "circuit_breaker",
        "failure_rate",
    ),
    (
        "resilience_circuitbreaker_slow_call_rate",
        "Slow-call rate of the breaker's sliding window, as its snapshot reports it.",
        "circuit_breaker",
        "slow_call_rate",
    ),
    (
        "resilience_bulkhead_in_flight",
        "Calls running inside the bulkhead.",
        "bulkhead",
        "in_flight",
    ),
    ("resilience_bulkhead_queued", "Calls waiting for a bulkhead slot.", "bulkhead", "queued"),
    (
        "resilience_bulkhead_max_concurrent",
        "Configured concurrent calls of the bulkhead.",
        "bulkhead",
        "max_concurrent",
    ),
    (
        "resilience_ratelimiter_available_permits",
        "Permits the rate limiter can grant right now.",
        "rate_limiter",
        "available",
    ),
    ("resilience_keyed_keys", "Keys a keyed policy currently holds.", "keyed", "keys"),
)


def _gauge(name: str, help: str, kind: str, key: str) -> Reader:
    def read(snaps: Snapshots) -> Family:
        fam = Family(name, "gauge", help, ("policy",))
        seen: set[Labels] = set()
        for policy, snap in snaps:
            if snap.get("kind") != kind:
                continue
            v = _number(snap.get(key))
            if v is not None and (policy,) not in seen:
                seen.add((policy,))  # one series per policy: the first registered wins
                fam.samples.append(((policy,), v))
        return fam

    return read


def _breaker_state(snaps: Snapshots) -> Family:
    fam = Family(
        "resilience_circuitbreaker_state",
        "gauge",
        "1 for the breaker's current state, 0 for each other state.",
        ("policy", "state"),
    )
    seen: set[str] = set()
    for policy, snap in snaps:
        if snap.get("kind") != "circuit_breaker" or policy in seen:
            continue
        seen.add(policy)
        current = snap.get("state")
        for state in BREAKER_STATES:
            fam.samples.append(((policy, state), 1.0 if state == current else 0.0))
    return fam


def _budget(snaps: Snapshots) -> Family:
    fam = Family(
        "resilience_retry_budget_available",
        "gauge",
        "Retries the shared retry budget still allows in its window.",
        ("policy",),
    )
    seen: set[str] = set()
    for policy, snap in snaps:
        budget = snap.get("budget") if snap.get("kind") == "retry" else None
        if isinstance(budget, dict) and policy not in seen:
            v = _number(budget.get("available"))
            if v is not None:
                seen.add(policy)
                fam.samples.append(((policy,), v))
    return fam


READERS: Final[dict[str, Reader]] = {
    "resilience_calls": _calls,
    "resilience_call_duration_seconds": _durations,
    "resilience_retry_attempts": _counter(
        "resilience_retry_attempts",
        "Retries scheduled: attempts made after the first.",
        ("policy",),
        lambda: COUNTERS.retries,
    ),
    "resilience_retry_gave_up": _counter(
        "resilience_retry_gave_up",
        "Retries that stopped before the call succeeded, by reason.",
        ("policy", "reason"),
        lambda: COUNTERS.gave_up,
    ),
    "resilience_retry_budget_exhausted": _counter(
        "resilience_retry_budget_exhausted",
        "Retries refused because the shared retry budget was empty.",
        ("policy",),
        lambda: COUNTERS.budget,
    ),
    "resilience_retry_budget_available": _budget,
    "resilience_circuitbreaker_state": _breaker_state,
    "resilience_circuitbreaker_transitions": _counter(
        "resilience_circuitbreaker_transitions",
        "State transitions of stateful strategies (circuit breakers).",
        ("policy", "from_state", "to_state"),
        lambda: COUNTERS.transitions,
    ),
    **{name: _gauge(name, help, kind, key) for name, help, kind, key in _GAUGES},
    "resilience_rejections": _counter(
        "resilience_rejections",
        "Calls refused to fail fast (breaker open, bulkhead full, rate limited ...).",
        ("policy", "reason"),
        lambda: COUNTERS.rejections,
    ),
    "resilience_ratelimiter_wait_seconds": _waits,
    "resilience_timeouts": _counter(
        "resilience_timeouts",
        "Calls that ran past their timeout.",
        ("policy",),
        lambda: COUNTERS.timeouts,
    ),
    "resilience_fallbacks": _counter(
        "resilience_fallbacks",
        "Calls answered by a fallback.",
        ("policy",),
        lambda: COUNTERS.fallbacks,
    ),
}


def read(name: str) -> Family:
    """One family by name (as in :data:`READERS`), read now."""
    return READERS[name](Snapshots())


def collect() -> list[Family]:
    """Every family, read now; families without samples are included (for ``describe``)."""
    snaps = Snapshots()
    return [reader(snaps) for reader in READERS.values()]
