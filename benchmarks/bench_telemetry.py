"""What telemetry costs per call: off, Prometheus metrics on, OpenTelemetry spans on.

The stack is a decorated sync ``Pipeline(Timeout(1.0), Retry(on=OSError))`` whose function
succeeds. Rows are measured interleaved, best of several rounds, so that a noisy neighbour
hurts every row alike. ``RESILIENCE_BENCH_QUICK=1`` runs a short version.

Run: ``python -m benchmarks.bench_telemetry``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import resilience.otel
import resilience.prometheus
from resilience import Pipeline, Retry, Timeout
from resilience._core.strategy import Scope

from ._timing import ns_per_call

QUICK = os.environ.get("RESILIENCE_BENCH_QUICK") == "1"


def _fn() -> int:
    return 1


Case = tuple[Callable[[], Any], Callable[[], object], Callable[[], object]]


def _nothing() -> None:
    return None


def _measure(cases: dict[str, Case], *, number: int, rounds: int) -> dict[str, float]:
    """Best ns/call of each case; rounds interleave the cases, each switched on in turn."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, (fn, switch_on, switch_off) in cases.items():
            switch_on()
            try:
                best[name] = min(best[name], ns_per_call(fn, number=number, repeat=1))
            finally:
                switch_off()
    return best


def main() -> None:
    number, rounds = (5_000, 3) if QUICK else (50_000, 9)

    def stack() -> Pipeline:
        return Pipeline(Timeout(1.0), Retry(on=OSError), name="bench")

    retry = Retry(on=OSError, name="bench_retry")
    retry_alone = retry(_fn)
    retry_closure = retry._wrap_sync(_fn, Scope("bench_retry", "retry"))
    decorated = stack()(_fn)
    closure = stack()._wrap_sync(_fn, Scope("bench", "pipeline"))

    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def prometheus(durations: bool) -> Callable[[], object]:
        return lambda: resilience.prometheus.enable(registry, durations=durations)

    def prometheus_off() -> None:
        resilience.prometheus.disable(registry)

    rows = _measure(
        {
            "retry: strategy closure alone": (retry_closure, _nothing, _nothing),
            "retry: decorated, telemetry off": (retry_alone, _nothing, _nothing),
            "stack: strategy closures alone": (closure, _nothing, _nothing),
            "stack: decorated, telemetry off": (decorated, _nothing, _nothing),
            "stack: Prometheus collector registered": (decorated, prometheus(True), prometheus_off),
            "stack: Prometheus, durations=False": (decorated, prometheus(False), prometheus_off),
            # Tracing on while no tracer provider is configured: the no-op API is skipped.
            "stack: otel enabled, no provider configured": (
                decorated,
                resilience.otel.enable,
                resilience.otel.disable,
            ),
        },
        number=number,
        rounds=rounds,
    )
    rows.update(
        _measure(
            {
                "stack: OTel SDK + in-memory exporter": (
                    decorated,
                    lambda: resilience.otel.enable(provider),
                    resilience.otel.disable,
                ),
            },
            number=max(1_000, number // 10),
            rounds=max(3, rounds // 3),
        )
    )
    provider.shutdown()

    base = rows["stack: decorated, telemetry off"]
    print("\n## Telemetry cost per call (sync, success path)\n")
    print(f"| {'case':<46} | {'ns/call':>9} | {'added vs off':>13} |")
    print(f"|{'-' * 48}|{'-' * 10}:|{'-' * 14}:|")
    for name, ns in rows.items():
        added = ns - base if name.startswith("stack") and "closures" not in name else None
        cell = f"{added:+.0f}" if added is not None else ""
        print(f"| {name:<46} | {ns:>9.0f} | {cell:>13} |")
    gate = rows["retry: decorated, telemetry off"] - rows["retry: strategy closure alone"]
    print(f"\ntelemetry gate, off (retry decorated - its closure alone): {gate:+.0f} ns")


if __name__ == "__main__":
    main()
