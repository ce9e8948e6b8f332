"""OpenTelemetry tracing (and optional metrics) for every decorated policy.

::

    import resilience.otel

    resilience.otel.enable()                      # spans through the global tracer provider
    resilience.otel.enable(metrics=True)          # plus observable instruments for OTLP

Each call through a decorated policy becomes one ``INTERNAL`` span named after the
policy, with the attributes ``resilience.policy``, ``resilience.strategy``,
``resilience.attempts``, ``resilience.outcome`` and, when it failed, ``error.type``.
Retries, rejections, timeouts, fallbacks and state changes are added to the current span
as span events, from the event stream.

Starting a span through the API's no-op provider still costs microseconds, so until a
real tracer provider is configured no span work is done at all. The provider is
re-checked per call by identity, so configuring one later makes spans appear without
enabling again.

With ``metrics=True`` the Prometheus metric set is mirrored by observable instruments,
read at collection time from the same in-process numbers; nothing of the metrics API is
called while a call runs. Its two histograms become three observable counters each
(``.bucket`` with an ``le`` attribute, ``.sum``, ``.count``): see :data:`_HISTOGRAMS`.

Only ``opentelemetry-api`` is needed (the ``otel`` extra); the SDK is the application's
choice.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterable
from contextvars import Token
from typing import Any, Final, cast

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from . import __version__, _metrics
from ._core.events import EVENTS, CallRejected, Event, StateChanged
from ._core.strategy import Scope
from ._core.telemetry import TELEMETRY, error_type
from ._http import RequestAttempted
from .fallback import FallbackUsed
from .retry import RetryGaveUp, RetryScheduled
from .timeout import TimedOut

__all__ = ["enable", "disable", "LIBRARY_NAME"]

LIBRARY_NAME: Final = "resilience"
"""The instrumentation scope name of every tracer and meter the library gets."""

_UNSEEN: Final = object()


def _is_real(provider: object) -> bool:
    return provider is not None and not isinstance(
        provider, (trace.NoOpTracerProvider, trace.ProxyTracerProvider)
    )


class _Tracing:
    """The core's call observer: one span per call, when a real provider exists."""

    __slots__ = ("_explicit", "_seen", "_tracer")

    def __init__(self, provider: TracerProvider | None) -> None:
        self._explicit = provider
        self._seen: object = _UNSEEN
        self._tracer: trace.Tracer | None = None

    def _refresh(self, provider: object) -> None:
        tracer = None
        if _is_real(provider):
            tracer = provider.get_tracer(LIBRARY_NAME, __version__)  # type: ignore[attr-defined]
        self._tracer = tracer
        self._seen = provider

    def begin(self, scope: Scope) -> object | None:
        provider = self._explicit
        if provider is None:
            # The API keeps the global provider in a module attribute that stays None
            # until set_tracer_provider(); reading it is one attribute load, where
            # get_tracer_provider() consults os.environ on every call while it is unset.
            provider = trace._TRACER_PROVIDER
        if provider is not self._seen:
            self._refresh(provider)
        tracer = self._tracer
        if tracer is None:
            return None
        span = tracer.start_span(
            scope.policy,
            kind=SpanKind.INTERNAL,
            attributes={
                "resilience.policy": scope.policy,
                "resilience.strategy": scope.strategy,
                "resilience.attempts": 1,
            },
        )
        return span, context.attach(trace.set_span_in_context(span))

    def end(self, handle: object, outcome: str, error: BaseException | None) -> None:
        span, token = cast("tuple[trace.Span, Token[Context]]", handle)
        context.detach(token)
        if span.is_recording():
            span.set_attribute("resilience.outcome", outcome)
            if error is not None:
                span.set_attribute("error.type", error_type(error))
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            elif outcome == "unknown_failure":
                span.set_attribute("error.type", "_OTHER")
                span.set_status(Status(StatusCode.ERROR, "the result was classified a failure"))
        span.end()


def _event_attributes(event: Event) -> tuple[str, dict[str, Any]] | None:
    attrs: dict[str, Any] = {
        "resilience.policy": event.policy,
        "resilience.strategy": event.strategy,
    }
    if isinstance(event, RetryScheduled):
        attrs["resilience.attempt"] = event.attempt
        attrs["resilience.delay"] = event.delay
        attrs["resilience.hinted"] = event.hinted
        name = "resilience.retry"
    elif isinstance(event, RetryGaveUp):
        attrs["resilience.attempts"] = event.attempts
        attrs["resilience.reason"] = event.reason.value
        name = "resilience.retry.gave_up"
    elif isinstance(event, CallRejected):
        attrs["resilience.reason"] = event.reason
        if event.retry_after is not None:
            attrs["resilience.retry_after"] = event.retry_after
        name = "resilience.rejected"
    elif isinstance(event, TimedOut):
        attrs["resilience.timeout"] = event.timeout
        attrs["resilience.elapsed"] = event.elapsed
        name = "resilience.timeout"
    elif isinstance(event, FallbackUsed):
        name = "resilience.fallback"
    elif isinstance(event, StateChanged):
        attrs["resilience.from_state"] = event.from_state
        attrs["resilience.to_state"] = event.to_state
        name = "resilience.state_changed"
    elif isinstance(event, RequestAttempted):
        # The HTTP client semantic conventions; never the URL (unbounded, may hold secrets).
        attrs["http.request.method"] = event.method
        attrs["server.address"] = event.server_address
        attrs["server.port"] = event.server_port
        attrs["http.request.resend_count"] = event.resend_count
        if event.status is not None:
            attrs["http.response.status_code"] = event.status
            if event.status >= 400:
                attrs["error.type"] = str(event.status)
        name = "resilience.http.attempt"
    else:
        return None
    error = getattr(event, "error", None)
    if isinstance(error, BaseException):
        attrs["error.type"] = error_type(error)
    return name, attrs


def _span_events(event: Event) -> None:
    """Listener: add the event to the current span (a policy's span, inside a call)."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    described = _event_attributes(event)
    if described is None:
        return
    name, attrs = described
    if isinstance(event, RetryScheduled):
        span.set_attribute("resilience.attempts", event.attempt + 1)
    elif isinstance(event, RequestAttempted) and event.resend_count > 0:
        span.set_attribute("http.request.resend_count", event.resend_count)
    span.add_event(name, attrs)


# -- metrics ---------------------------------------------------------------------------------
_INSTRUMENTS: Final = {
    # Prometheus family -> (OTel instrument name, unit)
    "resilience_calls": ("resilience.calls", "{call}"),
    "resilience_retry_attempts": ("resilience.retry.attempts", "{attempt}"),
    "resilience_retry_gave_up": ("resilience.retry.gave_up", "{call}"),
    "resilience_retry_budget_exhausted": ("resilience.retry.budget_exhausted", "{retry}"),
    "resilience_retry_budget_available": ("resilience.retry.budget_available", "{retry}"),
    "resilience_circuitbreaker_state": ("resilience.circuitbreaker.state", "1"),
    "resilience_circuitbreaker_transitions": (
        "resilience.circuitbreaker.transitions",
        "{transition}",
    ),
    # Percent, 0-100, as the breaker's snapshot and failure_rate_threshold have them.
    "resilience_circuitbreaker_failure_rate": ("resilience.circuitbreaker.failure_rate", "%"),
    "resilience_circuitbreaker_slow_call_rate": ("resilience.circuitbreaker.slow_call_rate", "%"),
    "resilience_bulkhead_in_flight": ("resilience.bulkhead.in_flight", "{call}"),
    "resilience_bulkhead_queued": ("resilience.bulkhead.queued", "{call}"),
    "resilience_bulkhead_max_concurrent": ("resilience.bulkhead.max_concurrent", "{call}"),
    "resilience_ratelimiter_available_permits": (
        "resilience.ratelimiter.available_permits",
        "{permit}",
    ),
    "resilience_keyed_keys": ("resilience.keyed.keys", "{key}"),
    "resilience_rejections": ("resilience.rejections", "{call}"),
    "resilience_timeouts": ("resilience.timeouts", "{call}"),
    "resilience_fallbacks": ("resilience.fallbacks", "{call}"),
}
"""Every counter and gauge of the Prometheus set."""

_HISTOGRAMS: Final = {
    # Prometheus histogram -> (OTel name prefix, unit of its counts)
    "resilience_call_duration_seconds": ("resilience.call.duration", "{call}"),
    "resilience_ratelimiter_wait_seconds": ("resilience.ratelimiter.wait", "{call}"),
}
"""The two histograms of the Prometheus set, each mirrored by three observable counters:
``<prefix>.bucket`` (cumulative counts with an ``le`` attribute), ``<prefix>.sum`` (in
seconds) and ``<prefix>.count``. The metrics API has no observable histogram, and its
``Histogram`` takes one ``record()`` per value: buckets already counted in process can
only be reported as counters, read at collection time like every other instrument."""


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tracing: _Tracing | None = None
        self.metrics = False
        self.durations = False
        # Each provider instruments were created on, with the token its callbacks carry.
        # Weak: a provider that is dropped goes, and a new one at its address is new.
        self.meters: weakref.WeakKeyDictionary[MeterProvider, object] = weakref.WeakKeyDictionary()
        # The token of the provider enable() last reported to; None when disabled.
        self.reporting: object | None = None


_state = _State()


def _callback(family: str, token: object) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        if _state.reporting is not token:
            return []
        fam = _metrics.read(family)
        keys = tuple(f"resilience.{label}" for label in fam.labels)
        return [
            Observation(value, dict(zip(keys, labels, strict=True)))
            for labels, value in fam.samples
        ]

    return observe


def _le(bound: float) -> str:
    # The bound as Prometheus writes its ``le`` label, so queries carry over.
    return "+Inf" if math.isinf(bound) else repr(bound)


def _histogram_callback(
    family: str, part: str, token: object
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        if _state.reporting is not token:
            return []
        # Whatever source the Prometheus family reads, this reads too.
        fam = _metrics.read(family)
        keys = tuple(f"resilience.{label}" for label in fam.labels)
        out: list[Observation] = []
        for labels, (buckets, total) in fam.histograms:
            attrs = dict(zip(keys, labels, strict=True))
            if part == "bucket":
                out.extend(Observation(n, {**attrs, "le": _le(b)}) for b, n in buckets)
            elif part == "sum":
                out.append(Observation(total, attrs))
            else:
                out.append(Observation(buckets[-1][1], attrs))  # the +Inf bucket
        return out

    return observe


def _create_instruments(meter_provider: MeterProvider | None) -> object:
    """The token of ``meter_provider``'s instruments, creating them on first use."""
    provider = meter_provider if meter_provider is not None else get_meter_provider()
    token = _state.meters.get(provider)
    if token is not None:
        return token  # instruments cannot be removed; their callbacks go quiet instead
    token = _state.meters[provider] = object()
    meter = provider.get_meter(LIBRARY_NAME, __version__)
    for family, (name, unit) in _INSTRUMENTS.items():
        fam = _metrics.read(family)
        create = (
            meter.create_observable_counter
            if fam.kind == "counter"
            else meter.create_observable_gauge
        )
        create(name, callbacks=[_callback(family, token)], unit=unit, description=fam.help)
    for family, (prefix, unit) in _HISTOGRAMS.items():
        fam = _metrics.read(family)
        meter.create_observable_counter(
            f"{prefix}.bucket",
            callbacks=[_histogram_callback(family, "bucket", token)],
            unit=unit,
            description=f"{fam.help} Cumulative count at or below the bound le.",
        )
        meter.create_observable_counter(
            f"{prefix}.sum",
            callbacks=[_histogram_callback(family, "sum", token)],
            unit="s",
            description=f"{fam.help} Sum in seconds.",
        )
        meter.create_observable_counter(
            f"{prefix}.count",
            callbacks=[_histogram_callback(family, "count", token)],
            unit=unit,
            description=f"{fam.help} Count.",
        )
    return token


def enable(
    tracer_provider: TracerProvider | None = None,
    *,
    tracing: bool = True,
    metrics: bool = False,
    meter_provider: MeterProvider | None = None,
    durations: bool = True,
) -> None:
    """Trace every decorated policy (and with ``metrics=True`` report its metrics too).

    Parameters:
        tracer_provider: the provider to get the tracer from; default: the global one,
            looked up per call so that a provider configured later is picked up.
        tracing: open one span per call; default ``True``.
        metrics: create observable instruments mirroring the Prometheus metric set on
            ``meter_provider`` (default: the global meter provider), read at collection
            time.
        durations: with ``metrics``, time each call for ``resilience.call.duration.*``
            (two clock reads per call, as the Prometheus exporter's default); ``False``
            counts calls only and leaves the duration buckets empty.

    Enabling again replaces the previous configuration.
    """
    with _state.lock:
        _disable_locked()
        if tracing:
            # Lets the API load a provider named by OTEL_PYTHON_TRACER_PROVIDER now, once.
            trace.get_tracer_provider()
            _state.tracing = _Tracing(tracer_provider)
            TELEMETRY.set_observer(_state.tracing)
            EVENTS.subscribe(_span_events)
        if metrics:
            token = _create_instruments(meter_provider)
            _metrics.enable(durations=durations)
            _state.metrics = True
            _state.reporting = token
            _state.durations = durations


def _disable_locked() -> None:
    if _state.tracing is not None:
        EVENTS.unsubscribe(_span_events)
        TELEMETRY.set_observer(None)
        _state.tracing = None
    if _state.metrics:
        _state.metrics = False
        _state.reporting = None
        _metrics.disable(durations=_state.durations)


def disable() -> None:
    """Stop tracing and reporting metrics; spans already started end normally."""
    with _state.lock:
        _disable_locked()
