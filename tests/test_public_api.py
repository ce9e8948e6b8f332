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
