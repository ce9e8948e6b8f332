"""What ``import resilience`` costs, and the first use of a few of its names.

Each case runs in a fresh interpreter (``sys.executable -c``), the cases interleaved
round after round so that all of them see the same machine. Two numbers per case:

- ``in-process``: ``time.perf_counter()`` around the statement inside the interpreter,
  so interpreter start-up is left out (``pass`` is the floor: ~0);
- ``wall``: the whole ``python -c`` run, start-up included, to compare with ``pass``.

The interpreters read the modules' bytecode caches as an installed package does (the
first round, not counted, writes them even under ``PYTHONDONTWRITEBYTECODE``). Target
from the issue: ``import resilience`` under 30 ms, and no optional package imported
(the latter is a test: ``tests/test_public_api.py``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._timing import quick

ROUNDS = 20
CASES = {
    "pass": "pass",
    "import resilience": "import resilience",
    "resilience.subscribe (first use)": "import resilience; resilience.subscribe",
    "resilience.ResilienceError (first use)": "import resilience; resilience.ResilienceError",
    "from resilience import Pipeline": "from resilience import Pipeline",
    "from resilience import Retry": "from resilience import Retry",
}
TARGET_MS = 30.0


def _env() -> dict[str, str]:
    import resilience

    src = str(Path(resilience.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _run(statement: str, env: dict[str, str]) -> tuple[float, float]:
    """``(in-process ms, wall ms)`` of ``statement`` in a fresh interpreter."""
    code = f"import time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    wall = time.perf_counter() - t0
    return float(out) * 1e3, wall * 1e3


def main() -> None:
    env = _env()
    rounds = 1 if quick() else ROUNDS
    for statement in CASES.values():  # warm-up: writes the bytecode caches
        _run(statement, env)
    inside: dict[str, list[float]] = {name: [] for name in CASES}
    wall: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, statement in CASES.items():
            a, b = _run(statement, env)
            inside[name].append(a)
            wall[name].append(b)
    print(f"\n## Import time: fresh interpreters, best and median of {rounds} (ms)\n")
    head = ("case", "in-process best", "in-process median", "wall best", "wall median")
    print(f"| {head[0]:<40} | {head[1]:>15} | {head[2]:>17} | {head[3]:>9} | {head[4]:>11} |")
    print(f"|{'-' * 42}|{'-' * 16}:|{'-' * 18}:|{'-' * 10}:|{'-' * 12}:|")
    for name in CASES:
        i, w = inside[name], wall[name]
        print(
            f"| {name:<40} | {min(i):>15.2f} | {statistics.median(i):>17.2f} "
            f"| {min(w):>9.1f} | {statistics.median(w):>11.1f} |"
        )
    best = min(inside["import resilience"])
    verdict = "met" if best < TARGET_MS else "NOT met"
    print(f"\n`import resilience` ≤ {TARGET_MS:g} ms: {verdict} (best {best:.2f} ms)")
