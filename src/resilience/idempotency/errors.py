"""The errors of the idempotency guard.

::

    ResilienceError
     └── IdempotencyError                     every error of the guard
          ├── IdempotencyKeyError             missing, too long or malformed key   (HTTP 400)
          │                                   also a builtin ``ValueError``
          ├── IdempotencyConflictError        the first call is still running       (HTTP 409)
          │                                   also a ``RejectedError`` with ``retry_after``
          ├── IdempotencyKeyMismatchError     same key, different request           (HTTP 422)
          ├── IdempotencyStoreError           the store failed (fail closed)        (HTTP 503)
          └── ReplayedError                   a stored failure whose type is not rebuilt

Each class carries the HTTP status the middleware answers with in ``status_code``, so
other frameworks can map them the same way.
"""

from __future__ import annotations

from typing import ClassVar

from resilience._core.errors import RejectedError, ResilienceError

__all__ = [
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyConflictError",
    "IdempotencyKeyMismatchError",
    "IdempotencyStoreError",
    "ReplayedError",
]


class IdempotencyError(ResilienceError):
    """Base class of the idempotency guard's errors.

    ``key`` is the caller's idempotency key (``None`` when it is missing).
    """

    status_code: ClassVar[int] = 500
    key: str | None

    def __init__(self, message: str, *, policy: str = "", key: str | None = None) -> None:
        super().__init__(message, policy=policy)
        self.key = key


class IdempotencyKeyError(IdempotencyError, ValueError):
    """The idempotency key is missing where it is required, too long, or malformed."""

    status_code: ClassVar[int] = 400


class IdempotencyConflictError(IdempotencyError, RejectedError):
    """Another call with the same key is still running; nothing was run.

    ``retry_after`` is the time left on the running call's lease (seconds), after which
    trying again either replays its outcome or, if it died, runs the call.
    """

    status_code: ClassVar[int] = 409

    def __init__(
        self,
        message: str,
        *,
        policy: str = "",
        key: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        IdempotencyError.__init__(self, message, policy=policy, key=key)
        self.retry_after = retry_after


class IdempotencyKeyMismatchError(IdempotencyError):
    """The key was used before for a different request (its fingerprint differs)."""

    status_code: ClassVar[int] = 422


class IdempotencyStoreError(IdempotencyError):
    """The store could not be reached or answered with an error.

    Raised before the call runs when ``on_store_error="fail_closed"`` (the default);
    the store's own exception is the ``__cause__``.
    """

    status_code: ClassVar[int] = 503


class ReplayedError(IdempotencyError):
    """A stored known failure whose exception type is not rebuilt on replay.

    Only the types the guard was told about (the classifier's ``known`` types and
    ``replay_errors``) are rebuilt as ``type(message)``; any other stored failure is
    replayed as this error, with the original ``type_name`` and ``message``.
    """

    status_code: ClassVar[int] = 500
    type_name: str
    message: str

    def __init__(
        self, type_name: str, message: str, *, policy: str = "", key: str | None = None
    ) -> None:
        super().__init__(f"{type_name}: {message}", policy=policy, key=key)
        self.type_name = type_name
        self.message = message
