"""Shared fixtures: a fake clock, a seeded random source, event capture, live servers."""

from __future__ import annotations

import os
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from resilience.testing import CapturingListener, FakeClock, capture_events

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
def events() -> Iterator[CapturingListener]:
    with capture_events() as listener:
        yield listener


def need_server(what: str, error: BaseException) -> None:
    """A test that needs a live server: fail under CI=true, skip with the reason elsewhere."""
    msg = f"{what} is not reachable: {error!r}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: the server must be running)")
    pytest.skip(msg)


@pytest.fixture
def server() -> Iterator[Any]:
    """A redis-server of the test's own on a free loopback port (tests/_redis_server.py)."""
    from tests._redis_server import start_server

    yield from start_server()


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Threads switch as often as the interpreter allows, so that races show up."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def run_threads(n: int, target: Callable[[], object]) -> None:
    """Run ``target()`` on ``n`` threads that start together; fail if one gets stuck."""
    start = threading.Barrier(n)

    def worker() -> None:
        start.wait()
        target()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a thread is stuck"
