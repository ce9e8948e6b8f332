"""The SQLite store: the embedded default, durable across restarts.

One database file, shared safely by several processes on one machine: the journal is in
WAL mode (readers never block the writer), every write runs in ``BEGIN IMMEDIATE`` (it
takes the write lock up front, so two claimants cannot both read "free" and then both
write), and ``busy_timeout`` makes a process wait for the lock instead of failing.
Replays and conflicts are answered by a plain read and never take the write lock.

Time is SQLite's own ``julianday('now')`` (the machine's wall clock), so every process
on the machine agrees when a lease or an outcome expires, also across restarts.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from resilience._core.options import to_seconds

from .errors import IdempotencyStoreError
from .store import CLAIMED, ClaimResult, Completed, InFlight

__all__ = ["SQLiteStore"]

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_table(name: str, value: object) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ValueError(
            f"{name} must be an SQL identifier (a letter or _, then up to 62 letters, digits "
            f"or _), got {value!r}"
        )
    return value


class SQLiteStore:
    """Claims and outcomes in an SQLite database file.

    Parameters:
        path: the database file (created if missing) or ``":memory:"``.
        table: the table name; created if missing. Default ``resilience_idempotency``.
        busy_timeout: seconds a write waits for another process's lock, ``>= 0``;
            default 5.
        synchronous: SQLite's ``synchronous`` pragma: ``"NORMAL"`` (default; in WAL mode
            a power loss can lose the last commits, a crash of the process cannot) or
            ``"FULL"`` (every commit reaches the disk).

    The connection is opened at once and shared by the threads of the process (under a
    lock); async methods run it in a worker thread. :meth:`close` closes it; the store
    is also a context manager. :meth:`cleanup` deletes expired records.
    """

    supports_sync = True
    supports_async = True
    __slots__ = ("_conn", "_lock", "_sql", "path", "table")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "resilience_idempotency",
        busy_timeout: float | timedelta = 5.0,
        synchronous: str = "NORMAL",
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
        self.path = os.fspath(path)
        self.table = check_table("table", table)
        busy = to_seconds("busy_timeout", busy_timeout, maximum=3600.0)
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        t = self.table
        self._sql = {
            "select": f"SELECT fingerprint, token, payload, expires_at - {_NOW} FROM {t} "
            "WHERE key = ?",
            "claim": f"INSERT OR REPLACE INTO {t} (key, fingerprint, token, payload, expires_at) "
            f"VALUES (?, ?, ?, NULL, {_NOW} + ?)",
            "complete": f"INSERT INTO {t} (key, fingerprint, token, payload, expires_at) "
            f"VALUES (?, ?, NULL, ?, {_NOW} + ?) ON CONFLICT (key) DO UPDATE SET "
            "fingerprint = excluded.fingerprint, token = NULL, payload = excluded.payload, "
            f"expires_at = excluded.expires_at WHERE {t}.token = ? OR {t}.expires_at <= {_NOW}",
            "release": f"DELETE FROM {t} WHERE key = ? AND token = ?",
            "renew": f"UPDATE {t} SET expires_at = {_NOW} + ? WHERE key = ? AND token = ?",
            "cleanup": f"DELETE FROM {t} WHERE expires_at <= {_NOW}",
        }
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise IdempotencyStoreError(f"cannot open SQLite database {self.path!r}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} ("
                "key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, token TEXT, payload BLOB, "
                "expires_at REAL NOT NULL) WITHOUT ROWID"
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)")
        except sqlite3.Error as exc:
            conn.close()
            self._conn = None
            raise IdempotencyStoreError(f"cannot set up SQLite database {self.path!r}") from exc

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, table={self.table!r})"

    @contextmanager
    def _connection(self, operation: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise IdempotencyStoreError(f"SQLite {operation}: the store is closed")
            try:
                yield conn
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise IdempotencyStoreError(f"SQLite {operation} failed: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @staticmethod
    def _answer(row: Any) -> ClaimResult | None:
        """The live record in ``row``, or ``None`` if it is absent or expired."""
        if row is None or row[3] <= 0:
            return None
        fingerprint, token, payload, left = row
        if token is None:
            return Completed(fingerprint, bytes(payload))
        return InFlight(fingerprint, left)

    def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        sql = self._sql
        with self._connection("claim") as conn:
            # A plain read answers replays and conflicts without the write lock.
            live = self._answer(conn.execute(sql["select"], (key,)).fetchone())
            if live is not None:
                return live
            conn.execute("BEGIN IMMEDIATE")
            live = self._answer(conn.execute(sql["select"], (key,)).fetchone())
            if live is None:
                conn.execute(sql["claim"], (key, fingerprint, token, lease))
            conn.execute("COMMIT")
            return CLAIMED if live is None else live

    def _write(self, operation: str, params: tuple[Any, ...]) -> bool:
        with self._connection(operation) as conn:
            conn.execute("BEGIN IMMEDIATE")
            changed = conn.execute(self._sql[operation], params).rowcount
            conn.execute("COMMIT")
            return changed > 0

    def complete(self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float) -> bool:
        return self._write("complete", (key, fingerprint, payload, ttl, token))

    def release(self, key: str, token: str) -> bool:
        return self._write("release", (key, token))

    def renew(self, key: str, token: str, lease: float) -> bool:
        return self._write("renew", (lease, key, token))

    def cleanup(self) -> int:
        """Delete every expired record; returns how many."""
        with self._connection("cleanup") as conn:
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute(self._sql["cleanup"]).rowcount
            conn.execute("COMMIT")
            return n

    async def aclaim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        return await asyncio.to_thread(self.claim, key, fingerprint, token, lease)

    async def acomplete(
        self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float
    ) -> bool:
        return await asyncio.to_thread(self.complete, key, fingerprint, token, payload, ttl)

    async def arelease(self, key: str, token: str) -> bool:
        return await asyncio.to_thread(self.release, key, token)

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        return await asyncio.to_thread(self.renew, key, token, lease)

    async def acleanup(self) -> int:
        return await asyncio.to_thread(self.cleanup)

    def close(self) -> None:
        """Close the connection; later operations raise ``IdempotencyStoreError``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
