"""RedisCircuitBreaker: one replica's trip is every replica's, with no round trip per call."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tests.conftest import need_server

from resilience import CircuitBreaker, CircuitOpenError
from resilience.circuit_breaker import CircuitRejected
from resilience.redis import RedisCircuitBreaker, SharedStateLost
from resilience.testing import CapturingListener

pytestmark = pytest.mark.redis

URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"resilience-test:{uuid.uuid4().hex}:"
    yield p
    c = redis.Redis.from_url(URL)
    keys = list(c.scan_iter(match=p + "*"))
    if keys:
        c.delete(*keys)
    c.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        c.ping()
    except redis.RedisError as exc:
        need_server("Redis on 127.0.0.1:6379", exc)
    yield c
    c.close()


def replica(client: redis.Redis, prefix: str, key: str = "db") -> RedisCircuitBreaker:
    local = CircuitBreaker(failure_threshold=3, open_duration=1.5, name="db")
    return RedisCircuitBreaker(local, client, key=key, prefix=prefix, poll_interval=0.1)


def wait_for(predicate: Callable[[], bool], seconds: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if predicate():
            return time.perf_counter() - start
        time.sleep(0.005)
    raise AssertionError("not within the time given")


def test_one_replicas_trip_makes_every_replica_reject_within_a_second(
    client: redis.Redis, prefix: str
) -> None:
    a, b = replica(client, prefix), replica(client, prefix)
    calls: list[str] = []

    @a
    def failing() -> None:
        calls.append("a")
        raise OSError("down")

    @b
    def healthy() -> str:
        calls.append("b")
        return "ok"

    try:
        assert healthy() == "ok"
        for _ in range(3):
            with pytest.raises(OSError):
                failing()
        tripped = time.perf_counter()
        took = wait_for(lambda: b.shared_open, 1.0)
        with pytest.raises(CircuitOpenError) as info:
            healthy()
        assert time.perf_counter() - tripped < 1.0
        print(f"replica b rejects {took * 1e3:.0f} ms after replica a tripped")
        assert calls.count("b") == 1, "the rejected call never ran"
        assert info.value.retry_after is not None
        assert 0.0 < info.value.retry_after <= 1.5
        assert b.breaker.state.value == "closed", "b's own breaker decided nothing"
        # A replica started now (a restart) learns the open circuit at once.
        c = replica(client, prefix)
        try:
            wait_for(lambda: c.shared_open, 1.0)
        finally:
            c.close()
        # The shared open time is the key's TTL: once it passes every replica runs calls.
        wait_for(lambda: not b.shared_open, 2.5)
        assert healthy() == "ok"
    finally:
        a.close()
        b.close()


def test_different_keys_never_collide(client: redis.Redis, prefix: str) -> None:
    a, other = replica(client, prefix, "db"), replica(client, prefix, "cache")

    @a
    def failing() -> None:
        raise OSError("down")

    try:
        for _ in range(3):
            with pytest.raises(OSError):
                failing()
        wait_for(lambda: a.shared_open, 1.0)
        time.sleep(0.3)
        assert not other.shared_open
        assert client.exists(prefix + "cache") == 0
        assert 0 < client.pttl(prefix + "db") <= 1500
    finally:
        a.close()
        other.close()


class CountingRedis(redis.Redis):
    """Counts its round trips (the shared server also serves other clients)."""

    sent = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).sent += 1
        return super().execute_command(*args, **options)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        type(self).sent += 1  # a pipeline is sent in one round trip
        return super().pipeline(*args, **kwargs)


def test_hot_path_makes_no_round_trip(client: redis.Redis, prefix: str) -> None:
    counting = CountingRedis.from_url(URL)
    b = replica(counting, prefix)

    @b
    def work() -> int:
        return 1

    try:
        time.sleep(0.15)
        before = CountingRedis.sent
        start = time.perf_counter()
        calls = 0
        while (took := time.perf_counter() - start) < 0.5:
            work()
            calls += 1
        sent = CountingRedis.sent - before
        print(f"{sent} Redis round trips during {calls:,} calls ({took * 1e3:.0f} ms)")
        assert sent * 100 <= calls, "at most one round trip per 100 calls"
        assert sent <= took / 0.1 + 2, "only the polls, one per poll_interval"

        # Open: rejected calls send nothing either.
        @b
        def failing() -> None:
            raise OSError("down")

        for _ in range(3):
            with pytest.raises(OSError):
                failing()
        assert b.breaker.state.value == "open"
        before = CountingRedis.sent
        for _ in range(10_000):
            with pytest.raises(CircuitOpenError):
                work()
        assert CountingRedis.sent - before <= 5, CountingRedis.sent - before
    finally:
        b.close()
        counting.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_redis_outage_leaves_the_local_breaker_deciding(
    events: CapturingListener, caplog: pytest.LogCaptureFixture
) -> None:
    dead = redis.Redis(
        port=free_port(),
        socket_timeout=0.05,
        socket_connect_timeout=0.05,
        retry=Retry(NoBackoff(), 0),
    )
    local = CircuitBreaker(failure_threshold=2, open_duration=5.0)
    shared = RedisCircuitBreaker(local, dead, key="x", poll_interval=0.05, name="svc")

    @shared
    def call(ok: bool) -> str:
        if not ok:
            raise OSError("down")
        return "ok"

    try:
        with caplog.at_level(logging.WARNING, logger="resilience"):
            wait_for(lambda: not shared.shared, 1.0)
            start = time.perf_counter()
            assert call(True) == "ok"
            assert time.perf_counter() - start < 0.01, "no call waits on Redis"
            for _ in range(2):
                with pytest.raises(OSError):
                    call(False)
            with pytest.raises(CircuitOpenError):
                call(True)  # the local breaker still trips
            time.sleep(0.2)
        assert len([e for e in events.events if isinstance(e, SharedStateLost)]) == 1
        assert len([r for r in caplog.records if "cannot reach Redis" in r.getMessage()]) == 1
    finally:
        shared.close()
    dead.close()


def test_options_are_validated(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="poll_interval must be > 0 and <= 1 seconds, got 2"):
        RedisCircuitBreaker(CircuitBreaker(), client, key="k", poll_interval=2)
    with pytest.raises(ValueError, match="key must be a non-empty str"):
        RedisCircuitBreaker(CircuitBreaker(), client)
    with pytest.raises(TypeError, match="breaker must be a CircuitBreaker"):
        RedisCircuitBreaker(object(), client, key="k")  # type: ignore[arg-type]


async def test_coroutines_are_rejected_while_the_shared_circuit_is_open(
    client: redis.Redis, prefix: str, events: CapturingListener
) -> None:
    client.set(prefix + "db", b"open", px=1000)  # another replica tripped
    b = replica(client, prefix)

    @b
    async def work() -> str:
        return "ran"

    try:
        wait_for(lambda: b.shared_open, 1.0)
        with pytest.raises(CircuitOpenError):
            await work()
        rejected = [e for e in events.events if isinstance(e, CircuitRejected)]
        assert [e.reason for e in rejected] == ["circuit_open"]
        assert b.snapshot()["shared_open"] is True
        client.delete(prefix + "db")  # closed by hand in Redis: learnt at the next poll
        wait_for(lambda: not b.shared_open, 1.0)
        assert await work() == "ran"
    finally:
        b.close()


def test_a_foreign_key_under_the_name_is_not_an_open_circuit(
    client: redis.Redis, prefix: str
) -> None:
    client.set(prefix + "db", b"something else", px=5000)
    b = replica(client, prefix)
    try:
        time.sleep(0.3)
        assert not b.shared_open
    finally:
        b.close()
