"""Bulkhead, rate limiter and keyed registry: cost per call against the usual alternatives.

Run ``python -m benchmarks.bench_bulkhead_limiter``; ``RESILIENCE_BENCH_QUICK=1`` makes
it a smoke run. Every case is uncontended (one thread, one task) and never waits: the
numbers are the bookkeeping each call pays, not throughput under load.

- Bulkhead (sync) against a bare ``threading.Semaphore``; (async) against
  ``asyncio.Semaphore``.
- RateLimiter (async) against aiolimiter's ``AsyncLimiter``, the engine the project
  named for asyncio; (sync) against pyrate-limiter's ``Limiter``. Limits are set so high
  that every call is admitted.
- Keyed bulkheads over 100 keys against one bulkhead.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from aiolimiter import AsyncLimiter
from pyrate_limiter import Duration, Limiter, Rate

from resilience import Bulkhead, Keyed, RateLimiter

from ._timing import ans_per_call, ns_per_call, print_table

QUICK = os.environ.get("RESILIENCE_BENCH_QUICK", "") not in ("", "0")
NUMBER = 2_000 if QUICK else 50_000
REPEAT = 2 if QUICK else 7
HUGE = 10**9
"""Permits per second, and the burst: no benchmark call ever waits or is refused.

aiolimiter's ``AsyncLimiter(max_rate, 1)`` admits ``max_rate`` calls at once, so the
like-for-like RateLimiter has ``burst=HUGE`` (its clock counts whole microseconds, so
without a burst it would admit one call per microsecond).
"""


def _no_rejections(limiter: RateLimiter) -> None:
    rejected = limiter.snapshot()["rejected"]
    if rejected:
        raise RuntimeError(f"the benchmark limiter refused {rejected} calls; the numbers are void")


def _sync(fn: Any) -> float:
    return ns_per_call(fn, number=NUMBER, repeat=REPEAT)


def _async(fn: Any) -> float:
    return ans_per_call(fn, number=NUMBER, repeat=REPEAT)


def bench_bulkhead_sync() -> list[tuple[str, float]]:
    def work() -> int:
        return 1

    sem = threading.Semaphore(10)

    def with_semaphore() -> int:
        with sem:
            return work()

    bulkhead = Bulkhead(10)
    decorated = bulkhead(work)

    def with_block() -> int:
        with bulkhead:
            return work()

    return [
        ("bare call", _sync(work)),
        ("threading.Semaphore, with-block", _sync(with_semaphore)),
        ("Bulkhead, decorator", _sync(decorated)),
        ("Bulkhead, with-block", _sync(with_block)),
    ]


def bench_bulkhead_async() -> list[tuple[str, float]]:
    async def work() -> int:
        return 1

    semaphores: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    async def with_semaphore() -> int:
        loop = asyncio.get_running_loop()
        sem = semaphores.get(loop)
        if sem is None:  # one per timing run's event loop, like the limiter's lookup
            sem = semaphores[loop] = asyncio.Semaphore(10)
        async with sem:
            return await work()

    bulkhead = Bulkhead(10)
    decorated = bulkhead(work)

    async def with_block() -> int:
        async with bulkhead:
            return await work()

    return [
        ("bare await", _async(work)),
        ("asyncio.Semaphore, async with", _async(with_semaphore)),
        ("Bulkhead, decorator", _async(decorated)),
        ("Bulkhead, async with", _async(with_block)),
    ]


def bench_limiter_async() -> list[tuple[str, float]]:
    async def work() -> int:
        return 1

    # aiolimiter binds itself to one event loop and every timing run has its own loop.
    limiters: dict[asyncio.AbstractEventLoop, AsyncLimiter] = {}

    def aio() -> AsyncLimiter:
        loop = asyncio.get_running_loop()
        found = limiters.get(loop)
        if found is None:
            found = limiters[loop] = AsyncLimiter(HUGE, 1)
        return found

    async def aiolimiter_acquire() -> None:
        await aio().acquire()

    async def aiolimiter_block() -> int:
        async with aio():
            return await work()

    limiter = RateLimiter(HUGE, burst=HUGE)
    decorated = limiter(work)

    async def resilience_block() -> int:
        async with limiter:
            return await work()

    rows = [
        ("bare await", _async(work)),
        ("aiolimiter AsyncLimiter.acquire()", _async(aiolimiter_acquire)),
        ("RateLimiter.aacquire()", _async(limiter.aacquire)),
        ("aiolimiter AsyncLimiter, async with", _async(aiolimiter_block)),
        ("RateLimiter, async with", _async(resilience_block)),
        ("RateLimiter, decorator", _async(decorated)),
    ]
    _no_rejections(limiter)
    return rows


def bench_limiter_sync() -> list[tuple[str, float]]:
    def work() -> int:
        return 1

    pyrate = Limiter(Rate(HUGE, Duration.SECOND))

    def pyrate_try() -> bool:
        return bool(pyrate.try_acquire("bench", blocking=False))

    limiter = RateLimiter(HUGE, burst=HUGE)
    decorated = limiter(work)
    try:
        rows = [
            ("bare call", _sync(work)),
            ("pyrate-limiter Limiter.try_acquire", _sync(pyrate_try)),
            ("RateLimiter.try_acquire", _sync(limiter.try_acquire)),
            ("RateLimiter, decorator", _sync(decorated)),
        ]
    finally:
        pyrate.close()
    _no_rejections(limiter)
    return rows


def bench_keyed() -> list[tuple[str, float]]:
    def work(key: int) -> int:
        return key

    one = Bulkhead(10)(work)
    keyed = Keyed(lambda _key: Bulkhead(10), key=lambda key: key)(work)
    counter = iter(range(10**12))

    def call_one() -> int:
        return one(next(counter) % 100)

    def call_keyed() -> int:
        return keyed(next(counter) % 100)

    return [
        ("one Bulkhead", _sync(call_one)),
        ("Keyed Bulkhead, 100 keys", _sync(call_keyed)),
    ]


def main() -> None:
    print_table("Bulkhead, sync", bench_bulkhead_sync(), baseline="threading.Semaphore, with-block")
    print_table("Bulkhead, async", bench_bulkhead_async(), baseline="asyncio.Semaphore, async with")
    print_table(
        "RateLimiter vs aiolimiter, async",
        bench_limiter_async(),
        baseline="aiolimiter AsyncLimiter.acquire()",
    )
    print_table(
        "RateLimiter vs pyrate-limiter, sync",
        bench_limiter_sync(),
        baseline="pyrate-limiter Limiter.try_acquire",
    )
    print_table("Keyed", bench_keyed(), baseline="one Bulkhead")


if __name__ == "__main__":
    main()
