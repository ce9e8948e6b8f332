"""Type-checked by mypy --strict, never run: the public API keeps signatures."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from typing_extensions import assert_type

from resilience import (
    Bulkhead,
    BulkheadFullError,
    Fallback,
    Keyed,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    Timeout,
)


@Retry(on=OSError)
def sync_fn(x: int, *, y: str = "") -> float:
    return float(x)


@Pipeline(Timeout(1.0), Retry(on=OSError), Fallback(0.0, on=OSError))
async def async_fn(x: int) -> float:
    return float(x)


class Service:
    @Retry(on=OSError)
    def method(self, n: int) -> str:
        return str(n)


async def acheck() -> None:
    assert_type(await async_fn(2), float)


def check() -> None:
    assert_type(sync_fn(1, y="a"), float)
    fn: Callable[[int], Coroutine[Any, Any, float]] = async_fn
    del fn
    assert_type(Service().method(3), str)
    assert_type(Retry(on=OSError).call(sync_fn, 1), float)


# -- bulkhead, rate limiter, keyed ----------------------------------------------------------------


@Bulkhead(4, max_queued=8)
def bulkheaded(x: int) -> str:
    return str(x)


@RateLimiter(10, burst=2, max_wait=1.0)
async def rate_limited(x: int) -> int:
    return x


per_host = Keyed(lambda host: Bulkhead(2), key=lambda host, path: host)


@per_host
def fetch(host: str, path: str) -> bytes:
    return b""


async def acheck_limits() -> None:
    assert_type(await rate_limited(1), int)
    async with Bulkhead(1) as bulkhead:
        assert_type(bulkhead, Bulkhead)
    async with RateLimiter(1) as limiter:
        assert_type(limiter, RateLimiter)
    await RateLimiter(1).aacquire()


def check_limits() -> None:
    assert_type(bulkheaded(1), str)
    assert_type(fetch("a", "/"), bytes)
    assert_type(per_host.for_key("a"), Bulkhead)
    assert_type(RateLimiter(1).try_acquire(), bool)
    with Bulkhead(1):
        pass
    err = BulkheadFullError("full", max_concurrent=1, max_queued=0)
    assert_type(err.retry_after, float | None)
    assert_type(RateLimitedError("limited", retry_after=1.0).retry_after, float)
