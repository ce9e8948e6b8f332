"""Timeout's cost on the success path, alone and in a sync stack with retry and breaker.

Rows, all timed in this one process, interleaved (best of several rounds, so that a
noisy neighbour hurts every row alike):

- ``bare call`` and ``pass-through decorator (floor)``: the function itself, and a
  ``functools.wraps`` wrapper that only calls it.
- ``Timeout(1.0)``: the default cooperative ``deadline`` mode, decorated.
- ``Timeout(0.5) around Timeout(1.0)``: two decorated timeouts; the inner one finds
  the earlier outer deadline and keeps it.
- ``stack: Retry + CircuitBreaker + Timeout``: one decorated ``Pipeline``, outermost
  first, as the docs recommend composing them.
- async: ``Timeout(1.0)`` on a coroutine function, against the same pass-through
  wrapper with ``async with asyncio.timeout(1.0)`` inside (Python 3.11+).

``RESILIENCE_BENCH_QUICK=1`` runs a short version.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from resilience import CircuitBreaker, Pipeline, Retry, Timeout

from ._timing import ans_per_call, ns_per_call, print_table, quick

BARE = "bare call"
FLOOR = "pass-through decorator (floor)"


def work() -> int:
    return 1


async def awork() -> int:
    return 1


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


def stdlib_timeout(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(1.0):  # type: ignore[attr-defined,unused-ignore]
            return await fn(*args, **kwargs)

    return wrapper


def _interleaved(
    cases: dict[str, Callable[[], Any]], timer: Callable[..., float], *, number: int, rounds: int
) -> list[tuple[str, float]]:
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, fn in cases.items():
            best[name] = min(best[name], timer(fn, number=number, repeat=1))
    return list(best.items())


def sync_rows(number: int, rounds: int) -> list[tuple[str, float]]:
    timed = Timeout(1.0, name="bench_timeout")(work)
    stack = Pipeline(Retry(on=OSError), CircuitBreaker(), Timeout(1.0), name="bench_timeout_stack")(
        work
    )

    nested = Timeout(0.5, name="bench_timeout_outer")(
        Timeout(1.0, name="bench_timeout_inner")(work)
    )
    cases: dict[str, Callable[[], Any]] = {
        BARE: work,
        FLOOR: pass_through(work),
        "Timeout(1.0)": timed,
        "Timeout(0.5) around Timeout(1.0)": nested,
        "stack: Retry + CircuitBreaker + Timeout": stack,
    }
    for name, fn in cases.items():
        if fn() != 1:
            raise RuntimeError(f"{name} did not return 1")
    return _interleaved(cases, ns_per_call, number=number, rounds=rounds)


def async_rows(number: int, rounds: int) -> list[tuple[str, float]]:
    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        BARE: awork,
        FLOOR: apass_through(awork),
        "Timeout(1.0)": Timeout(1.0, name="bench_atimeout")(awork),
    }
    if sys.version_info >= (3, 11):
        cases["asyncio.timeout(1.0) in the floor wrapper"] = stdlib_timeout(awork)
    return _interleaved(cases, ans_per_call, number=number, rounds=rounds)


def main() -> None:
    number, rounds = (2_000, 2) if quick() else (50_000, 7)
    sync = sync_rows(number, rounds)
    print_table("Timeout, sync (deadline mode): success path", sync, baseline=FLOOR, floor=BARE)
    arows = async_rows(number, rounds)
    stdlib = [name for name, _ in arows if name.startswith("asyncio.timeout")]
    print_table(
        "Timeout, async: success path",
        arows,
        baseline=stdlib[0] if stdlib else FLOOR,
        floor=BARE,
    )


if __name__ == "__main__":
    main()
