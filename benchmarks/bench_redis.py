"""The shared rate limiter on Redis: cost per call on loopback, and commands per call.

Run ``python -m benchmarks.bench_redis``; ``RESILIENCE_BENCH_QUICK=1`` makes it a smoke
run. The benchmark starts a redis-server of its own on a free loopback port (so that
``INFO commandstats`` counts its commands alone); without the binary it uses
127.0.0.1:6379 and its command counts include whatever else runs there.

- Per call, sync and async: a bare call, the local ``RateLimiter`` and the shared
  ``RedisRateLimiter`` (limits so high that every call is admitted): the shared
  limiter's overhead is one loopback round trip running the GCRA script.
- Per call, sync and async: the local ``CircuitBreaker``, ``RedisCircuitBreaker``
  around it (closed: the call path sends nothing to Redis) and pybreaker, in memory and
  with its ``CircuitRedisStorage`` (a round trip or more per call).
- Redis round trips and commands per 1,000 calls of a closed shared breaker (flat out,
  and paced at 1,000 calls/s: the background sync sends one script per
  ``poll_interval`` whatever the traffic) and of pybreaker's Redis storage.
- Redis commands per 1,000 admitted calls, from ``INFO commandstats`` deltas: the
  round trips (``EVALSHA``) and the commands the script runs inside Redis.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pybreaker
import redis
import redis.asyncio

from resilience import CircuitBreaker, RateLimiter
from resilience.redis import RedisCircuitBreaker, RedisRateLimiter

from ._timing import ans_per_call, ns_per_call, print_table

QUICK = os.environ.get("RESILIENCE_BENCH_QUICK", "") not in ("", "0")
NUMBER = 200 if QUICK else 5_000
REPEAT = 1 if QUICK else 5
HUGE = 10**6
# Commands a client sends (each one round trip); the others run inside scripts.
_ROUND_TRIPS = {"evalsha", "eval", "get", "set", "incr", "exists", "hget", "hset", "pipeline"}


@contextmanager
def redis_url() -> Iterator[str]:
    """A redis-server of the benchmark's own on a free port, or the shared one."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield "redis://127.0.0.1:6379/0"
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [binary, *args, "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            for _ in range(250):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait()


def _limiter(client: Any, prefix: str) -> RedisRateLimiter:
    return RedisRateLimiter(client, HUGE, burst=HUGE, key="bench", prefix=prefix)


def _no_rejections(limiter: RateLimiter) -> None:
    rejected = limiter.snapshot()["rejected"]
    if rejected:
        raise RuntimeError(f"the benchmark limiter refused {rejected} calls; the numbers are void")


def bench_sync(url: str, prefix: str) -> list[tuple[str, float]]:
    def work() -> int:
        return 1

    local = RateLimiter(HUGE, burst=HUGE)
    client = redis.Redis.from_url(url)
    shared = _limiter(client, prefix)
    rows = [
        ("bare call", ns_per_call(work, number=NUMBER, repeat=REPEAT)),
        ("RateLimiter (local), decorator", ns_per_call(local(work), number=NUMBER, repeat=REPEAT)),
        ("RedisRateLimiter, decorator", ns_per_call(shared(work), number=NUMBER, repeat=REPEAT)),
    ]
    _no_rejections(local)
    _no_rejections(shared)
    client.close()
    return rows


async def _best_ns(decorated: Callable[[], Awaitable[Any]]) -> float:
    """Best ns per await of ``decorated`` in the running loop (after one warm-up call,
    which connects, loads the script and starts any worker)."""
    await decorated()
    best = float("inf")
    for _ in range(REPEAT):
        t0 = time.perf_counter_ns()
        for _ in range(NUMBER):
            await decorated()
        best = min(best, (time.perf_counter_ns() - t0) / NUMBER)
    return best


def bench_async(url: str, prefix: str) -> list[tuple[str, float]]:
    async def work() -> int:
        return 1

    local = RateLimiter(HUGE, burst=HUGE)

    async def shared_ns() -> float:
        # An asyncio client belongs to one event loop: made, timed and closed in this one.
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await _best_ns(_limiter(client, prefix)(work))
        finally:
            await client.aclose()

    return [
        ("bare await", ans_per_call(work, number=NUMBER, repeat=REPEAT)),
        ("RateLimiter (local), decorator", ans_per_call(local(work), number=NUMBER, repeat=REPEAT)),
        ("RedisRateLimiter, decorator", asyncio.run(shared_ns())),
    ]


def bench_breaker(url: str, prefix: str) -> list[tuple[str, float]]:
    def work() -> int:
        return 1

    client = redis.Redis.from_url(url)
    shared = RedisCircuitBreaker(CircuitBreaker(), client, key="bench-breaker", prefix=prefix)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=prefix + "pybreaker"
    )
    try:
        return [
            ("bare call", ns_per_call(work, number=NUMBER, repeat=REPEAT)),
            (
                "CircuitBreaker (local), decorator",
                ns_per_call(CircuitBreaker()(work), number=NUMBER, repeat=REPEAT),
            ),
            (
                "RedisCircuitBreaker, decorator",
                ns_per_call(shared(work), number=NUMBER, repeat=REPEAT),
            ),
            (
                "pybreaker (memory storage)",
                ns_per_call(pybreaker.CircuitBreaker()(work), number=NUMBER, repeat=REPEAT),
            ),
            (
                "pybreaker (CircuitRedisStorage)",
                ns_per_call(
                    pybreaker.CircuitBreaker(state_storage=storage)(work),
                    number=NUMBER // 10,
                    repeat=REPEAT,
                ),
            ),
        ]
    finally:
        shared.stop()
        client.close()


def bench_breaker_async(url: str, prefix: str) -> list[tuple[str, float]]:
    async def work() -> int:
        return 1

    async def shared_ns() -> float:
        client = redis.asyncio.Redis.from_url(url)
        shared = RedisCircuitBreaker(CircuitBreaker(), client, key="bench-abreaker", prefix=prefix)
        try:
            return await _best_ns(shared(work))
        finally:
            await shared.astop()
            await client.aclose()

    return [
        ("bare await", ans_per_call(work, number=NUMBER, repeat=REPEAT)),
        (
            "CircuitBreaker (local), decorator",
            ans_per_call(CircuitBreaker()(work), number=NUMBER, repeat=REPEAT),
        ),
        ("RedisCircuitBreaker (redis.asyncio), decorator", asyncio.run(shared_ns())),
    ]


def _command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
    delta["info"] = delta.get("info", 1) - 1  # the INFO that read ``after``
    return {k: n for k, n in sorted(delta.items()) if n}


def breaker_commands(url: str, prefix: str) -> list[tuple[str, int, dict[str, int]]]:
    """Commands per 1,000 calls of a closed shared breaker, flat out and at 1,000 calls/s,
    and of pybreaker with its Redis storage; ``INFO commandstats`` deltas."""
    seconds = 0.2 if QUICK else 1.0
    client = redis.Redis.from_url(url)
    rows = []

    def work() -> int:
        return 1

    for label, pause in (("flat out", 0.0), ("1,000 calls/s", 0.001)):
        shared = RedisCircuitBreaker(
            CircuitBreaker(), client, key=f"bench-commands-{pause}", prefix=prefix
        )
        call = shared(work)
        time.sleep(0.3)  # the first sync, and the script loaded
        before = _command_calls(client)
        n = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            call()
            n += 1
            if pause:
                time.sleep(pause)
        delta = _delta(before, _command_calls(client))
        shared.stop()
        rows.append((f"RedisCircuitBreaker, {label}", n, delta))
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=prefix + "pybreaker-commands"
    )
    call = pybreaker.CircuitBreaker(state_storage=storage)(work)
    call()
    before = _command_calls(client)
    for _ in range(1_000):
        call()
    rows.append(("pybreaker (CircuitRedisStorage)", 1_000, _delta(before, _command_calls(client))))
    client.close()
    return rows


def commands_per_1000(url: str, prefix: str) -> dict[str, int]:
    """``INFO commandstats`` deltas over 1,000 admitted calls (after one warm-up call)."""
    client = redis.Redis.from_url(url)
    limiter = _limiter(client, prefix)
    limiter.acquire()  # loads the script
    before = _command_calls(client)
    for _ in range(1_000):
        limiter.acquire()
    delta = _delta(before, _command_calls(client))
    client.close()
    return delta


def main() -> None:
    prefix = f"resilience-bench:{uuid.uuid4().hex}:"
    with redis_url() as url:
        sync_rows = bench_sync(url, prefix)
        print_table(
            "Shared rate limiter, sync (loopback)",
            sync_rows,
            baseline="RateLimiter (local), decorator",
            floor="bare call",
        )
        async_rows = bench_async(url, prefix)
        print_table(
            "Shared rate limiter, async (loopback)",
            async_rows,
            baseline="RateLimiter (local), decorator",
            floor="bare await",
        )
        breaker_rows = bench_breaker(url, prefix)
        print_table(
            "Shared circuit breaker, sync (no round trip per call)",
            breaker_rows,
            baseline="CircuitBreaker (local), decorator",
            floor="bare call",
        )
        print_table(
            "Shared circuit breaker, async (no round trip per call)",
            bench_breaker_async(url, prefix),
            baseline="CircuitBreaker (local), decorator",
            floor="bare await",
        )
        print("\n## Shared circuit breaker: Redis commands per 1,000 calls (closed)\n")
        print(f"| {'breaker, traffic':<40} | {'calls':>9} | {'round trips':>11} | commands |")
        print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 12}:|{'-' * 10}:|")
        for label, n, delta in breaker_commands(url, prefix):
            trips = sum(v for k, v in delta.items() if k in _ROUND_TRIPS)
            total = sum(delta.values())
            print(
                f"| {label:<40} | {n:>9,} | {trips * 1000 / n:>11.2f} | {total * 1000 / n:>8.1f} |"
            )
        counts = commands_per_1000(url, prefix)
        print("\n## Redis commands per 1,000 calls (INFO commandstats deltas)\n")
        print(f"| {'command':<44} | {'calls':>10} |")
        print(f"|{'-' * 46}|{'-' * 11}:|")
        for name, n in counts.items():
            print(f"| {name:<44} | {n:>10,} |")
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


if __name__ == "__main__":
    main()
