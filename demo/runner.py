"""Run the same traffic against two copies of the flaky service: bare and protected.

Calls start on a fixed schedule (``rate`` per second, whatever the answers), the way
independent users arrive, so both columns meet every phase of the script with the same
calls at the same moments. Each column has its own copy of the service, so "requests
that reached the upstream" is what that column alone cost it.

While the traffic runs, ``/metrics`` and ``/status`` are served on loopback
(:mod:`demo.ops`); then the idempotency scene plays (:mod:`demo.payments`), and
``/metrics`` is scraped once over HTTP.

Every number in the summary comes from the calls themselves: outcomes and latencies as
the caller saw them, request counts from the services, retries, timeouts, fallbacks,
rejections and breaker transitions from the resilience event stream, and the metrics
from the scrape.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

import resilience
from resilience import (
    BulkheadRejected,
    CircuitRejected,
    CircuitStateChanged,
    Event,
    FallbackUsed,
    Pipeline,
    RetryGaveUp,
    RetryScheduled,
    SystemClock,
    TimedOut,
)

from .flaky_server import QUICK, STANDARD, FlakyService, Script
from .ops import OpsEndpoints, Scrape, fetch_status, scrape
from .payments import CLIENT_POLICY, ChargeResult, PaymentsService, run_scene
from .policy import POLICY, Answer, ProtectionSettings, Upstream, build_protected, describe

__all__ = [
    "DemoSettings",
    "Column",
    "Report",
    "Transition",
    "FULL_RUN",
    "QUICK_RUN",
    "run",
    "serve",
    "render",
]


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
# The quick script is a fifth as long: twice the rate, so that each phase still sees enough
# calls, and a breaker that probes more often, so that the 0.5 s outage sees a few probes.
QUICK_RUN = DemoSettings(QUICK, rate=50.0, protection=ProtectionSettings(open_duration=0.1))


@dataclass(slots=True)
class CallResult:
    index: int
    started: float
    """Seconds after the start of the run."""
    latency: float
    source: str
    """``upstream``, ``fallback`` or ``error``."""
    sent: int = 0
    """Attempts of this call that left for the upstream (rejected ones never do)."""
    because: str | None = None
    """For a fallback: the type of the error it replaced."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A breaker state change, ``at`` seconds after the start of the run."""

    at: float
    from_state: str
    to_state: str
    reason: str


@dataclass(slots=True)
class Column:
    """What one column saw."""

    label: str
    results: list[CallResult] = field(default_factory=list)
    upstream_requests: int = 0
    requests_by_phase: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    events: Counter[str] = field(default_factory=Counter)
    transitions: list[Transition] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return len(self.results)

    def count(self, source: str) -> int:
        return sum(1 for r in self.results if r.source == source)

    @property
    def kept_off_by_breaker(self) -> int:
        """Calls the breaker answered for: not one of their attempts left."""
        return sum(1 for r in self.results if r.sent == 0 and r.because == "CircuitOpenError")

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
    metrics: Scrape
    status: dict[str, Any]
    status_url: str
    charges: tuple[ChargeResult, ChargeResult]


class _EventCounter:
    """A listener counting the pipeline's events by kind, and noting breaker transitions."""

    def __init__(self, column: Column, t0: float) -> None:
        self.column = column
        self.t0 = t0

    def __call__(self, event: Event) -> None:
        counts = self.column.events
        if isinstance(event, RetryScheduled):
            counts["retries"] += 1
            if event.hinted:
                counts["retries after a hint"] += 1
        elif isinstance(event, RetryGaveUp):
            counts["gave up"] += 1
        elif isinstance(event, TimedOut):
            counts[f"timed out: {event.strategy}"] += 1
        elif isinstance(event, FallbackUsed):
            counts["fallbacks"] += 1
        elif isinstance(event, CircuitRejected):
            counts["breaker rejections"] += 1
        elif isinstance(event, BulkheadRejected):
            counts["bulkhead rejections"] += 1
        elif isinstance(event, CircuitStateChanged):
            counts["breaker transitions"] += 1
            self.column.transitions.append(
                Transition(event.time - self.t0, event.from_state, event.to_state, event.reason)
            )


class _Sent:
    """Attempts of one call that got past the breaker and were sent."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


# Each call runs in its own task, so each call sees its own tally.
_SENT: contextvars.ContextVar[_Sent] = contextvars.ContextVar("demo_sent")


def _counting(get: Callable[[], Awaitable[Answer]]) -> Callable[[], Awaitable[Answer]]:
    """``get`` noting, for the current call, each attempt that got as far as being sent."""

    async def attempt() -> Answer:
        _SENT.get().n += 1
        return await get()

    return attempt


async def _drive(
    call: Callable[[], Awaitable[Answer]], column: Column, settings: DemoSettings, t0: float
) -> None:
    loop = asyncio.get_running_loop()

    async def one(i: int) -> CallResult:
        await asyncio.sleep(max(0.0, t0 + i / settings.rate - loop.time()))
        sent = _Sent()
        _SENT.set(sent)
        started = loop.time() - t0
        begin = time.perf_counter()
        because = None
        try:
            answer = await call()
        except Exception:
            source = "error"
        else:
            source = answer.source
            if source == "fallback":
                because = str(answer.body["because"])
        return CallResult(i, started, time.perf_counter() - begin, source, sent.n, because)

    column.results = list(await asyncio.gather(*(one(i) for i in range(settings.calls))))


async def run(
    settings: DemoSettings = FULL_RUN,
    *,
    metrics_port: int = 0,
    announce: Callable[[OpsEndpoints, PaymentsService], None] | None = None,
) -> Report:
    """Play the script once against both columns, side by side, then the idempotency
    scene; scrape ``/metrics`` once; return what happened.

    ``announce`` is called once the endpoints are up, before any traffic.
    """
    pipeline = build_protected(settings.protection)
    bare, protected = Column("bare"), Column("protected")
    listener = _EventCounter(protected, t0=0.0)
    with (
        OpsEndpoints(port=metrics_port) as ops,
        PaymentsService() as payments,
        FlakyService(settings.script) as bare_service,
        FlakyService(settings.script) as protected_service,
    ):
        if announce is not None:
            announce(ops, payments)
        resilience.subscribe(listener, policy=POLICY)
        try:
            async with (
                httpx.AsyncClient(timeout=settings.bare_timeout) as bare_client,
                # The pipeline owns the time limits of the protected column.
                httpx.AsyncClient(timeout=None) as protected_client,
            ):
                bare_upstream = Upstream(bare_client, bare_service.url)
                protected_upstream = Upstream(protected_client, protected_service.url)
                # Kept until the scrape: a policy is reported while its function lives.
                protected_call = pipeline(_counting(protected_upstream.get))
                loop = asyncio.get_running_loop()
                begin = time.perf_counter()
                t0 = loop.time()
                listener.t0 = SystemClock().now()  # events carry the system clock's time
                bare_service.restart()
                protected_service.restart()
                await asyncio.gather(
                    _drive(_counting(bare_upstream.get), bare, settings, t0),
                    _drive(protected_call, protected, settings, t0),
                )
                seconds = time.perf_counter() - begin
            for column, service, upstream in (
                (bare, bare_service, bare_upstream),
                (protected, protected_service, protected_upstream),
            ):
                # One reading of both counts: a request abandoned by a timeout may still
                # be arriving.
                stats = service.stats()
                column.upstream_requests = stats["requests"]
                column.requests_by_phase = stats["requests_by_phase"]
                column.attempts = upstream.attempts
            charges = await asyncio.to_thread(run_scene, payments)
            # Scraped while the listener still counts: reading the breaker's state may
            # itself make a transition (open -> half_open), and both must see it.
            metrics = await asyncio.to_thread(scrape, ops.metrics_url)
        finally:
            resilience.unsubscribe(listener, policy=POLICY)
        status_url = ops.status_url
        status = await asyncio.to_thread(fetch_status, status_url)
        del protected_call
    return Report(
        settings, pipeline, bare, protected, seconds, metrics, status, status_url, charges
    )


async def serve(
    settings: DemoSettings = FULL_RUN,
    *,
    port: int = 0,
    metrics_port: int = 0,
    announce: Callable[[FlakyService, OpsEndpoints, PaymentsService], None] | None = None,
    seconds: float | None = None,
) -> None:
    """Keep everything up: the flaky service replaying its script forever, protected
    traffic against it, ``/metrics``, ``/status`` and the payments service.

    Runs until cancelled (Ctrl-C), or for ``seconds``.
    """
    pipeline = build_protected(settings.protection)
    with (
        OpsEndpoints(port=metrics_port) as ops,
        PaymentsService() as payments,
        FlakyService(settings.script, port=port, loop=True) as service,
    ):
        if announce is not None:
            announce(service, ops, payments)
        async with httpx.AsyncClient(timeout=None) as client:
            call = pipeline(Upstream(client, service.url).get)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            end = math.inf if seconds is None else t0 + seconds
            running: set[asyncio.Future[Answer]] = set()

            def _forget(task: asyncio.Future[Answer]) -> None:
                running.discard(task)
                if not task.cancelled():
                    task.exception()  # read, so asyncio does not log it; /metrics counts it

            i = 0
            try:
                while loop.time() < end:
                    i += 1
                    await asyncio.sleep(max(0.0, t0 + i / settings.rate - loop.time()))
                    task = asyncio.ensure_future(call())
                    running.add(task)
                    task.add_done_callback(_forget)
            finally:
                for pending in list(running):
                    pending.cancel()
                await asyncio.gather(*running, return_exceptions=True)


# -- the summary ---------------------------------------------------------------------------


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
        *(f"  {line}" if line else "" for line in describe(s.protection)),
        "",
    ]
    rows: list[tuple[str, ...]] = [
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
    for phase in s.script.phases:
        if phase.down:
            rows.append(
                (
                    f"  of which during the {phase.name}",
                    str(b.requests_by_phase.get(phase.name, 0)),
                    str(p.requests_by_phase.get(phase.name, 0)),
                )
            )
    for key, label in (
        ("retries", "retries made"),
        ("retries after a hint", "  of which waited for Retry-After or a probe"),
        ("timed out: attempt-timeout", "attempts cut off (attempt timeout)"),
        ("timed out: call-timeout", "calls cut off (call timeout)"),
        ("gave up", "retries given up"),
        ("breaker rejections", "attempts rejected by the breaker"),
    ):
        rows.append((label, str(b.events[key]), str(p.events[key])))
    rows.append(
        (
            "calls the breaker kept off the upstream",
            str(b.kept_off_by_breaker),
            str(p.kept_off_by_breaker),
        )
    )
    for key, label in (
        ("breaker transitions", "breaker transitions"),
        ("bulkhead rejections", "calls shed by the bulkhead"),
        ("fallbacks", "fallbacks used"),
    ):
        rows.append((label, str(b.events[key]), str(p.events[key])))
    lines += _table(("", "bare", "protected"), rows)

    lines += ["", "By phase: calls answered by the upstream, and requests that reached it:", ""]
    lines += _table(
        ("phase", "answered bare", "protected", "requests bare", "protected"), _by_phase(report)
    )
    lines += ["", "Circuit breaker transitions (seconds after the start):"]
    lines += _transition_lines(p.transitions, s.script)
    lines += ["", *_metrics_lines(report.metrics), "", *_status_lines(report)]
    lines += ["", *_charge_lines(report.charges)]
    lines += [
        "",
        "Retries, timeouts, fallbacks, rejections and transitions are counted from the "
        "resilience event stream; requests and charges by the services.",
        f"Traffic finished in {report.seconds:.1f} s.",
    ]
    return "\n".join(lines)


def _by_phase(report: Report) -> list[tuple[str, ...]]:
    script = report.settings.script
    rows = []
    for phase in script.phases:
        cells = [phase.name]
        for column in (report.bare, report.protected):
            mine = [r for r in column.results if script.phase_at(r.started) is phase]
            ok = sum(1 for r in mine if r.source == "upstream")
            cells.append(f"{ok}/{len(mine)}")
        for column in (report.bare, report.protected):
            cells.append(str(column.requests_by_phase.get(phase.name, 0)))
        rows.append(tuple(cells))
    return rows


def _transition_lines(transitions: Sequence[Transition], script: Script) -> list[str]:
    """One line per transition; a run of failed probes is shown once, then counted."""

    def line(t: Transition) -> str:
        phase = script.phase_at(t.at).name
        return f"  {t.at:6.2f} s  {phase:<13}  {t.from_state:>9} -> {t.to_state:<9}  {t.reason}"

    def failed_probe(i: int) -> bool:
        return (
            i + 1 < len(transitions)
            and transitions[i].to_state == "half_open"
            and transitions[i + 1].to_state == "open"
        )

    lines, i = [], 0
    while i < len(transitions):
        lines.append(line(transitions[i]))
        if not failed_probe(i):
            i += 1
            continue
        lines.append(line(transitions[i + 1]))
        j = i + 2
        while failed_probe(j):
            j += 2
        if (more := (j - i - 2) // 2) > 0:
            lines.append(
                f"  {'':>6}    … the same {more} more time{'s' if more > 1 else ''}: "
                f"a probe every open period, the last at {transitions[j - 1].at:.2f} s"
            )
        i = j
    return lines or ["  none"]


# The families that tell the story, in the order they are printed.
_STORY = (
    "resilience_calls",
    "resilience_retry_attempts",
    "resilience_retry_gave_up",
    "resilience_rejections",
    "resilience_circuitbreaker_transitions",
    "resilience_circuitbreaker_state",
    "resilience_timeouts",
    "resilience_fallbacks",
)


def _metrics_lines(metrics: Scrape) -> list[str]:
    lines = [
        f"Metrics, scraped once from {metrics.url} and parsed "
        f"({len(metrics.families)} families); the non-zero samples of the story:",
    ]
    for policy in (POLICY, CLIENT_POLICY):
        rows = [
            (_sample_name(sample.name, sample.labels), f"{sample.value:g}")
            for family in _STORY
            for sample in metrics.samples(family, policy=policy)
            if sample.value
        ]
        width = max((len(r[0]) for r in rows), default=0)
        lines.append(f'  policy="{policy}":')
        lines += [f"    {name:<{width}}  {value:>5}" for name, value in rows]
    lines.append(
        "  (the fallback is inside the pipeline: a call it answered is a success to the "
        "caller, and counted in resilience_fallbacks_total)"
    )
    return lines


def _sample_name(name: str, labels: dict[str, str]) -> str:
    shown = ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "policy")
    return f"{name}{{{shown}}}" if shown else name


def _status_lines(report: Report) -> list[str]:
    status = report.status
    parts: dict[str, dict[str, Any]] = {}
    for entry in status.get("policies", []):
        if entry.get("policy") == POLICY:
            for strategy in entry.get("strategies", [entry]):
                parts.setdefault(strategy.get("kind"), strategy)
    breaker, bulkhead = parts.get("circuit_breaker", {}), parts.get("bulkhead", {})
    return [
        f"Status endpoint, read at the end ({report.status_url}):",
        f"  breaker {breaker.get('state')}, {breaker.get('transitions')} transitions, "
        f"{breaker.get('not_permitted_calls')} attempts not permitted; bulkhead "
        f"{bulkhead.get('in_flight')}/{bulkhead.get('max_concurrent')} in flight, "
        f"{bulkhead.get('rejected')} rejected; the last {len(status.get('events', []))} events",
    ]


def _charge_lines(charges: tuple[ChargeResult, ChargeResult]) -> list[str]:
    lines = [
        'Idempotency: "charge 42" (POST /charges) to a payments service behind',
        "IdempotencyMiddleware; the network loses the first answer after the charge ran.",
    ]
    for c in charges:
        if c.error is None:
            got = f"{c.status} {c.body}" + (", Idempotent-Replayed: true" if c.replayed else "")
        else:
            got = f"no answer: {c.error}"
        attempts = ", then ".join(str(a) for a in c.attempts)
        lines += [
            f"  {c.client}:",
            f"    Idempotency-Key     {c.key or 'none'}",
            f"    attempts            {len(c.attempts)}: {attempts}",
            f"    answers lost        {c.answers_lost}",
            f"    charge executed     {c.executions} time{'s' if c.executions != 1 else ''}"
            " (the service's count)",
            f"    the caller got      {got}",
        ]
    return lines


def _table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    n = len(head)
    width = [max(len(r[i]) for r in (head, *rows)) for i in range(n)]

    def line(cells: tuple[str, ...]) -> str:
        rest = "".join(f"   {c:>{w}}" for c, w in zip(cells[1:], width[1:], strict=True))
        return f"  {cells[0]:<{width[0]}}{rest}"

    out = [line(head), "  " + "-" * (sum(width) + 3 * (n - 1))]
    out += [line(r) for r in rows]
    return out
