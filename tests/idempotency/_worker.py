"""A worker process for the multi-process tests (run as a script, not collected).

    python _worker.py race KIND TARGET KEY THREADS HOLD
        print "ready", wait for a line on stdin, then call the guarded function from
        THREADS threads at once with the same key; print a JSON tally.
    python _worker.py hang KIND TARGET KEY LEASE
        call the guarded function, which prints "started" and then hangs (to be killed).

Every execution of the guarded function is counted in the store's own server (a row in
SQLite or PostgreSQL, a Redis counter), so the parent can count them after a kill -9.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from typing import Any

from resilience.idempotency import Idempotency, IdempotencyConflictError, SQLiteStore

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
NAMESPACE = "multiprocess"


def make_store(kind: str, target: str) -> Any:
    """The store for ``kind``: TARGET is the SQLite path, the Redis prefix or the PG schema."""
    if kind == "sqlite":
        return SQLiteStore(target)
    if kind == "redis":
        from resilience.idempotency import RedisStore

        return RedisStore.from_url(REDIS_URL, prefix=target)
    if kind == "postgres":
        from resilience.idempotency import PostgresStore

        return PostgresStore.connect(PG_CONNINFO, schema=target)
    raise ValueError(kind)


def record_execution(kind: str, target: str) -> None:
    if kind == "sqlite":
        conn = sqlite3.connect(target, timeout=10, isolation_level=None)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS executions (pid INTEGER)")
            conn.execute("INSERT INTO executions VALUES (?)", (os.getpid(),))
        finally:
            conn.close()
    elif kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.incr(target + "executions")
        finally:
            client.close()
    else:
        import psycopg

        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            conn.execute(f'CREATE TABLE IF NOT EXISTS "{target}".executions (pid integer)')
            conn.execute(f'INSERT INTO "{target}".executions VALUES (%s)', (os.getpid(),))


def count_executions(kind: str, target: str) -> int:
    if kind == "sqlite":
        conn = sqlite3.connect(target, timeout=10)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS executions (pid INTEGER)")
            return int(conn.execute("SELECT count(*) FROM executions").fetchone()[0])
        finally:
            conn.close()
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            return int(client.get(target + "executions") or 0)
        finally:
            client.close()
    import psycopg

    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{target}".executions (pid integer)')
        row = conn.execute(f'SELECT count(*) FROM "{target}".executions').fetchone()
        return int(row[0]) if row else 0


def race(kind: str, target: str, key: str, threads: int, hold: float) -> None:
    store = make_store(kind, target)
    me = f"{os.getpid()}"

    @Idempotency(store=store, key="key", namespace=NAMESPACE, lease=30)
    def charge(key: str, amount: int) -> dict[str, Any]:
        record_execution(kind, target)
        time.sleep(hold)
        return {"by": f"{me}/{threading.get_ident()}", "amount": amount}

    tally = {"ran": 0, "replayed": 0, "conflict": 0, "errors": []}
    lock = threading.Lock()

    def one() -> None:
        try:
            out = charge(key, 100)
            what = "ran" if out["by"] == f"{me}/{threading.get_ident()}" else "replayed"
        except IdempotencyConflictError:
            what = "conflict"
        except Exception as exc:
            with lock:
                tally["errors"].append(repr(exc))  # type: ignore[union-attr]
            return
        with lock:
            tally[what] += 1  # type: ignore[operator]

    workers = [threading.Thread(target=one) for _ in range(threads)]
    print("ready", flush=True)
    sys.stdin.readline()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.close()
    print(json.dumps(tally), flush=True)


def hang(kind: str, target: str, key: str, lease: float) -> None:
    store = make_store(kind, target)

    @Idempotency(store=store, key="key", namespace=NAMESPACE, lease=lease)
    def charge(key: str, amount: int) -> dict[str, Any]:
        record_execution(kind, target)
        print("started", flush=True)
        time.sleep(60)
        return {"by": "the killed worker", "amount": amount}

    charge(key, 100)


if __name__ == "__main__":
    mode, kind, target, key = sys.argv[1:5]
    if mode == "race":
        race(kind, target, key, int(sys.argv[5]), float(sys.argv[6]))
    else:
        hang(kind, target, key, float(sys.argv[5]))
