"""Every durable store (SQLite, Redis, PostgreSQL) under real concurrency.

- 50 duplicates from 4 processes, from 50 threads, and from 50 asyncio tasks: exactly
  one execution, the other 49 replayed or rejected as conflicts;
- a worker killed with SIGKILL mid-call: after its lease, exactly one re-execution, then
  the stored outcome is replayed.

Executions are counted in the store's own server, so a killed process's count survives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from resilience.idempotency import (
    Idempotency,
    IdempotencyConflictError,
    PostgresStore,
    RedisStore,
    SQLiteStore,
)

from . import _worker
from .conftest import PG_CONNINFO, REDIS_URL, pg_connect, redis_client

WORKER = Path(_worker.__file__)
ROOT = WORKER.parents[2]
DUPLICATES = 50
PROCESSES = 4

DURABLE = ["sqlite", "redis", "postgres"]


@pytest.fixture(params=DURABLE)
def target(request: Any, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(kind, target)``: the SQLite file, the Redis prefix or the PostgreSQL schema."""
    kind = request.param
    if kind == "sqlite":
        yield kind, str(tmp_path / "shared.sqlite3")
    elif kind == "redis":
        redis_client().close()
        yield kind, request.getfixturevalue("redis_prefix")
    else:
        pg_connect().close()
        schema = request.getfixturevalue("pg_schema")
        store = PostgresStore.connect(PG_CONNINFO, schema=schema)
        store.setup()
        store.close()
        yield kind, schema


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def read_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != expected:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"worker said {line!r}, expected {expected!r}; stderr:\n{err}")


def test_duplicates_from_four_processes_run_once(target: tuple[str, str]) -> None:
    kind, where = target
    shares = [DUPLICATES // PROCESSES + (i < DUPLICATES % PROCESSES) for i in range(PROCESSES)]
    procs = [spawn("race", kind, where, "order-1", n, 0.5) for n in shares]
    try:
        for p in procs:
            read_line(p, "ready")
        for p in procs:  # all four are importing nothing any more: start together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        tallies = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            tallies.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [t["errors"] for t in tallies] == [[]] * PROCESSES
    assert sum(t["ran"] for t in tallies) == 1
    assert sum(t["replayed"] + t["conflict"] for t in tallies) == DUPLICATES - 1
    assert _worker.count_executions(kind, where) == 1


def open_store(kind: str, where: str, mode: str) -> Any:
    if kind == "sqlite":
        return SQLiteStore(where)
    if kind == "redis":
        return RedisStore.from_url(REDIS_URL, prefix=where, async_client=mode == "async")
    if mode == "sync":
        return PostgresStore.connect(PG_CONNINFO, schema=where)
    return None  # opened inside the event loop


def test_duplicates_from_fifty_threads_run_once(target: tuple[str, str]) -> None:
    kind, where = target
    store = open_store(kind, where, "sync")
    executions = 0
    lock = threading.Lock()
    start = threading.Barrier(DUPLICATES)

    @Idempotency(store=store, key="key", lease=30)
    def charge(key: str, amount: int) -> int:
        nonlocal executions
        with lock:
            executions += 1
        time.sleep(0.2)
        return amount

    outcomes: list[str] = []

    def one() -> None:
        start.wait()
        try:
            outcomes.append(f"result {charge('order-1', 7)}")
        except IdempotencyConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=one) for _ in range(DUPLICATES)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert executions == 1
        assert len(outcomes) == DUPLICATES
        assert set(outcomes) <= {"result 7", "conflict"}
        assert charge("order-1", 7) == 7
        assert executions == 1
    finally:
        store.close()


async def test_duplicates_from_fifty_tasks_run_once(target: tuple[str, str]) -> None:
    kind, where = target
    store = open_store(kind, where, "async")
    if store is None:
        store = await PostgresStore.aconnect(PG_CONNINFO, schema=where)
    executions = 0

    @Idempotency(store=store, key="key", lease=30)
    async def charge(key: str, amount: int) -> int:
        nonlocal executions
        executions += 1
        await asyncio.sleep(0.2)
        return amount

    async def one() -> str:
        try:
            return f"result {await charge('order-1', 7)}"
        except IdempotencyConflictError:
            return "conflict"

    try:
        outcomes = await asyncio.gather(*(one() for _ in range(DUPLICATES)))
        assert executions == 1
        assert outcomes.count("result 7") >= 1
        assert outcomes.count("result 7") + outcomes.count("conflict") == DUPLICATES
        assert await charge("order-1", 7) == 7
        assert executions == 1
    finally:
        await store.aclose()
        store.close()


def test_killed_worker_runs_again_once_after_its_lease(target: tuple[str, str]) -> None:
    kind, where = target
    lease = 1.5
    proc = spawn("hang", kind, where, "order-9", lease)
    try:
        read_line(proc, "started")
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    store = open_store(kind, where, "sync")
    runs: list[int] = []

    def charge(key: str, amount: int) -> dict[str, Any]:
        _worker.record_execution(kind, where)
        runs.append(amount)
        return {"by": "the survivor", "amount": amount}

    common = {"store": store, "key": "key", "namespace": _worker.NAMESPACE, "lease": 30}
    impatient = Idempotency(**common)(charge)
    patient = Idempotency(**common, wait=10, poll_interval=0.05)(charge)
    try:
        if time.monotonic() - killed_at < lease * 0.5:
            # The dead worker's lease still holds the key.
            with pytest.raises(IdempotencyConflictError):
                impatient("order-9", 100)
        # Waiting outlasts the lease: the key is free again and the call runs, once.
        assert patient("order-9", 100) == {"by": "the survivor", "amount": 100}
        assert impatient("order-9", 100) == {"by": "the survivor", "amount": 100}
        assert runs == [100]
        assert _worker.count_executions(kind, where) == 2  # the killed run and this one
    finally:
        store.close()
