"""resilience: make calls to flaky dependencies survivable.

Composable strategies (retry, timeout, fallback, circuit breaker, bulkhead, rate
limiter, keyed policies, idempotency guard) that work as decorators on sync functions,
coroutine functions and methods, compose into a :class:`Pipeline`, and publish every
action they take as an event for metrics, tracing and logging to subscribe to.

Importing this package imports no optional dependency and switches nothing on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

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

# Strategies and integrations load on first use (PEP 562), so ``import resilience``
# costs only the core and a program pays for the patterns it uses.
_LAZY = {
    "Attempt": "resilience.retry",
    "AttemptInfo": "resilience.backoff",
    "Backoff": "resilience.backoff",
    "BackoffKind": "resilience.backoff",
    "Bulkhead": "resilience.bulkhead",
    "BulkheadFullError": "resilience.bulkhead",
    "BulkheadRejected": "resilience.bulkhead",
    "BulkheadWaited": "resilience.bulkhead",
    "CircuitBreaker": "resilience.circuit_breaker",
    "CircuitBreakerOptions": "resilience.circuit_breaker",
    "CircuitOpenError": "resilience.circuit_breaker",
    "CircuitRejected": "resilience.circuit_breaker",
    "CircuitState": "resilience.circuit_breaker",
    "CircuitStateChanged": "resilience.circuit_breaker",
    "Fallback": "resilience.fallback",
    "FallbackUsed": "resilience.fallback",
    "GiveUpReason": "resilience.retry",
    "Idempotency": "resilience.idempotency",
    "IdempotencyConflictError": "resilience.idempotency",
    "IdempotencyError": "resilience.idempotency",
    "IdempotencyKeyError": "resilience.idempotency",
    "IdempotencyKeyMismatchError": "resilience.idempotency",
    "IdempotencyStoreError": "resilience.idempotency",
    "Jitter": "resilience.backoff",
    "Keyed": "resilience.keyed",
    "RateLimitWaited": "resilience.rate_limit",
    "RateLimited": "resilience.rate_limit",
    "RateLimitedError": "resilience.rate_limit",
    "RateLimiter": "resilience.rate_limit",
    "Retry": "resilience.retry",
    "RetryBudget": "resilience.retry",
    "RetryGaveUp": "resilience.retry",
    "RetryScheduled": "resilience.retry",
    "Schedule": "resilience.backoff",
    "TimedOut": "resilience.timeout",
    "Timeout": "resilience.timeout",
    "TimeoutMode": "resilience.timeout",
    "status": "resilience.actuator",
}

if _TYPE_CHECKING:
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


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'resilience' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
