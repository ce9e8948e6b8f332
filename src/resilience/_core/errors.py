"""The exception tree of resilience.

::

    Exception
     └── ResilienceError                      every error raised by the library itself
          ├── RejectedError                    a strategy refused to run the call (fail fast)
          │    ├── CircuitOpenError            (circuit_breaker)
          │    ├── BulkheadFullError           (bulkhead)
          │    └── RateLimitedError            (rate_limit)
          └── TimeoutExceededError             also a builtin ``TimeoutError``

The caller's own exceptions are never wrapped: a retry that gives up re-raises the
last exception itself, annotated with a PEP 678 note.
"""

from __future__ import annotations

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING``, without importing ``typing``
if TYPE_CHECKING:
    from concurrent.futures import Future
    from typing import Any

__all__ = [
    "ResilienceError",
    "RejectedError",
    "TimeoutExceededError",
]


class ResilienceError(Exception):
    """Base class of every error the library raises itself.

    ``policy`` names the policy (pipeline or strategy) that raised it.
    """

    policy: str

    def __init__(self, message: str, *, policy: str = "") -> None:
        super().__init__(message)
        self.policy = policy


class RejectedError(ResilienceError):
    """A strategy refused to run the call so that the caller fails fast.

    ``retry_after`` is the number of seconds after which trying again may succeed
    (``None`` when unknown); the retry strategy and the HTTP middleware read it as a
    server hint.
    """

    retry_after: float | None

    def __init__(self, message: str, *, policy: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, policy=policy)
        self.retry_after = retry_after


class TimeoutExceededError(ResilienceError, TimeoutError):
    """The call did not finish before its deadline.

    It is also a builtin :class:`TimeoutError`, so ``except TimeoutError`` catches it.

    ``timeout`` is the configured duration in seconds, ``elapsed`` the time the call
    had run. In the cooperative *deadline* mode a call that returned late still
    computed a result: it is kept in ``result`` so nothing is lost. In *thread* mode
    ``pending`` is the future of the worker thread, which runs on; a bulkhead around
    the timeout holds its permit until that future is done.
    """

    timeout: float
    elapsed: float
    result: Any
    pending: Future[Any] | None

    def __init__(
        self,
        message: str,
        *,
        policy: str = "",
        timeout: float,
        elapsed: float,
        result: Any = None,
        pending: Future[Any] | None = None,
    ) -> None:
        super().__init__(message, policy=policy)
        self.timeout = timeout
        self.elapsed = elapsed
        self.result = result
        self.pending = pending
