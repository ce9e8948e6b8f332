"""The Grafana dashboard queries only metrics the exposition really has."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import resilience.prometheus

DASHBOARD = (
    Path(__file__).resolve().parent.parent / "docs" / "grafana" / "resilience-dashboard.json"
)
METRIC = re.compile(r"\bresilience_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


def expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" or key == "definition":
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def exposed_names() -> set[str]:
    registry = CollectorRegistry()
    resilience.prometheus.enable(registry)
    try:
        text = generate_latest(registry).decode()
    finally:
        resilience.prometheus.disable(registry)
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES[family.type]
    }


def test_every_queried_metric_exists_in_the_exposition() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(expressions(dashboard))
    assert len(exprs) > 10
    queried = {name for expr in exprs for name in METRIC.findall(expr)}
    assert queried, "the dashboard should query resilience metrics"
    assert queried <= exposed_names(), queried - exposed_names()


def test_the_dashboard_covers_states_rejections_retries_latency_and_saturation() -> None:
    text = DASHBOARD.read_text()
    for needed in (
        "resilience_circuitbreaker_state",
        "resilience_rejections_total",
        "resilience_retry_attempts_total",
        "resilience_call_duration_seconds_bucket",
        "resilience_bulkhead_in_flight",
    ):
        assert needed in text
    for panel in json.loads(text)["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]


PERCENT_GAUGES = {
    # 0-100, as CircuitBreaker.snapshot() reports them (tests/test_prometheus.py checks it)
    "resilience_circuitbreaker_failure_rate",
    "resilience_circuitbreaker_slow_call_rate",
}


def test_panels_plot_percent_gauges_in_percent_and_ratios_in_percentunit() -> None:
    # Grafana's "percent" expects 0-100 and "percentunit" 0-1: a breaker's 50 % failure
    # rate in a percentunit panel would read 5000 %.
    checked = 0
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs = list(expressions(panel.get("targets", [])))
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        queried = {name for expr in exprs for name in METRIC.findall(expr)}
        if queried & PERCENT_GAUGES:
            assert unit == "percent", panel["title"]
            checked += 1
        if unit == "percentunit":  # only a ratio of two series is 0-1
            assert all("/" in expr for expr in exprs), panel["title"]
            assert not queried & PERCENT_GAUGES, panel["title"]
    assert checked == 1
