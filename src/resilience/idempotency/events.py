"""The events of the idempotency guard (all subclass :class:`resilience.Event`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from resilience._core.events import CallRejected, Event, Severity

__all__ = [
    "IdempotencyReplayed",
    "IdempotencyConflict",
    "IdempotencyKeyMismatch",
    "IdempotencyReleased",
    "IdempotencyLeaseLost",
    "IdempotencyStoreFailed",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyReplayed(Event):
    """A call was answered from the stored outcome of an earlier call, without running.

    Attributes:
        key: the idempotency key.
        error: the type name of the replayed failure, or ``None`` for a replayed result.
    """

    key: str
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyConflict(CallRejected):
    """A call found the key in flight and was rejected (``reason="idempotency_conflict"``)."""

    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyKeyMismatch(Event):
    """A key was reused for a request with a different fingerprint; the call was refused."""

    severity: ClassVar[Severity] = Severity.WARNING

    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyReleased(Event):
    """A claimed key was given up without storing an outcome, so a later call runs again.

    Attributes:
        key: the idempotency key.
        reason: ``unknown_failure`` (the call failed in a way that is not stored),
            ``cancelled`` (cancellation, ``KeyboardInterrupt`` …), ``not_encodable`` (the
            codec could not encode the outcome; the caller still got it) or
            ``not_stored`` (the HTTP response status is not stored, 5xx by default).
    """

    key: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyLeaseLost(Event):
    """The call finished after its lease was taken over by another call.

    The caller got its own outcome, but it was not stored: the lease was shorter than the
    call. Raise ``lease`` or switch on ``heartbeat``.
    """

    severity: ClassVar[Severity] = Severity.WARNING

    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyStoreFailed(Event):
    """The store failed during ``operation`` (``claim``, ``complete``, ``release``, ``renew``).

    With ``fail_open=True`` the call ran unguarded; otherwise the caller got an
    :class:`~resilience.idempotency.IdempotencyStoreError` (on ``claim``) or its outcome
    without it being stored (after the call ran).
    """

    severity: ClassVar[Severity] = Severity.ERROR

    key: str
    operation: str
    error: BaseException
    fail_open: bool
