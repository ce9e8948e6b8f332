"""What the HTTP adapters share: options, decisions and the attempt driver.

:mod:`resilience.httpx` and :mod:`resilience.requests` are thin: they map their
library's exceptions into a :class:`Phase`, know how to read a status and a header,
how to rewind a body and how to throw a response away. Everything else is decided here,
once, by :class:`Engine`, and run by the same attempt layer for sync and async calls.
This module imports neither httpx nor requests.

How a request is judged (RFC 9110 section 9.2.2):

- an error *before the request left* (no connection, connect timeout, pool timeout)
  is retried for every method: the server saw nothing;
- an error *after it may have left* (read/write error or timeout, a broken response)
  and a retryable status are retried only for idempotent methods, or when the request
  carries an ``Idempotency-Key`` header;
- a body that cannot be sent again (a generator, a pipe) is only ever retried after an
  error before it left, and never re-sent once any of it was read.
"""

from __future__ import annotations

import enum
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from ._core.clock import SYSTEM_CLOCK, Clock, Rng
from ._core.deadline import DEADLINE, remaining, tighten
from ._core.errors import ResilienceError, TimeoutExceededError
from ._core.events import EVENTS, Event, Severity
from ._core.options import UNSET, to_int, to_seconds
from ._core.outcome import Classifier, Outcome
from ._core.strategy import AsyncCallable, Pipeline, Scope, Strategy
from ._core.telemetry import instrument
from .backoff import Backoff, Schedule
from .retry import Retry, RetryBudget, _to_schedule

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "IDEMPOTENT_METHODS",
    "BodyNotReplayableError",
    "HTTPOptions",
    "KeyedStrategies",
    "RequestAttempted",
    "parse_retry_after",
    "resend_count",
    "status_outcome",
]

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""The idempotent methods of RFC 9110: sending them twice has the effect of sending once."""

DEFAULT_RETRY_STATUSES: frozenset[int] = frozenset({429, 502, 503, 504})
"""Statuses that say "try again later": 429, 502, 503 and 504."""

_DEFAULT_BACKOFF = Backoff.exponential()
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
DRAIN_LIMIT = 65_536
"""Bytes of a discarded response read so its connection can be reused; beyond it, it is closed."""


# -- options ------------------------------------------------------------------------------------
def _to_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _to_statuses(value: object) -> frozenset[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"retry_statuses must be a set of ints, got {value!r}")
    out = set()
    for s in value:
        if not isinstance(s, int) or isinstance(s, bool):
            raise TypeError(f"retry_statuses must hold ints, got {type(s).__name__} {s!r}")
        if not 100 <= s <= 599:
            raise ValueError(f"retry_statuses must hold status codes between 100 and 599, got {s}")
        out.add(s)
    return frozenset(out)


def _to_methods(value: object) -> frozenset[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"idempotent_methods must be a set of method names, got {value!r}")
    out = set()
    for m in value:
        if not isinstance(m, str) or not _TOKEN.match(m):
            raise ValueError(f"idempotent_methods must hold HTTP method names, got {m!r}")
        out.add(m.upper())
    return frozenset(out)


def _to_optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else to_seconds(name, value, exclusive_minimum=True)


@dataclass(frozen=True, slots=True, init=False)
class HTTPOptions:
    """How an HTTP adapter retries; frozen and validated once.

    Every adapter (:class:`resilience.httpx.ResilientTransport`,
    :class:`resilience.requests.ResilientAdapter` …) takes these fields as keyword
    arguments, or a whole ``options=`` object to share one configuration.

    Parameters:
        attempts: attempts per request including the first, ``>= 1``; default 3.
        backoff: the wait between attempts (a :class:`~resilience.Backoff` or any
            :class:`~resilience.Schedule`); default exponential from 0.1 s, doubling up
            to 10 s, full jitter.
        retry_statuses: statuses retried for idempotent requests, each ``100..599``;
            default 429, 502, 503, 504. When the attempts run out the last response is
            returned, not raised.
        idempotent_methods: methods retried after the request may have reached the
            server; default the RFC 9110 set GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
        respect_retry_after: a ``Retry-After`` header (seconds or HTTP-date) replaces
            the computed backoff; default ``True``.
        max_retry_after: upper clamp for ``Retry-After``, ``>= 0`` seconds; default 60.
        attempt_timeout: seconds allowed per attempt, ``> 0``, or ``None`` (default): it
            becomes the deadline of the attempt and caps the client's own timeouts.
        total_timeout: seconds for the whole request including waits, ``> 0``, or
            ``None`` (default: only the caller's deadline).
        add_idempotency_key: give requests with a non-idempotent method (POST, PATCH)
            a fresh ``Idempotency-Key`` (the same on every attempt), which makes them
            retryable; default ``False``.
        idempotency_header: the header name; default ``"Idempotency-Key"``.
        buffer_limit: httpx only: responses whose ``Content-Length`` is at most this
            many bytes are read inside the attempt, so an error mid-body is retried like
            any other; ``>= 0``, 0 turns it off; default 1 MiB. (requests reads the body
            inside the attempt whenever ``stream=False``.)
    """

    attempts: int
    backoff: Schedule
    retry_statuses: frozenset[int]
    idempotent_methods: frozenset[str]
    respect_retry_after: bool
    max_retry_after: float
    attempt_timeout: float | None
    total_timeout: float | None
    add_idempotency_key: bool
    idempotency_header: str
    buffer_limit: int

    def __init__(
        self,
        *,
        attempts: int = 3,
        backoff: Schedule | object = _DEFAULT_BACKOFF,
        retry_statuses: AbstractSet[int] | Iterable[int] = DEFAULT_RETRY_STATUSES,
        idempotent_methods: AbstractSet[str] | Iterable[str] = IDEMPOTENT_METHODS,
        respect_retry_after: bool = True,
        max_retry_after: float | timedelta = 60.0,
        attempt_timeout: float | timedelta | None = None,
        total_timeout: float | timedelta | None = None,
        add_idempotency_key: bool = False,
        idempotency_header: str = "Idempotency-Key",
        buffer_limit: int = 1_048_576,
    ) -> None:
        if not isinstance(idempotency_header, str) or not _TOKEN.match(idempotency_header):
            raise ValueError(
                f"idempotency_header must be an HTTP header name, got {idempotency_header!r}"
            )
        values = {
            "attempts": to_int("attempts", attempts, minimum=1, maximum=1000),
            "backoff": _to_schedule(backoff),
            "retry_statuses": _to_statuses(retry_statuses),
            "idempotent_methods": _to_methods(idempotent_methods),
            "respect_retry_after": _to_bool("respect_retry_after", respect_retry_after),
            "max_retry_after": to_seconds("max_retry_after", max_retry_after),
            "attempt_timeout": _to_optional_seconds("attempt_timeout", attempt_timeout),
            "total_timeout": _to_optional_seconds("total_timeout", total_timeout),
            "add_idempotency_key": _to_bool("add_idempotency_key", add_idempotency_key),
            "idempotency_header": idempotency_header,
            "buffer_limit": to_int("buffer_limit", buffer_limit, minimum=0),
        }
        for k, v in values.items():
            object.__setattr__(self, k, v)

    def merge(self, **changes: object) -> HTTPOptions:
        """A copy with the fields in ``changes`` replaced; ``UNSET`` values are ignored."""
        given = {k: v for k, v in changes.items() if v is not UNSET}
        return replace(self, **given) if given else self  # type: ignore[arg-type]


DEFAULT_OPTIONS = HTTPOptions()


def adapter_options(options: HTTPOptions | None, **changes: object) -> HTTPOptions:
    """An adapter's options: ``options`` (default :data:`DEFAULT_OPTIONS`) with the fields
    given as keyword arguments (``UNSET`` ones ignored) replaced."""
    if options is not None and not isinstance(options, HTTPOptions):
        raise TypeError(f"options must be an HTTPOptions or None, got {options!r}")
    return (options or DEFAULT_OPTIONS).merge(**changes)


# -- Retry-After ---------------------------------------------------------------------------------
def wall_now() -> datetime:
    """The wall clock, for HTTP-dates only: every other time in the library is monotonic."""
    return datetime.now(timezone.utc)


def parse_retry_after(value: str, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    A date in the past gives 0; a value that is neither gives ``None`` (use the backoff).
    ``now`` is the current wall-clock time (default :func:`wall_now`).
    """
    v = value.strip()
    if v.isascii() and v.isdigit():
        return float(int(v))
    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons return None instead of raising
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    secs = (when - (now or wall_now())).total_seconds()
    return secs if secs > 0.0 else 0.0


# -- classification ----------------------------------------------------------------------------
class Phase(enum.Enum):
    """How far a failed request got: what decides whether sending it again is safe."""

    NOT_SENT = "not_sent"
    """It never left (connect error or timeout, no pooled connection): always safe to retry."""
    MAYBE_SENT = "maybe_sent"
    """The server may have seen it: safe to retry only if the request is idempotent."""


def status_outcome(status: int) -> Outcome:
    """What a status says about the server's health, for a breaker's ``Classifier``.

    5xx and 429 are unknown failures (they count); other 4xx are known failures (the
    server working as designed); everything else is a success.
    """
    if status >= 500 or status == 429:
        return Outcome.UNKNOWN_FAILURE
    if status >= 400:
        return Outcome.KNOWN_FAILURE
    return Outcome.SUCCESS


def response_classifier(status_of: Callable[[Any], int]) -> Classifier:
    """A :class:`~resilience.Classifier` judging responses by :func:`status_outcome`."""
    return Classifier(result=lambda response: status_outcome(status_of(response)))


# -- errors and events ---------------------------------------------------------------------------
class BodyNotReplayableError(ResilienceError):
    """A retry would have sent a request body again that was already (partly) sent.

    Bodies that are generators or pipes cannot be rewound. The adapters only retry such
    requests after errors that happen before the body is read, so this is raised only
    when an inner layer read the body and then failed as if nothing had been sent. The
    original error is the ``__cause__``.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAttempted(Event):
    """One attempt of an HTTP request ended, with a response (``status``) or an ``error``.

    ``attempt`` counts from 1; :attr:`resend_count` is what OpenTelemetry calls
    ``http.request.resend_count``. No URL or path is carried, so nothing here can blow
    up a metric's label set.
    """

    severity: ClassVar[Severity] = Severity.DEBUG

    method: str
    server_address: str
    server_port: int
    attempt: int
    status: int | None
    error: BaseException | None
    duration: float

    @property
    def resend_count(self) -> int:
        """How many times the request had been sent before this attempt."""
        return self.attempt - 1


_ATTEMPT: ContextVar[int] = ContextVar("resilience_http_attempt", default=0)


def resend_count() -> int | None:
    """Inside an attempt of a resilient HTTP adapter, how often the request was sent before.

    0 on the first attempt, 1 on the first retry …; ``None`` outside any attempt. A
    tracing integration wrapping the inner transport reads it to set
    ``http.request.resend_count`` on each attempt's span.
    """
    n = _ATTEMPT.get()
    return n - 1 if n else None


# -- per-request state ---------------------------------------------------------------------------
class Body(Protocol):
    """A request body that may need work before it is sent again."""

    def rewind(self) -> bool:
        """Make the body ready to be sent again; ``False`` if it cannot be."""
        ...


class StreamBody:
    """A body that cannot be rewound: retried only while none of it has been read."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False

    def rewind(self) -> bool:
        return not self.started


class SeekableBody:
    """A file-like body, sought back to where it started before each new attempt."""

    __slots__ = ("file", "position")

    def __init__(self, file: Any, position: int) -> None:
        self.file = file
        self.position = position

    def rewind(self) -> bool:
        try:
            self.file.seek(self.position)
        except (OSError, ValueError):
            return False
        return True


class Call:
    """The state of one request through an adapter; lives in the call, never on the adapter."""

    __slots__ = ("attempt", "body", "error", "extra", "host", "response")

    def __init__(self, body: Body | None, host: Any, extra: Any) -> None:
        self.attempt = 0
        self.body = body
        self.error: BaseException | None = None
        self.host = host
        self.extra = extra
        """Adapter-specific per-request data (httpx: the original extensions)."""
        self.response: Any = None
        """The response of the latest attempt, until the next attempt discards it."""


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-request overrides (httpx: ``extensions={"resilience": {...}}``)."""

    retry: bool | None = None
    idempotent: bool | None = None
    idempotency_key: bool | None = None

    _KEYS: ClassVar[tuple[str, ...]] = ("retry", "idempotent", "idempotency_key")

    @classmethod
    def parse(cls, value: object) -> Overrides:
        if not isinstance(value, Mapping):
            raise TypeError(
                f'extensions["resilience"] must be a dict, got {type(value).__name__} {value!r}'
            )
        for key, v in value.items():
            if key not in cls._KEYS:
                raise ValueError(
                    f'extensions["resilience"] has an unknown key {key!r}; allowed: '
                    + ", ".join(repr(k) for k in cls._KEYS)
                )
            if not isinstance(v, bool):
                raise TypeError(
                    f'extensions["resilience"][{key!r}] must be a bool, '
                    f"got {type(v).__name__} {v!r}"
                )
        return cls(**value)


# -- per-host strategies -------------------------------------------------------------------------
@runtime_checkable
class KeyedStrategies(Protocol):
    """A registry handing out one strategy per key (e.g. ``resilience.Keyed``)."""

    def for_key(self, key: str) -> Strategy: ...


class _HostEntry:
    __slots__ = ("asend", "send", "strategy")

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.send: Callable[..., Any] | None = None
        self.asend: AsyncCallable | None = None


class HostStrategies:
    """One strategy per ``host:port``, in a bounded LRU, each wrapped around the send once.

    ``per_host`` is a factory ``host -> Strategy`` (instances are cached here, the least
    recently used dropped beyond ``max_hosts``), or a registry with ``for_key(key)``
    that owns the instances (asked on every request; only the wrapping is cached).
    """

    __slots__ = ("_entries", "_factory", "_lock", "_max", "_registry", "_scope")

    def __init__(self, per_host: object, max_hosts: int, scope: Scope) -> None:
        self._registry: KeyedStrategies | None = None
        self._factory: Callable[[str], Strategy] | None = None
        if isinstance(per_host, KeyedStrategies):
            self._registry = per_host
        elif callable(per_host):
            self._factory = per_host
        else:
            raise TypeError(
                "per_host must be a factory host -> Strategy or an object with a "
                f"for_key(key) method, got {per_host!r}"
            )
        self._max = to_int("max_hosts", max_hosts, minimum=1)
        self._entries: OrderedDict[str, _HostEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._scope = scope

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, key: str) -> _HostEntry:
        """The cached entry of ``key``, creating (and evicting) as needed."""
        registry = self._registry
        fresh = registry.for_key(key) if registry is not None else None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (fresh is None or entry.strategy is fresh):
                self._entries.move_to_end(key)
                return entry
        if fresh is None:
            assert self._factory is not None
            fresh = self._factory(key)
        if not isinstance(fresh, Strategy):
            raise TypeError(f"per_host must produce a Strategy for {key!r}, got {fresh!r}")
        entry = _HostEntry(fresh)
        with self._lock:
            if registry is None:
                # Two threads may race to create a host's strategy: keep the first.
                existing = self._entries.get(key)
                if existing is not None:
                    self._entries.move_to_end(key)
                    return existing
            self._entries[key] = entry
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return entry

    def send_for(self, key: str, send: Callable[..., Any]) -> Callable[..., Any]:
        entry = self.entry(key)
        fn = entry.send
        if fn is None:
            fn = entry.send = Pipeline(entry.strategy)._wrap_sync(send, self._scope)
        return fn

    def asend_for(self, key: str, send: AsyncCallable) -> AsyncCallable:
        entry = self.entry(key)
        fn = entry.asend
        if fn is None:
            fn = entry.asend = Pipeline(entry.strategy)._wrap_async(send, self._scope)
        return fn


def host_key(host: str, port: int | None, scheme: str) -> str:
    """``host:port`` with the scheme's default port filled in and IPv6 hosts bracketed."""
    if port is None:
        port = 443 if scheme in ("https", "wss") else 80
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


# -- the engine ----------------------------------------------------------------------------------
NO_RETRY, NOT_SENT_ONLY, FULL = 0, 1, 2
"""Paths through the engine: one attempt; retry only errors before sending; retry everything."""


class Engine:
    """Every decision an HTTP adapter makes, settled at construction and shared by its drivers.

    The adapter gives the library-specific pieces: ``phase`` (error -> :class:`Phase` or
    ``None`` for "never retry"), ``status_of`` and ``header_of`` (a response's status and
    a header), and ``describe`` (request -> method, host, port, for events).
    """

    __slots__ = (
        "_describe",
        "_full",
        "_header_of",
        "_not_sent",
        "_phase",
        "_status_of",
        "clock",
        "hosts",
        "name",
        "options",
        "strategies",
    )

    def __init__(
        self,
        options: HTTPOptions,
        *,
        phase: Callable[[BaseException], Phase | None],
        status_of: Callable[[Any], int],
        header_of: Callable[[Any, str], str | None],
        describe: Callable[[Any], tuple[str, str, int]],
        strategies: Iterable[Strategy] | Strategy = (),
        per_host: object = None,
        max_hosts: int = 256,
        budget: RetryBudget | None = None,
        name: str = "http",
        clock: Clock | None = None,
        rng: Rng | None = None,
    ) -> None:
        if not isinstance(options, HTTPOptions):
            raise TypeError(f"options must be an HTTPOptions, got {options!r}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        if isinstance(strategies, Strategy):
            strategies = (strategies,)
        self.strategies = tuple(strategies)
        for i, s in enumerate(self.strategies):
            if not isinstance(s, Strategy):
                raise TypeError(f"strategies[{i}] must be a Strategy, got {s!r}")
        max_hosts = to_int("max_hosts", max_hosts, minimum=1)
        self.options = options
        self.name = name
        self.clock = clock or SYSTEM_CLOCK
        self._phase = phase
        self._status_of = status_of
        self._header_of = header_of
        self._describe = describe
        self.hosts = (
            None
            if per_host is None
            else HostStrategies(per_host, max_hosts, Scope(name, "per_host"))
        )
        statuses = options.retry_statuses
        respect = options.respect_retry_after

        def retry_after(subject: object) -> object:
            if isinstance(subject, BaseException):
                return getattr(subject, "retry_after", None)
            if not respect:
                return None
            value = header_of(subject, "retry-after")
            return None if value is None else parse_retry_after(value)

        common: dict[str, Any] = {
            "attempts": options.attempts,
            "backoff": options.backoff,
            "total_timeout": options.total_timeout,
            "retry_after": retry_after,
            "max_retry_after": options.max_retry_after,
            "budget": budget,
            "name": name,
            "clock": self.clock,
            "rng": rng,
        }
        self._full = Retry(
            on=lambda exc: phase(exc) is not None,
            on_result=(lambda r: status_of(r) in statuses) if statuses else None,
            **common,
        )
        self._not_sent = Retry(on=lambda exc: phase(exc) is Phase.NOT_SENT, **common)

    def __repr__(self) -> str:
        return f"Engine(name={self.name!r}, options={self.options!r})"

    # -- decisions ---------------------------------------------------------------------------------
    def plan(
        self,
        method: str,
        headers: MutableMapping[str, str],
        replayable: bool,
        overrides: Overrides | None = None,
    ) -> int:
        """Which path a request takes; adds an idempotency key to ``headers`` if configured.

        ``headers`` is the request's own case-insensitive header mapping.
        """
        opts = self.options
        idempotent = method in opts.idempotent_methods
        if not idempotent:
            header = opts.idempotency_header
            if header in headers:
                idempotent = True
            else:
                add = opts.add_idempotency_key
                if overrides is not None and overrides.idempotency_key is not None:
                    add = overrides.idempotency_key
                if add:
                    headers[header] = self.new_key()  # once per request: every attempt sends it
                    idempotent = True
        if overrides is not None:
            if overrides.retry is False:
                return NO_RETRY
            if overrides.idempotent is not None:
                idempotent = overrides.idempotent
        return self.path(idempotent, replayable)

    def path(self, idempotent: bool, replayable: bool) -> int:
        """Retry everything, only errors before sending, or send once."""
        if self.options.attempts == 1:
            return NO_RETRY
        return FULL if idempotent and replayable else NOT_SENT_ONLY

    @staticmethod
    def new_key() -> str:
        """A fresh idempotency key (a random UUID)."""
        return str(uuid.uuid4())

    def _attempted(
        self, request: Any, attempt: int, status: int | None, error: BaseException | None, t0: float
    ) -> None:
        method, host, port = self._describe(request)
        now = self.clock.now()
        EVENTS.publish(
            RequestAttempted(
                policy=self.name,
                strategy="http",
                time=now,
                method=method,
                server_address=host,
                server_port=port,
                attempt=attempt,
                status=status,
                error=error,
                duration=now - t0,
            )
        )

    def _refuse(self) -> BodyNotReplayableError:
        return BodyNotReplayableError(
            f"{self.name}: not retried: the request body is a stream that was already read "
            "and cannot be sent again",
            policy=self.name,
        )

    # -- composition (once per adapter) ----------------------------------------------------------
    def build_sync(
        self,
        send: Callable[[Any, Call], Any],
        discard: Callable[[Any], None],
        host_of: Callable[[Any], str],
    ) -> Callable[[int, Any, Call], Any]:
        """``run(path, request, call)``: one of the three paths (see :data:`NO_RETRY` …)
        around ``send(request, call)``, through the request's per-host strategy (its key:
        ``host_of(request)``) when there are some."""
        inner: Callable[..., Any] = send
        hosts = self.hosts
        if hosts is not None:

            def via_host(request: Any, call: Call) -> Any:
                return call.host(request, call)

            inner = via_host
        paths = self._paths(inner, lambda fn: self._attempt_sync(fn, discard), is_async=False)

        def run(path: int, request: Any, call: Call) -> Any:
            if hosts is not None:
                call.host = hosts.send_for(host_of(request), send)
            try:
                return paths[path](request, call)
            except BaseException:
                # Interrupted between attempts: the held response will never be returned.
                previous = call.response
                if previous is not None:
                    call.response = None
                    discard(previous)
                raise

        return run

    def build_async(
        self,
        send: AsyncCallable,
        discard: Callable[[Any], Awaitable[None]],
        host_of: Callable[[Any], str],
    ) -> Callable[[int, Any, Call], Awaitable[Any]]:
        """The async twin of :meth:`build_sync`."""
        inner: Callable[..., Any] = send
        hosts = self.hosts
        if hosts is not None:

            async def via_host(request: Any, call: Call) -> Any:
                return await call.host(request, call)

            inner = via_host
        paths = self._paths(inner, lambda fn: self._attempt_async(fn, discard), is_async=True)

        async def run(path: int, request: Any, call: Call) -> Any:
            if hosts is not None:
                call.host = hosts.asend_for(host_of(request), send)
            try:
                return await paths[path](request, call)
            except BaseException:
                previous = call.response
                if previous is not None:
                    call.response = None
                    await discard(previous)
                raise

        return run

    def _paths(
        self,
        inner: Callable[..., Any],
        attempt_of: Callable[[Callable[..., Any]], Callable[..., Any]],
        *,
        is_async: bool,
    ) -> tuple[Callable[..., Any], ...]:
        """The three paths around ``inner``: the extra strategies, the attempt layer
        ``attempt_of(...)``, then no retry, the retry of errors before sending, every retry."""

        def wrap(strategy: Strategy, fn: Callable[..., Any], scope: Scope) -> Callable[..., Any]:
            if is_async:
                return strategy._wrap_async(fn, scope)
            return strategy._wrap_sync(fn, scope)

        if self.strategies:
            inner = wrap(Pipeline(*self.strategies), inner, Scope(self.name, "pipeline"))
        attempt = attempt_of(inner)
        scope = Scope(self.name, "retry")
        # Each path gets the policy wrapper: one span and one counted call per request.
        policy = Scope(self.name, "http")
        return tuple(
            instrument(self._full, path, policy, is_async=is_async)
            for path in (
                attempt,
                wrap(self._not_sent, attempt, scope),
                wrap(self._full, attempt, scope),
            )
        )

    def _attempt_sync(
        self, inner: Callable[..., Any], discard: Callable[[Any], None]
    ) -> Callable[[Any, Call], Any]:
        attempt_timeout = self.options.attempt_timeout
        clock = self.clock
        policy = self.name
        status_of = self._status_of
        engine = self

        def attempt(request: Any, call: Call) -> Any:
            if call.attempt:
                # A new attempt: the previous response is not going to be returned.
                previous = call.response
                if previous is not None:
                    call.response = None
                    discard(previous)
                body = call.body
                if body is not None and not body.rewind():
                    raise engine._refuse() from call.error
            n = call.attempt = call.attempt + 1
            token = _ATTEMPT.set(n)
            dl = tighten(attempt_timeout, clock)[1] if attempt_timeout is not None else None
            watched = EVENTS.wants(policy)
            t0 = clock.now() if watched else 0.0
            try:
                response = inner(request, call)
            except Exception as exc:
                call.error = exc
                if watched:
                    engine._attempted(request, n, None, exc, t0)
                raise
            finally:
                if dl is not None:
                    DEADLINE.reset(dl)
                _ATTEMPT.reset(token)
            call.response = response
            if watched:
                engine._attempted(request, n, status_of(response), None, t0)
            return response

        return attempt

    def _attempt_async(
        self, inner: AsyncCallable, discard: Callable[[Any], Awaitable[None]]
    ) -> AsyncCallable:
        attempt_timeout = self.options.attempt_timeout
        clock = self.clock
        policy = self.name
        status_of = self._status_of
        engine = self

        async def attempt(request: Any, call: Call) -> Any:
            if call.attempt:
                previous = call.response
                if previous is not None:
                    call.response = None
                    await discard(previous)
                body = call.body
                if body is not None and not body.rewind():
                    raise engine._refuse() from call.error
            n = call.attempt = call.attempt + 1
            token = _ATTEMPT.set(n)
            dl = tighten(attempt_timeout, clock)[1] if attempt_timeout is not None else None
            watched = EVENTS.wants(policy)
            t0 = clock.now() if watched else 0.0
            try:
                response = await inner(request, call)
            except Exception as exc:
                call.error = exc
                if watched:
                    engine._attempted(request, n, None, exc, t0)
                raise
            finally:
                if dl is not None:
                    DEADLINE.reset(dl)
                _ATTEMPT.reset(token)
            call.response = response
            if watched:
                engine._attempted(request, n, status_of(response), None, t0)
            return response

        return attempt


def cap_timeout(value: float | None, left: float) -> float:
    """A client timeout (``None`` = no limit) capped by the seconds left before the deadline."""
    return left if value is None or value > left else value


def time_left(policy: str) -> float | None:
    """Seconds left before the caller's deadline for an attempt to be sent (``None``: no
    deadline); raises :func:`deadline_passed` when none are."""
    left = remaining()
    if left is not None and left <= 0.0:
        raise deadline_passed(policy)
    return left


def deadline_passed(policy: str) -> TimeoutExceededError:
    """The error for an attempt whose deadline passed before the request could be sent."""
    return TimeoutExceededError(
        f"{policy}: the deadline passed before the request was sent",
        policy=policy,
        timeout=0.0,
        elapsed=0.0,
    )
