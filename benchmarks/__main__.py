"""Run every benchmark module: ``python -m benchmarks`` (or ``make bench``).

Each ``benchmarks/bench_*.py`` has a ``main()`` that prints its tables; they all run in
this one process, so the ratios within a table come from the same run.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
    if module.name.startswith("bench_"):
        importlib.import_module(f"benchmarks.{module.name}").main()
