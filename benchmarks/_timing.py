"""Timing helpers shared by every benchmark module (one process, same run).

Set ``RESILIENCE_BENCH_QUICK=1`` (or run ``python -m benchmarks --quick``) to time every
case with a handful of iterations: the numbers mean nothing, but every benchmark runs
end to end, which is what the smoke test in ``tests/test_benchmarks.py`` relies on.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

QUICK_ENV = "RESILIENCE_BENCH_QUICK"
_QUICK_NUMBER = 20


def quick() -> bool:
    """Whether benchmarks run in smoke mode (read at call time, so tests can set it)."""
    return os.environ.get(QUICK_ENV, "") not in {"", "0"}


def _budget(number: int, repeat: int) -> tuple[int, int]:
    return (min(number, _QUICK_NUMBER), 1) if quick() else (number, repeat)


REFERENCE_INC_NS = 320.0
"""What a bound ``prometheus_client`` ``Counter.inc()`` took on the host the telemetry
targets were stated on. Those targets are in nanoseconds of that host; scaled by what
``inc()`` takes on this machine, in the same rounds, they become the same share of work
here (a shared host runs everything slower or faster by about the same factor)."""


def counter_inc() -> Callable[[], None]:
    """A bound ``Counter.inc`` on a private registry: the reference of the targets."""
    from prometheus_client import CollectorRegistry, Counter

    return Counter(
        "bench_reference", "The benchmarks' unit of work.", registry=CollectorRegistry()
    ).inc


def at_reference(ns: float, inc_ns: float) -> float:
    """``ns`` measured here, at the reference host's speed (see :data:`REFERENCE_INC_NS`)."""
    return ns * REFERENCE_INC_NS / inc_ns


def ns_per_call(
    fn: Callable[[], Any], *, number: int = 20_000, repeat: int = 5, cpu: bool = False
) -> float:
    """Best-of-``repeat`` nanoseconds per ``fn()`` over ``number`` calls.

    With ``cpu`` the time is the calling thread's CPU time (``time.thread_time_ns``):
    the slices the machine gives to other processes meanwhile are not counted, which
    keeps small differences measurable on a busy machine.
    """
    number, repeat = _budget(number, repeat)
    clock = time.thread_time_ns if cpu else time.perf_counter_ns
    best = float("inf")
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = clock()
            for _ in range(number):
                fn()
            best = min(best, (clock() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    return best


def ans_per_call(
    fn: Callable[[], Awaitable[Any]], *, number: int = 20_000, repeat: int = 5
) -> float:
    """Best-of-``repeat`` nanoseconds per ``await fn()`` inside one running event loop."""
    number, repeat = _budget(number, repeat)

    async def run() -> float:
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            for _ in range(number):
                await fn()
            best = min(best, (time.perf_counter_ns() - t0) / number)
        return best

    gc_was = gc.isenabled()
    gc.disable()
    try:
        return asyncio.run(run())
    finally:
        if gc_was:
            gc.enable()


def print_table(
    title: str,
    rows: Sequence[tuple[str, float]],
    *,
    baseline: str,
    floor: str | None = None,
) -> None:
    """Print ``name  ns/call  ratio-to-baseline`` rows (ratio = baseline / row: x faster).

    With ``floor`` (the name of a row, usually the bare call) an ``overhead`` column
    shows ``row - floor`` in nanoseconds.
    """
    by_name = dict(rows)
    base = by_name[baseline]
    bare = by_name[floor] if floor is not None else None
    print(f"\n## {title}\n")
    extra_head = f" {'overhead ns':>12} |" if bare is not None else ""
    extra_rule = f"{'-' * 13}:|" if bare is not None else ""
    print(f"| {'case':<44} | {'ns/call':>10} |{extra_head} {'vs ' + baseline:>18} |")
    print(f"|{'-' * 46}|{'-' * 11}:|{extra_rule}{'-' * 19}:|")
    for name, ns in rows:
        extra = f" {ns - bare:>12.0f} |" if bare is not None else ""
        print(f"| {name:<44} | {ns:>10.0f} |{extra} {base / ns:>17.1f}x |")
