"""RedisRateLimiter: the local limiter's semantics, shared by every replica through Redis."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry
from tests._redis_server import Server, free_port
from tests.conftest import need_server
from tests.telemetry_standins import histogram, unique

import resilience
import resilience.prometheus
from resilience import Keyed, RateLimitedError, RateLimiter
from resilience.rate_limit import RateLimited, RateLimitWaited
from resilience.redis import RedisRateLimiter, SharedStateLost, SharedStateRestored
from resilience.testing import CapturingListener, FakeClock

pytestmark = pytest.mark.redis

URL = "redis://127.0.0.1:6379/0"
WORKER = Path(__file__).with_name("_redis_rate_worker.py")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    p = f"resilience-test:{uuid.uuid4().hex}:"
    yield p
    c = redis.Redis.from_url(URL)
    keys = list(c.scan_iter(match=p + "*"))
    if keys:
        c.delete(*keys)
    c.close()


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(URL, socket_timeout=2.0)
    try:
        c.ping()
    except redis.RedisError as exc:
        need_server("Redis on 127.0.0.1:6379", exc)
    yield c
    c.close()


# -- the local limiter's semantics ---------------------------------------------------------
def test_importing_resilience_keeps_redis_out() -> None:
    assert "RedisRateLimiter" not in resilience.__all__


def test_idle_limiter_admits_burst_plus_one_then_rejects_with_retry_after(
    client: redis.Redis, prefix: str, events: CapturingListener
) -> None:
    limiter = RedisRateLimiter(client, 10, burst=2, key="k", prefix=prefix, name="api")
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire()
    assert 0.0 < info.value.retry_after <= 0.1
    rejected = [e for e in events.events if isinstance(e, RateLimited)]
    assert len(rejected) == 1
    assert rejected[0].reason == "rate_limited"
    assert rejected[0].policy == "api"
    assert rejected[0].retry_after == info.value.retry_after


def test_two_limiters_on_one_key_share_one_budget(client: redis.Redis, prefix: str) -> None:
    other = redis.Redis.from_url(URL)
    a = RedisRateLimiter(client, 5, burst=4, key="shared", prefix=prefix)
    b = RedisRateLimiter(other, 5, burst=4, key="shared", prefix=prefix)
    taken = [(a if i % 2 else b).try_acquire() for i in range(8)]
    assert taken.count(True) == 5
    c = RedisRateLimiter(client, 5, burst=4, key="elsewhere", prefix=prefix)
    assert c.try_acquire()
    other.close()


def test_waiting_caller_reserves_its_permit_and_sleeps_until_due(
    client: redis.Redis, prefix: str, events: CapturingListener
) -> None:
    limiter = RedisRateLimiter(client, 20, max_wait=1.0, key="w", prefix=prefix)

    @limiter
    def work(x: int) -> int:
        return x * 2

    start = time.perf_counter()
    assert [work(i) for i in range(3)] == [0, 2, 4]
    took = time.perf_counter() - start
    assert 0.08 <= took < 0.5  # two intervals of 50 ms
    waited = [e for e in events.events if isinstance(e, RateLimitWaited)]
    assert len(waited) == 2


WAIT = "resilience_ratelimiter_wait_seconds"


def test_a_shared_wait_is_observed_in_the_wait_histogram(
    client: redis.Redis, prefix: str, events: CapturingListener, registry: CollectorRegistry
) -> None:
    clock = FakeClock()  # Redis keeps the time; the fake clock sleeps the wait it answers
    name = unique("shared_wait")
    limiter = RedisRateLimiter(
        client, 1, period=10.0, max_wait=None, key="h", prefix=prefix, name=name, clock=clock
    )

    @limiter
    def call() -> None:
        return None

    call()  # admitted at once: not observed
    call()  # its permit is reserved ~10 s on (Redis time): slept, then observed
    [waited] = [e.waited for e in events.of_type(RateLimitWaited)]
    assert 9.0 < waited <= 10.0
    buckets, count, total = histogram(registry, WAIT, name)
    assert (buckets["5.0"], buckets["10.0"], buckets["+Inf"]) == (0, 1, 1)
    assert (count, total) == (1, waited)


async def test_a_shared_async_wait_is_observed_in_the_wait_histogram(
    prefix: str, events: CapturingListener, registry: CollectorRegistry
) -> None:
    aclient = redis.asyncio.Redis.from_url(URL)
    try:
        await aclient.ping()
    except redis.RedisError as exc:
        need_server("Redis on 127.0.0.1:6379", exc)
    clock = FakeClock()
    name = unique("shared_wait_async")
    limiter = RedisRateLimiter(
        aclient, 1, period=10.0, max_wait=None, key="ha", prefix=prefix, name=name, clock=clock
    )

    @limiter
    async def call() -> None:
        return None

    await call()
    await call()
    await aclient.aclose()
    [waited] = [e.waited for e in events.of_type(RateLimitWaited)]
    assert 9.0 < waited <= 10.0
    buckets, count, total = histogram(registry, WAIT, name)
    assert (buckets["5.0"], buckets["10.0"], buckets["+Inf"]) == (0, 1, 1)
    assert (count, total) == (1, waited)


def test_a_wait_longer_than_max_wait_is_rejected_and_takes_nothing(
    client: redis.Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(client, 1, period=10.0, max_wait=0.5, key="m", prefix=prefix)
    limiter.acquire()
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire()
    assert 9.0 < info.value.retry_after <= 10.0
    assert limiter.snapshot()["rejected"] == 1


async def test_async_client_and_coroutines(prefix: str) -> None:
    aclient = redis.asyncio.Redis.from_url(URL)
    try:
        await aclient.ping()
    except redis.RedisError as exc:
        need_server("Redis on 127.0.0.1:6379", exc)
    limiter = RedisRateLimiter(aclient, 10, burst=1, key="a", prefix=prefix)

    @limiter
    async def work() -> str:
        return "ok"

    assert await work() == "ok"
    async with limiter:
        pass
    with pytest.raises(RateLimitedError):
        await limiter.aacquire()
    with pytest.raises(TypeError, match="sync function"):
        limiter(lambda: None)
    await aclient.aclose()


async def test_sync_client_serves_coroutines_from_a_worker_thread(
    client: redis.Redis, prefix: str
) -> None:
    limiter = RedisRateLimiter(client, 10, key="t", prefix=prefix)

    @limiter
    async def work() -> int:
        return 1

    assert await work() == 1
    with pytest.raises(RateLimitedError):
        await work()


def test_snapshot_has_the_local_limiters_keys(client: redis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(client, 10, burst=3, key="s", prefix=prefix, name="api")
    limiter.try_acquire()
    snap = limiter.snapshot()
    assert set(RateLimiter(10).snapshot()) <= set(snap)
    assert snap["kind"] == "rate_limiter"
    assert 2.9 < snap["available"] <= 3.0
    assert snap["shared"] is True
    assert snap["key"] == prefix + "s"


def test_the_key_expires_once_it_holds_nothing(client: redis.Redis, prefix: str) -> None:
    limiter = RedisRateLimiter(client, 1, period=2.0, burst=1, key="ttl", prefix=prefix)
    limiter.try_acquire()
    ttl = client.pttl(prefix + "ttl")
    # tat - now = one interval (2 s) after one call from idle; plus a one-second margin
    assert 2500 < ttl <= 3000
    fields = client.hgetall(prefix + "ttl")
    assert set(fields) == {b"b", b"t", b"r"}


def test_keyed_gives_each_tenant_its_own_shared_budget(client: redis.Redis, prefix: str) -> None:
    keyed: Keyed[RedisRateLimiter] = Keyed(
        lambda tenant: RedisRateLimiter(client, 2, period=60.0, burst=1, key=tenant, prefix=prefix),
        key=lambda tenant: tenant,
        name="per-tenant",
    )

    @keyed
    def call(tenant: str) -> str:
        return tenant

    assert call("a") == "a"
    assert call("a") == "a"
    with pytest.raises(RateLimitedError):
        call("a")
    assert call("b") == "b"
    assert client.exists(prefix + "a", prefix + "b") == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fleet_size": 0}, "fleet_size must be >= 1, got 0"),
        ({"on_redis_error": "ignore"}, "on_redis_error must be 'fail_open' or 'fail_closed'"),
        ({"min_backoff": 0}, "min_backoff must be > 0 seconds, got 0"),
        ({"min_backoff": 2.0, "max_backoff": 1.0}, "max_backoff must be >= 2 seconds"),
        ({"key": ""}, "key must be a non-empty str"),
        ({"rate": 0}, "rate must be >= 1, got 0"),
    ],
)
def test_options_are_validated_with_name_value_and_range(
    client: redis.Redis, kwargs: dict[str, Any], match: str
) -> None:
    options: dict[str, Any] = {"rate": 1, "key": "x"} | kwargs
    with pytest.raises(ValueError, match=match):
        RedisRateLimiter(client, **options)


def test_a_key_or_a_name_is_required(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="key must be a non-empty str"):
        RedisRateLimiter(client, 1)
    assert RedisRateLimiter(client, 1, name="api").key == "resilience:ratelimit:api"
    with pytest.raises(TypeError, match="client must be"):
        RedisRateLimiter(object(), 1, key="x")


# -- accuracy across processes --------------------------------------------------------------
def windows_max(stamps: list[int], width_us: int) -> int:
    """The most admits in any half-open window ``[t, t + width)`` starting at an admit."""
    most = 0
    j = 0
    for i, t in enumerate(stamps):
        j = max(j, i)
        while j < len(stamps) and stamps[j] < t + width_us:
            j += 1
        most = max(most, j - i)
    return most


def test_four_processes_of_eight_threads_stay_within_the_limit_and_use_it(
    client: redis.Redis, prefix: str
) -> None:
    rate, burst, seconds = 400, 20, 2.5
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                URL,
                prefix,
                "hot",
                str(rate),
                str(burst),
                str(seconds),
                "8",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    stamps: list[int] = []
    tries = 0
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        data = json.loads(out)
        stamps += data["admitted"]
        tries += data["tries"]
    stamps.sort()
    span = (stamps[-1] - stamps[0]) / 1e6
    assert tries > 2 * len(stamps), "demand exceeded the limit"
    for width in (1.0, 0.5, 0.1, 0.01):
        allowed = rate * width + burst
        assert windows_max(stamps, round(width * 1e6)) <= allowed, width
    # Every window, exactly: admits i..j (j - i + 1 of them) span at least
    # (j - i - burst) emission intervals of 1e6 / rate µs.
    for i, t in enumerate(stamps):
        for j in range(i + burst + 1, len(stamps)):
            assert (j - i - burst) * 1_000_000 <= (stamps[j] - t) * rate, (i, j)
    used = len(stamps) / (rate * span + burst)
    assert used >= 0.95, used
    print(f"admitted {len(stamps)} of {tries} tries over {span:.2f} s: {used:.1%} of the limit")


# -- outages ---------------------------------------------------------------------------------
def run_calls(limiter: RedisRateLimiter, seconds: float) -> tuple[int, float]:
    """Call as fast as possible for ``seconds``: (admitted, slowest call in seconds)."""
    admitted = 0
    slowest = 0.0
    stop = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < stop:
        ok = limiter.try_acquire()
        slowest = max(slowest, time.perf_counter() - t0)
        admitted += ok
        time.sleep(0.0005)
    return admitted, slowest


def test_outage_fails_open_to_a_local_share_and_resumes_sharing(
    server: Server, events: CapturingListener, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisRateLimiter.from_url(
        f"redis://127.0.0.1:{server.port}/0",
        100,
        burst=10,
        key="o",
        name="svc",
        fleet_size=4,
        timeout=0.05,
        min_backoff=0.1,
        max_backoff=0.2,
    )
    admitted, slowest = run_calls(limiter, 0.5)
    assert 55 <= admitted <= 61  # 100/s for 0.5 s plus 1 + burst
    # A hung server: every call stays bounded by the command timeout.
    server.signal(signal.SIGSTOP)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        admitted, slowest = run_calls(limiter, 1.0)
    assert not limiter.shared
    print(f"hung server: {admitted} admitted in 1 s, slowest call {slowest * 1e3:.1f} ms")
    assert slowest < 0.2, slowest
    assert 15 <= admitted <= 31  # the local share: 25/s with a burst of 2, plus a hair
    server.signal(signal.SIGCONT)
    server.kill()
    # A dead server: connection refused, the fallback goes on.
    admitted, slowest = run_calls(limiter, 0.5)
    print(f"dead server: {admitted} admitted in 0.5 s, slowest call {slowest * 1e3:.1f} ms")
    assert slowest < 0.2, slowest
    assert admitted <= 16
    server.start()
    run_calls(limiter, 0.5)
    assert limiter.shared
    fresh = redis.Redis(port=server.port)
    assert fresh.exists("resilience:ratelimit:o") == 1
    fresh.close()
    lost = [e for e in events.events if isinstance(e, SharedStateLost)]
    back = [e for e in events.events if isinstance(e, SharedStateRestored)]
    # Hung then dead with no answer between: one outage, one event each way.
    assert [e.to_state for e in lost] == ["local"]
    assert len(back) == 1
    lines = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
    assert len(lines) == 1, "one line per outage"
    limiter.close()


def test_fail_closed_rejects_fast_while_redis_is_down(events: CapturingListener) -> None:
    limiter = RedisRateLimiter.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        100,
        key="c",
        on_redis_error="fail_closed",
        timeout=0.05,
    )
    t0 = time.perf_counter()
    for _ in range(50):
        with pytest.raises(RateLimitedError) as info:
            limiter.acquire()
        assert info.value.retry_after > 0
    assert time.perf_counter() - t0 < 0.5
    reasons = {e.reason for e in events.events if isinstance(e, RateLimited)}
    assert reasons == {"redis_unavailable"}
    assert len([e for e in events.events if isinstance(e, SharedStateLost)]) == 1
    limiter.close()


async def test_async_outage_falls_back_without_blocking(server: Server) -> None:
    limiter = RedisRateLimiter.from_url(
        f"redis://127.0.0.1:{server.port}/0",
        1000,
        key="ao",
        burst=40,
        async_client=True,
        fleet_size=2,
        timeout=0.05,
        min_backoff=0.1,
    )
    await limiter.aacquire()
    server.kill()
    t0 = time.perf_counter()
    for _ in range(20):
        await limiter.aacquire()
    assert time.perf_counter() - t0 < 0.3
    assert not limiter.shared
    await limiter.aclose()


# -- the stored state ------------------------------------------------------------------------
def test_state_written_long_ago_is_rebased_exactly(client: redis.Redis, prefix: str) -> None:
    # A key last moved two hours ago, with its next permit due 0.5 s from now.
    sec, usec = client.time()
    key = prefix + "old"
    rate = 10
    tat = (7200 * 1_000_000 + usec + 500_000) * rate  # units since the base
    client.hset(key, mapping={"b": sec - 7200, "t": tat, "r": rate})
    limiter = RedisRateLimiter(client, rate, key="old", prefix=prefix)
    with pytest.raises(RateLimitedError) as info:
        limiter.acquire()
    assert 0.3 < info.value.retry_after <= 0.6
    client.hset(key, mapping={"t": 0})  # long idle: admitted, and the base moves on
    assert limiter.try_acquire()
    assert int(client.hget(key, "b") or 0) >= sec


def test_a_new_rate_rescales_the_stored_time(client: redis.Redis, prefix: str) -> None:
    slow = RedisRateLimiter(client, 1, period=10.0, key="r", prefix=prefix)
    assert slow.try_acquire()
    fast = RedisRateLimiter(client, 100, period=10.0, key="r", prefix=prefix)
    # The next permit was due 10 s on at the old rate; the new rate keeps that instant.
    with pytest.raises(RateLimitedError) as info:
        fast.acquire()
    assert 9.0 < info.value.retry_after <= 10.0
    assert client.hget(prefix + "r", "r") == b"1"  # refused: nothing written


def test_fail_open_fallback_waits_like_the_local_limiter(events: CapturingListener) -> None:
    limiter = RedisRateLimiter.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        20,
        key="fw",
        fleet_size=2,
        max_wait=1.0,
        timeout=0.05,
    )
    start = time.perf_counter()
    for _ in range(3):
        limiter.acquire()  # the local share: 10/s, so 0.1 s apart
    assert 0.15 < time.perf_counter() - start < 0.6
    assert len([e for e in events.events if isinstance(e, RateLimitWaited)]) == 2
    assert limiter.snapshot()["shared"] is False
    limiter.close()


def test_link_backs_off_and_grants_one_probe_at_a_time() -> None:
    from resilience.redis import _Link

    link = _Link(0.5, 2.0)
    assert link.may_try(0.0)
    assert link.failed(0.0) is True  # the outage begins
    assert not link.may_try(0.4)
    assert link.may_try(0.5)  # the probe
    assert not link.may_try(0.6)  # one at a time
    assert link.failed(0.6) is False  # still the same outage: backoff 1 s
    assert not link.may_try(1.5)
    assert link.may_try(1.6)
    link.failed(1.6)  # backoff 2 s (the maximum)
    assert link.may_try(3.6)
    link.failed(3.6)
    assert not link.may_try(5.5)
    assert link.may_try(5.6)
    assert link.worked(6.0) == 6.0  # the outage lasted from 0 to 6
    assert link.worked(7.0) is None
    assert link.may_try(7.0)
    link.failed(8.0)
    assert link.retry_at == 8.5  # a new outage starts from min_backoff again


def test_the_fail_open_fallbacks_waits_are_observed_exactly(registry: CollectorRegistry) -> None:
    clock = FakeClock()
    name = unique("fallback_wait")
    limiter = RedisRateLimiter.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        2,
        key="fo",
        max_wait=1.0,
        timeout=0.05,
        name=name,
        clock=clock,
    )
    for _ in range(3):
        limiter.acquire()  # Redis is unreachable: the local share, 2/s, so 0.5 s apart
    assert clock.now() == 1.0
    buckets, count, total = histogram(registry, WAIT, name)
    assert (buckets["0.25"], buckets["0.5"], buckets["+Inf"]) == (0, 2, 2)
    assert (count, total) == (2, 1.0)
    limiter.close()
