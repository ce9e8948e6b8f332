"""The PostgreSQL store (psycopg 3, sync or async).

One table, created by :meth:`PostgresStore.setup` (never implicitly), and a cleanup
function ``<table>_cleanup()`` that deletes expired rows (call :meth:`PostgresStore.cleanup`
or schedule the function, e.g. with pg_cron). A claim is one
``INSERT … ON CONFLICT (key) DO UPDATE … WHERE expires_at <= clock_timestamp()``: it
writes the in-flight row when the key is free or expired and leaves a live row alone,
atomically in the server. Time is the server's ``clock_timestamp()``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg import sql

from .errors import IdempotencyStoreError
from .sqlite import check_table
from .store import CLAIMED, ClaimResult, Completed, InFlight

__all__ = ["PostgresStore"]

_LIVE_ATTEMPTS = 5


class PostgresStore:
    """Claims and outcomes in a PostgreSQL table.

    Parameters:
        conn: a ``psycopg.Connection`` (sync), a ``psycopg.AsyncConnection`` (async), or
            a ``psycopg_pool`` pool of either kind. Autocommit connections are best
            (each operation is one or two statements); otherwise each operation runs in
            its own transaction.
        table: the table name; default ``resilience_idempotency``.
        schema: the schema holding it; default ``None`` (the search path).

    Create the table once with :meth:`setup` / :meth:`asetup` (idempotent). The store does
    not own a connection it is given; one opened by :meth:`connect` / :meth:`aconnect`
    is closed by :meth:`close` / :meth:`aclose`.
    """

    __slots__ = (
        "_conn",
        "_ddl",
        "_is_async",
        "_is_pool",
        "_lock",
        "_owned",
        "_q",
        "schema",
        "table",
    )

    def __init__(
        self, conn: Any, *, table: str = "resilience_idempotency", schema: str | None = None
    ) -> None:
        if isinstance(conn, psycopg.AsyncConnection):
            self._is_async, self._is_pool = True, False
        elif isinstance(conn, psycopg.Connection):
            self._is_async, self._is_pool = False, False
        elif callable(getattr(conn, "getconn", None)) and callable(
            getattr(conn, "connection", None)
        ):
            self._is_async, self._is_pool = inspect.iscoroutinefunction(conn.getconn), True
        else:
            raise TypeError(
                "conn must be a psycopg Connection, AsyncConnection or a psycopg_pool pool, "
                f"got {conn!r}"
            )
        self.table = check_table("table", table)
        self.schema = None if schema is None else check_table("schema", schema)
        self._conn = conn
        self._owned = False
        self._lock = threading.Lock()
        name = (self.schema, self.table) if self.schema else (self.table,)
        t = sql.Identifier(*name)
        fn = sql.Identifier(*name[:-1], f"{self.table}_cleanup")
        idx = sql.Identifier(f"{self.table}_expires_at")
        lease_end = sql.SQL("clock_timestamp() + make_interval(secs => %s)")
        self._ddl: dict[str, list[sql.Composed]] = {
            "setup": [
                *(
                    [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))]
                    if self.schema
                    else []
                ),
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, "
                    "fingerprint text NOT NULL, token text, payload bytea, "
                    "expires_at timestamptz NOT NULL)"
                ).format(t),
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (expires_at)").format(idx, t),
                sql.SQL(
                    "CREATE OR REPLACE FUNCTION {}() RETURNS bigint LANGUAGE plpgsql AS $$ "
                    "DECLARE n bigint; BEGIN "
                    "DELETE FROM {} WHERE expires_at <= clock_timestamp(); "
                    "GET DIAGNOSTICS n = ROW_COUNT; RETURN n; END $$"
                ).format(fn, t),
            ],
            "drop": [
                sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fn),
                sql.SQL("DROP TABLE IF EXISTS {}").format(t),
            ],
        }
        self._q: dict[str, sql.Composed] = {
            "claim": sql.SQL(
                "INSERT INTO {} AS r (key, fingerprint, token, payload, expires_at) "
                "VALUES (%s, %s, %s, NULL, {}) ON CONFLICT (key) DO UPDATE SET "
                "fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token, payload = NULL, "
                "expires_at = EXCLUDED.expires_at WHERE r.expires_at <= clock_timestamp() "
                "RETURNING 1"
            ).format(t, lease_end),
            "select": sql.SQL(
                "SELECT fingerprint, token, payload, "
                "extract(epoch FROM expires_at - clock_timestamp())::float8 FROM {} "
                "WHERE key = %s"
            ).format(t),
            "complete": sql.SQL(
                "INSERT INTO {} AS r (key, fingerprint, token, payload, expires_at) "
                "VALUES (%s, %s, NULL, %s, {}) ON CONFLICT (key) DO UPDATE SET "
                "fingerprint = EXCLUDED.fingerprint, token = NULL, payload = EXCLUDED.payload, "
                "expires_at = EXCLUDED.expires_at "
                "WHERE r.token = %s OR r.expires_at <= clock_timestamp()"
            ).format(t, lease_end),
            "release": sql.SQL("DELETE FROM {} WHERE key = %s AND token = %s").format(t),
            "renew": sql.SQL("UPDATE {} SET expires_at = {} WHERE key = %s AND token = %s").format(
                t, lease_end
            ),
            "cleanup": sql.SQL("SELECT {}()").format(fn),
        }

    @classmethod
    def connect(cls, conninfo: str, **kwargs: Any) -> PostgresStore:
        """A sync store on its own autocommit connection to ``conninfo``."""
        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise IdempotencyStoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(conn, **kwargs)
        store._owned = True
        return store

    @classmethod
    async def aconnect(cls, conninfo: str, **kwargs: Any) -> PostgresStore:
        """An async store on its own autocommit connection to ``conninfo``."""
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise IdempotencyStoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        store = cls(conn, **kwargs)
        store._owned = True
        return store

    @property
    def supports_sync(self) -> bool:
        return not self._is_async

    @property
    def supports_async(self) -> bool:
        return self._is_async

    def __repr__(self) -> str:
        name = f"{self.schema}.{self.table}" if self.schema else self.table
        return f"PostgresStore({'async' if self._is_async else 'sync'}, table={name!r})"

    # -- sync plumbing ---------------------------------------------------------------------
    @contextmanager
    def _cursor(self, operation: str) -> Iterator[psycopg.Cursor[Any]]:
        if self._is_async:
            raise TypeError(f"{self!r} was built on an async connection: use a{operation}()")
        try:
            if self._is_pool:
                with self._conn.connection() as conn, conn.cursor() as cur:
                    yield cur
            else:
                conn = self._conn
                with self._lock:
                    if conn.autocommit:
                        with conn.cursor() as cur:
                            yield cur
                    else:
                        with conn.transaction(), conn.cursor() as cur:
                            yield cur
        except psycopg.Error as exc:
            raise IdempotencyStoreError(f"PostgreSQL {operation} failed: {exc}") from exc

    @asynccontextmanager
    async def _acursor(self, operation: str) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        if not self._is_async:
            raise TypeError(f"{self!r} was built on a sync connection: use {operation}()")
        try:
            if self._is_pool:
                async with self._conn.connection() as conn, conn.cursor() as cur:
                    yield cur
            else:
                conn = self._conn
                if conn.autocommit:
                    async with conn.cursor() as cur:
                        yield cur
                else:
                    async with conn.transaction(), conn.cursor() as cur:
                        yield cur
        except psycopg.Error as exc:
            raise IdempotencyStoreError(f"PostgreSQL {operation} failed: {exc}") from exc

    @staticmethod
    def _answer(row: Any) -> ClaimResult | None:
        if row is None or row[3] <= 0:
            return None
        fingerprint, token, payload, left = row
        if token is None:
            return Completed(fingerprint, bytes(payload))
        return InFlight(fingerprint, left)

    # -- sync ------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the schema (if named), the table, its index and the cleanup function."""
        with self._cursor("setup") as cur:
            for q in self._ddl["setup"]:
                cur.execute(q)

    def drop(self) -> None:
        """Drop the table and the cleanup function (not the schema)."""
        with self._cursor("drop") as cur:
            for q in self._ddl["drop"]:
                cur.execute(q)

    def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        for _ in range(_LIVE_ATTEMPTS):
            with self._cursor("claim") as cur:
                cur.execute(self._q["claim"], (key, fingerprint, token, lease))
                if cur.fetchone() is not None:
                    return CLAIMED
                cur.execute(self._q["select"], (key,))
                live = self._answer(cur.fetchone())
            if live is not None:
                return live
            # The live row went away between the two statements: claim again.
        raise IdempotencyStoreError("PostgreSQL claim did not settle (the key churns)")

    def complete(self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float) -> bool:
        with self._cursor("complete") as cur:
            cur.execute(self._q["complete"], (key, fingerprint, payload, ttl, token))
            return cur.rowcount > 0

    def release(self, key: str, token: str) -> bool:
        with self._cursor("release") as cur:
            cur.execute(self._q["release"], (key, token))
            return cur.rowcount > 0

    def renew(self, key: str, token: str, lease: float) -> bool:
        with self._cursor("renew") as cur:
            cur.execute(self._q["renew"], (lease, key, token))
            return cur.rowcount > 0

    def cleanup(self) -> int:
        """Delete expired rows with the cleanup function; returns how many."""
        with self._cursor("cleanup") as cur:
            cur.execute(self._q["cleanup"])
            row = cur.fetchone()
            return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the connection if this store opened it (:meth:`connect`)."""
        if self._owned and not self._is_async:
            self._conn.close()

    # -- async -----------------------------------------------------------------------------
    async def asetup(self) -> None:
        async with self._acursor("setup") as cur:
            for q in self._ddl["setup"]:
                await cur.execute(q)

    async def adrop(self) -> None:
        async with self._acursor("drop") as cur:
            for q in self._ddl["drop"]:
                await cur.execute(q)

    async def aclaim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        for _ in range(_LIVE_ATTEMPTS):
            async with self._acursor("claim") as cur:
                await cur.execute(self._q["claim"], (key, fingerprint, token, lease))
                if await cur.fetchone() is not None:
                    return CLAIMED
                await cur.execute(self._q["select"], (key,))
                live = self._answer(await cur.fetchone())
            if live is not None:
                return live
        raise IdempotencyStoreError("PostgreSQL claim did not settle (the key churns)")

    async def acomplete(
        self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float
    ) -> bool:
        async with self._acursor("complete") as cur:
            await cur.execute(self._q["complete"], (key, fingerprint, payload, ttl, token))
            return cur.rowcount > 0

    async def arelease(self, key: str, token: str) -> bool:
        async with self._acursor("release") as cur:
            await cur.execute(self._q["release"], (key, token))
            return cur.rowcount > 0

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        async with self._acursor("renew") as cur:
            await cur.execute(self._q["renew"], (lease, key, token))
            return cur.rowcount > 0

    async def acleanup(self) -> int:
        async with self._acursor("cleanup") as cur:
            await cur.execute(self._q["cleanup"])
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def aclose(self) -> None:
        """Close the connection if this store opened it (:meth:`aconnect`)."""
        if self._owned:
            if self._is_async:
                await self._conn.close()
            else:
                self._conn.close()
