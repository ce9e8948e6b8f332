"""Idempotency guard throughput per store, on loopback (`python -m benchmarks.bench_idempotency`).

For each store, two numbers, in one thread:

- *guarded calls/s*: calls with a new key each: claim, run (a no-op), store the outcome;
- *replays/s*: calls with a key already completed: claim answered by the stored outcome,
  decoded and returned without running.

The sync stores run in one thread, the sync Redis store also in 8 threads (a connection
each); the asyncio Redis store runs 64 concurrent tasks on one client (their operations
share script runs, one per round trip). The heading says whether redis-py parses replies
with hiredis. Servers that are not running are skipped. ``RESILIENCE_BENCH_QUICK=1`` runs
tiny counts (a smoke test).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from resilience.idempotency import Idempotency, MemoryStore, SQLiteStore

QUICK = os.environ.get("RESILIENCE_BENCH_QUICK") == "1"
CALLS = 50 if QUICK else 20_000
REPLAYS = 50 if QUICK else 40_000
TASKS = 64
THREADS = 8
REDIS_URL = "redis://127.0.0.1:6379/0"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


def per_second(n: int, fn: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def threaded_per_second(n: int, threads: int, fn: Callable[[int], Any]) -> float:
    """Calls per second of ``fn(0 .. n-1)`` spread over ``threads`` threads."""

    def share(t: int) -> None:
        for i in range(t, n, threads):
            fn(i)

    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(share, range(threads)))
        return n / (time.perf_counter() - start)


def measure(store: Any, threads: int = 1) -> tuple[float, float]:
    run = uuid.uuid4().hex[:8]

    @Idempotency(store=store, key="key", namespace=f"bench-{run}")
    def charge(key: str, amount: int) -> dict[str, int]:
        return {"amount": amount}

    def rate(n: int, fn: Callable[[int], Any]) -> float:
        return per_second(n, fn) if threads == 1 else threaded_per_second(n, threads, fn)

    rate(min(200, CALLS), lambda i: charge(f"warm-{i}", 1))
    guarded = rate(CALLS, lambda i: charge(f"k-{i}", 1))
    replays = rate(REPLAYS, lambda i: charge("k-0", 1))
    return guarded, replays


async def ameasure(store: Any, tasks: int) -> tuple[float, float]:
    """The same two numbers from ``tasks`` concurrent asyncio tasks."""
    run = uuid.uuid4().hex[:8]

    @Idempotency(store=store, key="key", namespace=f"bench-{run}")
    async def charge(key: str, amount: int) -> dict[str, int]:
        return {"amount": amount}

    async def rate(n: int, key_of: Callable[[int], str]) -> float:
        counter = itertools.count()

        async def worker() -> None:
            while (i := next(counter)) < n:
                await charge(key_of(i), 1)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        return n / (time.perf_counter() - start)

    await rate(min(200, CALLS), lambda i: f"warm-{i}")
    guarded = await rate(CALLS, lambda i: f"k-{i}")
    replays = await rate(REPLAYS, lambda i: "k-0")
    return guarded, replays


def stores(tmp: Path) -> list[tuple[str, int, Callable[[], Any], Callable[[Any], None]]]:
    def redis_store() -> Any:
        from resilience.idempotency import RedisStore

        return RedisStore.from_url(REDIS_URL, prefix=f"bench:{uuid.uuid4().hex}:")

    def redis_done(store: Any) -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=store.prefix + "*", count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i : i + 5000])
        finally:
            client.close()
        store.close()

    schema = f"bench_{uuid.uuid4().hex[:8]}"

    def pg_store() -> Any:
        from resilience.idempotency import PostgresStore

        store = PostgresStore.connect(PG_CONNINFO, schema=schema)
        store.setup()
        return store

    def pg_done(store: Any) -> None:
        store._conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        store.close()

    return [
        ("memory", 1, MemoryStore, lambda s: None),
        ("sqlite (WAL, file)", 1, lambda: SQLiteStore(tmp / "bench.sqlite3"), lambda s: s.close()),
        ("redis (sync client)", 1, redis_store, redis_done),
        (f"redis (sync, {THREADS} threads)", THREADS, redis_store, redis_done),
        ("postgres (sync, autocommit)", 1, pg_store, pg_done),
    ]


def main() -> None:
    quick = " (quick)" if QUICK else ""
    try:
        import hiredis  # noqa: F401  (redis-py parses replies with it when it imports)

        parser = "hiredis"
    except ImportError:
        parser = "pure Python"
    print(f"\n## Idempotency guard on loopback; redis-py parses with {parser}{quick}\n")
    print(f"| {'store':<28} | {'guarded calls/s':>16} | {'replays/s':>10} |")
    print(f"|{'-' * 30}|{'-' * 17}:|{'-' * 11}:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, threads, make, done in stores(Path(tmp)):
            try:
                store = make()
            except Exception as exc:
                print(f"| {name:<28} | {'skipped: ' + type(exc).__name__:>29} |")
                continue
            try:
                guarded, replays = measure(store, threads)
            finally:
                done(store)
            print(f"| {name:<28} | {guarded:>16,.0f} | {replays:>10,.0f} |")
    try:
        guarded, replays = asyncio.run(redis_async())
    except Exception as exc:
        print(f"| {'redis (asyncio)':<28} | {'skipped: ' + type(exc).__name__:>29} |")
    else:
        name = f"redis (asyncio, {TASKS} tasks)"
        print(f"| {name:<28} | {guarded:>16,.0f} | {replays:>10,.0f} |")


async def redis_async() -> tuple[float, float]:
    """Create, measure and close the asyncio Redis store inside one event loop."""
    import redis.asyncio

    from resilience.idempotency import RedisStore

    prefix = f"bench:{uuid.uuid4().hex}:"
    store = RedisStore.from_url(REDIS_URL, async_client=True, prefix=prefix)
    try:
        return await ameasure(store, TASKS)
    finally:
        await store.aclose()
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*", count=5000)]
            for i in range(0, len(keys), 5000):
                await client.delete(*keys[i : i + 5000])
        finally:
            await client.aclose()


if __name__ == "__main__":
    main()
