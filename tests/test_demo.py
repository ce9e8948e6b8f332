"""The demo runs (quick version, in-process) and its summary comes from real calls.

Speed is not asserted: only that protection changed what callers saw, and that the
numbers of the summary agree with each other (calls, attempts, requests the service
counted, events the pipeline published).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the demo package lives next to src/, not inside it
    sys.path.insert(0, str(ROOT))

runner: ModuleType = importlib.import_module("demo.runner")
server: ModuleType = importlib.import_module("demo.flaky_server")
policy: ModuleType = importlib.import_module("demo.policy")


@pytest.fixture(scope="module")
def report() -> Any:
    return asyncio.run(runner.run(runner.QUICK_RUN))


def test_every_call_is_accounted_for(report: Any) -> None:
    n = runner.QUICK_RUN.calls
    bare, protected = report.bare, report.protected
    assert n > 0
    assert bare.calls == protected.calls == n
    assert bare.count("upstream") + bare.count("error") == n
    assert sum(protected.count(s) for s in ("upstream", "fallback", "error")) == n
    assert all(r.latency > 0 for r in bare.results + protected.results)


def test_the_script_hurts_the_bare_column(report: Any) -> None:
    bare = report.bare
    assert bare.count("error") > 0
    assert bare.count("upstream") > 0
    assert bare.upstream_requests == bare.attempts == bare.calls, "one request per bare call"
    assert not bare.events, "the bare column publishes no resilience events"


def test_protection_answers_more_calls_from_the_upstream(report: Any) -> None:
    bare, protected = report.bare, report.protected
    assert protected.success_rate > bare.success_rate
    assert protected.count("error") == 0, "the fallback answers whatever the retry gives up on"


def test_protected_counts_agree_with_the_events(report: Any) -> None:
    protected = report.protected
    retries = protected.events["retries"]
    assert retries > 0
    assert protected.events["retries after Retry-After"] > 0
    # Each retry is one more attempt, unless the call timeout ended the call first.
    assert protected.calls < protected.attempts <= protected.calls + retries
    # An attempt cut off while connecting never reaches the service.
    assert report.bare.upstream_requests < protected.upstream_requests <= protected.attempts
    # Every fallback answers a retry that gave up or a call that ran out of time.
    fallbacks = protected.count("fallback")
    assert protected.events["fallbacks"] == fallbacks
    assert fallbacks == protected.events["gave up"] + protected.events["timed out: call-timeout"]


def test_summary_shows_the_measured_numbers(report: Any) -> None:
    text = runner.render(report)
    bare, protected = report.bare, report.protected
    assert "answered by the upstream" in text
    assert f"{protected.count('upstream')} ({protected.success_rate:.0%})" in text
    assert f"{bare.count('upstream')} ({bare.success_rate:.0%})" in text
    assert f"{protected.upstream_requests}" in text
    for phase in runner.QUICK_RUN.script.phases:
        assert phase.name in text


def test_script_phases_and_wrapping() -> None:
    script = server.Script((server.Phase("a", 1.0), server.Phase("b", 2.0)))
    assert script.duration == 3.0
    assert script.phase_at(0.5).name == "a"
    assert script.phase_at(1.5).name == "b"
    assert script.phase_at(10.0).name == "b", "the last phase lasts"
    assert script.phase_at(3.5, loop=True).name == "a"
    assert script.scaled(0.5).duration == 1.5


def _get(url: str) -> tuple[int, dict[str, str], dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


@pytest.mark.parametrize(
    ("phase", "status", "retry_after", "answer"),
    [
        (dict(error_rate=1.0, retry_after=2), 503, "2", "503 overloaded"),
        (dict(down=True, retry_after=2), 503, None, "503 outage"),
        (dict(error_rate=0.01), 200, None, "200"),
    ],
)
def test_service_follows_its_script(
    phase: dict[str, Any], status: int, retry_after: str | None, answer: str
) -> None:
    script = server.Script((server.Phase("only", 60.0, **phase),), latency=(0.0, 0.0))
    with server.FlakyService(script) as service:
        got_status, headers, body = _get(service.url)
        assert (got_status, headers.get("Retry-After"), body["phase"]) == (
            status,
            retry_after,
            "only",
        )
        stats = _get(service.url + "stats")[2]
        assert stats["requests"] == service.requests == 1, "/stats is not counted"
        assert stats["answers"] == {answer: 1}
        service.restart()
        assert service.requests == 0


def test_retry_after_parsing() -> None:
    parse = policy.parse_retry_after
    assert parse("1") == 1.0
    assert parse(" 0.5 ") == 0.5
    assert parse(None) is None
    assert parse("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse("-3") is None
    assert policy.UpstreamError(503, 1.0).retry_after == 1.0
