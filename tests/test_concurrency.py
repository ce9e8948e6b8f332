"""Real concurrency through one decorated function: every call keeps its own attempts.

64 threads and 1,000 asyncio tasks share one Retry; failures are injected per call. A
retry that kept its attempt counter on the decorator or the wrapped function (as tenacity
once did, issue #93) would mix calls up: here each call must see exactly its own attempts
in the schedule, the events and the note on its error.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

from resilience import (
    AttemptInfo,
    Pipeline,
    Retry,
    RetryBudget,
    RetryGaveUp,
    RetryScheduled,
    Timeout,
    remaining,
)
from resilience.testing import CapturingListener, FakeClock

ATTEMPTS = 3


class Injected(Exception):
    """A failure of call ``call`` at its attempt ``attempt`` (as counted by the call itself)."""

    def __init__(self, call: str, attempt: int) -> None:
        super().__init__(call, attempt)
        self.call = call
        self.attempt = attempt


def failures_for(call: str) -> int:
    """How many times a call fails before it succeeds; 3 or more exhausts the retry."""
    return random.Random(call).randrange(5)


class RecordingSchedule:
    """No wait; records what the retry said about each failed attempt."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def delay(self, info: AttemptInfo, rng: random.Random) -> float:
        assert isinstance(info.error, Injected)
        with self._lock:
            self.seen.append((info.error.call, info.attempt, info.error.attempt))
        return 0.0


def check_calls(
    outcomes: dict[str, Any], schedule: RecordingSchedule, events: CapturingListener
) -> None:
    """Each call returned its own result or gave up with its own last error, after its own
    number of attempts; the schedule and the events saw its attempts and no one else's."""
    assert schedule.seen, "no retry happened at all"
    for call, told, own in schedule.seen:
        assert told == own, f"{call}: the retry said attempt {told}, the call was at {own}"
    per_call: dict[str, list[int]] = defaultdict(list)
    for call, told, _ in schedule.seen:
        per_call[call].append(told)
    scheduled: dict[str, list[int]] = defaultdict(list)
    for e in events.of_type(RetryScheduled):
        assert isinstance(e.error, Injected)
        assert e.attempt == e.error.attempt
        scheduled[e.error.call].append(e.attempt)
    gave_up = {e.error.call: e.attempts for e in events.of_type(RetryGaveUp)}  # type: ignore[union-attr]

    for call, outcome in outcomes.items():
        failures = failures_for(call)
        retried = list(range(1, min(failures, ATTEMPTS - 1) + 1))
        assert sorted(per_call.get(call, [])) == retried, call
        assert sorted(scheduled.get(call, [])) == retried, call
        if failures < ATTEMPTS:
            assert outcome == f"result of {call}", call
            assert call not in gave_up
        else:
            assert isinstance(outcome, Injected), call
            assert (outcome.call, outcome.attempt) == (call, ATTEMPTS)
            assert outcome.__notes__ == [
                f"resilience: shared/retry gave up after {ATTEMPTS} attempt(s) (attempts)"
            ]
            assert gave_up[call] == ATTEMPTS


@pytest.mark.parametrize("full", [False, True], ids=["fast-path", "full-path"])
def test_64_threads_through_one_retry(events: CapturingListener, full: bool) -> None:
    threads, calls_per_thread = 64, 8
    schedule = RecordingSchedule()
    budget = RetryBudget(ratio=1000, clock=FakeClock()) if full else None
    seen_deadlines: list[float | None] = []

    @Retry(
        on=Injected,
        attempts=ATTEMPTS,
        backoff=schedule,
        total_timeout=30 if full else None,
        budget=budget,
        name="shared",
    )
    def work(call: str, attempt_counter: list[int]) -> str:
        attempt_counter[0] += 1
        time.sleep(0)  # let the other threads in between attempts
        if full:
            seen_deadlines.append(remaining())
        if attempt_counter[0] <= failures_for(call):
            raise Injected(call, attempt_counter[0])
        return f"result of {call}"

    outcomes: dict[str, Any] = {}
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def client(t: int) -> None:
        start.wait()
        for n in range(calls_per_thread):
            call = f"t{t}-c{n}"
            try:
                result: Any = work(call, [0])
            except Injected as exc:
                result = exc
            with lock:
                outcomes[call] = result

    pool = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in pool)
    assert len(outcomes) == threads * calls_per_thread
    check_calls(outcomes, schedule, events)
    if full:
        assert budget is not None
        assert budget.snapshot()["requests"] == threads * calls_per_thread
        assert budget.snapshot()["retries"] == len(schedule.seen)
        assert all(d is not None and 0 < d <= 30 for d in seen_deadlines)


@pytest.mark.parametrize("full", [False, True], ids=["fast-path", "full-path"])
async def test_1000_tasks_through_one_retry(events: CapturingListener, full: bool) -> None:
    schedule = RecordingSchedule()
    retry = Retry(
        on=Injected,
        attempts=ATTEMPTS,
        backoff=schedule,
        total_timeout=30 if full else None,
        name=None if full else "shared",  # in the pipeline, the pipeline names the policy
    )
    strategy = Pipeline(Timeout(30), retry, name="shared") if full else retry
    started = 0

    @strategy
    async def work(call: str) -> str:
        nonlocal started
        started += 1
        attempt = counters[call] = counters.get(call, 0) + 1
        await asyncio.sleep(0)  # every task interleaves with the others at each attempt
        if full:
            assert remaining() is not None
        if attempt <= failures_for(call):
            raise Injected(call, attempt)
        await asyncio.sleep(0)
        return f"result of {call}"

    counters: dict[str, int] = {}
    calls = [f"task-{n}" for n in range(1000)]
    results = await asyncio.gather(*(work(c) for c in calls), return_exceptions=True)
    outcomes = dict(zip(calls, results, strict=True))
    check_calls(outcomes, schedule, events)
    assert started == sum(min(failures_for(c), ATTEMPTS - 1) + 1 for c in calls)
