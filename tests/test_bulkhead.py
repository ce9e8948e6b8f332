"""Bulkhead: permits, the queue, rejections and giving every permit back."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import resilience
from conftest import run_threads, settle, wait_until
from resilience import (
    Bulkhead,
    BulkheadFullError,
    BulkheadRejected,
    BulkheadWaited,
    Pipeline,
    RejectedError,
    Timeout,
    TimeoutExceededError,
    deadline,
)
from resilience._core.telemetry import CALL_OUTCOMES, STATS, TELEMETRY
from resilience._core.waiters import Waiter
from resilience.bulkhead import _Permits
from resilience.testing import CapturingListener, FakeClock

T = TypeVar("T")

SNAPSHOT_KEYS = {"kind", "name", "max_concurrent", "max_queued", "in_flight", "queued", "rejected"}


async def within(awaitable: Awaitable[T], seconds: float = 5.0) -> T:
    """Await with a real-time bound, so that a lost permit fails the test instead of hanging."""
    return await asyncio.wait_for(awaitable, seconds)


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"max_concurrent": 0}, ValueError, ["max_concurrent", ">= 1", "0"]),
        ({"max_concurrent": 2.5}, TypeError, ["max_concurrent", "int", "2.5"]),
        ({"max_concurrent": True}, TypeError, ["max_concurrent", "True"]),
        ({"max_concurrent": 1, "max_queued": -1}, ValueError, ["max_queued", ">= 0", "-1"]),
        (
            {"max_concurrent": 1, "max_queued": 1, "queue_timeout": 0},
            ValueError,
            ["queue_timeout", "> 0", "0"],
        ),
        (
            {"max_concurrent": 1, "max_queued": 1, "queue_timeout": "1s"},
            TypeError,
            ["queue_timeout", "'1s'"],
        ),
        ({"max_concurrent": 1, "queue_timeout": 1.0}, ValueError, ["queue_timeout", "max_queued"]),
        ({"max_concurrent": 1, "clock": object()}, TypeError, ["clock"]),
        ({"max_concurrent": 1, "name": ""}, ValueError, ["name"]),
    ],
)
def test_options_are_validated_with_the_parameter_named(
    kwargs: dict[str, Any], exc: type[Exception], words: list[str]
) -> None:
    with pytest.raises(exc) as info:
        Bulkhead(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_repr_and_properties() -> None:
    b = Bulkhead(3, max_queued=2, queue_timeout=1.5, name="db")
    assert repr(b) == "Bulkhead(3, max_queued=2, queue_timeout=1.5, name='db')"
    assert (b.max_concurrent, b.max_queued, b.queue_timeout) == (3, 2, 1.5)
    assert (b.in_flight, b.queued) == (0, 0)


def test_snapshot_has_exactly_the_documented_keys() -> None:
    snap = Bulkhead(2, max_queued=1, name="db").snapshot()
    assert set(snap) == SNAPSHOT_KEYS
    assert snap == {
        "kind": "bulkhead",
        "name": "db",
        "max_concurrent": 2,
        "max_queued": 1,
        "in_flight": 0,
        "queued": 0,
        "rejected": 0,
    }


def test_public_names_are_exported() -> None:
    for name in ("Bulkhead", "BulkheadFullError", "BulkheadRejected", "BulkheadWaited"):
        assert name in resilience.__all__
    assert issubclass(BulkheadFullError, RejectedError)
    assert issubclass(BulkheadRejected, resilience.CallRejected)


# -- sync -------------------------------------------------------------------------------------


def test_sync_call_holds_a_permit_while_it_runs() -> None:
    b = Bulkhead(2)
    seen: list[int] = []

    @b
    def work(x: int) -> int:
        seen.append(b.in_flight)
        return x * 2

    assert work(21) == 42
    assert seen == [1]
    assert b.in_flight == 0


def test_full_bulkhead_rejects_at_once(events: CapturingListener) -> None:
    b = Bulkhead(1, name="db")
    with b:
        with pytest.raises(BulkheadFullError) as info:
            b.call(lambda: "never")
        assert b.in_flight == 1
    err = info.value
    assert (err.policy, err.max_concurrent, err.max_queued, err.waited) == ("db", 1, 0, 0.0)
    assert err.retry_after is None
    assert "every permit is in use" in str(err)
    [event] = events.of_type(BulkheadRejected)
    assert (event.policy, event.strategy, event.reason) == ("db", "bulkhead", "bulkhead_full")
    assert (event.max_concurrent, event.max_queued, event.waited) == (1, 0, 0.0)
    assert b.snapshot()["rejected"] == 1
    assert b.in_flight == 0


def test_permit_is_given_back_after_an_exception_and_a_base_exception() -> None:
    b = Bulkhead(1)

    class Stop(BaseException):
        pass

    @b
    def fail(exc: BaseException) -> None:
        raise exc

    with pytest.raises(ValueError):
        fail(ValueError("boom"))
    assert b.in_flight == 0
    with pytest.raises(Stop):
        fail(Stop())
    assert b.in_flight == 0
    with pytest.raises(KeyError), b:
        raise KeyError("x")
    assert b.in_flight == 0


def test_full_queue_rejects_and_names_the_queue(clock: FakeClock) -> None:
    b = Bulkhead(1, max_queued=1, clock=clock)
    release = threading.Event()

    @b
    def hold() -> None:
        release.wait(5)

    t1 = threading.Thread(target=hold)
    t2 = threading.Thread(target=hold)
    t1.start()
    wait_until(lambda: b.in_flight == 1)
    t2.start()
    wait_until(lambda: b.queued == 1)
    with pytest.raises(BulkheadFullError, match="1 calls are already queued"):
        hold()
    release.set()
    t1.join()
    t2.join()
    assert b.snapshot() == {**b.snapshot(), "in_flight": 0, "queued": 0, "rejected": 1}


def test_sync_waiter_gets_the_released_permit(clock: FakeClock, events: CapturingListener) -> None:
    b = Bulkhead(1, max_queued=1, name="db", clock=clock)
    results: list[str] = []

    def queued() -> None:
        results.append(b.call(lambda: "ran"))

    with b:
        t = threading.Thread(target=queued)
        t.start()
        wait_until(lambda: b.queued == 1)
        clock.advance(0.25)
    t.join(2)
    assert results == ["ran"]
    assert (b.in_flight, b.queued) == (0, 0)
    [waited] = events.of_type(BulkheadWaited)
    assert waited.waited == 0.25
    assert not events.of_type(BulkheadRejected)


def test_sync_queue_timeout_is_exact_under_the_fake_clock(clock: FakeClock) -> None:
    b = Bulkhead(1, max_queued=1, queue_timeout=5, clock=clock)
    errors: list[BaseException] = []

    def queued() -> None:
        try:
            b.call(lambda: None)
        except BulkheadFullError as exc:
            errors.append(exc)

    with b:
        t = threading.Thread(target=queued)
        t.start()
        wait_until(lambda: b.queued == 1)
        clock.advance(4.999)
        time.sleep(0.02)
        assert t.is_alive()
        assert b.queued == 1
        clock.advance(0.001)
        t.join(2)
        assert not t.is_alive()
    [err] = errors
    assert isinstance(err, BulkheadFullError)
    assert err.waited == pytest.approx(5.0)
    assert (b.in_flight, b.queued, b.snapshot()["rejected"]) == (0, 0, 1)


def test_sync_wait_never_passes_the_callers_deadline(clock: FakeClock) -> None:
    b = Bulkhead(1, max_queued=1, clock=clock)  # no queue_timeout: only the deadline bounds it
    errors: list[BaseException] = []

    def queued() -> None:
        with deadline(2.0, clock=clock):
            try:
                b.call(lambda: None)
            except BulkheadFullError as exc:
                errors.append(exc)

    with b:
        t = threading.Thread(target=queued)
        t.start()
        wait_until(lambda: b.queued == 1)
        clock.advance(2.0)
        t.join(2)
    [err] = errors
    assert isinstance(err, BulkheadFullError)
    assert err.waited == 2.0
    assert b.in_flight == 0


def test_an_expired_deadline_rejects_at_once_instead_of_queueing(clock: FakeClock) -> None:
    b = Bulkhead(1, max_queued=5, queue_timeout=10, clock=clock)
    with b, deadline(1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(BulkheadFullError, match="deadline leaves no time"):
            b.call(lambda: None)
        assert b.queued == 0


def test_deadline_shorter_than_queue_timeout_wins(clock: FakeClock) -> None:
    async def main() -> BulkheadFullError:
        b = Bulkhead(1, max_queued=1, queue_timeout=10, clock=clock)

        async def queued() -> None:
            with deadline(0.5, clock=clock):
                await b.acall(asyncio.sleep, 0)

        async with b:
            task = asyncio.create_task(queued())
            await settle(lambda: b.queued == 1)
            clock.advance(0.5)
            with pytest.raises(BulkheadFullError) as info:
                await task
        return info.value

    err = asyncio.run(main())
    assert err.waited == 0.5


# -- async ------------------------------------------------------------------------------------


async def test_async_queue_is_first_come_first_served(clock: FakeClock) -> None:
    b = Bulkhead(1, max_queued=5, clock=clock)
    order: list[int] = []

    @b
    async def work(i: int) -> int:
        order.append(i)
        await asyncio.sleep(0)
        return i

    async with b:
        tasks = [asyncio.create_task(work(i)) for i in range(5)]
        await settle(lambda: b.queued == 5)
    assert await within(asyncio.gather(*tasks)) == [0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4]
    assert (b.in_flight, b.queued) == (0, 0)


async def test_async_queue_timeout_fires_on_the_fake_clock(
    clock: FakeClock, events: CapturingListener
) -> None:
    b = Bulkhead(1, max_queued=1, queue_timeout=1.0, name="db", clock=clock)

    @b
    async def work() -> str:
        return "ok"

    async with b:
        task = asyncio.create_task(work())
        await settle(lambda: b.queued == 1)
        clock.advance(0.5)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(0.5)
        with pytest.raises(BulkheadFullError, match=r"no permit freed within 1\.000 s") as info:
            await task
    assert info.value.waited == 1.0
    [event] = events.of_type(BulkheadRejected)
    assert event.waited == 1.0
    assert (b.in_flight, b.queued) == (0, 0)
    assert clock.pending_timers == 0


async def test_cancelled_while_queued_takes_no_permit(clock: FakeClock) -> None:
    b = Bulkhead(1, max_queued=2, clock=clock)
    ran: list[str] = []

    @b
    async def work(name: str) -> None:
        ran.append(name)

    async with b:
        first = asyncio.create_task(work("first"))
        second = asyncio.create_task(work("second"))
        await settle(lambda: b.queued == 2)
        first.cancel()
        await settle(lambda: b.queued == 1)
    await within(second)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert ran == ["second"]
    assert (b.in_flight, b.queued) == (0, 0)


async def test_cancelled_after_the_permit_was_handed_over_passes_it_on() -> None:
    b = Bulkhead(1, max_queued=2)
    ran: list[str] = []

    @b
    async def work(name: str) -> None:
        ran.append(name)

    async with b:
        first = asyncio.create_task(work("first"))
        second = asyncio.create_task(work("second"))
        await settle(lambda: b.queued == 2)
    # The block's exit handed the permit to `first`, which has not resumed yet.
    assert (b.in_flight, b.queued) == (1, 1)
    first.cancel()
    await within(second)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert ran == ["second"]
    assert (b.in_flight, b.queued) == (0, 0)


async def test_cancelled_while_running_gives_the_permit_back() -> None:
    b = Bulkhead(1)
    started = asyncio.Event()

    @b
    async def work() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await started.wait()
    assert b.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.in_flight == 0


async def test_async_with_block_and_rejection() -> None:
    b = Bulkhead(1)
    async with b:
        assert b.in_flight == 1
        with pytest.raises(BulkheadFullError):
            async with b:
                pass
    assert b.in_flight == 0
    assert b.snapshot()["rejected"] == 1


# -- threads and tasks on one bulkhead ----------------------------------------------------------


async def test_a_thread_releasing_wakes_a_queued_task() -> None:
    b = Bulkhead(1, max_queued=1)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with b:
            holding.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    await asyncio.to_thread(holding.wait, 5)

    @b
    async def work() -> str:
        return "task ran"

    task = asyncio.create_task(work())
    await settle(lambda: b.queued == 1)
    release.set()
    assert await asyncio.wait_for(task, 2) == "task ran"
    await asyncio.to_thread(t.join, 2)
    assert (b.in_flight, b.queued) == (0, 0)


async def test_a_task_releasing_wakes_a_queued_thread() -> None:
    b = Bulkhead(1, max_queued=1)
    results: list[str] = []

    def queued() -> None:
        results.append(b.call(lambda: "thread ran"))

    async with b:
        t = threading.Thread(target=queued)
        t.start()
        await asyncio.to_thread(wait_until, lambda: b.queued == 1)
    await asyncio.to_thread(t.join, 2)
    assert results == ["thread ran"]
    assert (b.in_flight, b.queued) == (0, 0)


def test_tasks_of_two_event_loops_share_one_bulkhead() -> None:
    b = Bulkhead(2, max_queued=100)
    guard = threading.Lock()
    running = 0
    peak = 0
    done: list[int] = []

    @b
    async def work(i: int) -> None:
        nonlocal running, peak
        with guard:
            running += 1
            peak = max(peak, running)
        await asyncio.sleep(0.001)
        with guard:
            running -= 1
            done.append(i)

    def loop_main(offset: int) -> None:
        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(*(work(offset + i) for i in range(30))), 10)

        asyncio.run(main())

    threads = [threading.Thread(target=loop_main, args=(n * 100,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert sorted(done) == [*range(30), *range(100, 130)]
    assert peak == 2
    assert (b.in_flight, b.queued, b.snapshot()["rejected"]) == (0, 0, 0)


def test_a_waiter_whose_loop_closed_passes_the_permit_on() -> None:
    b = Bulkhead(1, max_queued=2)
    loop = asyncio.new_event_loop()
    stranded: list[asyncio.Task[None]] = []

    async def queue_and_leave() -> None:
        async def work() -> None:
            return None

        stranded.append(asyncio.ensure_future(b.acall(work)))
        await asyncio.sleep(0)

    with b:
        loop.run_until_complete(queue_and_leave())
        assert b.queued == 1
        # The loop is closed with the task still queued: it can never run again.
        for task in stranded:
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        loop.close()
        results: list[str] = []
        t = threading.Thread(target=lambda: results.append(b.call(lambda: "ran")))
        t.start()
        wait_until(lambda: b.queued == 2)
    t.join(2)
    assert results == ["ran"]
    assert (b.in_flight, b.queued) == (0, 0)


# -- a thread-mode timeout inside the bulkhead ------------------------------------------------


def test_thread_mode_timeout_keeps_the_permit_until_the_worker_ends(clock: FakeClock) -> None:
    b = Bulkhead(1, clock=clock)
    timeout = Timeout(0.05, mode="thread", clock=clock)
    finish = threading.Event()

    @Pipeline(b, timeout, name="slow")
    def slow() -> str:
        finish.wait(5)
        return "late"

    try:
        with pytest.raises(TimeoutExceededError) as info:
            slow()
        assert info.value.pending is not None
        # The worker thread still runs the call: the permit stays taken.
        assert b.in_flight == 1
        with pytest.raises(BulkheadFullError):
            slow()
        finish.set()
        wait_until(lambda: b.in_flight == 0)
    finally:
        finish.set()
        timeout.close()


def test_with_block_defers_release_to_a_pending_future() -> None:
    b = Bulkhead(1)
    pending: Future[Any] = Future()
    pending.set_running_or_notify_cancel()
    with pytest.raises(TimeoutExceededError), b:
        raise TimeoutExceededError("late", timeout=1.0, elapsed=1.0, pending=pending)
    assert b.in_flight == 1
    pending.set_result(None)
    assert b.in_flight == 0
    done: Future[Any] = Future()
    done.set_result(None)
    with pytest.raises(TimeoutExceededError), b:
        raise TimeoutExceededError("late", timeout=1.0, elapsed=1.0, pending=done)
    assert b.in_flight == 0


# -- in a pipeline ----------------------------------------------------------------------------


def test_events_in_a_pipeline_carry_the_pipeline_name(events: CapturingListener) -> None:
    b = Bulkhead(1)

    @Pipeline(b, name="payments")
    def pay() -> str:
        return "paid"

    assert pay() == "paid"
    with b, pytest.raises(BulkheadFullError) as info:
        pay()
    assert info.value.policy == "payments"
    [event] = events.of_type(BulkheadRejected)
    assert event.source == "payments/bulkhead"


def test_no_event_is_built_without_a_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    monkeypatch.setattr(
        resilience.bulkhead, "BulkheadRejected", lambda **kw: built.append(kw) or kw
    )
    b = Bulkhead(1)
    with b, pytest.raises(BulkheadFullError):
        b.call(lambda: None)
    assert built == []


# -- the decision object against a model ---------------------------------------------------------


class _StubWaiter(Waiter):
    """A waiter whose loop may have closed (``wake`` answers ``False``)."""

    __slots__ = ("alive", "woken")

    def __init__(self, alive: bool) -> None:
        super().__init__()
        self.alive = alive
        self.woken = 0

    def wake(self) -> bool:
        self.woken += 1
        return self.alive

    def poke(self) -> None:  # pragma: no cover - no timers in this model
        pass


class PermitsMachine(RuleBasedStateMachine):
    """``_Permits`` against a model: a count of running calls and a FIFO of waiters."""

    def __init__(self) -> None:
        super().__init__()
        self.permits: _Permits | None = None

    @precondition(lambda self: self.permits is None)
    @rule(limit=st.integers(1, 4), queue=st.integers(0, 4))
    def configure(self, limit: int, queue: int) -> None:
        self.permits = _Permits(limit, queue)
        self.limit, self.queue_limit = limit, queue
        self.running = 0
        self.queue: list[_StubWaiter] = []
        self.rejected = 0

    def _deliver(self, waiter: Waiter | None) -> None:
        """What the drivers do with the waiter a release hands the permit to."""
        assert self.permits is not None
        while waiter is not None:
            assert isinstance(waiter, _StubWaiter)
            assert self.queue
            assert self.queue[0] is waiter, "the permit goes to the first waiter"
            self.queue.pop(0)
            if waiter.wake():
                self.running += 1
                return
            waiter = self.permits.leave(waiter)

    @precondition(lambda self: self.permits is not None)
    @rule(alive=st.booleans())
    def arrive(self, alive: bool) -> None:
        assert self.permits is not None
        waiter = _StubWaiter(alive)
        if self.permits.try_take():
            assert self.running < self.limit
            self.running += 1
        elif self.permits.join(waiter):
            assert len(self.queue) < self.queue_limit
            self.queue.append(waiter)
        else:
            assert self.running == self.limit
            assert len(self.queue) == self.queue_limit
            self.rejected += 1

    @precondition(lambda self: self.permits is not None and self.running > 0)
    @rule()
    def finish(self) -> None:
        assert self.permits is not None
        self.running -= 1
        self._deliver(self.permits.release())

    @precondition(lambda self: self.permits is not None and self.queue)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        assert self.permits is not None
        waiter = data.draw(st.sampled_from(self.queue))
        self.permits.give_up(waiter)
        self.queue.remove(waiter)
        self.rejected += 1

    @precondition(lambda self: self.permits is not None and self.queue)
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        assert self.permits is not None
        waiter = data.draw(st.sampled_from(self.queue))
        assert self.permits.leave(waiter) is None
        self.queue.remove(waiter)

    @precondition(lambda self: self.permits is not None and self.running > 0 and self.queue)
    @rule()
    def cancel_just_granted(self) -> None:
        """A release hands the permit over, and the waiter is cancelled before it resumes."""
        assert self.permits is not None
        self.running -= 1  # a call finishes and its permit moves to the first waiter
        head = self.permits.release()
        assert head is self.queue[0]
        assert head.granted
        self.queue.pop(0)
        self._deliver(self.permits.leave(head))

    @invariant()
    def matches_the_model(self) -> None:
        p = self.permits
        if p is None:
            return
        assert p.in_flight == self.running
        assert list(p.waiters) == self.queue
        assert p.rejected == self.rejected
        assert 0 <= p.in_flight <= self.limit
        assert len(p.waiters) <= self.queue_limit
        if p.waiters:
            assert p.in_flight == self.limit, "nobody queues while a permit is free"


PermitsMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestPermitsMachine = PermitsMachine.TestCase


# -- real concurrency ---------------------------------------------------------------------------


def test_64_threads_hammering_one_bulkhead_leave_nothing_behind() -> None:
    b = Bulkhead(4, max_queued=8, queue_timeout=0.02)
    guard = threading.Lock()
    counts = {"ok": 0, "failed": 0, "rejected": 0}
    running = 0
    peak = 0

    @b
    def work(rng: random.Random) -> None:
        nonlocal running, peak
        with guard:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(rng.random() * 0.002)
            if rng.random() < 0.3:
                raise OSError("flaky")
        finally:
            with guard:
                running -= 1

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20):
            try:
                work(rng)
                outcome = "ok"
            except OSError:
                outcome = "failed"
            except BulkheadFullError:
                outcome = "rejected"
            with guard:
                counts[outcome] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(counts.values()) == 64 * 20
    assert (b.in_flight, b.queued) == (0, 0)
    assert b.snapshot()["rejected"] == counts["rejected"]
    assert 1 <= peak <= 4
    assert counts["ok"]
    assert counts["failed"]


async def test_1000_tasks_with_failures_and_cancellations_leave_nothing_behind() -> None:
    b = Bulkhead(8, max_queued=64, queue_timeout=0.2)
    rng = random.Random(7)
    arrived: set[int] = set()
    entered: set[int] = set()
    running: set[int] = set()
    peak = 0

    @b
    async def work(i: int, pause: float, fail: bool) -> int:
        nonlocal peak
        entered.add(i)
        running.add(i)
        peak = max(peak, len(running))
        try:
            await asyncio.sleep(pause)
            if fail:
                raise OSError("flaky")
            return i
        finally:
            running.discard(i)

    async def caller(i: int) -> int:
        arrived.add(i)
        return await work(i, rng.random() * 0.003, rng.random() < 0.3)

    tasks = {i: asyncio.create_task(caller(i)) for i in range(1000)}
    cancelled_queued = cancelled_running = 0
    give_up = time.monotonic() + 10
    while not all(t.done() for t in tasks.values()):
        assert time.monotonic() < give_up, "calls still pending: a permit was lost"
        await asyncio.sleep(0.0005)
        alive = [i for i, t in tasks.items() if not t.done()]
        # Taking a permit or being rejected never suspends: a task that arrived, is not
        # done and has not entered the function is parked in the queue.
        queued = [i for i in alive if i in arrived and i not in entered]
        inside = [i for i in alive if i in running]
        # The first few cancellations are certain, so both kinds happen on a slow machine.
        if queued and (cancelled_queued < 5 or rng.random() < 0.3):
            tasks[rng.choice(queued)].cancel()
            cancelled_queued += 1
        if inside and (cancelled_running < 5 or rng.random() < 0.3):
            tasks[rng.choice(inside)].cancel()
            cancelled_running += 1
    outcomes = {"ok": 0, "failed": 0, "rejected": 0, "cancelled": 0}
    for task in tasks.values():
        if task.cancelled():
            outcomes["cancelled"] += 1
        elif isinstance(task.exception(), OSError):
            outcomes["failed"] += 1
        elif isinstance(task.exception(), BulkheadFullError):
            outcomes["rejected"] += 1
        else:
            assert task.result() in entered
            outcomes["ok"] += 1
    assert sum(outcomes.values()) == 1000
    assert (b.in_flight, b.queued) == (0, 0)
    assert b.snapshot()["rejected"] == outcomes["rejected"]
    assert 1 <= peak <= 8
    assert cancelled_queued > 0
    assert cancelled_running > 0
    assert outcomes["cancelled"] == cancelled_queued + cancelled_running
    assert len(entered) == outcomes["ok"] + outcomes["failed"] + cancelled_running


async def test_threads_and_tasks_sharing_one_bulkhead_leave_nothing_behind() -> None:
    b = Bulkhead(3, max_queued=200)
    guard = threading.Lock()
    running = 0
    peak = 0

    def enter() -> None:
        nonlocal running, peak
        with guard:
            running += 1
            peak = max(peak, running)

    def leave() -> None:
        nonlocal running
        with guard:
            running -= 1

    @b
    def sync_work() -> None:
        enter()
        time.sleep(0.001)
        leave()

    @b
    async def async_work() -> None:
        enter()
        await asyncio.sleep(0.001)
        leave()

    def thread_main() -> None:
        for _ in range(10):
            sync_work()

    threads = [threading.Thread(target=thread_main) for _ in range(8)]
    for t in threads:
        t.start()
    await within(asyncio.gather(*(async_work() for _ in range(100))))
    for t in threads:
        await asyncio.to_thread(t.join, 10)
    assert (b.in_flight, b.queued, b.snapshot()["rejected"]) == (0, 0, 0)
    assert 1 <= peak <= 3


# -- the lock-free path under the GIL --------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["lock-free", "locked"])
def lock_free(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both drivers: lock-free (the GIL) and locked (a free-threaded build), built per test."""
    if request.param and not resilience.bulkhead._GIL:
        pytest.skip("the lock-free drivers need the GIL")
    monkeypatch.setattr(resilience.bulkhead, "_GIL", request.param)
    return bool(request.param)


@pytest.fixture(params=[False], ids=["metrics-off"])
def metrics(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Calls counted by the policy gate (then it hands them to its observer), or not."""
    if request.param:
        TELEMETRY.acquire_metrics(durations=False)
    try:
        yield bool(request.param)
    finally:
        if request.param:
            TELEMETRY.release_metrics(durations=False)


def test_a_permit_given_back_between_the_look_and_the_queue_is_not_missed() -> None:
    # A caller finds every permit in use; before it queues, a call ends and gives its
    # permit back without the lock (nobody queues yet). Joining must find that permit:
    # parked, the caller would wait next to a free permit nobody would ever hand it.
    p = _Permits(1, 4)
    assert p.try_take()
    assert not p.try_take()  # the caller looks ...
    assert not p.waiters
    p.in_flight -= 1  # ... a call ends (the lock-free release) ...
    waiter = _StubWaiter(True)
    assert p.join(waiter)  # ... and the caller joins
    assert waiter.granted
    assert (p.in_flight, list(p.waiters), p.rejected) == (1, [], 0)


@pytest.mark.parametrize(
    ("lock_free", "metrics"),
    [(True, False), (True, True), (False, False)],
    ids=["lock-free", "lock-free-metrics-on", "locked"],
    indirect=True,
)
def test_permits_are_exact_with_threads_switching_every_microsecond(
    eager_switching: None, lock_free: bool, metrics: bool, events: CapturingListener
) -> None:
    # 16 threads against one permit and no queue, switching at every chance: most calls
    # are rejected, none runs next to another, the permit comes back, and every
    # rejection is counted, published and (metrics on) recorded once. One permit makes
    # an over-admission most likely to show: a single call holding it is enough.
    name = f"exact-bulkhead-{lock_free}-{metrics}"
    b = Bulkhead(1, name=name)
    peak = [0]
    totals: list[tuple[int, int, int]] = []

    @b
    def work() -> None:
        n = b.in_flight  # a racy maximum may miss a peak, never invent one
        if n > peak[0]:
            peak[0] = n

    def hammer() -> None:
        ok = rejected = blocks = 0
        for i in range(10_000):
            try:
                if i % 8:
                    work()
                else:
                    blocks += 1
                    with b:  # the with-block's path draws on the same permits
                        work.__wrapped__()  # type: ignore[attr-defined]
                ok += 1
            except BulkheadFullError:
                rejected += 1
        totals.append((ok, rejected, blocks))

    run_threads(16, hammer)
    ok, rejected, blocks = (sum(t[i] for t in totals) for i in range(3))
    assert ok + rejected == 16 * 10_000
    assert rejected > 0
    assert peak[0] == 1, "a call was admitted over the limit"
    assert (b.in_flight, b.queued) == (0, 0)
    assert b.snapshot()["rejected"] == rejected
    assert len(events.of_type(BulkheadRejected)) == rejected
    if metrics:  # the decorated calls: a with-block is no policy's call
        counted = STATS.get(name, "bulkhead")
        outcomes = {o: counted.calls(i) for i, o in enumerate(CALL_OUTCOMES)}
        assert outcomes["success"] + outcomes["rejected"] == 16 * 10_000 - blocks
        assert sum(outcomes.values()) == 16 * 10_000 - blocks


def test_queued_callers_are_never_stranded_next_to_a_free_permit(
    eager_switching: None, lock_free: bool
) -> None:
    # Threads and the tasks of an event loop share one permit and a queue long enough
    # for everyone: every call runs, one at a time. Under the lock, nobody may be
    # queued while the permit is free (a waiter parked next to a free permit would wait
    # until some later call ends, or for ever once the others are done).
    b = Bulkhead(1, max_queued=64)
    p = b._permits
    peak = [0]
    stranded = [0]
    done: list[int] = []

    def look() -> None:
        n = b.in_flight
        if n > peak[0]:
            peak[0] = n
        with p.lock:
            # Holding the lock nothing takes a waiter out of the queue, and a lock-free
            # release only happens while nobody queues: the two reads agree.
            if p.waiters and p.in_flight < p.max_concurrent:
                stranded[0] += 1

    @b
    def work() -> None:
        look()

    @b
    async def awork() -> None:
        look()
        await asyncio.sleep(0)

    async def tasks() -> None:
        async def one() -> None:
            for _ in range(200):
                await awork()
                look()

        await asyncio.gather(*(one() for _ in range(20)))

    starts = iter(range(16))

    def hammer() -> None:
        if next(starts) == 0:
            asyncio.run(tasks())
            done.append(20 * 200)
            return
        for _ in range(2_000):
            work()
            look()  # right after the release, before this thread takes a permit again
        done.append(2_000)

    run_threads(16, hammer)
    assert sum(done) == 15 * 2_000 + 20 * 200
    assert stranded[0] == 0, "a caller was queued while a permit was free"
    assert peak[0] == 1
    assert (b.in_flight, b.queued) == (0, 0)
    assert b.snapshot()["rejected"] == 0


# -- telemetry: the policy gate fused into the bulkhead's closure ----------------------------------


def _outcomes(policy: str) -> dict[str, int]:
    counted = STATS.get(policy, "bulkhead")
    return {o: counted.calls(i) for i, o in enumerate(CALL_OUTCOMES)}


@pytest.mark.parametrize("durations", [True, False], ids=["timed", "counted"])
async def test_the_fused_gate_records_what_the_separate_wrapper_records(durations: bool) -> None:
    fused, separate, afused = Bulkhead(1), Bulkhead(1), Bulkhead(1)
    fused.name, separate.name = f"fused-bulkhead-{durations}", f"separate-bulkhead-{durations}"
    afused.name = f"fused-async-bulkhead-{durations}"

    def work(what: str) -> str:
        if what == "fail":
            raise OSError("down")
        return what

    async def awork(what: str) -> str:
        return work(what)

    decorated, adecorated = fused(work), afused(awork)
    TELEMETRY.acquire_metrics(durations=durations)
    try:
        for what in ("ok", "fail", "full", "ok"):
            for b, run in ((fused, decorated), (separate, lambda w: separate.call(work, w))):
                with contextlib.ExitStack() as stack:
                    if what == "full":
                        stack.enter_context(b)  # the only permit is taken
                    with contextlib.suppress(OSError, BulkheadFullError):
                        run(what)
            with contextlib.ExitStack() as stack:
                if what == "full":
                    stack.enter_context(afused)
                with contextlib.suppress(OSError, BulkheadFullError):
                    await adecorated(what)
    finally:
        TELEMETRY.release_metrics(durations=durations)
    expected = _outcomes(separate.name)
    assert expected["success"] == 2
    assert expected["rejected"] == 1
    assert sum(expected.values()) == 4
    assert _outcomes(fused.name) == expected
    assert _outcomes(afused.name) == expected
    # While telemetry is off the gate counts nothing.
    decorated("ok")
    await adecorated("ok")
    assert _outcomes(fused.name) == expected
    assert _outcomes(afused.name) == expected
