"""resilience: make calls to flaky dependencies survivable.

Composable strategies (retry, timeout, fallback; circuit breaker, bulkhead and rate
limiter follow) that work as decorators on sync functions, coroutine functions and
methods, compose into a :class:`Pipeline`, and publish every action they take as an
event for metrics, tracing and logging to subscribe to.

Importing this package imports no optional dependency and switches nothing on.
"""

from __future__ import annotations

from ._core.clock import Clock, SystemClock
from ._core.deadline import Deadline, current_deadline, deadline, remaining
from ._core.errors import RejectedError, ResilienceError, TimeoutExceededError
from ._core.events import (
    CallRejected,
    Event,
    EventBus,
    Listener,
    Severity,
    StateChanged,
    subscribe,
    unsubscribe,
)
from ._core.outcome import Classifier, Outcome
from ._core.strategy import Pipeline, Strategy
from .actuator import status
from .backoff import AttemptInfo, Backoff, BackoffKind, Jitter, Schedule
from .bulkhead import Bulkhead, BulkheadFullError, BulkheadRejected, BulkheadWaited
from .circuit_breaker import (
    CircuitBreaker,
    CircuitBreakerOptions,
    CircuitOpenError,
    CircuitRejected,
    CircuitState,
    CircuitStateChanged,
)
from .fallback import Fallback, FallbackUsed
from .idempotency import (
    Idempotency,
    IdempotencyConflictError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyKeyMismatchError,
    IdempotencyStoreError,
)
from .keyed import Keyed
from .rate_limit import RateLimited, RateLimitedError, RateLimiter, RateLimitWaited
from .retry import Attempt, GiveUpReason, Retry, RetryBudget, RetryGaveUp, RetryScheduled
from .timeout import TimedOut, Timeout, TimeoutMode

__version__ = "0.1.0.dev0"

__all__ = [
    "Attempt",
    "AttemptInfo",
    "Backoff",
    "BackoffKind",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadRejected",
    "BulkheadWaited",
    "CallRejected",
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitOpenError",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "Classifier",
    "Clock",
    "Deadline",
    "Event",
    "EventBus",
    "Fallback",
    "FallbackUsed",
    "GiveUpReason",
    "Idempotency",
    "IdempotencyConflictError",
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyKeyMismatchError",
    "IdempotencyStoreError",
    "Jitter",
    "Keyed",
    "Listener",
    "Outcome",
    "Pipeline",
    "RateLimitWaited",
    "RateLimited",
    "RateLimitedError",
    "RateLimiter",
    "RejectedError",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryGaveUp",
    "RetryScheduled",
    "Schedule",
    "Severity",
    "StateChanged",
    "Strategy",
    "SystemClock",
    "TimedOut",
    "Timeout",
    "TimeoutExceededError",
    "TimeoutMode",
    "current_deadline",
    "deadline",
    "remaining",
    "status",
    "subscribe",
    "unsubscribe",
]
