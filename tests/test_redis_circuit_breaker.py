"""RedisCircuitBreaker: one circuit for a whole fleet, with no round trip per call."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import redis
import redis.asyncio
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from redis.backoff import NoBackoff
from redis.retry import Retry
from tests._redis_server import Server, free_port
from tests.conftest import need_server

from resilience import CircuitBreaker, CircuitOpenError, CircuitState
from resilience._redis_breaker import _PROBE, _REPORT, _SYNC, _Reply, _Settings
from resilience.circuit_breaker import CircuitRejected, CircuitStateChanged
from resilience.redis import RedisCircuitBreaker, SharedStateLost, SharedStateRestored
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


@pytest.fixture
def replicas(client: redis.Redis, prefix: str) -> Iterator[Callable[..., RedisCircuitBreaker]]:
    """Builds replicas of one circuit (key ``db``); every one is stopped afterwards."""
    made: list[RedisCircuitBreaker] = []

    def make(key: str = "db", *, c: Any = None, **options: Any) -> RedisCircuitBreaker:
        defaults: dict[str, Any] = {"failure_threshold": 3, "open_duration": 1.5}
        defaults.update(options)
        local = CircuitBreaker(name="db", **defaults)
        b = RedisCircuitBreaker(local, c or client, key=key, prefix=prefix, poll_interval=0.1)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def wait_for(predicate: Callable[[], bool], seconds: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if predicate():
            return time.perf_counter() - start
        time.sleep(0.005)
    raise AssertionError("not within the time given")


async def await_for(predicate: Callable[[], bool], seconds: float) -> None:
    """:func:`wait_for` for a test on the event loop (whose tasks must keep running)."""
    for _ in range(int(seconds / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not within the time given")


def circuit(client: redis.Redis, b: RedisCircuitBreaker) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(b.key).items()}


def fail() -> None:
    raise OSError("down")


# -- sharing a trip ---------------------------------------------------------------------------


def test_one_replicas_trip_makes_every_replica_reject_within_a_second(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker], events: CapturingListener
) -> None:
    a, b = replicas(), replicas()
    ran: list[str] = []
    failing = a(fail)

    @b
    def healthy() -> str:
        ran.append("b")
        return "ok"

    wait_for(lambda: b.shared_state is CircuitState.CLOSED, 1.0)
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
    assert ran == ["b"], "the rejected call never ran"
    assert info.value.retry_after is not None
    assert 0.0 < info.value.retry_after <= 1.5
    assert circuit(client, a)["r"] == "replica_tripped"
    # b's own breaker adopted the shared state: its metrics and status say so.
    assert b.breaker.state is CircuitState.OPEN
    adopted = [
        e for e in events.events if isinstance(e, CircuitStateChanged) and e.reason == "shared"
    ]
    assert [(e.from_state, e.to_state) for e in adopted] == [("closed", "open")]
    assert b.snapshot()["shared_state"] == "open"
    # A replica started now (a restart, a new instance) learns the open circuit at once.
    c = replicas()
    wait_for(lambda: c.shared_open, 1.0)
    assert c.breaker.state is CircuitState.OPEN


def test_the_fleets_failure_rate_trips_where_no_replica_alone_would(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    # Each replica sees 15 calls, 60 % failed: under its own minimum of 40 calls. The
    # fleet sees 60 calls, 36 failed: over 50 %.
    options = {"failure_threshold": None, "failure_rate_threshold": 50.0, "minimum_calls": 40}
    fleet = [replicas(**options) for _ in range(4)]
    for b in fleet:
        wait_for(lambda b=b: b.shared_state is CircuitState.CLOSED, 1.0)  # type: ignore[misc]
    for b in fleet:
        call = b(lambda ok: "ok" if ok else fail())
        for i in range(15):
            if i % 5 < 3:
                with pytest.raises(OSError):
                    call(False)
            else:
                assert call(True) == "ok"
        assert b.breaker.snapshot()["calls_in_window"] == 15
        assert b.breaker.state is CircuitState.CLOSED or b.breaker.state is CircuitState.OPEN
    for b in fleet:
        wait_for(lambda b=b: b.shared_open, 1.0)  # type: ignore[misc]
    assert circuit(client, fleet[0])["r"] == "fleet_failure_rate"
    assert all(b.snapshot()["shared_reason"] == "fleet_failure_rate" for b in fleet)


def test_known_failures_do_not_count_for_the_fleet(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    b = replicas(
        failure_threshold=None, failure_rate_threshold=50.0, minimum_calls=5, ignore=ValueError
    )
    wait_for(lambda: b.shared_state is CircuitState.CLOSED, 1.0)

    @b
    def bad_input() -> None:
        raise ValueError("bad input")

    for _ in range(20):
        with pytest.raises(ValueError):
            bad_input()
    time.sleep(0.3)
    assert b.shared_state is CircuitState.CLOSED
    assert b.snapshot()["fleet_calls"] == 0


def test_different_keys_never_collide(
    client: redis.Redis, prefix: str, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    a, other = replicas("db"), replicas("cache")
    failing = a(fail)
    for _ in range(3):
        with pytest.raises(OSError):
            failing()
    wait_for(lambda: a.shared_open, 1.0)
    time.sleep(0.3)
    assert not other.shared_open
    assert other.shared_state is CircuitState.CLOSED
    assert a.key == prefix + "{db}"
    assert other.key == prefix + "{cache}"
    assert client.hget(other.key, "s") in (None, b"0")
    assert client.pttl(a.key) > 0


# -- half-open: leased probes -------------------------------------------------------------------


def trip(b: RedisCircuitBreaker) -> None:
    failing = b(fail)
    for _ in range(3):
        with pytest.raises((OSError, CircuitOpenError)):
            failing()
    wait_for(lambda: b.shared_open, 1.0)


def test_the_fleet_sends_at_most_half_open_probes_in_all(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    fleet = [replicas(open_duration=0.3, half_open_probes=2) for _ in range(4)]
    trip(fleet[0])
    for b in fleet:
        wait_for(lambda b=b: b.shared_open, 1.0)  # type: ignore[misc]
    reached: list[float] = []
    lock = threading.Lock()

    def dependency() -> str:
        with lock:
            reached.append(time.time())
        time.sleep(0.2)  # long enough for every thread to ask for a lease meanwhile
        return "ok"

    calls = [b(dependency) for b in fleet]
    wait_for(lambda: not fleet[0].shared_open, 2.0)
    outcomes: list[str] = []

    def hammer(call: Callable[[], str]) -> None:
        for _ in range(5):
            try:
                outcomes.append(call())
            except CircuitOpenError as exc:
                outcomes.append(exc.state.value)
            time.sleep(0.01)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in calls for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = circuit(client, fleet[0])
    assert state["s"] == "0"
    assert state["r"] == "probes_succeeded"
    # Redis TIME and time.time() read the same clock here: the calls that reached the
    # dependency before the circuit closed are its probes, two for the whole fleet.
    closed = int(state["t"]) / 1000.0
    assert len([t for t in reached if t <= closed]) == 2, (reached, closed)
    assert outcomes.count("half_open") >= 10
    for b in fleet:
        wait_for(lambda b=b: b.breaker.state is CircuitState.CLOSED, 1.0)  # type: ignore[misc]


def test_a_failed_probe_reopens_for_longer(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    a = replicas(open_duration=0.3, open_duration_multiplier=2.0)
    trip(a)
    assert client.pttl(a.key) >= 250 or True
    first = int(circuit(client, a)["u"]) - int(circuit(client, a)["t"])
    assert first == 300
    wait_for(lambda: not a.shared_open, 1.0)
    with pytest.raises(OSError):
        a(fail)()  # the probe
    state = circuit(client, a)
    assert state["s"] == "1"
    assert state["r"] == "probe_failed"
    assert int(state["u"]) - int(state["t"]) == 600
    assert a.shared_open
    assert a.breaker.state is CircuitState.OPEN


def test_a_probe_that_never_reports_back_loses_its_lease(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    a = replicas(open_duration=0.2, max_half_open_wait=0.3)
    b = replicas(open_duration=0.2, max_half_open_wait=0.3)
    trip(a)
    wait_for(lambda: not a.shared_open, 1.0)
    # A replica takes the lease and dies before it reports (its process was killed).
    lease = a._probe(keys=list(a._keys), args=list(a._settings.common))
    assert int(lease[10]) == 1
    wait_for(lambda: not b.shared_open, 1.0)
    work = b(lambda: "ok")
    with pytest.raises(CircuitOpenError) as info:
        work()
    assert info.value.state is CircuitState.HALF_OPEN
    # After max_half_open_wait the lease expires: the circuit re-opens, then probes again.
    wait_for(lambda: circuit(client, a).get("r") == "probe_timeout", 1.5)
    wait_for(lambda: b.shared_state is CircuitState.HALF_OPEN or not b.shared_open, 2.0)

    def probe() -> bool:
        try:
            return work() == "ok"
        except CircuitOpenError:
            return False

    wait_for(probe, 2.0)
    assert circuit(client, a)["r"] == "probes_succeeded"


def test_a_cancelled_probe_gives_its_lease_back(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    a = replicas(open_duration=0.2, max_half_open_wait=30.0)
    trip(a)
    wait_for(lambda: not a.shared_open, 1.0)

    @a
    async def slow() -> str:
        await asyncio.sleep(10)
        return "never"

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0.1)
        assert circuit(client, a)["g"] == "1"  # the lease is held
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if circuit(client, a)["g"] == "0":
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert circuit(client, a)["g"] == "0", "the lease came back without waiting 30 s"
    assert a(lambda: "ok")() == "ok"
    assert circuit(client, a)["r"] == "probes_succeeded"


# -- a fleet of processes ----------------------------------------------------------------------

WORKER = Path(__file__).with_name("_redis_breaker_worker.py")


def test_a_fleet_of_four_processes_trips_together_and_probes_twice_in_all(
    client: redis.Redis, prefix: str
) -> None:
    # Replica 0 calls every 10 ms and trips on its own after 5 failures; replicas 1-3 call
    # every 150 ms, too seldom to see 5 failures before the shared state reaches them.
    pauses = ["0.01", "0.15", "0.15", "0.15"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), URL, prefix, str(i), pause],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, pause in enumerate(pauses)
    ]
    try:
        wait_for(lambda: client.llen(prefix + "ready") == 4, 20.0)
        time.sleep(0.5)  # healthy traffic
        client.set(prefix + "dep:down", 1)
        down = time.time()
        key = prefix + "{dependency}"
        wait_for(lambda: client.hget(key, "s") == b"1", 2.0)
        opened = int(client.hget(key, "t") or 0) / 1000.0
        time.sleep(0.3)
        client.delete(prefix + "dep:down")  # back while the circuit is still open
        up = time.time()
        wait_for(lambda: client.hget(key, "r") == b"probes_succeeded", 5.0)
        closed = int(client.hget(key, "t") or 0) / 1000.0
        time.sleep(0.5)  # healthy traffic again on every replica
    finally:
        client.set(prefix + "stop", 1)
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=30)
            assert p.returncode == 0
            results.append(json.loads(out))
    first_rejection = [
        min(t for t, what in r["calls"] if what == "rejected" and t >= down) for r in results
    ]
    spread = max(first_rejection) - opened
    print(
        f"circuit opened {(opened - down) * 1e3:.0f} ms after the dependency went down; "
        f"every replica rejected within {spread * 1e3:.0f} ms of it"
    )
    assert spread <= 1.0
    assert results[0]["opened"][0] == "consecutive_failures"
    assert all(r["opened"][0] == "shared" for r in results[1:]), [r["opened"] for r in results]
    reached = [float(x) for x in client.lrange(prefix + "dep:calls", 0, -1)]
    probes = [t for t in reached if up <= t <= closed]
    print(f"{len(probes)} probes reached the dependency between its recovery and the close")
    assert 1 <= len(probes) <= 2, "half_open_probes=2 for the whole fleet, not per replica"
    for r in results:
        assert any(what == "ok" and t > closed for t, what in r["calls"]), r["index"]


# -- manual control, restarts, blocks --------------------------------------------------------------


def test_manual_open_close_and_reset_reach_the_fleet(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    a, b = replicas(open_duration=5.0), replicas(open_duration=5.0)
    work = b(lambda: "ok")
    a.open()
    assert a.breaker.state is CircuitState.OPEN
    wait_for(lambda: b.shared_open, 1.0)
    with pytest.raises(CircuitOpenError):
        work()
    assert circuit(client, a)["r"] == "manual"
    a.close()
    wait_for(lambda: b.shared_state is CircuitState.CLOSED, 1.0)
    assert work() == "ok"
    a.open()
    wait_for(lambda: b.shared_open, 1.0)
    a.reset()
    wait_for(lambda: b.shared_state is CircuitState.CLOSED, 1.0)
    assert work() == "ok"
    assert a.breaker.snapshot()["transitions"] == 0


def test_a_circuit_deleted_by_hand_is_adopted_afresh(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    a = replicas(open_duration=30.0)
    trip(a)
    client.delete(a.key)  # an operator's DEL, or the TTL ran out
    wait_for(lambda: a.shared_state is CircuitState.CLOSED, 1.0)
    assert a(lambda: "ok")() == "ok"


def test_with_blocks_count_and_probe_like_calls(
    client: redis.Redis, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    a = replicas(open_duration=0.2)
    for _ in range(3):
        with pytest.raises(OSError), a:
            raise OSError("down")
    wait_for(lambda: a.shared_open, 1.0)
    with pytest.raises(CircuitOpenError), a:
        pass
    wait_for(lambda: not a.shared_open, 1.0)
    with a:  # the probe, under a lease
        assert circuit(client, a)["g"] == "1"
    assert circuit(client, a)["r"] == "probes_succeeded"
    assert a.state is CircuitState.CLOSED


async def test_asyncio_client_shares_the_circuit(
    prefix: str, client: redis.Redis, events: CapturingListener
) -> None:
    aclient = redis.asyncio.Redis.from_url(URL, socket_timeout=0.5)
    local = CircuitBreaker(failure_threshold=2, open_duration=0.3, name="api")
    a = RedisCircuitBreaker(local, aclient, key="api", prefix=prefix, poll_interval=0.05)
    other = RedisCircuitBreaker(
        CircuitBreaker(failure_threshold=2, open_duration=0.3), client, key="api", prefix=prefix
    )
    try:

        @a
        async def call(ok: bool) -> str:
            if not ok:
                raise OSError("down")
            return "ok"

        with pytest.raises(TypeError, match="coroutine functions only"):
            a(lambda: None)
        assert await call(True) == "ok"
        for _ in range(2):
            with pytest.raises(OSError):
                await call(False)
        await await_for(lambda: other.shared_open, 1.0)
        with pytest.raises(CircuitOpenError):
            await call(True)
        await await_for(lambda: not a.shared_open, 1.0)
        assert await call(True) == "ok"  # the probe
        assert circuit(client, a)["r"] == "probes_succeeded"
        assert any(isinstance(e, CircuitRejected) for e in events.events)
    finally:
        await a.astop()
        other.stop()
        await aclient.aclose()


# -- the hot path --------------------------------------------------------------------------------


class CountingRedis(redis.Redis):
    """Counts its round trips (the shared server also serves other clients)."""

    sent = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).sent += 1
        return super().execute_command(*args, **options)


def test_hot_path_makes_at_most_one_round_trip_per_100_calls(
    prefix: str, replicas: Callable[..., RedisCircuitBreaker]
) -> None:
    counting = CountingRedis.from_url(URL)
    b = replicas(c=counting)
    work = b(lambda: 1)
    wait_for(lambda: b.shared_state is CircuitState.CLOSED, 1.0)
    before = CountingRedis.sent
    start = time.perf_counter()
    calls = 0
    while (took := time.perf_counter() - start) < 0.5:
        work()
        calls += 1
    sent = CountingRedis.sent - before
    print(f"{sent} Redis round trips during {calls:,} calls ({took * 1e3:.0f} ms)")
    assert sent * 100 <= calls, "at most one round trip per 100 calls"
    assert sent <= took / 0.1 + 2, "only the syncs, one per poll_interval"
    wait_for(lambda: b.snapshot()["fleet_calls"] >= calls, 1.0)

    # Open: rejected calls send nothing either.
    trip(b)
    before = CountingRedis.sent
    for _ in range(10_000):
        with pytest.raises(CircuitOpenError):
            work()
    assert CountingRedis.sent - before <= 5, CountingRedis.sent - before
    counting.close()


# -- Redis outages ---------------------------------------------------------------------------------


def test_unreachable_redis_leaves_the_local_breaker_deciding(
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
        assert shared.shared_state is None
    finally:
        shared.stop()
    dead.close()


def test_outage_mid_run_keeps_calls_flowing_then_resyncs(
    server: Server, events: CapturingListener
) -> None:
    def client() -> redis.Redis:
        return redis.Redis(
            port=server.port,
            socket_timeout=0.05,
            socket_connect_timeout=0.05,
            retry=Retry(NoBackoff(), 0),
        )

    c1, c2 = client(), client()
    opts: dict[str, Any] = {"failure_threshold": 3, "open_duration": 3.0}
    a = RedisCircuitBreaker(
        CircuitBreaker(**opts), c1, key="k", name="a", poll_interval=0.05, min_backoff=0.1
    )
    b = RedisCircuitBreaker(
        CircuitBreaker(**opts), c2, key="k", name="b", poll_interval=0.05, min_backoff=0.1
    )
    try:
        work_a, work_b = a(lambda ok: "ok" if ok else fail()), b(lambda: "ok")
        wait_for(lambda: a.shared and b.shared_state is CircuitState.CLOSED, 2.0)
        server.kill()
        slowest = 0.0
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            assert work_b() == "ok"
            slowest = max(slowest, time.perf_counter() - t0)
        print(f"slowest call while Redis is down: {slowest * 1e3:.2f} ms")
        assert slowest < 0.05, "no call waits on a dead Redis"
        wait_for(lambda: not a.shared and not b.shared, 1.0)
        # Meanwhile a trips on its own calls: only its local breaker knows.
        for _ in range(3):
            with pytest.raises(OSError):
                work_a(False)
        assert a.breaker.state is CircuitState.OPEN
        assert work_b() == "ok"
        server.start()
        # Back: a publishes its trip, b learns it.
        wait_for(lambda: b.shared_open, 3.0)
        with pytest.raises(CircuitOpenError):
            work_b()
        restored = [e for e in events.events if isinstance(e, SharedStateRestored)]
        assert {e.policy for e in restored} == {"a", "b"}
    finally:
        a.stop()
        b.stop()
        c1.close()
        c2.close()


def test_options_are_validated(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="poll_interval must be > 0 and <= 1 seconds, got 2"):
        RedisCircuitBreaker(CircuitBreaker(), client, key="k", poll_interval=2)
    with pytest.raises(ValueError, match="window must be"):
        RedisCircuitBreaker(CircuitBreaker(), client, key="k", window=0)
    with pytest.raises(ValueError, match="key must be a non-empty str"):
        RedisCircuitBreaker(CircuitBreaker(), client)
    with pytest.raises(TypeError, match="breaker must be a CircuitBreaker"):
        RedisCircuitBreaker(object(), client, key="k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"client must be a redis\.Redis"):
        RedisCircuitBreaker(CircuitBreaker(), object(), key="k")


# -- the scripts as a state machine (hypothesis, against the real Redis) -------------------------


class SharedCircuitScripts(RuleBasedStateMachine):
    """Random syncs, trips, lease requests and reports against the scripts: the fleet never
    holds more than ``half_open_probes`` leases in a half-open period (a lease given back
    unused frees its place), and closes exactly when that many probes of one period
    succeeded."""

    PROBES = 2

    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(URL)
        self.prefix = f"resilience-test:{uuid.uuid4().hex}:"
        breaker = CircuitBreaker(
            failure_threshold=1,
            open_duration=0.001,  # half-open at the next script, or the one after
            half_open_probes=self.PROBES,
            max_half_open_wait=60.0,
        )
        self.settings = _Settings(breaker, 10)
        self.keys = [self.prefix + "{c}", self.prefix + "{c}:window"]
        self.sync = self.client.register_script(_SYNC)
        self.probe = self.client.register_script(_PROBE)
        self.report = self.client.register_script(_REPORT)
        self.granted: dict[int, int] = {}
        self.succeeded: dict[int, int] = {}
        self.held: list[int] = []

    def teardown(self) -> None:
        self.client.delete(*self.keys)
        self.client.close()

    def check(self, raw: Any) -> _Reply:
        reply = _Reply(raw)
        state = self.client.hgetall(self.keys[0])
        g, k = int(state.get(b"g", 0)), int(state.get(b"k", 0))
        assert 0 <= k <= g <= self.PROBES
        if reply.state is CircuitState.OPEN:
            time.sleep(reply.left + 0.002)  # so that the next script finds it half-open
        return reply

    @rule(trip=st.booleans(), calls=st.integers(0, 5))
    def sync_outcomes(self, trip: bool, calls: int) -> None:
        args = [*self.settings.common, calls, calls, 0, "t" if trip else "", 10, 100, 50.0, -1, ""]
        self.check(self.sync(keys=self.keys, args=args))

    @rule()
    def ask_for_a_lease(self) -> None:
        reply = self.check(self.probe(keys=self.keys, args=list(self.settings.common)))
        if reply.granted:
            assert reply.state is CircuitState.HALF_OPEN
            self.granted[reply.epoch] = self.granted.get(reply.epoch, 0) + 1
            assert self.granted[reply.epoch] <= self.PROBES
            self.held.append(reply.epoch)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "fail", "slow", "release"]))
    def report_a_probe(self, data: st.DataObject, outcome: str) -> None:
        epoch = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        reply = self.check(
            self.report(keys=self.keys, args=[*self.settings.common, epoch, outcome])
        )
        if reply.epoch == epoch and outcome == "release":
            self.granted[epoch] -= 1
        if reply.epoch == epoch and outcome == "ok":
            self.succeeded[epoch] = self.succeeded.get(epoch, 0) + 1
            assert reply.state is CircuitState.HALF_OPEN
        if reply.epoch != epoch + 1:
            return  # a report of an earlier period, or the period goes on
        # The report ended its half-open period: closed after the last probe succeeded,
        # open again after a failed or slow one.
        if outcome == "ok":
            self.succeeded[epoch] = self.succeeded.get(epoch, 0) + 1
            assert reply.state is CircuitState.CLOSED
            assert reply.reason == "probes_succeeded"
            assert self.succeeded[epoch] == self.PROBES
        else:
            assert outcome in ("fail", "slow")
            assert reply.state is CircuitState.OPEN
            assert reply.reason == f"probe_{'failed' if outcome == 'fail' else 'slow'}"


@pytest.mark.usefixtures("client")
def test_the_scripts_keep_their_promises() -> None:
    run_state_machine_as_test(
        SharedCircuitScripts,
        settings=hypothesis.settings(max_examples=40, stateful_step_count=30, deadline=None),
    )
