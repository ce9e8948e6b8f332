"""The public surface: __all__ is sorted and complete; importing switches nothing on."""

from __future__ import annotations
import __future__

import json
import subprocess
import sys
import types

import resilience

OPTIONAL = [
    "prometheus_client",
    "opentelemetry",
    "httpx",
    "requests",
    "redis",
    "psycopg",
    "tenacity",
    "pybreaker",
    "aiolimiter",
]


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user can import from ``module`` that are not submodules or ``__future__`` flags."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not isinstance(value, __future__._Feature)
    }


def test_all_is_sorted_without_duplicates() -> None:
    assert resilience.__all__ == sorted(resilience.__all__)
    assert len(set(resilience.__all__)) == len(resilience.__all__)


def test_all_lists_every_public_name_and_only_existing_ones() -> None:
    listed = set(resilience.__all__)
    assert public_names(resilience) - listed == set(), "public but missing from __all__"
    assert {n for n in listed if not hasattr(resilience, n)} == set(), "listed but missing"


def test_every_public_name_has_a_docstring() -> None:
    undocumented = [
        name
        for name in resilience.__all__
        if isinstance(getattr(resilience, name), (type, types.FunctionType))
        and not (getattr(resilience, name).__doc__ or "").strip()
    ]
    assert undocumented == []


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from resilience import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(resilience.__all__)


def test_version() -> None:
    assert isinstance(resilience.__version__, str)
    assert resilience.__version__[0].isdigit()


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def test_importing_resilience_imports_no_optional_dependency() -> None:
    code = (
        "import json, sys\n"
        "import resilience\n"
        f"names = {OPTIONAL!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if any(m == n or m.startswith(n + '.') for n in names))))\n"
    )
    assert json.loads(run_python(code)) == []


def test_the_check_above_can_fail() -> None:
    # The same probe, after importing an optional dependency, does see it.
    code = (
        "import json, sys\n"
        "import resilience, resilience.tenacity\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'tenacity')))\n"
    )
    assert "tenacity" in json.loads(run_python(code))


def test_importing_resilience_switches_nothing_on() -> None:
    code = (
        "import json, logging\n"
        "import resilience\n"
        "from resilience._core.clock import SWITCHES\n"
        "from resilience._core.events import EVENTS\n"
        "print(json.dumps([SWITCHES.no_wait, bool(EVENTS._all), bool(EVENTS._by_policy),\n"
        "    logging.getLogger('resilience').handlers != []]))\n"
    )
    assert json.loads(run_python(code)) == [False, False, False, False]


def test_import_loads_only_the_core() -> None:
    """``import resilience`` loads no pattern module, no asyncio and no optional package.

    The patterns load on first use (PEP 562), which keeps the import cheap for programs
    that use a few of them.
    """
    code = (
        "import sys, resilience\n"
        "heavy = ('asyncio', 'sqlite3', 'resilience.retry', 'resilience.circuit_breaker',"
        " 'resilience.idempotency', 'resilience.bulkhead')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "from resilience import Retry, CircuitBreaker\n"
        "print(Retry.__module__, CircuitBreaker.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["", "resilience.retry resilience.circuit_breaker"]


# The standard library modules a bare ``import resilience`` used to pull in (dataclasses
# alone brings inspect, dis, ast and tokenize), which made it cost 40-60 ms.
HEAVY_STDLIB = [
    "asyncio",
    "collections",
    "contextlib",
    "contextvars",
    "dataclasses",
    "datetime",
    "enum",
    "inspect",
    "logging",
    "random",
    "re",
    "threading",
    "typing",
    "weakref",
]


def modules_loaded_by(statement: str) -> list[str]:
    """The modules that ``statement`` (after ``import resilience``) adds to a fresh
    interpreter, among the heavy standard library and every resilience module."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import resilience\n"
        f"{statement}\n"
        f"watched = {HEAVY_STDLIB!r}\n"
        "print(json.dumps(sorted(m for m in set(sys.modules) - before\n"
        "    if m in watched or m.split('.')[0] == 'resilience')))\n"
    )
    loaded: list[str] = json.loads(run_python(code))
    return loaded


def test_bare_import_loads_nothing_but_the_package() -> None:
    # Every public name, the core's included, loads on first use: the import itself
    # runs ``resilience/__init__.py`` and nothing heavier.
    assert modules_loaded_by("pass") == ["resilience"]


def test_subscribing_loads_only_the_event_bus() -> None:
    # The bus is apart from the event dataclasses: no typing, no dataclasses.
    loaded = modules_loaded_by("resilience.subscribe(print); resilience.unsubscribe(print)")
    assert "resilience._core.bus" in loaded
    assert {"resilience._core.events", "dataclasses", "enum", "inspect", "typing"} & set(
        loaded
    ) == set()


def test_catching_the_library_errors_loads_no_typing() -> None:
    loaded = modules_loaded_by("resilience.ResilienceError, resilience.TimeoutExceededError")
    assert loaded == ["resilience", "resilience._core", "resilience._core.errors"]


def test_the_import_probe_can_fail() -> None:
    # The same probe sees what first use of an event class loads.
    loaded = modules_loaded_by("resilience.Event")
    assert {"dataclasses", "inspect", "typing", "resilience._core.events"} <= set(loaded)


def test_every_public_name_resolves_in_a_fresh_interpreter() -> None:
    code = (
        "import resilience\n"
        "missing = [n for n in resilience.__all__ if not hasattr(resilience, n)]\n"
        "unlisted = sorted(set(resilience.__all__) - set(dir(resilience)))\n"
        "print(missing, unlisted)\n"
    )
    assert run_python(code).split() == ["[]", "[]"]


def test_lazy_names_are_the_defining_modules_objects() -> None:
    from resilience._core import bus, clock, deadline, errors, events, outcome, strategy

    assert resilience.subscribe is bus.subscribe is events.subscribe
    assert resilience.EventBus is bus.EventBus is events.EventBus
    assert resilience.Event is events.Event
    assert resilience.Clock is clock.Clock
    assert resilience.deadline is deadline.deadline
    assert resilience.ResilienceError is errors.ResilienceError
    assert resilience.Outcome is outcome.Outcome
    assert resilience.Pipeline is strategy.Pipeline
