"""Shared fixtures: a fake clock, a seeded random source, event capture, live servers."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import threading
import time
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Poll real time until ``predicate()`` (for handing work between threads)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


async def settle(condition: Callable[[], bool], *, rounds: int = 100) -> None:
    """Let the event loop run until ``condition()``."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


@pytest.fixture
def registry() -> Iterator[Any]:
    """A private Prometheus registry with resilience's collector enabled in it."""
    from prometheus_client import CollectorRegistry

    import resilience.prometheus

    reg = CollectorRegistry()
    resilience.prometheus.enable(reg)
    try:
        yield reg
    finally:
        resilience.prometheus.disable(reg)


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


class ManualClock(FakeClock):
    """A fake clock whose sleeps wait until the test advances it.

    With it a waiter can be caught in the middle of its wait (and cancelled there).
    """

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            return
        woken = threading.Event()
        self.call_at(self.now() + seconds, woken.set)
        if not woken.wait(5):
            raise AssertionError("the test never advanced the clock")

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self.call_at(self.now() + seconds, wake)
        try:
            await fut
        finally:
            handle.cancel()
