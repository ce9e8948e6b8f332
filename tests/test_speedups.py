"""The compiled timing of successes (resilience._speedups) and its Python twin.

Time cannot be injected into the compiled ``Tally``: it reads the system's monotonic
clock. Its durations are checked against envelopes read from ``time.monotonic()``
around each call (the same clock, so ``before <= start <= after`` holds exactly), and
its counts exactly, by choosing the bound so that every call is quick or every call is
slower.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import IN_CI, run_threads
from resilience import Backoff, CircuitBreaker, Pipeline, Retry
from resilience._core.telemetry import (
    CANCELLED,
    QUICK,
    QUICK_SLOT,
    SLOTS,
    STATS,
    SUCCESS,
    TALLY,
    TELEMETRY,
    PolicyGate,
)
from resilience.testing import FakeClock
from telemetry_standins import unique

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def Tally() -> Any:
    if TALLY is None:
        msg = "resilience._speedups was not compiled (no C compiler when installed?)"
        if IN_CI:
            pytest.fail(f"{msg}; CI=true: the build must compile it")
        pytest.skip(msg)
    return TALLY


@pytest.fixture
def metrics_on() -> Iterator[None]:
    TELEMETRY.acquire_metrics(durations=True)
    try:
        yield
    finally:
        TELEMETRY.release_metrics(durations=True)


def test_start_reads_the_clock_of_time_monotonic(Tally: Any) -> None:
    tally = Tally(QUICK, lambda d: None)
    for _ in range(1_000):
        before = time.monotonic()
        start = tally.start()
        after = time.monotonic()
        assert before <= start <= after


def test_quick_successes_are_counted_and_summed(Tally: Any) -> None:
    slower: list[float] = []
    tally = Tally(3600.0, slower.append)  # every call is quick
    envelope = 0.0
    for _ in range(500):
        before = time.monotonic()
        tally.record(tally.start())
        envelope += time.monotonic() - before
    assert (tally.quick, slower) == (500.0, [])
    assert 0.0 <= tally.seconds <= envelope


def test_slower_successes_go_to_the_callback_and_the_sum(Tally: Any) -> None:
    slower: list[float] = []
    tally = Tally(0.0, slower.append)  # every call is slower
    envelopes = []
    for _ in range(200):
        before = time.monotonic()
        t0 = tally.start()
        tally.record(t0)
        envelopes.append(time.monotonic() - before)
    assert tally.quick == 0.0
    assert len(slower) == 200
    assert all(0.0 <= d <= e for d, e in zip(slower, envelopes, strict=True))
    assert tally.seconds == pytest.approx(sum(slower), abs=1e-12)


def test_a_start_from_another_read_of_the_same_clock_is_accepted(Tally: Any) -> None:
    slower: list[float] = []
    tally = Tally(0.0, slower.append)
    t0 = time.monotonic()
    tally.record(t0)
    tally.record(int(t0))  # an int is a number of seconds too
    assert len(slower) == 2
    assert slower[1] >= slower[0]


def test_bad_arguments_are_refused(Tally: Any) -> None:
    with pytest.raises(ValueError, match="bound must be >= 0"):
        Tally(-1.0, print)
    with pytest.raises(ValueError, match="bound must be >= 0"):
        Tally(float("nan"), print)
    with pytest.raises(TypeError, match="slower must be callable"):
        Tally(1.0, None)
    tally = Tally(1.0, print)
    with pytest.raises(TypeError):
        tally.record("soon")
    with pytest.raises(AttributeError):
        tally.quick = 5.0
    assert (tally.quick, tally.seconds) == (0.0, 0.0)


def test_an_error_in_the_callback_is_raised(Tally: Any) -> None:
    def boom(d: float) -> None:
        raise RuntimeError("bucket")

    tally = Tally(0.0, boom)
    with pytest.raises(RuntimeError, match="bucket"):
        tally.record(tally.start())
    assert tally.seconds >= 0.0  # the duration was summed before the callback


def test_no_memory_is_kept_per_call(Tally: Any) -> None:
    tally = Tally(0.0, lambda d: None)  # the slow path: a float made and given away
    t0 = tally.start()
    for _ in range(1_000):  # warm up the allocator
        tally.record(t0)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(50_000):
            tally.record(t0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 10_000, f"{grown} bytes kept after 50,000 records"


def test_a_cycle_through_the_callback_is_collected(Tally: Any) -> None:
    class Owner:
        def slower(self, d: float) -> None:
            pass

    owner = Owner()
    owner.tally = Tally(QUICK, owner.slower)  # type: ignore[attr-defined]
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None


# -- in the policies ------------------------------------------------------------------------------


def test_a_policy_on_the_system_clock_uses_the_tally_and_one_on_a_fake_clock_does_not(
    Tally: Any,
) -> None:
    on_system = PolicyGate(Retry(on=OSError), _scope(unique("system")))
    tally = on_system.stats.tally
    assert on_system.timer() == (tally.start, tally.record)
    clock = FakeClock()
    on_fake = PolicyGate(Retry(on=OSError, clock=clock), _scope(unique("fake")))
    start, record = on_fake.timer()
    assert start == clock.now
    t0 = start()
    clock.advance(0.25)
    record(t0)  # the Python twin, on the injected clock
    assert (on_fake.stats.seconds(SUCCESS), on_fake.stats.timed(SUCCESS)) == (0.25, 1)
    assert (tally.quick, tally.seconds) == (0.0, 0.0)


def _scope(policy: str) -> Any:
    from resilience._core.strategy import Scope

    return Scope(policy, "retry")


def test_every_success_is_counted_with_a_duration_inside_its_envelope(
    Tally: Any,
    metrics_on: None,
) -> None:
    name = unique("compiled")
    sleeps = [0.0, 0.0002, 0.0]  # the middle call is slower than the first bound

    @Pipeline(Retry(on=OSError, attempts=2, backoff=Backoff.constant(0.0)), name=name)
    def work(i: int) -> int:
        if sleeps[i % 3]:
            time.sleep(sleeps[i % 3])
        return i

    envelope = 0.0
    for i in range(300):
        before = time.monotonic()
        assert work(i) == i
        envelope += time.monotonic() - before
    stats = STATS.get(name, "pipeline")
    assert stats.calls(SUCCESS) == stats.timed(SUCCESS) == 300
    h = stats.slots(SUCCESS)
    quick, slower = int(stats.tally.quick), sum(h[QUICK_SLOT + 1 : SLOTS])
    assert sum(h[:QUICK_SLOT]) == 0  # a quick call is counted in the first bucket only
    assert h[QUICK_SLOT] == quick  # all of them from the compiled tally
    assert quick + slower == 300
    assert slower >= 100  # at least the calls that slept 200 µs (a busy host adds more)
    assert 100 * 0.0002 <= stats.seconds(SUCCESS) <= envelope


async def test_async_successes_and_a_cancelled_call_are_recorded_in_their_envelopes(
    Tally: Any,
    metrics_on: None,
) -> None:
    name = unique("compiled_async")
    gate = asyncio.Event()

    @CircuitBreaker(failure_threshold=None, name=name)
    async def work(wait: bool) -> int:
        if wait:
            await gate.wait()
        await asyncio.sleep(0)
        return 1

    envelope = 0.0
    for _ in range(200):
        before = time.monotonic()
        assert await work(False) == 1
        envelope += time.monotonic() - before
    before = time.monotonic()
    stuck = asyncio.ensure_future(work(True))
    await asyncio.sleep(0)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    stats = STATS.get(name, "circuit_breaker")
    assert stats.calls(SUCCESS) == stats.timed(SUCCESS) == 200
    assert 0.0 < stats.seconds(SUCCESS) <= envelope
    assert stats.calls(CANCELLED) == stats.timed(CANCELLED) == 1
    assert 0.0 < stats.seconds(CANCELLED) <= time.monotonic() - before


def test_threads_lose_no_compiled_count(
    Tally: Any,
    metrics_on: None,
    eager_switching: None,
) -> None:
    name = unique("compiled_threads")
    breaker = CircuitBreaker(failure_threshold=None, name=name)

    @breaker
    def work() -> int:
        return 1

    run_threads(8, lambda: [work() for _ in range(2_000)])
    stats = STATS.get(name, "circuit_breaker")
    assert stats.calls(SUCCESS) == stats.timed(SUCCESS) == 16_000


def test_without_the_speedups_the_python_timer_counts_the_same() -> None:
    code = """
import time
from resilience import Retry
from resilience._core.telemetry import STATS, SUCCESS, TALLY, TELEMETRY
assert TALLY is None, TALLY
TELEMETRY.acquire_metrics(durations=True)

@Retry(on=OSError, name="pure")
def work() -> int:
    return 1

before = time.monotonic()
for _ in range(1000):
    work()
envelope = time.monotonic() - before
stats = STATS.get("pure", "retry")
assert stats.tally is None
assert stats.calls(SUCCESS) == stats.timed(SUCCESS) == 1000
assert 0 < stats.seconds(SUCCESS) <= envelope
print("ok")
"""
    env = {**os.environ, "RESILIENCE_NO_EXTENSIONS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
