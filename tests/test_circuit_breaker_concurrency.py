"""One breaker under real concurrency: 64 threads, then 1,000 asyncio tasks.

The calls fail, are interrupted or cancelled at random and move the fake clock on, so
the breaker cycles through every state many times while calls overlap. The machine is
replaced by an instrumented one that counts, independently of the machine's own
counters, every permit it hands out and every report it gets. Afterwards:

- no half-open epoch ever had more than ``half_open_probes`` probes in flight;
- every admitted call reported exactly once, and no probe is left in flight;
- what the callers saw adds up with what the breaker counted;
- the breaker is not wedged: with ``max_half_open_wait`` far beyond the test's time, a
  probe slot lost on any path would keep it half-open and reject the clean calls at the
  end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from conftest import run_threads
from resilience import CircuitBreaker, CircuitOpenError, CircuitState, CircuitStateChanged
from resilience.circuit_breaker import _Machine, _Transition
from resilience.testing import CapturingListener, FakeClock

PROBES = 2


class Boom(Exception):
    pass


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt in threads."""


class CountingMachine(_Machine):
    """The real machine, plus an independent tally of permits and reports."""

    __slots__ = ("admitted", "in_flight", "most_in_flight", "reports", "tally_lock")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.tally_lock = threading.Lock()
        self.in_flight: Counter[int] = Counter()  # probes in flight, per half-open epoch
        self.most_in_flight = 0
        self.admitted = 0  # permits handed out by acquire()
        self.reports = 0  # on_success / on_failure / release calls

    def acquire(self, now: float) -> Any:
        decision = super().acquire(now)
        permit = decision if isinstance(decision, int) else decision[0]
        if permit is not None:
            with self.tally_lock:
                self.admitted += 1
                if permit & 1:  # a half-open epoch: a probe
                    self.in_flight[permit] += 1
                    self.most_in_flight = max(self.most_in_flight, self.in_flight[permit])
        return decision

    def _reported(self, permit: int) -> None:
        with self.tally_lock:
            self.reports += 1
            if permit & 1:
                self.in_flight[permit] -= 1
                assert self.in_flight[permit] >= 0

    def _on_success_count(self, permit: int, now: float, duration: float) -> _Transition | None:
        self._reported(permit)
        return super()._on_success_count(permit, now, duration)

    def on_failure(
        self, permit: int, error: BaseException, now: float, duration: float
    ) -> _Transition | None:
        self._reported(permit)
        return super().on_failure(permit, error, now, duration)

    def release(self, permit: int) -> None:
        self._reported(permit)
        super().release(permit)


def instrumented(clock: FakeClock, max_wait: float) -> tuple[CircuitBreaker, CountingMachine]:
    b = CircuitBreaker(
        failure_threshold=3,
        failure_rate_threshold=40,
        window_size=20,
        minimum_calls=10,
        open_duration=0.05,
        half_open_probes=PROBES,
        max_half_open_wait=max_wait,
        name="hammered",
        clock=clock,
    )
    machine = CountingMachine(b.options, clock.now())
    b._machine = machine  # before decorating: the drivers bind the machine's methods
    return b, machine


def check(
    b: CircuitBreaker, machine: CountingMachine, seen: Counter[str], events: CapturingListener
) -> None:
    snap = b.snapshot()
    assert machine.most_in_flight <= PROBES
    assert machine.most_in_flight >= 1, "the breaker never went half-open: a weak test"
    assert all(n == 0 for n in machine.in_flight.values()), "a probe never reported"
    assert snap["half_open_in_flight"] == 0
    ran = seen["ok"] + seen["failed"] + seen["interrupted"]
    assert seen["rejected"] == snap["not_permitted_calls"]
    # Closed-state calls are admitted without acquire(); every admitted call reports once.
    assert machine.reports == ran
    assert machine.admitted <= ran
    assert snap["transitions"] == len(events.of_type(CircuitStateChanged))
    states = {e.to_state for e in events.of_type(CircuitStateChanged)}
    assert {"open", "half_open", "closed"} <= states
    assert snap["calls_in_window"] <= 20
    assert snap["failed_calls"] <= snap["calls_in_window"]


def recovers(b: CircuitBreaker, clock: FakeClock, call: Any) -> None:
    """Clean calls after the open duration close the breaker, whatever state it was in."""
    clock.advance(1)  # > open_duration, < the long max_half_open_wait
    for _ in range(PROBES + 1):
        call()
    assert b.state is CircuitState.CLOSED


@pytest.mark.parametrize("hangs", [True, False], ids=["probes-time-out", "no-timeouts"])
def test_64_threads(clock: FakeClock, events: CapturingListener, hangs: bool) -> None:
    # With hangs, some calls outlive max_half_open_wait; without, none can, and a leaked
    # probe slot would wedge the breaker.
    b, machine = instrumented(clock, 0.5 if hangs else 10_000)
    seen: Counter[str] = Counter()
    seen_lock = threading.Lock()
    start = threading.Barrier(64)

    @b
    def work(rng: random.Random) -> str:
        roll = rng.random()
        if roll < 0.3:
            clock.advance(0.01)
        if roll < 0.02 and hangs:
            # A call (maybe a probe) that outlives max_half_open_wait, long enough in
            # real time for other threads to find it so.
            clock.advance(0.6)
            time.sleep(0.002)
        if roll < 0.35:
            raise Boom
        if roll < 0.40:
            raise Interrupted
        return "ok"

    clean = random.Random(0)
    clean.random = lambda: 0.9  # type: ignore[method-assign]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: Counter[str] = Counter()
        start.wait()
        for _ in range(150):
            try:
                work(rng)
                mine["ok"] += 1
            except Boom:
                mine["failed"] += 1
            except Interrupted:
                mine["interrupted"] += 1
            except CircuitOpenError:
                mine["rejected"] += 1
                clock.advance(0.01)
        with seen_lock:
            seen.update(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert sum(seen.values()) == 64 * 150
    check(b, machine, seen, events)
    if hangs:
        assert any(e.reason == "probe_timeout" for e in events.of_type(CircuitStateChanged))
    else:
        assert not any(e.reason == "probe_timeout" for e in events.of_type(CircuitStateChanged))
        recovers(b, clock, lambda: work(clean))


async def test_1000_tasks_with_cancellations(clock: FakeClock, events: CapturingListener) -> None:
    b, machine = instrumented(clock, 10_000)
    seen: Counter[str] = Counter()
    rng = random.Random(7)

    @b
    async def work(roll: float) -> str:
        for _ in range(int(roll * 10) % 3):
            await asyncio.sleep(0)
        if roll < 0.3:
            clock.advance(0.01)
        if roll < 0.35:
            raise Boom
        return "ok"

    async def worker(rolls: list[float]) -> None:
        for roll in rolls:
            try:
                await work(roll)
                seen["ok"] += 1
            except Boom:
                seen["failed"] += 1
            except CircuitOpenError:
                seen["rejected"] += 1
                clock.advance(0.01)
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                seen["interrupted"] += 1
                raise

    tasks = [asyncio.create_task(worker([rng.random() for _ in range(8)])) for _ in range(1000)]
    cancelled = 0
    for _ in range(20):
        await asyncio.sleep(0)
        for task in rng.sample(tasks, 10):
            if not task.done():
                task.cancel()
                cancelled += 1
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert cancelled > 0
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    # A task cancelled before it started never called; one cancelled between calls
    # raised at its sleep, outside the breaker; the rest were cancelled inside a call.
    assert 0 < seen["interrupted"] <= cancelled
    check(b, machine, seen, events)
    # Not wedged: every cancelled probe gave its slot back.
    clock.advance(1)
    for _ in range(PROBES + 1):
        assert await work(0.9) == "ok"
    assert b.state is CircuitState.CLOSED


def test_closed_successes_are_counted_exactly(eager_switching: None) -> None:
    # The closed-state success is recorded without the lock: no update may be lost,
    # also while failures (which take the lock) land in between.
    b = CircuitBreaker(window_size=1_000_000, failure_threshold=None, name="exact-ok")

    @b
    def work(fail: bool) -> None:
        if fail:
            raise Boom

    def hammer() -> None:
        for i in range(3_000):
            with contextlib.suppress(Boom):
                work(i % 100 == 0)

    run_threads(16, hammer)
    calls = 16 * 3_000
    snap = b.snapshot()
    assert snap["state"] == "closed"
    assert snap["calls_in_window"] == calls
    assert snap["failed_calls"] == 16 * 30


def test_rejections_are_counted_exactly(eager_switching: None) -> None:
    b = CircuitBreaker(open_duration=3600, name="exact-rejected")

    @b
    def work() -> None:
        raise AssertionError("an open breaker ran the call")

    b.open()

    def hammer() -> None:
        for _ in range(3_000):
            with pytest.raises(CircuitOpenError):
                work()

    run_threads(16, hammer)
    assert b.snapshot()["not_permitted_calls"] == 16 * 3_000
