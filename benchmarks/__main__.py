"""Run the benchmarks: ``python -m benchmarks [--quick] [NAME ...]`` (``make bench``).

Every ``benchmarks/bench_*.py`` module is found automatically and its ``main()`` is run
in this one process, in name order, so all tables of a run share one machine state.
``NAME`` keeps only the modules whose name contains it (``python -m benchmarks retry``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import pkgutil
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._timing import QUICK_ENV

PACKAGE = "benchmarks"
PREFIX = "bench_"
# The peers compared against: the bench extra plus tenacity (from the ``all`` extra).
PEER_EXTRAS = ("bench", "tenacity")


def discover(filters: Sequence[str] = ()) -> list[str]:
    """Module names of ``benchmarks/bench_*.py``, sorted; filtered by substring if given."""
    here = Path(__file__).resolve().parent
    names = sorted(
        f"{PACKAGE}.{m.name}"
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith(PREFIX) and not m.ispkg
    )
    if filters:
        names = [n for n in names if any(f in n.removeprefix(f"{PACKAGE}.") for f in filters)]
    return names


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def usable_cores() -> str:
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return str(total)
    return str(total) if usable == total else f"{usable} usable of {total}"


def peer_versions() -> dict[str, str]:
    """Installed versions of resilience and the libraries it is compared with."""
    versions = {"resilience": _version("resilience")}
    for req in importlib.metadata.requires("resilience") or []:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        name = re.match(r"[A-Za-z0-9._-]+", req)
        if extra and name and extra.group(1) in PEER_EXTRAS:
            versions[name.group(0)] = _version(name.group(0))
    return versions


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_header() -> None:
    print("# resilience benchmarks\n")
    print(f"- Python {platform.python_version()} ({platform.python_implementation()})")
    print(f"- {platform.system()} {platform.release()} {platform.machine()}")
    print(f"- CPU: {cpu_model()}, {usable_cores()} cores")
    print("- " + ", ".join(f"{k} {v}" for k, v in peer_versions().items()))
    print(f"- {time.strftime('%Y-%m-%d %H:%M %Z')}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help="run only modules whose name contains NAME")
    parser.add_argument(
        "--quick", action="store_true", help=f"a few iterations per case (sets {QUICK_ENV}=1)"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmark modules")
    args = parser.parse_args(argv)
    modules = discover(args.names)
    if args.list:
        print("\n".join(modules))
        return 0
    if not modules:
        available = ", ".join(m.removeprefix(f"{PACKAGE}.{PREFIX}") for m in discover())
        parser.error(f"no benchmark module matches {args.names}; available: {available}")
    if args.quick:
        os.environ[QUICK_ENV] = "1"
    print_header()
    if args.quick:
        print(f"- {QUICK_ENV}=1: smoke run, the numbers are meaningless")
    for name in modules:
        module = importlib.import_module(name)
        run = getattr(module, "main", None)
        if not callable(run):
            raise SystemExit(f"{name} has no main() function")
        print(f"\n# {name.removeprefix(f'{PACKAGE}.')}")
        sys.stdout.flush()
        run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
