"""Type-checked by mypy --strict, never run: the public API keeps signatures."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import requests
from typing_extensions import assert_type

from resilience import Fallback, Pipeline, Retry, Timeout
from resilience.httpx import AsyncResilientTransport, HTTPOptions, ResilientTransport
from resilience.requests import ResilientAdapter, resend_count


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


def check_http() -> None:
    options = HTTPOptions(attempts=2, retry_statuses={503})
    sync: httpx.BaseTransport = ResilientTransport(httpx.HTTPTransport(), options=options)
    asyn: httpx.AsyncBaseTransport = AsyncResilientTransport(add_idempotency_key=True)
    assert_type(ResilientTransport(attempt_timeout=1.5).options, HTTPOptions)
    adapter: requests.adapters.HTTPAdapter = ResilientAdapter(pool_maxsize=4, attempts=3)
    assert_type(resend_count(), int | None)
    del sync, asyn, adapter
