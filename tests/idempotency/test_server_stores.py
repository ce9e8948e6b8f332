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
