"""Run the same traffic against two copies of the flaky service: bare and protected.

Calls start on a fixed schedule (``rate`` per second, whatever the answers), the way
independent users arrive, so both columns meet every phase of the script with the same
calls at the same moments. Each column has its own copy of the service, so "requests
that reached the upstream" is what that column alone cost it.

Every number in the summary comes from the calls themselves: outcomes and latencies as
the caller saw them, request counts from the service, retries, timeouts and fallbacks
from the resilience event stream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

import resilience
from resilience import Event, FallbackUsed, Pipeline, RetryGaveUp, RetryScheduled, TimedOut

from .flaky_server import QUICK, STANDARD, FlakyService, Script
from .policy import POLICY, Answer, ProtectionSettings, Upstream, build_protected, describe

__all__ = ["DemoSettings", "Column", "Report", "FULL_RUN", "QUICK_RUN", "run", "render"]


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """One run: the script, the traffic and the protection."""

    script: Script
    rate: float = 25.0
    """Calls started per second, in each column."""
    protection: ProtectionSettings = field(default_factory=ProtectionSettings)
    bare_timeout: float = 5.0
    """The bare client's only protection: httpx's default timeout."""

    @property
    def calls(self) -> int:
        return round(self.script.duration * self.rate)


FULL_RUN = DemoSettings(STANDARD)
QUICK_RUN = DemoSettings(QUICK)


@dataclass(slots=True)
class CallResult:
    index: int
    started: float
    """Seconds after the start of the run."""
    latency: float
    source: str
    """``upstream``, ``fallback`` or ``error``."""


@dataclass(slots=True)
class Column:
    """What one column saw."""

    label: str
    results: list[CallResult] = field(default_factory=list)
    upstream_requests: int = 0
    attempts: int = 0
    events: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return len(self.results)

    def count(self, source: str) -> int:
        return sum(1 for r in self.results if r.source == source)

    @property
    def success_rate(self) -> float:
        """Share of calls answered by the upstream itself."""
        return self.count("upstream") / self.calls if self.calls else 0.0

    def latency(self, q: float) -> float:
        """The ``q`` quantile of the call latencies (nearest rank), in seconds."""
        ordered = sorted(r.latency for r in self.results)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(slots=True)
class Report:
    settings: DemoSettings
    pipeline: Pipeline
    bare: Column
    protected: Column
    seconds: float


class _EventCounter:
    """A listener counting the pipeline's events by kind."""

    def __init__(self, column: Column) -> None:
        self.column = column

    def __call__(self, event: Event) -> None:
        counts = self.column.events
        if isinstance(event, RetryScheduled):
            counts["retries"] += 1
            if event.hinted:
                counts["retries after Retry-After"] += 1
        elif isinstance(event, RetryGaveUp):
            counts["gave up"] += 1
        elif isinstance(event, TimedOut):
            counts[f"timed out: {event.strategy}"] += 1
        elif isinstance(event, FallbackUsed):
            counts["fallbacks"] += 1


async def _drive(
    call: Callable[[], Awaitable[Answer]], column: Column, settings: DemoSettings, t0: float
) -> None:
    loop = asyncio.get_running_loop()

    async def one(i: int) -> CallResult:
        await asyncio.sleep(max(0.0, t0 + i / settings.rate - loop.time()))
        started = loop.time() - t0
        begin = time.perf_counter()
        try:
            source = (await call()).source
        except Exception:
            source = "error"
        return CallResult(i, started, time.perf_counter() - begin, source)

    column.results = list(await asyncio.gather(*(one(i) for i in range(settings.calls))))


async def run(settings: DemoSettings = FULL_RUN) -> Report:
    """Play the script once against both columns, side by side; return what happened."""
    pipeline = build_protected(settings.protection)
    bare, protected = Column("bare"), Column("protected")
    listener = _EventCounter(protected)
    with (
        FlakyService(settings.script) as bare_service,
        FlakyService(settings.script) as protected_service,
    ):
        async with (
            httpx.AsyncClient(timeout=settings.bare_timeout) as bare_client,
            # The pipeline owns the time limits of the protected column.
            httpx.AsyncClient(timeout=None) as protected_client,
        ):
            bare_upstream = Upstream(bare_client, bare_service.url)
            protected_upstream = Upstream(protected_client, protected_service.url)
            protected_call = pipeline(protected_upstream.get)
            resilience.subscribe(listener, policy=POLICY)
            try:
                loop = asyncio.get_running_loop()
                begin = time.perf_counter()
                t0 = loop.time()
                bare_service.restart()
                protected_service.restart()
                await asyncio.gather(
                    _drive(bare_upstream.get, bare, settings, t0),
                    _drive(protected_call, protected, settings, t0),
                )
                seconds = time.perf_counter() - begin
            finally:
                resilience.unsubscribe(listener, policy=POLICY)
        bare.upstream_requests = bare_service.requests
        protected.upstream_requests = protected_service.requests
        bare.attempts = bare_upstream.attempts
        protected.attempts = protected_upstream.attempts
    return Report(settings, pipeline, bare, protected, seconds)


def _pct(n: int, total: int) -> str:
    return f"{n} ({n / total:.0%})" if total else str(n)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def render(report: Report) -> str:
    """The side-by-side summary, as text."""
    s, b, p = report.settings, report.bare, report.protected
    lines = [
        f"{s.calls} calls per column at {s.rate:g}/s against a flaky loopback service "
        f"(seed {s.script.seed}); each column has its own copy of the service.",
        "",
        "Script:",
        *(f"  {line}" for line in s.script.timeline()),
        "",
        f"Protected: Pipeline(..., name={POLICY!r}), outermost first:",
        *(f"  {line}" for line in describe(s.protection)),
        "",
    ]
    rows: list[tuple[str, str, str]] = [
        ("calls", str(b.calls), str(p.calls)),
        (
            "answered by the upstream",
            _pct(b.count("upstream"), b.calls),
            _pct(p.count("upstream"), p.calls),
        ),
        (
            "answered by the fallback",
            _pct(b.count("fallback"), b.calls),
            _pct(p.count("fallback"), p.calls),
        ),
        (
            "errors seen by the caller",
            _pct(b.count("error"), b.calls),
            _pct(p.count("error"), p.calls),
        ),
        ("latency p50", _ms(b.latency(0.50)), _ms(p.latency(0.50))),
        ("latency p99", _ms(b.latency(0.99)), _ms(p.latency(0.99))),
        ("latency max", _ms(b.latency(1.0)), _ms(p.latency(1.0))),
        ("requests that reached the upstream", str(b.upstream_requests), str(p.upstream_requests)),
    ]
    for key, label in (
        ("retries", "retries made"),
        ("retries after Retry-After", "  of which waited for Retry-After"),
        ("timed out: attempt-timeout", "attempts cut off (attempt timeout)"),
        ("timed out: call-timeout", "calls cut off (call timeout)"),
        ("gave up", "retries given up"),
        ("fallbacks", "fallbacks used"),
    ):
        rows.append((label, str(b.events[key]), str(p.events[key])))
    lines += _table(("", "bare", "protected"), rows)
    lines += ["", "Answered by the upstream, by phase of the script:", ""]
    lines += _table(("phase", "bare", "protected"), _by_phase(report))
    lines += [
        "",
        "Retries, timeouts and fallbacks are counted from the resilience event stream; "
        "requests by the service.",
        f"Finished in {report.seconds:.1f} s.",
    ]
    return "\n".join(lines)


def _by_phase(report: Report) -> list[tuple[str, str, str]]:
    script = report.settings.script
    rows = []
    for phase in script.phases:
        cells = []
        for column in (report.bare, report.protected):
            mine = [r for r in column.results if script.phase_at(r.started) is phase]
            ok = sum(1 for r in mine if r.source == "upstream")
            cells.append(f"{ok}/{len(mine)}")
        rows.append((phase.name, cells[0], cells[1]))
    return rows


def _table(head: tuple[str, str, str], rows: Sequence[tuple[str, str, str]]) -> list[str]:
    width = [max(len(r[i]) for r in (head, *rows)) for i in range(3)]
    out = [f"  {head[0]:<{width[0]}}   {head[1]:>{width[1]}}   {head[2]:>{width[2]}}"]
    out.append("  " + "-" * (sum(width) + 6))
    out += [f"  {a:<{width[0]}}   {b:>{width[1]}}   {c:>{width[2]}}" for a, b, c in rows]
    return out
