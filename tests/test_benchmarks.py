"""Every benchmark module runs end to end in smoke mode, so `make bench` cannot rot.

Speed is not asserted here (the machine running the tests is shared and noisy); the
benchmarks check their own cases' results before timing them.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the benchmarks package lives next to src/, not inside it
    sys.path.insert(0, str(ROOT))

runner: ModuleType = importlib.import_module("benchmarks.__main__")
timing: ModuleType = importlib.import_module("benchmarks._timing")
MODULES: list[str] = runner.discover()


@pytest.fixture(autouse=True)
def quick_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(timing.QUICK_ENV, "1")


def test_every_bench_file_is_discovered() -> None:
    files = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    assert [m.removeprefix("benchmarks.") for m in MODULES] == files
    assert "benchmarks.bench_retry" in MODULES


def test_filter_keeps_matching_modules_only() -> None:
    assert runner.discover(["retry"]) == ["benchmarks.bench_retry"]
    assert runner.discover(["no-such-benchmark"]) == []


@pytest.mark.parametrize("name", MODULES)
def test_module_main_runs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    importlib.import_module(name).main()
    out = capsys.readouterr().out
    assert re.search(r"^\| .+ \| +[\d,.]+x? \|", out, re.M), "prints at least one table row"


def test_retry_tables_have_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    importlib.import_module("benchmarks.bench_retry").main()
    out = capsys.readouterr().out
    for title in ("sync: success path", "async: success path", "sync: fails twice"):
        assert f"Retry, {title}" in out
    rows = re.findall(r"^\| (.+?) +\| +(-?\d+) \|", out, re.M)
    names = {name for name, _ in rows}
    expected = {"bare call", "pass-through decorator (floor)", "resilience Retry", "tenacity"}
    assert expected | {"stamina", "backoff"} <= names
    assert all(int(ns) > 0 for _, ns in rows)
    assert "target <= 300 ns" in out
    assert "target <= 600 ns" in out


def test_cli_header_and_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--quick", "retry"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# resilience benchmarks")
    assert f"Python {sys.version_info.major}.{sys.version_info.minor}" in out
    assert "tenacity " in out
    assert "stamina " in out
    assert "# bench_retry" in out


def test_cli_rejects_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(["no-such-benchmark"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "available:" in err
    assert "retry" in err
