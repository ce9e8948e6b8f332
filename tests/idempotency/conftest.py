"""Stores for the idempotency suites: every store, sync and async, on live servers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import need_server

from resilience.idempotency import ClaimResult, IdempotencyStore, MemoryStore, SQLiteStore
from resilience.testing import FakeClock

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        need_server("Redis on 127.0.0.1:6379", exc)
    return client


def redis_cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def pg_connect() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_CONNINFO, autocommit=True)
    except psycopg.Error as exc:
        need_server("PostgreSQL on 127.0.0.1:5432", exc)


def pg_drop_schema(schema: str) -> None:
    conn = pg_connect()
    try:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        conn.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"test:idem:{uuid.uuid4().hex}:"
    yield prefix
    redis_cleanup(prefix)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"idem_{uuid.uuid4().hex[:12]}"
    yield schema
    pg_drop_schema(schema)


class Driver:
    """One store seen through its sync or its async methods, always awaited."""

    def __init__(self, store: Any, mode: str, clock: FakeClock | None = None) -> None:
        self.store = store
        self.mode = mode
        self.clock = clock

    async def pass_time(self, seconds: float) -> None:
        """Let ``seconds`` pass on the store's time (fake for the memory store)."""
        if self.clock is not None:
            self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    async def claim(self, key: str, fp: str, token: str, lease: float) -> ClaimResult:
        if self.mode == "sync":
            result: ClaimResult = self.store.claim(key, fp, token, lease)
            return result
        return await self.store.aclaim(key, fp, token, lease)  # type: ignore[no-any-return]

    async def complete(self, key: str, fp: str, token: str, payload: bytes, ttl: float) -> bool:
        if self.mode == "sync":
            return bool(self.store.complete(key, fp, token, payload, ttl))
        return bool(await self.store.acomplete(key, fp, token, payload, ttl))

    async def release(self, key: str, token: str) -> bool:
        if self.mode == "sync":
            return bool(self.store.release(key, token))
        return bool(await self.store.arelease(key, token))

    async def renew(self, key: str, token: str, lease: float) -> bool:
        if self.mode == "sync":
            return bool(self.store.renew(key, token, lease))
        return bool(await self.store.arenew(key, token, lease))


STORE_KINDS = ["memory", "sqlite", "redis", "postgres"]
MODES = ["sync", "async"]


async def open_store(kind: str, mode: str, tmp_path: Path, request: Any) -> Any:
    """A fresh, empty store of ``kind`` for ``mode`` (closed by the caller)."""
    if kind == "memory":
        return MemoryStore(clock=FakeClock())
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "idem.sqlite3")
    if kind == "redis":
        from resilience.idempotency import RedisStore

        redis_client().close()  # skip or fail early if the server is down
        prefix = request.getfixturevalue("redis_prefix")
        return RedisStore.from_url(REDIS_URL, async_client=mode == "async", prefix=prefix)
    if kind == "postgres":
        from resilience.idempotency import PostgresStore

        pg_connect().close()
        schema = request.getfixturevalue("pg_schema")
        if mode == "sync":
            store = PostgresStore.connect(PG_CONNINFO, schema=schema)
            store.setup()
        else:
            store = await PostgresStore.aconnect(PG_CONNINFO, schema=schema)
            await store.asetup()
        return store
    raise AssertionError(kind)


async def close_store(store: Any) -> None:
    await store.aclose()
    store.close()


@pytest.fixture(params=[(k, m) for k in STORE_KINDS for m in MODES], ids=lambda p: f"{p[0]}-{p[1]}")
async def driver(request: Any, tmp_path: Path) -> AsyncIterator[Driver]:
    kind, mode = request.param
    store = await open_store(kind, mode, tmp_path, request)
    assert isinstance(store, IdempotencyStore)
    try:
        yield Driver(store, mode, store._clock if kind == "memory" else None)
    finally:
        await close_store(store)
