"""Circuit breaker overhead: the success path and the rejection by an open breaker.

Compares ``resilience.CircuitBreaker`` with pybreaker, circuitbreaker, aiobreaker and
purgatory, each decorating the same trivial function, in one process and one run.
``RESILIENCE_BENCH_QUICK=1`` runs tiny iteration counts (a smoke test of this file).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._timing import ans_per_call, ns_per_call, print_table

QUICK = os.environ.get("RESILIENCE_BENCH_QUICK") == "1"
NUMBER = 50 if QUICK else 50_000
REPEAT = 1 if QUICK else 7


def _sync(fn: Callable[[], Any]) -> float:
    return ns_per_call(fn, number=NUMBER, repeat=REPEAT)


def _async(fn: Callable[[], Awaitable[Any]]) -> float:
    return ans_per_call(fn, number=NUMBER, repeat=REPEAT)


def work() -> int:
    return 1


async def awork() -> int:
    return 1


def success_sync() -> list[tuple[str, float]]:
    import aiobreaker
    import circuitbreaker
    import purgatory
    import pybreaker

    from resilience import CircuitBreaker

    rows = [
        ("no breaker (the bare call)", _sync(work)),
        ("resilience CircuitBreaker", _sync(CircuitBreaker(name="b1")(work))),
        (
            "resilience, time window + slow calls",
            _sync(
                CircuitBreaker(name="b2", window_type="time", window_size=60, slow_call_duration=5)(
                    work
                )
            ),
        ),
        ("pybreaker", _sync(pybreaker.CircuitBreaker()(work))),
        ("circuitbreaker", _sync(circuitbreaker.CircuitBreaker(name="b3")(work))),
        ("aiobreaker (sync call)", _sync(aiobreaker.CircuitBreaker()(work))),
        ("purgatory (sync)", _sync(purgatory.SyncCircuitBreakerFactory()("b4")(work))),
    ]
    return rows


def success_async() -> list[tuple[str, float]]:
    import aiobreaker
    import circuitbreaker
    import purgatory

    from resilience import CircuitBreaker

    factory = purgatory.AsyncCircuitBreakerFactory()
    asyncio.run(factory.initialize())
    return [
        ("no breaker (the bare await)", _async(awork)),
        ("resilience CircuitBreaker", _async(CircuitBreaker(name="a1")(awork))),
        ("aiobreaker", _async(aiobreaker.CircuitBreaker()(awork))),
        ("circuitbreaker", _async(circuitbreaker.CircuitBreaker(name="a2")(awork))),
        ("purgatory (async)", _async(factory("a3")(awork))),
    ]


def rejection() -> list[tuple[str, float]]:
    import pybreaker

    from resilience import CircuitBreaker, CircuitOpenError

    ours = CircuitBreaker(name="r1")
    guarded = ours(work)
    ours.open()

    def reject_ours() -> None:
        try:
            guarded()
        except CircuitOpenError:
            return  # (not contextlib.suppress: its own cost would be measured too)

    theirs = pybreaker.CircuitBreaker(reset_timeout=3600)
    pb_guarded = theirs(work)
    theirs.open()

    def reject_pybreaker() -> None:
        try:
            pb_guarded()
        except pybreaker.CircuitBreakerError:
            return

    class Refused(Exception):
        pass

    def refuse() -> None:
        raise Refused

    def floor() -> None:
        try:
            refuse()
        except Refused:
            return

    return [
        ("raise + catch through one frame (the floor)", _sync(floor)),
        ("resilience CircuitBreaker", _sync(reject_ours)),
        ("pybreaker", _sync(reject_pybreaker)),
    ]


def main() -> None:
    print_table("Circuit breaker: success path, sync", success_sync(), baseline="pybreaker")
    print_table("Circuit breaker: success path, async", success_async(), baseline="aiobreaker")
    print_table(
        "Circuit breaker: open-breaker rejection, raise and catch included",
        rejection(),
        baseline="pybreaker",
    )


if __name__ == "__main__":
    main()
