"""SQLite specifics: several connections (as several processes have) on one file."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from resilience.idempotency import Claimed, IdempotencyStoreError, SQLiteStore


def test_racing_connections_never_both_claim_a_key(tmp_path: Path) -> None:
    path = tmp_path / "race.sqlite3"
    stores = [SQLiteStore(path) for _ in range(6)]
    keys = [f"k{i}" for i in range(150)]
    wins: list[list[str]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def claim_all(i: int) -> None:
        start.wait()
        for key in keys:
            if isinstance(stores[i].claim(key, "", f"t{i}", 30), Claimed):
                wins[i].append(key)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    claimed = sorted(k for w in wins for k in w)
    assert claimed == sorted(keys)  # every key claimed, none twice


def test_database_is_in_wal_mode_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "durable.sqlite3"
    with SQLiteStore(path) as store:
        store.claim("k", "fp", "t", 30)
        assert store.complete("k", "fp", "t", b"outcome", 3600)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    with SQLiteStore(path) as reopened:
        got = reopened.claim("k", "fp", "t2", 30)
        assert getattr(got, "payload", None) == b"outcome"


def test_cleanup_deletes_expired_records(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c.sqlite3") as store:
        store.claim("old", "", "t", 0.001)
        store.claim("live", "", "t", 30)
        threading.Event().wait(0.01)
        assert store.cleanup() == 1
        assert store.cleanup() == 0


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="table must be an SQL identifier"):
        SQLiteStore(tmp_path / "x", table="bad name; DROP")
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "x", synchronous="OFF")
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteStore(tmp_path / "x", busy_timeout=-1)
    with pytest.raises(IdempotencyStoreError):
        SQLiteStore(tmp_path / "missing-dir" / "x.sqlite3")
