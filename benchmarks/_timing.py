"""Timing helpers shared by every benchmark module (one process, same run)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


def ns_per_call(fn: Callable[[], Any], *, number: int = 20_000, repeat: int = 5) -> float:
    """Best-of-``repeat`` nanoseconds per ``fn()`` over ``number`` calls."""
    best = float("inf")
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter_ns()
            for _ in range(number):
                fn()
            best = min(best, (time.perf_counter_ns() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    return best


def ans_per_call(
    fn: Callable[[], Awaitable[Any]], *, number: int = 20_000, repeat: int = 5
) -> float:
    """Best-of-``repeat`` nanoseconds per ``await fn()`` inside one running event loop."""

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


def print_table(title: str, rows: Sequence[tuple[str, float]], *, baseline: str) -> None:
    """Print ``name  ns/call  ratio-to-baseline`` rows (ratio = baseline / row: x faster)."""
    base = dict(rows)[baseline]
    print(f"\n## {title}\n")
    print(f"| {'case':<44} | {'ns/call':>10} | {'vs ' + baseline:>18} |")
    print(f"|{'-' * 46}|{'-' * 12}:|{'-' * 20}:|")
    for name, ns in rows:
        print(f"| {name:<44} | {ns:>10.0f} | {base / ns:>17.1f}x |")
