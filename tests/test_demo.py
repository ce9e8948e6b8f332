"""The demo runs (quick version, in-process) and its summary comes from real calls.

Speed is not asserted: only that protection changed what callers saw, and that the
numbers of the summary agree with each other (calls, attempts, requests the service
counted, events the pipeline published, the scrape of /metrics, the status view, the
charges the payments service made).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from resilience import CircuitBreaker, CircuitOpenError, CircuitState

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the demo package lives next to src/, not inside it
    sys.path.insert(0, str(ROOT))

runner: ModuleType = importlib.import_module("demo.runner")
server: ModuleType = importlib.import_module("demo.flaky_server")
policy: ModuleType = importlib.import_module("demo.policy")
ops: ModuleType = importlib.import_module("demo.ops")
payments: ModuleType = importlib.import_module("demo.payments")


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
    events = protected.events
    retries = events["retries"]
    assert retries > 0
    assert events["retries after a hint"] > 0
    shed = events["bulkhead rejections"]
    # Every call the bulkhead let in makes one attempt, and one more per retry, unless
    # the call timeout ended it during a wait; the breaker's rejections never leave.
    made = protected.calls - shed + retries
    sent = protected.attempts + events["breaker rejections"]
    assert made - events["timed out: call-timeout"] <= sent <= made
    assert sum(r.sent for r in protected.results) == protected.attempts
    # An attempt cut off while connecting never reaches the service.
    assert protected.upstream_requests <= protected.attempts
    # Every fallback answers a retry that gave up, a call that ran out of time, or a
    # call the bulkhead shed.
    fallbacks = protected.count("fallback")
    assert events["fallbacks"] == fallbacks
    assert fallbacks == events["gave up"] + events["timed out: call-timeout"] + shed
    assert shed == sum(1 for r in protected.results if r.because == "BulkheadFullError")


def test_breaker_opens_during_the_outage_and_sheds_calls(report: Any) -> None:
    script = runner.QUICK_RUN.script
    bare, protected = report.bare, report.protected
    transitions = protected.transitions
    assert len(transitions) == protected.events["breaker transitions"]
    first = transitions[0]
    assert (first.from_state, first.to_state) == ("closed", "open")
    assert script.phase_at(first.at).down, f"it opened at {first.at:.2f} s, not in the outage"
    assert any(t.to_state == "half_open" for t in transitions), "it probed"
    assert transitions[-1].to_state == "closed", "it closed once the upstream was back"
    assert [t.at for t in transitions] == sorted(t.at for t in transitions)
    # Attempts it rejected never reached the dead service: the outage cost it less.
    assert protected.events["breaker rejections"] > 0
    assert protected.kept_off_by_breaker > 0
    outage = next(p.name for p in script.phases if p.down)
    assert protected.requests_by_phase[outage] < bare.requests_by_phase[outage]
    assert sum(protected.requests_by_phase.values()) == protected.upstream_requests


def test_the_metrics_scrape_agrees_with_the_events(report: Any) -> None:
    metrics, events = report.metrics, report.protected.events
    catalog = policy.POLICY
    assert metrics.url.endswith("/metrics")
    assert metrics.value("resilience_calls", policy=catalog) == report.protected.calls
    assert metrics.value("resilience_retry_attempts", policy=catalog) == events["retries"]
    assert metrics.value("resilience_retry_gave_up", policy=catalog) == events["gave up"]
    assert metrics.value("resilience_fallbacks", policy=catalog) == events["fallbacks"]
    timeouts = events["timed out: attempt-timeout"] + events["timed out: call-timeout"]
    assert metrics.value("resilience_timeouts", policy=catalog) == timeouts
    rejections = {"circuit_open": "breaker rejections", "bulkhead_full": "bulkhead rejections"}
    for reason, key in rejections.items():
        assert metrics.value("resilience_rejections", policy=catalog, reason=reason) == events[key]
    transitions = metrics.value("resilience_circuitbreaker_transitions", policy=catalog)
    assert transitions == events["breaker transitions"]
    opened = metrics.value(
        "resilience_circuitbreaker_transitions",
        policy=catalog,
        from_state="closed",
        to_state="open",
    )
    assert opened >= 1
    state = metrics.samples("resilience_circuitbreaker_state", policy=catalog)
    assert sum(s.value for s in state) == 1, "one state at a time"
    # The transport of the idempotency scene retried once, after the lost answer.
    assert metrics.value("resilience_retry_attempts", policy=payments.CLIENT_POLICY) == 1


def test_the_status_view_shows_the_policy(report: Any) -> None:
    (entry,) = [p for p in report.status["policies"] if p["policy"] == policy.POLICY]
    kinds = [s["kind"] for s in entry["strategies"]]
    assert kinds == ["fallback", "bulkhead", "timeout", "retry", "circuit_breaker", "timeout"]
    breaker = entry["strategies"][kinds.index("circuit_breaker")]
    bulkhead = entry["strategies"][kinds.index("bulkhead")]
    assert breaker["not_permitted_calls"] == report.protected.events["breaker rejections"]
    assert bulkhead["rejected"] == report.protected.events["bulkhead rejections"]
    assert bulkhead["in_flight"] == 0
    assert report.status["recording_events"] is True
    assert report.status["events"], "the status view keeps the recent events"


def test_the_idempotency_scene_charges_once(report: Any) -> None:
    bare, protected = report.charges
    # Bare: no key, no retry; the charge ran and the caller got nothing back.
    assert bare.key is None
    assert bare.status is None
    assert str(bare.error).startswith("RemoteProtocolError")
    assert (bare.executions, bare.answers_lost) == (1, 1)
    # With a key: the retry got the stored answer, and the charge ran once.
    assert protected.key
    assert [str(a) for a in protected.attempts] == ["RemoteProtocolError", "201"]
    assert (protected.status, protected.replayed) == (201, True)
    assert protected.body["amount"] == 42
    assert (protected.executions, protected.answers_lost) == (1, 1)


def test_summary_shows_the_measured_numbers(report: Any) -> None:
    text = runner.render(report)
    bare, protected = report.bare, report.protected
    assert "answered by the upstream" in text
    assert f"{protected.count('upstream')} ({protected.success_rate:.0%})" in text
    assert f"{bare.count('upstream')} ({bare.success_rate:.0%})" in text
    assert f"{protected.upstream_requests}" in text
    for phase in runner.QUICK_RUN.script.phases:
        assert phase.name in text
    rejected = protected.events["breaker rejections"]
    assert re.search(rf"attempts rejected by the breaker +0 +{rejected}\n", text)
    kept = protected.kept_off_by_breaker
    assert re.search(rf"calls the breaker kept off the upstream +0 +{kept}\n", text)
    assert "closed -> open       consecutive_failures" in text
    retries = report.metrics.value("resilience_retry_attempts", policy=policy.POLICY)
    assert re.search(rf"resilience_retry_attempts_total +{retries:g}\n", text)
    assert report.metrics.url in text
    assert "Idempotent-Replayed: true" in text
    assert text.count("charge executed     1 time (the service's count)") == 2
    assert "Why this order" in text


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
        assert stats["requests_by_phase"] == service.requests_by_phase() == {"only": 1}
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


def test_payments_service_replays_a_key_and_loses_answers_on_demand() -> None:
    with payments.PaymentsService() as service, httpx.Client(timeout=5.0) as client:
        headers = {"Idempotency-Key": "order-1"}
        first = client.post(service.url, json={"amount": 7}, headers=headers)
        again = client.post(service.url, json={"amount": 7}, headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() == {"charge": "ch_1", "amount": 7}
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers["Idempotent-Replayed"] == "true"
        other = client.post(service.url, json={"amount": 8}, headers=headers)
        assert other.status_code == 422, "the same key for another body"
        service.lose_answers(1)
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(service.url, json={"amount": 9})
        listed = client.get(service.url).json()["charges"]
        assert [c["amount"] for c in listed] == [7, 9]
        assert (service.executions, service.answers_lost) == (2, 1)


def test_ops_endpoints_serve_metrics_and_status() -> None:
    breaker = CircuitBreaker(failure_threshold=1, name="demo-ops-test")

    @breaker
    def fails() -> None:
        raise ConnectionError("down")

    with ops.OpsEndpoints() as endpoints:
        for _ in range(2):
            with pytest.raises((ConnectionError, CircuitOpenError)):
                fails()
        scraped = ops.scrape(endpoints.metrics_url)
        status = ops.fetch_status(endpoints.status_url)
        index = _get_text(endpoints.url)
    assert scraped.value("resilience_rejections", policy="demo-ops-test") == 1
    assert scraped.value("resilience_circuitbreaker_state", policy="demo-ops-test", state="open")
    (mine,) = [p for p in status["policies"] if p["policy"] == "demo-ops-test"]
    assert mine["state"] == "open"
    assert ("/metrics" in index, "/status" in index) == (True, True)


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_serve_keeps_everything_up_until_stopped() -> None:
    seen: dict[str, Any] = {}

    def announce(service: Any, endpoints: Any, payments_service: Any) -> None:
        def look() -> None:
            seen["stats"] = _get(service.url + "stats")[2]
            seen["metrics"] = ops.scrape(endpoints.metrics_url)

        timer = threading.Timer(0.8, look)
        timer.daemon = True
        timer.start()
        seen["timer"] = timer

    asyncio.run(runner.serve(runner.QUICK_RUN, announce=announce, seconds=1.2))
    seen["timer"].join(5)
    assert seen["stats"]["requests"] > 0
    assert seen["metrics"].value("resilience_calls", policy=policy.POLICY) > 0


def test_a_real_prometheus_server_scrapes_the_demo(tmp_path: Path) -> None:
    """``python -m demo --serve`` as an operator runs it, scraped by a real Prometheus."""
    from _prometheus_server import prometheus_scraping

    proc = subprocess.Popen(
        [sys.executable, "-m", "demo", "--serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        metrics_url = ""
        for line in proc.stdout:
            if line.startswith("Metrics"):
                metrics_url = line.split()[1]
                break
        assert metrics_url.startswith("http://127.0.0.1:"), "the demo never printed its URL"
        target = metrics_url.removeprefix("http://").removesuffix("/metrics")
        with prometheus_scraping([target], tmp_path) as prom:
            calls = prom.wait_for(f'sum(resilience_calls_total{{policy="{policy.POLICY}"}}) > 0')
            states = prom.wait_for(f'resilience_circuitbreaker_state{{policy="{policy.POLICY}"}}')
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
    assert float(calls[0]["value"][1]) > 0
    by_state = {s["metric"]["state"]: float(s["value"][1]) for s in states}
    assert set(by_state) == {state.value for state in CircuitState}
    assert sum(by_state.values()) == 1.0, "exactly one state at a time"
    assert proc.returncode == 0, "the demo stops cleanly on Ctrl-C"
