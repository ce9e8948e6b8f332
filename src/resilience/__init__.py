"""resilience: make calls to flaky dependencies survivable.

Composable strategies (retry, timeout, fallback, circuit breaker, bulkhead, rate
limiter, keyed policies, idempotency guard) that work as decorators on sync functions,
coroutine functions and methods, compose into a :class:`Pipeline`, and publish every
action they take as an event for metrics, tracing and logging to subscribe to.

Importing this package imports no optional dependency and switches nothing on. It
loads nothing else either: every public name, the core's included, is imported on first
use, so ``import resilience`` is nearly free and a program pays only for the parts it
uses.
"""

from __future__ import annotations

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

# Every name loads on first use (PEP 562): ``import resilience`` runs only this module,
# and a program pays for the parts it uses. The event bus has a module of its own, so
# ``resilience.subscribe`` loads neither ``typing`` nor ``dataclasses``.
_LAZY = {
    "Attempt": "resilience.retry",
    "AttemptInfo": "resilience.backoff",
    "Backoff": "resilience.backoff",
    "BackoffKind": "resilience.backoff",
    "Bulkhead": "resilience.bulkhead",
    "BulkheadFullError": "resilience.bulkhead",
    "BulkheadRejected": "resilience.bulkhead",
    "BulkheadWaited": "resilience.bulkhead",
    "CallRejected": "resilience._core.events",
    "CircuitBreaker": "resilience.circuit_breaker",
    "CircuitBreakerOptions": "resilience.circuit_breaker",
    "CircuitOpenError": "resilience.circuit_breaker",
    "CircuitRejected": "resilience.circuit_breaker",
    "CircuitState": "resilience.circuit_breaker",
    "CircuitStateChanged": "resilience.circuit_breaker",
    "Classifier": "resilience._core.outcome",
    "Clock": "resilience._core.clock",
    "Deadline": "resilience._core.deadline",
    "Event": "resilience._core.events",
    "EventBus": "resilience._core.bus",
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
    "Listener": "resilience._core.events",
    "Outcome": "resilience._core.outcome",
    "Pipeline": "resilience._core.strategy",
    "RateLimitWaited": "resilience.rate_limit",
    "RateLimited": "resilience.rate_limit",
    "RateLimitedError": "resilience.rate_limit",
    "RateLimiter": "resilience.rate_limit",
    "RejectedError": "resilience._core.errors",
    "ResilienceError": "resilience._core.errors",
    "Retry": "resilience.retry",
    "RetryBudget": "resilience.retry",
    "RetryGaveUp": "resilience.retry",
    "RetryScheduled": "resilience.retry",
    "Schedule": "resilience.backoff",
    "Severity": "resilience._core.events",
    "StateChanged": "resilience._core.events",
    "Strategy": "resilience._core.strategy",
    "SystemClock": "resilience._core.clock",
    "TimedOut": "resilience.timeout",
    "Timeout": "resilience.timeout",
    "TimeoutExceededError": "resilience._core.errors",
    "TimeoutMode": "resilience.timeout",
    "current_deadline": "resilience._core.deadline",
    "deadline": "resilience._core.deadline",
    "remaining": "resilience._core.deadline",
    "status": "resilience.actuator",
    "subscribe": "resilience._core.bus",
    "unsubscribe": "resilience._core.bus",
}

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING``, without importing ``typing``
if TYPE_CHECKING:
    from typing import Any

    from ._core.bus import EventBus, subscribe, unsubscribe
    from ._core.clock import Clock, SystemClock
    from ._core.deadline import Deadline, current_deadline, deadline, remaining
    from ._core.errors import RejectedError, ResilienceError, TimeoutExceededError
    from ._core.events import CallRejected, Event, Listener, Severity, StateChanged
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
del TYPE_CHECKING


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'resilience' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
