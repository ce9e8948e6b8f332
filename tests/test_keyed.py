"""Keyed: a strategy per key in a bounded, thread-safe LRU with idle expiry."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Hashable
from typing import Any, ClassVar

import pytest

import resilience
from resilience import (
    Bulkhead,
    BulkheadFullError,
    BulkheadRejected,
    Keyed,
    Pipeline,
    RateLimitedError,
    RateLimiter,
    Retry,
    Strategy,
)
from resilience._core.strategy import AnyCallable, AsyncCallable, Scope
from resilience.testing import CapturingListener, FakeClock


class Counting(Strategy):
    """A pass-through strategy that counts how often its drivers are built and run."""

    kind: ClassVar[str] = "counting"

    def __init__(self, key: Hashable) -> None:
        super().__init__()
        self.key = key
        self.built = 0
        self.calls = 0

    def snapshot(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "calls": self.calls, "parity": "even"}

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        self.built += 1

        def run(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return fn(*args, **kwargs)

        return run

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        self.built += 1

        async def run(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await fn(*args, **kwargs)

        return run


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"factory": None}, TypeError, ["factory", "None"]),
        ({"factory": Counting, "key": 3}, TypeError, ["key", "3"]),
        ({"factory": Counting, "max_keys": 0}, ValueError, ["max_keys", ">= 1", "0"]),
        ({"factory": Counting, "max_keys": "many"}, TypeError, ["max_keys", "'many'"]),
        ({"factory": Counting, "idle_expiry": 0}, ValueError, ["idle_expiry", "> 0", "0"]),
        ({"factory": Counting, "idle_expiry": -5}, ValueError, ["idle_expiry", "-5"]),
        ({"factory": Counting, "clock": 1}, TypeError, ["clock"]),
    ],
)
def test_options_are_validated_with_the_parameter_named(
    kwargs: dict[str, Any], exc: type[Exception], words: list[str]
) -> None:
    with pytest.raises(exc) as info:
        Keyed(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_decorating_needs_a_key_function() -> None:
    keyed = Keyed(Counting)
    with pytest.raises(TypeError, match="key="):

        @keyed
        def call() -> None:  # pragma: no cover
            pass


def test_a_factory_must_return_a_strategy() -> None:
    keyed = Keyed(lambda key: "not a strategy")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="factory must return a Strategy"):
        keyed.for_key("a")
    assert len(keyed) == 0


def test_exported_and_repr() -> None:
    assert "Keyed" in resilience.__all__
    keyed = Keyed(Counting, max_keys=8, idle_expiry=None, name="per_host")
    assert repr(keyed).endswith("max_keys=8, idle_expiry=None, name='per_host')")
    assert (keyed.max_keys, keyed.idle_expiry) == (8, None)
    assert len(keyed) == 0
    assert keyed, "an empty registry is still a strategy"


# -- the registry -----------------------------------------------------------------------------


def test_for_key_makes_each_strategy_once(clock: FakeClock) -> None:
    made: list[Hashable] = []

    def factory(key: Hashable) -> Counting:
        made.append(key)
        return Counting(key)

    keyed = Keyed(factory, clock=clock)
    a = keyed.for_key("a")
    assert keyed.for_key("a") is a
    assert keyed.for_key(("b", 1)).key == ("b", 1)
    assert made == ["a", ("b", 1)]
    assert len(keyed) == 2


def test_least_recently_used_key_is_evicted(clock: FakeClock) -> None:
    keyed = Keyed(Counting, max_keys=2, clock=clock)
    a = keyed.for_key("a")
    b = keyed.for_key("b")
    assert keyed.for_key("a") is a  # a is now the most recently used
    keyed.for_key("c")
    assert len(keyed) == 2
    assert keyed.for_key("a") is a
    assert keyed.for_key("b") is not b, "b was evicted and starts afresh"
    assert keyed.snapshot()["evicted"] == 2  # b, then c to make room for b again


def test_idle_keys_expire_under_the_fake_clock(clock: FakeClock) -> None:
    keyed = Keyed(Counting, idle_expiry=600, clock=clock)
    a = keyed.for_key("a")
    clock.advance(599.999)
    assert keyed.for_key("a") is a  # used again: the idle time starts over
    clock.advance(599.999)
    b = keyed.for_key("b")
    clock.advance(0.001)
    assert keyed.for_key("a") is not a, "idle for 600 s: forgotten"
    assert keyed.for_key("b") is b
    assert keyed.snapshot()["evicted"] == 1


def test_idle_keys_are_dropped_when_new_keys_arrive(clock: FakeClock) -> None:
    keyed = Keyed(Counting, idle_expiry=10, clock=clock)
    for i in range(50):
        keyed.for_key(i)
    clock.advance(10)
    keyed.for_key("new")
    assert len(keyed) == 1


def test_unbounded_keys_cannot_grow_the_registry(clock: FakeClock) -> None:
    keyed = Keyed(lambda key: Bulkhead(1), key=lambda user: user, max_keys=100, clock=clock)

    @keyed
    def call(user: int) -> int:
        return user

    for user in range(10_000):
        assert call(user) == user
    assert len(keyed) == 100
    assert keyed.snapshot()["evicted"] == 9_900


# -- as a decorator ---------------------------------------------------------------------------


def test_each_key_gets_its_own_strategy(clock: FakeClock) -> None:
    keyed = Keyed(lambda host: Bulkhead(1), key=lambda host, path: host, clock=clock)
    results: list[str] = []

    @keyed
    def fetch(host: str, path: str) -> str:
        if host == "a":
            # key "a" is busy now; key "b" has its own bulkhead
            with pytest.raises(BulkheadFullError):
                fetch("a", "/again")
            results.append(fetch("b", "/"))
        return f"{host}{path}"

    assert fetch("a", "/x") == "a/x"
    assert results == ["b/"]


def test_the_childs_closure_is_built_once_per_key_and_call_site(clock: FakeClock) -> None:
    keyed = Keyed(Counting, key=lambda key, value: key, clock=clock)

    @keyed
    def first(key: str, value: int) -> int:
        return value

    @keyed
    def second(key: str, value: int) -> int:
        return -value

    for i in range(5):
        assert first("a", i) == i
        assert second("a", i) == -i
    first("b", 0)
    child = keyed.for_key("a")
    assert (child.built, child.calls) == (2, 10), "one closure per decorated function"
    assert keyed.for_key("b").built == 1


def test_methods_see_self_in_the_key_function(clock: FakeClock) -> None:
    class Client:
        def __init__(self, host: str) -> None:
            self.host = host

        @Keyed(Counting, key=lambda self, path: self.host, clock=clock)
        def get(self, path: str) -> str:
            return self.host + path

    assert Client("a").get("/x") == "a/x"
    assert Client("b").get("/y") == "b/y"


async def test_async_calls_run_through_their_keys_strategy(clock: FakeClock) -> None:
    keyed = Keyed(lambda tenant: RateLimiter(1, clock=clock), key=lambda tenant: tenant)

    @keyed
    async def handle(tenant: str) -> str:
        return tenant

    assert await handle("t1") == "t1"
    assert await handle("t2") == "t2"
    with pytest.raises(RateLimitedError):
        await handle("t1")
    clock.advance(1.0)
    assert await handle("t1") == "t1"


def test_events_carry_the_keyed_policy_never_the_key(
    clock: FakeClock, events: CapturingListener
) -> None:
    keyed = Keyed(
        lambda tenant: Bulkhead(1, name=f"bulkhead-{tenant}"),  # a name is ignored in events
        key=lambda tenant: tenant,
        name="per_tenant",
        clock=clock,
    )

    @keyed
    def handle(tenant: str) -> None:
        with pytest.raises(BulkheadFullError) as info:
            handle(tenant)
        assert info.value.policy == "per_tenant"

    handle("secret-tenant-42")
    [event] = events.of_type(BulkheadRejected)
    assert event.source == "per_tenant/bulkhead"
    assert "secret-tenant-42" not in repr(event)


def test_in_a_pipeline_events_carry_the_pipeline_name(
    clock: FakeClock, events: CapturingListener
) -> None:
    keyed = Keyed(lambda host: RateLimiter(1, clock=clock), key=lambda host: host)

    @Pipeline(Retry(on=RateLimitedError, attempts=2, clock=clock), keyed, name="crawler")
    def crawl(host: str) -> float:
        return clock.now()

    assert crawl("a") == 0.0
    assert crawl("a") == 1.0  # the retry waited the limiter's retry_after
    assert crawl("b") == 1.0
    assert {e.source for e in events.events if e.source.startswith("crawler/")} >= {
        "crawler/rate_limiter",
        "crawler/retry",
    }


# -- calls in flight pin their key ----------------------------------------------------------------


async def test_evicting_a_key_never_breaks_its_calls_in_flight(clock: FakeClock) -> None:
    keyed = Keyed(lambda key: Bulkhead(1), key=lambda key, gate: key, max_keys=1, clock=clock)

    @keyed
    async def work(key: str, gate: asyncio.Event) -> str:
        await gate.wait()
        return key

    gate_a = asyncio.Event()
    a_task = asyncio.create_task(work("a", gate_a))
    await asyncio.sleep(0)
    a_bulkhead = keyed.for_key("a")
    assert a_bulkhead.in_flight == 1
    done = asyncio.Event()
    done.set()
    assert await work("b", done) == "b"
    assert await work("c", done) == "c"
    # "a" has a call in flight: it stayed, and still limits its key to one call at a time.
    assert keyed.for_key("a") is a_bulkhead
    with pytest.raises(BulkheadFullError):
        await work("a", done)
    assert len(keyed) <= 2
    gate_a.set()
    assert await a_task == "a"
    assert a_bulkhead.in_flight == 0
    await work("d", done)
    await work("e", done)
    assert len(keyed) == 1
    assert keyed.for_key("a") is not a_bulkhead, "once idle, a is evicted like any key"


async def test_idle_expiry_skips_keys_with_calls_in_flight(clock: FakeClock) -> None:
    keyed = Keyed(Counting, key=lambda key, gate: key, idle_expiry=10, clock=clock)

    @keyed
    async def work(key: str, gate: asyncio.Event) -> str:
        await gate.wait()
        return key

    gate = asyncio.Event()
    slow = asyncio.create_task(work("slow", gate))
    await asyncio.sleep(0)
    child = keyed.for_key("slow")
    clock.advance(60)
    done = asyncio.Event()
    done.set()
    await work("other", done)
    assert keyed.for_key("slow") is child
    gate.set()
    assert await slow == "slow"
    clock.advance(10)
    assert keyed.for_key("slow") is not child


def test_a_strategy_from_for_key_keeps_working_after_eviction(clock: FakeClock) -> None:
    keyed = Keyed(lambda key: Bulkhead(1), max_keys=1, clock=clock)
    held = keyed.for_key("a")
    with held:
        keyed.for_key("b")  # evicts "a" from the registry
        assert held.in_flight == 1
    assert held.in_flight == 0
    assert keyed.for_key("a") is not held


# -- snapshot ---------------------------------------------------------------------------------


def test_snapshot_aggregates_children_without_naming_keys(clock: FakeClock) -> None:
    keyed = Keyed(lambda tenant: Bulkhead(2), key=lambda tenant: tenant, name="per_tenant")

    @keyed
    def handle(tenant: str) -> None:
        if tenant == "t1":
            handle("t2")

    handle("t1")
    with keyed.for_key("t1"), keyed.for_key("t1"), pytest.raises(BulkheadFullError):
        handle("t1")
    snap = keyed.snapshot()
    assert snap == {
        "kind": "keyed",
        "name": "per_tenant",
        "keys": 2,
        "max_keys": 1024,
        "evicted": 0,
        "children": {
            "kind": "bulkhead",
            "max_concurrent": {"sum": 4, "min": 2, "max": 2},
            "max_queued": {"sum": 0, "min": 0, "max": 0},
            "in_flight": {"sum": 0, "min": 0, "max": 0},
            "queued": {"sum": 0, "min": 0, "max": 0},
            "rejected": {"sum": 1, "min": 0, "max": 1},
        },
    }
    assert "t1" not in json.dumps(snap)
    detailed = keyed.snapshot(include_keys=True)
    assert set(detailed["by_key"]) == {"t1", "t2"}
    assert detailed["by_key"]["t1"]["rejected"] == 1
    json.dumps(detailed)


def test_snapshot_counts_text_fields_and_mixed_kinds(clock: FakeClock) -> None:
    keyed = Keyed(
        lambda key: Counting(key) if key != "limiter" else RateLimiter(1, clock=clock),
        clock=clock,
    )
    keyed.for_key("x")
    keyed.for_key("y")
    keyed.for_key("limiter")
    children = keyed.snapshot()["children"]
    assert children["kind"] == "mixed"
    assert children["parity"] == {"even": 2}
    assert children["calls"] == {"sum": 0, "min": 0, "max": 0}
    assert children["rate"] == {"sum": 1, "min": 1, "max": 1}
    assert Keyed(Counting).snapshot()["children"] == {}


# -- concurrency ------------------------------------------------------------------------------


def test_threads_hammering_many_keys_stay_bounded_and_consistent() -> None:
    keyed = Keyed(lambda key: Bulkhead(1, max_queued=100), key=lambda key: key, max_keys=16)
    guard = threading.Lock()
    running: dict[int, int] = {}
    peak: dict[int, int] = {}
    errors: list[BaseException] = []

    @keyed
    def work(key: int) -> None:
        with guard:
            running[key] = running.get(key, 0) + 1
            peak[key] = max(peak.get(key, 0), running[key])
        time.sleep(0.0002)
        with guard:
            running[key] -= 1

    def worker(seed: int) -> None:
        try:
            for i in range(100):
                work((seed * 7 + i) % 40)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert len(keyed) <= 16
    assert max(peak.values()) == 1, "one bulkhead per key, never two at once"
    snap = keyed.snapshot()
    assert snap["children"]["in_flight"]["sum"] == 0
    assert snap["children"]["queued"]["sum"] == 0
