"""Retry: the cost on the success path, and of a call that fails twice then succeeds.

Rows, all timed in this one process:

- ``bare call``: the function itself, no decorator (on the failing table: the three
  attempts written out as a ``for`` loop with ``try``/``except``).
- ``pass-through decorator (floor)``: a ``functools.wraps`` wrapper that only calls the
  function (failing table: the same loop inside such a wrapper). No retry decorator can
  cost less than this.
- ``resilience Retry``, ``tenacity``, ``stamina``, ``backoff``: each retries ``OSError``
  with at most 3 attempts and no real waiting: ``resilience.testing.no_wait()``,
  tenacity ``wait_none()``, stamina with zero waits and ``timeout=None``, backoff with a
  zero constant interval. Retry logging is off where a library logs by default (stamina
  hooks, backoff's logger) so that every row measures the retry machinery alone.
- ``tenacity, sleep=no-op`` (sync failing table only): tenacity, stamina and backoff
  still call ``time.sleep(0)`` between attempts when the wait is zero, a system call
  whose cost depends on the machine (printed under the table); this row replaces
  tenacity's sleep with a no-op to show its retry machinery alone. In async code every
  library, resilience included, awaits ``asyncio.sleep(0)`` between attempts: one trip
  through the event loop, also printed.

Every case is called once and its result checked before it is timed.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import backoff
import stamina
import stamina.instrumentation
import tenacity

from benchmarks._timing import ans_per_call, ns_per_call, print_table, quick
from resilience import Retry
from resilience.testing import no_wait

ATTEMPTS = 3
BARE = "bare call"
FLOOR = "pass-through decorator (floor)"
OURS = "resilience Retry"
BASELINE = "tenacity"
TENACITY_NO_SLEEP = "tenacity, sleep=no-op"
TARGET_SYNC_NS = 300.0
TARGET_ASYNC_NS = 600.0

# Iterations per timing repeat: the fast rows need many to rise above timer noise, the
# slow rows few to keep `make bench` short.
FAST, SLOW = 200_000, 20_000
FAST_FAIL, SLOW_FAIL = 50_000, 2_000

SyncCase = tuple[str, Callable[[], Any], int]
AsyncCase = tuple[str, Callable[[], Awaitable[Any]], int]


# -- the decorators under test, each configured for at most 3 attempts and no waits ---------
def ours(fn: Any) -> Any:
    return Retry(on=OSError, attempts=ATTEMPTS)(fn)


def with_tenacity(fn: Any) -> Any:
    return tenacity.retry(
        retry=tenacity.retry_if_exception_type(OSError),
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=tenacity.wait_none(),
        reraise=True,
    )(fn)


def with_tenacity_no_sleep(fn: Any) -> Any:
    return tenacity.retry(
        retry=tenacity.retry_if_exception_type(OSError),
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=tenacity.wait_none(),
        sleep=lambda _seconds: None,
        reraise=True,
    )(fn)


def with_stamina(fn: Any) -> Any:
    return stamina.retry(
        on=OSError, attempts=ATTEMPTS, timeout=None, wait_initial=0, wait_max=0, wait_jitter=0
    )(fn)


def with_backoff(fn: Any) -> Any:
    return backoff.on_exception(
        backoff.constant, OSError, max_tries=ATTEMPTS, interval=0, jitter=None, logger=None
    )(fn)


def pass_through(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def apass_through(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await fn(*args, **kwargs)

    return wrapper


def loop_retry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The least a retry decorator can do: try up to 3 times, no bookkeeping."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except OSError:
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    return wrapper


def aloop_retry(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await fn(*args, **kwargs)
            except OSError:
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    return wrapper


PEERS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    (OURS, ours),
    (BASELINE, with_tenacity),
    ("stamina", with_stamina),
    ("backoff", with_backoff),
)


# -- the functions being protected ------------------------------------------------------------
def ok() -> int:
    return 1


async def aok() -> int:
    return 1


class Flaky:
    """Raises ``OSError`` on the first two of every three calls; counts every call."""

    def __init__(self) -> None:
        self.calls = 0
        self._fails = itertools.cycle((True, True, False))

    def __call__(self) -> int:
        self.calls += 1
        if next(self._fails):
            raise OSError("flaky")
        return 1

    def check(self, name: str) -> None:
        """Every decorated call must have made exactly three attempts."""
        if self.calls == 0 or self.calls % ATTEMPTS:
            raise RuntimeError(f"{name}: {self.calls} attempts is not a multiple of {ATTEMPTS}")


class AFlaky(Flaky):
    async def acall(self) -> int:
        return self()


# -- timing -----------------------------------------------------------------------------------
def _checked(name: str, result: object) -> None:
    if result != 1:
        raise RuntimeError(f"{name} returned {result!r}, expected 1")


def time_sync(cases: list[SyncCase]) -> list[tuple[str, float]]:
    rows = []
    for name, fn, number in cases:
        _checked(name, fn())
        rows.append((name, ns_per_call(fn, number=number)))
    return rows


def time_async(cases: list[AsyncCase]) -> list[tuple[str, float]]:
    rows = []
    for name, fn, number in cases:

        async def once(fn: Callable[[], Awaitable[Any]] = fn) -> Any:
            return await fn()

        _checked(name, asyncio.run(once()))
        rows.append((name, ans_per_call(fn, number=number)))
    return rows


def success_sync() -> list[tuple[str, float]]:
    cases: list[SyncCase] = [(BARE, ok, FAST), (FLOOR, pass_through(ok), FAST)]
    cases += [(name, wrap(ok), FAST if name == OURS else SLOW) for name, wrap in PEERS]
    return time_sync(cases)


def success_async() -> list[tuple[str, float]]:
    cases: list[AsyncCase] = [(BARE, aok, FAST), (FLOOR, apass_through(aok), FAST)]
    cases += [(name, wrap(aok), FAST if name == OURS else SLOW) for name, wrap in PEERS]
    return time_async(cases)


def failing_sync() -> list[tuple[str, float]]:
    rows = []
    by_hand = Flaky()

    def bare_loop() -> int:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return by_hand()
            except OSError:
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    targets: list[tuple[str, Flaky, Callable[[], Any], int]] = [
        (BARE, by_hand, bare_loop, FAST_FAIL),
    ]
    floor = Flaky()
    targets.append((FLOOR, floor, loop_retry(floor), FAST_FAIL))
    for name, wrap in (*PEERS, (TENACITY_NO_SLEEP, with_tenacity_no_sleep)):
        target = Flaky()
        targets.append((name, target, wrap(target), FAST_FAIL if name == OURS else SLOW_FAIL))
    for name, target, fn, number in targets:
        rows += time_sync([(name, fn, number)])
        target.check(name)
    return rows


def failing_async() -> list[tuple[str, float]]:
    rows = []
    by_hand = AFlaky()

    async def bare_loop() -> int:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await by_hand.acall()
            except OSError:
                if attempt == ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    targets: list[tuple[str, AFlaky, Callable[[], Awaitable[Any]], int]] = [
        (BARE, by_hand, bare_loop, FAST_FAIL),
    ]
    floor = AFlaky()
    targets.append((FLOOR, floor, aloop_retry(floor.acall), FAST_FAIL))
    for name, wrap in PEERS:
        target = AFlaky()
        number = FAST_FAIL if name == OURS else SLOW_FAIL
        targets.append((name, target, wrap(target.acall), number))
    for name, target, fn, number in targets:
        rows += time_async([(name, fn, number)])
        target.check(name)
    return rows


def verdict(label: str, rows: list[tuple[str, float]], target_ns: float) -> str:
    ns = dict(rows)[OURS]
    met = "met" if ns <= target_ns else "MISSED"
    ref = dict(rows)[BASELINE]
    return (
        f"- {label}: {OURS} {ns:.0f} ns/call (target <= {target_ns:.0f} ns): {met}; "
        f"{BASELINE} {ref:.0f} ns/call"
    )


def main() -> None:
    """Print the four retry tables and whether the success-path targets are met."""
    stamina.instrumentation.set_on_retry_hooks([])  # no logging/metrics hooks: see module doc
    try:
        with no_wait():
            sync_ok, async_ok = success_sync(), success_async()
            sync_fail, async_fail = failing_sync(), failing_async()
    finally:
        stamina.instrumentation.set_on_retry_hooks(None)  # back to stamina's defaults
    sleep0 = ns_per_call(lambda: time.sleep(0), number=2_000)
    asleep0 = ans_per_call(lambda: asyncio.sleep(0), number=FAST_FAIL)

    print_table("Retry, sync: success path", sync_ok, baseline=BASELINE, floor=BARE)
    print_table("Retry, async: success path", async_ok, baseline=BASELINE, floor=BARE)
    print_table(
        "Retry, sync: fails twice, then succeeds (3 attempts, no waits)",
        sync_fail,
        baseline=BASELINE,
        floor=BARE,
    )
    print(f"\n`time.sleep(0)` on this machine: {sleep0:.0f} ns per call.")
    print_table(
        "Retry, async: fails twice, then succeeds (3 attempts, no waits)",
        async_fail,
        baseline=BASELINE,
        floor=BARE,
    )
    print(
        f"\n`await asyncio.sleep(0)` (one event-loop round trip, what every library awaits "
        f"between attempts when the wait is zero): {asleep0:.0f} ns per call."
    )
    print("\n## Targets (success path, same run)\n")
    print(verdict("sync", sync_ok, TARGET_SYNC_NS))
    print(verdict("async", async_ok, TARGET_ASYNC_NS))
    if quick():
        print("- quick mode: too few iterations for these numbers to mean anything")


if __name__ == "__main__":
    main()
