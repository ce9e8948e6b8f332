"""Type-checked by mypy --strict, never run: the public API keeps signatures."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from typing_extensions import assert_type

from resilience import Fallback, Pipeline, Retry, Timeout, deadline, remaining


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
