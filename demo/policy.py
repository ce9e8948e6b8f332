"""The client side: one call to the upstream, and the pipeline that protects it.

:func:`build_protected` is the one place that decides what "protected" means in the
demo, and :func:`describe` says it in words, with the reasons for its order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from resilience import (
    Backoff,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    Pipeline,
    Retry,
    Timeout,
)

__all__ = [
    "POLICY",
    "Answer",
    "Upstream",
    "UpstreamError",
    "ProtectionSettings",
    "REJECTED",
    "RETRYABLE",
    "build_protected",
    "describe",
    "parse_retry_after",
]

POLICY = "catalog"
"""The pipeline's name: its events and metrics carry ``policy="catalog"``."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What a caller gets: a fresh answer from the upstream or the fallback's substitute."""

    source: str
    body: dict[str, Any]


class UpstreamError(Exception):
    """The upstream answered 5xx.

    ``retry_after`` carries its ``Retry-After`` header in seconds; :class:`~resilience.Retry`
    reads that attribute and waits as long as the server asked instead of its own backoff.
    """

    def __init__(self, status: int, retry_after: float | None) -> None:
        hint = f", Retry-After {retry_after:g} s" if retry_after is not None else ""
        super().__init__(f"upstream answered {status}{hint}")
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as delta-seconds; an HTTP date or garbage gives ``None`` (no hint)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class Upstream:
    """GETs the service's URL; counts the attempts made from this side."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.attempts = 0

    async def get(self) -> Answer:
        self.attempts += 1
        response = await self.client.get(self.url)
        if response.status_code >= 500:
            raise UpstreamError(
                response.status_code, parse_retry_after(response.headers.get("Retry-After"))
            )
        response.raise_for_status()
        return Answer("upstream", response.json())


@dataclass(frozen=True, slots=True)
class ProtectionSettings:
    """The knobs of the protected column."""

    call_timeout: float = 3.0
    """The whole call, retries and waits included."""
    attempt_timeout: float = 0.25
    """One attempt: a stalled answer is abandoned and retried."""
    attempts: int = 4
    backoff: Backoff = field(default_factory=lambda: Backoff.exponential(0.1, max_delay=1.0))
    max_retry_after: float = 2.0
    max_concurrent: int = 18
    """Calls the bulkhead lets run at once (waits between attempts included)."""
    failure_threshold: int = 10
    """Failed attempts in a row that open the breaker."""
    open_duration: float = 0.25
    """How long the open breaker rejects attempts before it lets one probe through."""


# What is worth another attempt: a 5xx, a transport failure, an attempt that timed out.
RETRYABLE: tuple[type[Exception], ...] = (UpstreamError, httpx.TransportError, TimeoutError)
# What the fallback answers: the same, and the calls the bulkhead or the breaker refused.
REJECTED: tuple[type[Exception], ...] = (BulkheadFullError, CircuitOpenError)


def stale_answer(error: BaseException) -> Answer:
    """The fallback: a placeholder the caller can render instead of an error page."""
    return Answer("fallback", {"stale": True, "because": type(error).__name__})


def build_protected(settings: ProtectionSettings | None = None) -> Pipeline:
    """Fallback ⟶ bulkhead ⟶ call timeout ⟶ retry ⟶ circuit breaker ⟶ attempt timeout.

    Outermost first; :func:`describe` gives the reasons for the order.
    """
    s = settings or ProtectionSettings()
    return Pipeline(
        Fallback(handler=stale_answer, on=RETRYABLE + REJECTED),
        Bulkhead(s.max_concurrent),
        Timeout(s.call_timeout, name="call-timeout"),
        # CircuitOpenError is retried too: its retry_after (the time until the breaker's
        # next probe) replaces the backoff, so a rejected call waits instead of spinning.
        Retry(
            on=(*RETRYABLE, CircuitOpenError),
            attempts=s.attempts,
            backoff=s.backoff,
            max_retry_after=s.max_retry_after,
        ),
        CircuitBreaker(
            failure_threshold=s.failure_threshold,
            failure_rate_threshold=None,
            open_duration=s.open_duration,
        ),
        Timeout(s.attempt_timeout, name="attempt-timeout"),
        name=POLICY,
    )


def describe(settings: ProtectionSettings | None = None) -> list[str]:
    """The protected pipeline in words, outermost first, then why it is in that order."""
    s = settings or ProtectionSettings()
    b = s.backoff
    return [
        "Fallback        a stale placeholder instead of an error, a shed or a rejected call",
        f"Bulkhead        at most {s.max_concurrent} calls at once; the next one is shed "
        "at once, not queued",
        f"Timeout         {s.call_timeout:g} s for the whole call, waits included",
        f"Retry           {s.attempts} attempts, {b.kind.value} backoff from {b.base:g} s "
        f"up to {b.max_delay:g} s ({b.jitter.value} jitter);",
        "                or as long as the server's Retry-After or the breaker's next probe "
        f"asks, up to {s.max_retry_after:g} s",
        f"CircuitBreaker  opens after {s.failure_threshold} failed attempts in a row; "
        f"one probe after {s.open_duration:g} s",
        f"Timeout         {s.attempt_timeout:g} s per attempt",
        "",
        "Why this order: the one of Microsoft's standard HTTP pipeline on Polly (bulkhead,",
        "total timeout, retry, breaker, attempt timeout), inside a fallback:",
        "- The breaker is inside the retry, so it counts each attempt the upstream saw. An",
        "  attempt it rejects never leaves, and the retry waits for the breaker's next probe",
        "  (CircuitOpenError.retry_after) instead of asking again in a tight loop.",
        "- The attempt timeout is inside the breaker, so a stalled attempt counts as a",
        "  failure; the whole-call timeout bounds the retry's waits, the breaker's included.",
        "- The bulkhead is outside the retry: a call waiting between attempts holds its",
        "  slot, and a shed call goes to the fallback without waiting for anything.",
    ]
