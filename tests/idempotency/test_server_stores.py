"""Redis and PostgreSQL store specifics, on the live servers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilience.idempotency import Claimed, Completed, Idempotency, InFlight

from .conftest import PG_CONNINFO, REDIS_URL, pg_connect, redis_client


def test_redis_sync_client_serves_async_calls_too(redis_prefix: str) -> None:
    from resilience.idempotency import RedisStore

    client = redis_client()
    store = RedisStore(client, prefix=redis_prefix)
    calls = 0

    @Idempotency(store=store, key="key")
    async def f(key: str) -> int:
        nonlocal calls
        calls += 1
        return 7

    async def twice() -> list[int]:
        return [await f("k"), await f("k")]

    try:
        assert asyncio.run(twice()) == [7, 7]
        assert calls == 1
    finally:
        store.close()  # not owned: the client stays open
        assert client.ping()
        client.close()


async def test_redis_asyncio_store_refuses_sync_functions(redis_prefix: str) -> None:
    from resilience.idempotency import RedisStore

    redis_client().close()
    store = RedisStore.from_url(REDIS_URL, async_client=True, prefix=redis_prefix)
    try:
        assert not store.supports_sync
        with pytest.raises(TypeError, match="no sync methods"):

            @Idempotency(store=store, key="key")
            def f(key: str) -> None:
                return None
    finally:
        await store.aclose()


def test_redis_client_must_return_bytes() -> None:
    import redis

    from resilience.idempotency import RedisStore

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisStore(client)
        with pytest.raises(TypeError, match="client must be"):
            RedisStore(object())
    finally:
        client.close()


def test_postgres_setup_is_idempotent_and_cleanup_deletes_expired(pg_schema: str) -> None:
    import time

    from resilience.idempotency import PostgresStore

    pg_connect().close()
    store = PostgresStore.connect(PG_CONNINFO, schema=pg_schema)
    try:
        store.setup()
        store.setup()
        assert isinstance(store.claim("old", "", "t", 0.05), Claimed)
        assert isinstance(store.claim("live", "", "t", 30), Claimed)
        time.sleep(0.1)
        assert store.cleanup() == 1
        assert isinstance(store.claim("live", "", "t2", 30), InFlight)
    finally:
        store.close()


def test_postgres_connection_outside_autocommit(pg_schema: str) -> None:
    import psycopg

    from resilience.idempotency import PostgresStore

    pg_connect().close()
    conn: Any = psycopg.connect(PG_CONNINFO)  # autocommit off: one transaction per operation
    try:
        store = PostgresStore(conn, schema=pg_schema)
        store.setup()
        assert isinstance(store.claim("k", "fp", "t", 30), Claimed)
        assert store.complete("k", "fp", "t", b"done", 60)
        assert store.claim("k", "fp", "t2", 30) == Completed("fp", b"done")
        store.close()  # not owned
        assert not conn.closed
        other = pg_connect()
        try:
            row = other.execute(f'SELECT count(*) FROM "{pg_schema}".resilience_idempotency')
            assert row.fetchone() == (1,)  # committed, visible to another connection
        finally:
            other.close()
    finally:
        conn.close()


async def test_postgres_async_store_refuses_sync_functions(pg_schema: str) -> None:
    from resilience.idempotency import PostgresStore

    pg_connect().close()
    store = await PostgresStore.aconnect(PG_CONNINFO, schema=pg_schema)
    try:
        with pytest.raises(TypeError, match="no sync methods"):
            Idempotency(store=store, key="key")(lambda key: None)
        with pytest.raises(ValueError, match="table must be an SQL identifier"):
            PostgresStore(store._conn, table="x; DROP TABLE y")
    finally:
        await store.aclose()


# -- Redis: round trips and batches ---------------------------------------------------------
def counting_client(async_client: bool) -> tuple[Any, list[tuple[Any, ...]]]:
    """A Redis client of the given kind that records every command it sends."""
    import redis
    import redis.asyncio

    redis_client().close()
    sent: list[tuple[Any, ...]] = []
    if async_client:

        class AsyncCounting(redis.asyncio.Redis):
            async def execute_command(self, *args: Any, **options: Any) -> Any:
                sent.append(args)
                return await super().execute_command(*args, **options)

        return AsyncCounting.from_url(REDIS_URL), sent

    class Counting(redis.Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            sent.append(args)
            return super().execute_command(*args, **options)

    return Counting.from_url(REDIS_URL), sent


def test_redis_sync_replay_is_one_command(redis_prefix: str) -> None:
    from resilience.idempotency import RedisStore

    client, sent = counting_client(async_client=False)
    store = RedisStore(client, prefix=redis_prefix)
    calls = 0

    @Idempotency(store=store, key="key")
    def f(key: str, amount: int) -> int:
        nonlocal calls
        calls += 1
        return amount

    try:
        assert f("k", 5) == 5  # claim + complete: two commands
        sent.clear()
        assert f("k", 5) == 5
        assert calls == 1
        assert [args[0] for args in sent] == ["EVALSHA"]
    finally:
        client.close()


async def test_redis_async_concurrent_calls_share_script_runs(redis_prefix: str) -> None:
    from resilience.idempotency import RedisStore
    from resilience.idempotency.redis import MAX_BATCH

    client, sent = counting_client(async_client=True)
    store = RedisStore(client, prefix=redis_prefix)
    calls = 0

    @Idempotency(store=store, key="key")
    async def f(key: str, amount: int) -> int:
        nonlocal calls
        calls += 1
        return amount

    try:
        assert await f("k", 5) == 5
        sent.clear()
        replays = 2 * MAX_BATCH + 10
        assert await asyncio.gather(*(f("k", 5) for _ in range(replays))) == [5] * replays
        assert calls == 1
        assert all(args[0] == "EVALSHA" for args in sent)
        assert [args[2] for args in sent] == [MAX_BATCH, MAX_BATCH, 10]  # keys per run
        # Fresh keys in one batch: every claim, then every completion, shares a run.
        sent.clear()
        assert await asyncio.gather(*(f(f"n{i}", i) for i in range(50))) == list(range(50))
        assert len(sent) <= 4
    finally:
        await client.aclose()


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_redis_a_failing_key_fails_only_its_own_operation(
    redis_prefix: str, mode: str, protocol: int
) -> None:
    import redis
    import redis.asyncio

    from resilience.idempotency import IdempotencyStoreError, RedisStore

    client = redis_client()
    client.rpush(redis_prefix + "list", "not a record")  # WRONGTYPE for GET
    # Errors nested in the script's reply array, under both protocols.
    module: Any = redis.asyncio if mode == "async" else redis
    own = module.Redis.from_url(REDIS_URL, protocol=protocol)
    store = RedisStore(own, prefix=redis_prefix)
    try:
        if mode == "sync":
            with pytest.raises(IdempotencyStoreError, match="WRONGTYPE"):
                store.claim("list", "fp", "t1", 30)
            assert isinstance(store.claim("a", "fp", "t2", 30), Claimed)
        else:
            # Queued together, so they go to Redis in the same script run.
            got = await asyncio.gather(
                store.aclaim("a", "fp", "t1", 30),
                store.aclaim("list", "fp", "t2", 30),
                store.acomplete("list", "fp", "t2", b"x", 30),
                store.aclaim("b", "fp", "t3", 30),
                return_exceptions=True,
            )
            assert isinstance(got[0], Claimed)
            assert isinstance(got[3], Claimed)
            assert isinstance(got[1], IdempotencyStoreError)
            assert "WRONGTYPE" in str(got[1])
            assert isinstance(got[2], IdempotencyStoreError)
            assert isinstance(await store.aclaim("a", "fp", "t4", 30), InFlight)
        assert client.lrange(redis_prefix + "list", 0, -1) == [b"not a record"]
    finally:
        if mode == "async":
            await own.aclose()
        else:
            own.close()
        client.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_redis_script_is_loaded_again_when_the_server_lost_it(
    redis_prefix: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import uuid

    from resilience.idempotency import RedisStore
    from resilience.idempotency import redis as redis_store

    # A script text the server has never seen stands for a restarted or flushed server.
    script = redis_store._SCRIPT + f"\n-- {uuid.uuid4().hex}\n"
    monkeypatch.setattr(redis_store, "_SCRIPT", script)
    monkeypatch.setattr(redis_store, "_SHA", hashlib.sha1(script.encode()).hexdigest())
    client = redis_client()
    assert client.script_exists(redis_store._SHA) == [False]
    store = RedisStore.from_url(REDIS_URL, async_client=mode == "async", prefix=redis_prefix)
    try:
        if mode == "sync":
            assert isinstance(store.claim("k", "fp", "t", 30), Claimed)
        else:
            assert isinstance(await store.aclaim("k", "fp", "t", 30), Claimed)
        assert client.script_exists(redis_store._SHA) == [True]
    finally:
        await close_redis(store)
        client.close()


async def test_redis_cancelled_call_leaves_its_key_free(redis_prefix: str) -> None:
    from resilience.idempotency import RedisStore

    redis_client().close()
    store = RedisStore.from_url(REDIS_URL, async_client=True, prefix=redis_prefix)
    started = asyncio.Event()

    @Idempotency(store=store, key="key")
    async def slow(key: str) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    @Idempotency(store=store, key="key")
    async def quick(key: str) -> str:
        return "ran"

    try:
        # Cancelled while its claim waits in the batch, and while it runs.
        early = asyncio.ensure_future(slow("early"))
        await asyncio.sleep(0)
        early.cancel()
        late = asyncio.ensure_future(slow("late"))
        await started.wait()
        late.cancel()
        for task in (early, late):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await quick("early") == "ran"
        assert await quick("late") == "ran"
    finally:
        await store.aclose()


async def close_redis(store: Any) -> None:
    await store.aclose()
    store.close()
