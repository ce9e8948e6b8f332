"""Type-checked by mypy --strict, never run: the public API keeps signatures."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import httpx
import redis
import requests
from starlette.applications import Starlette
from typing_extensions import assert_type

import resilience
from resilience import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitState,
    Fallback,
    Idempotency,
    Keyed,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    Timeout,
    deadline,
    remaining,
)
from resilience.asgi import ResilienceMiddleware
from resilience.httpx import AsyncResilientTransport, HTTPOptions, ResilientTransport
from resilience.idempotency import MemoryStore
from resilience.redis import RedisRateLimiter
from resilience.requests import ResilientAdapter, resend_count
from resilience.wsgi import ResilienceMiddleware as WSGIResilienceMiddleware


@Retry(on=OSError)
def sync_fn(x: int, *, y: str = "") -> float:
    return float(x)


@Pipeline(Timeout(1.0), Retry(on=OSError), Fallback(0.0, on=OSError))
async def async_fn(x: int) -> float:
    return float(x)


@Idempotency(store=MemoryStore(), key="key")
def charge(key: str, cents: int) -> dict[str, int]:
    return {"cents": cents}


@Pipeline(Retry(on=OSError), Idempotency(store=MemoryStore(), key=lambda key, **_: key))
async def acharge(key: str, cents: int) -> int:
    return cents


breaker = CircuitBreaker(failure_threshold=3, open_duration=30.0, name="db")


@breaker
async def breaker_async(x: int) -> bytes:
    return bytes(x)


@Pipeline(Retry(on=OSError), breaker)
def breaker_sync(x: int) -> str:
    return str(x)


class Service:
    @Retry(on=OSError)
    def method(self, n: int) -> str:
        return str(n)


async def acheck() -> None:
    assert_type(await async_fn(2), float)
    assert_type(await acharge("k", 1), int)
    assert_type(await breaker_async(2), bytes)
    async with breaker:
        pass


def check() -> None:
    assert_type(sync_fn(1, y="a"), float)
    fn: Callable[[int], Coroutine[Any, Any, float]] = async_fn
    del fn
    assert_type(Service().method(3), str)
    assert_type(charge("k", 1), dict[str, int])
    assert_type(Retry(on=OSError).call(sync_fn, 1), float)
    assert_type(resilience.status(), dict[str, Any])


async def acheck_core() -> None:
    retry = Retry(on=OSError, attempts=2)
    assert_type(await retry.acall(async_fn, 2), float)
    async with Timeout(1.0) as d:
        assert_type(d.remaining(), float)
    async for attempt in retry.attempts():
        with attempt:
            assert_type(attempt.number, int)


def check_core() -> None:
    for attempt in Retry(on=OSError).attempts(name="block"):
        with attempt:
            pass
    with Timeout(1.0) as d:
        assert_type(d.expired(), bool)
    with deadline(2.0):
        assert_type(remaining(), float | None)
    assert_type(breaker_sync(1), str)
    assert_type(breaker.state, CircuitState)
    with breaker:
        pass


def check_http() -> None:
    options = HTTPOptions(attempts=2, retry_statuses={503})
    sync: httpx.BaseTransport = ResilientTransport(httpx.HTTPTransport(), options=options)
    asyn: httpx.AsyncBaseTransport = AsyncResilientTransport(add_idempotency_key=True)
    assert_type(ResilientTransport(attempt_timeout=1.5).options, HTTPOptions)
    adapter: requests.adapters.HTTPAdapter = ResilientAdapter(pool_maxsize=4, attempts=3)
    assert_type(resend_count(), int | None)
    del sync, asyn, adapter


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


def check_server() -> None:
    app = Starlette()
    app.add_middleware(
        ResilienceMiddleware,
        bulkhead=resilience.Bulkhead(8, name="api"),
        rate_limit=resilience.Keyed(lambda client: resilience.RateLimiter(5), name="api"),
        client_key=lambda scope: scope.get("client"),
        timeout=2.0,
        exclude=["/health"],
    )
    shared = ResilienceMiddleware(app, rate_limit=resilience.RateLimiter(100), timeout=None)

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return [b""]

    web = WSGIResilienceMiddleware(
        wsgi_app, bulkhead=resilience.Bulkhead(4), timeout_header="X-Request-Timeout"
    )

    def start_response(status: str, headers: list[tuple[str, str]]) -> Callable[[bytes], None]:
        return lambda data: None

    assert_type(web({}, start_response), Iterable[bytes])
    del shared


# -- shared state on Redis ------------------------------------------------------------------------


def check_redis_rate_limiter(client: redis.Redis) -> None:
    shared = RedisRateLimiter(client, 100, burst=10, key="partner", fleet_size=4)
    assert_type(shared.try_acquire(), bool)
    assert_type(shared.shared, bool)
    assert_type(shared.key, str)
    with shared as entered:
        assert_type(entered, RedisRateLimiter)
    per_tenant = Keyed(
        lambda tenant: RedisRateLimiter(client, 5, key=f"tenant:{tenant}"),
        key=lambda tenant: tenant,
    )
    assert_type(per_tenant.for_key("a"), RedisRateLimiter)
    from_url = RedisRateLimiter.from_url("redis://localhost", 10, key="k", async_client=True)
    assert_type(from_url, RedisRateLimiter)
