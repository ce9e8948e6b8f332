"""What the server middleware decides, shared by :mod:`resilience.asgi` and :mod:`resilience.wsgi`.

The two middleware are thin drivers: they read the request (an ASGI scope, a WSGI
environ), take the permits and run the app. Their constructor (:class:`ServerMiddleware`)
and what a request is owed are here, once, with no framework import and no I/O:

- whether the path is excluded (health checks, ``/metrics``);
- the request's time budget: the configured ``timeout``, shortened by the client's
  deadline header when one is configured;
- which rate limiter a client draws on (one shared :class:`~resilience.RateLimiter`, or
  one per client from a :class:`~resilience.Keyed` registry);
- the small JSON answer for each rejection::

      429  {"error": "rate_limited", "retry_after": 3}   RateLimitedError (ours)
      503  {"error": "overloaded", "retry_after": 1}     BulkheadFullError (ours)
      503  {"error": "unavailable", "retry_after": 30}   CircuitOpenError from the app (opt-in)
      504  {"error": "timeout"}                          the request's deadline passed

A rejection raised by the app's own strategies (its database bulkhead, its upstream
limiter) is the app's error, never one of these answers: only the middleware's own
bulkhead and limiter answer 503 and 429.
"""

from __future__ import annotations

import contextvars
import http
import math
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

from ._core.clock import SYSTEM_CLOCK, Clock
from ._core.deadline import DEADLINE, Deadline, tighten
from ._core.errors import RejectedError, TimeoutExceededError
from ._core.events import EVENTS
from ._core.options import to_int, to_name, to_seconds
from ._core.telemetry import POLICIES
from .bulkhead import Bulkhead
from .circuit_breaker import CircuitOpenError
from .keyed import Keyed
from .rate_limit import RateLimitedError, RateLimiter
from .timeout import TimedOut

__all__ = [
    "Answer",
    "Budget",
    "ServerOptions",
    "ServerMiddleware",
    "ServerPolicy",
    "parse_timeout",
    "retry_after_seconds",
]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_DECIMAL = re.compile(r"^[0-9]{1,12}(?:\.[0-9]{1,9})?$")
"""A deadline header's value: plain decimal seconds, no sign, no exponent."""


# -- answers ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response the middleware sends instead of running the app."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def status_line(self) -> str:
        """``"503 Service Unavailable"``: the WSGI status string."""
        return f"{self.status} {http.HTTPStatus(self.status).phrase}"

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI wants them: lower-case latin-1 bytes."""
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]


def answer(status: int, error: str, retry_after: int | None = None) -> Answer:
    """A small JSON answer; nothing about the policies or the exception leaks into it."""
    if retry_after is None:
        body = f'{{"error": "{error}"}}'.encode()
        extra: tuple[tuple[str, str], ...] = ()
    else:
        body = f'{{"error": "{error}", "retry_after": {retry_after}}}'.encode()
        extra = (("Retry-After", str(retry_after)),)
    return Answer(
        status,
        (
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *extra,
        ),
        body,
    )


def retry_after_seconds(hint: float | None, default: int) -> int:
    """The whole seconds of a ``Retry-After`` header: ``hint`` rounded up, at least 1.

    ``default`` when the rejection does not say (``None``, or not a finite number).
    """
    if hint is None or not math.isfinite(hint):
        return default
    return max(1, math.ceil(hint))


def parse_timeout(value: str) -> float | None:
    """Seconds from a deadline header (``"2.5"``); ``None`` when it is not plain decimal seconds."""
    v = value.strip()
    return float(v) if _DECIMAL.match(v) else None


# -- options ---------------------------------------------------------------------------------------
def _to_exclude(value: object) -> tuple[frozenset[str], tuple[str, ...]]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"exclude must be an iterable of paths, got {value!r}")
    exact: set[str] = set()
    prefixes: list[str] = []
    for p in value:
        if not isinstance(p, str) or not p.startswith("/"):
            raise ValueError(
                f"exclude must hold paths starting with '/' (a trailing '*' makes a prefix), "
                f"got {p!r}"
            )
        if p.endswith("*"):
            prefixes.append(p[:-1])
        else:
            exact.add(p)
    return frozenset(exact), tuple(prefixes)


@dataclass(frozen=True, slots=True, init=False)
class ServerOptions:
    """The server middleware's configuration, validated once (see the middleware classes)."""

    bulkhead: Bulkhead | None
    rate_limit: RateLimiter | Keyed[RateLimiter] | None
    client_key: Callable[[Any], Hashable | None] | None
    timeout: float | None
    timeout_header: str | None
    map_circuit_open: bool
    default_retry_after: int
    exclude: frozenset[str]
    exclude_prefixes: tuple[str, ...]
    name: str
    clock: Clock

    def __init__(
        self,
        *,
        bulkhead: Bulkhead | None = None,
        rate_limit: RateLimiter | Keyed[RateLimiter] | None = None,
        client_key: Callable[[Any], Hashable | None] | None = None,
        timeout: float | timedelta | None = None,
        timeout_header: str | None = None,
        map_circuit_open: bool = False,
        default_retry_after: int = 1,
        exclude: Iterable[str] = (),
        name: str = "http_server",
        clock: Clock | None = None,
    ) -> None:
        if bulkhead is not None and not isinstance(bulkhead, Bulkhead):
            raise TypeError(f"bulkhead must be a resilience.Bulkhead or None, got {bulkhead!r}")
        if rate_limit is not None and not isinstance(rate_limit, (RateLimiter, Keyed)):
            raise TypeError(
                "rate_limit must be a resilience.RateLimiter (one limit for every client), a "
                "resilience.Keyed making a RateLimiter per client, or None; got "
                f"{rate_limit!r}"
            )
        if client_key is not None:
            if not callable(client_key):
                raise TypeError(f"client_key must be a callable or None, got {client_key!r}")
            if not isinstance(rate_limit, Keyed):
                raise ValueError(
                    "client_key is only used with rate_limit=Keyed(...) (a limiter per client); "
                    f"got rate_limit={rate_limit!r}"
                )
        if timeout_header is not None and (
            not isinstance(timeout_header, str) or not _TOKEN.match(timeout_header)
        ):
            raise ValueError(
                f"timeout_header must be an HTTP header name or None, got {timeout_header!r}"
            )
        if not isinstance(map_circuit_open, bool):
            raise TypeError(
                f"map_circuit_open must be a bool, got {type(map_circuit_open).__name__} "
                f"{map_circuit_open!r}"
            )
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        exact, prefixes = _to_exclude(exclude)
        values = {
            "bulkhead": bulkhead,
            "rate_limit": rate_limit,
            "client_key": client_key,
            "timeout": (
                None if timeout is None else to_seconds("timeout", timeout, exclusive_minimum=True)
            ),
            "timeout_header": timeout_header,
            "map_circuit_open": map_circuit_open,
            "default_retry_after": to_int(
                "default_retry_after", default_retry_after, minimum=1, maximum=86_400
            ),
            "exclude": exact,
            "exclude_prefixes": prefixes,
            "name": to_name("name", name),
            "clock": clock or SYSTEM_CLOCK,
        }
        if values["name"] is None:
            raise TypeError("name must be a non-empty str, got None")
        for k, v in values.items():
            object.__setattr__(self, k, v)


# -- the decisions ---------------------------------------------------------------------------------
class ServerPolicy:
    """Every decision of the server middleware, settled at construction, shared by both drivers."""

    __slots__ = (
        "_circuit_default",
        "_exact",
        "_keyed",
        "_limiter",
        "_overloaded",
        "_prefixes",
        "bulkhead",
        "clock",
        "has_deadline",
        "limits",
        "options",
        "per_client",
        "timeout_answer",
    )

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.clock = options.clock
        self.bulkhead = options.bulkhead
        rl = options.rate_limit
        self._keyed: Keyed[RateLimiter] | None = rl if isinstance(rl, Keyed) else None
        self._limiter: RateLimiter | None = rl if isinstance(rl, RateLimiter) else None
        self.limits = rl is not None
        self.per_client = self._keyed is not None
        self.has_deadline = options.timeout is not None or options.timeout_header is not None
        self._exact = options.exclude
        self._prefixes = options.exclude_prefixes
        default = options.default_retry_after
        self._overloaded = answer(503, "overloaded", default)
        self._circuit_default = answer(503, "unavailable", default)
        self.timeout_answer = answer(504, "timeout")
        # Register the strategies under the policy name their events carry, so that
        # resilience.status() and the Prometheus gauges (bulkhead in flight, keys held) see them.
        for strategy in (options.bulkhead, rl):
            if strategy is not None:
                POLICIES.add(strategy.name or strategy.kind, strategy)

    def excluded(self, path: str) -> bool:
        """Whether ``path`` bypasses the middleware."""
        return path in self._exact or (bool(self._prefixes) and path.startswith(self._prefixes))

    def seconds(self, header: str | None) -> float | None:
        """The request's time budget: ``timeout``, shortened (never extended) by the header."""
        limit = self.options.timeout
        if header is None:
            return limit
        asked = parse_timeout(header)
        if asked is None:
            return limit
        return asked if limit is None or asked < limit else limit

    def begin(self, header: str | None) -> Budget | None:
        """Set the request's deadline (``None``: it has none); :meth:`end` must follow."""
        seconds = self.seconds(header)
        if seconds is None:
            return None
        clock = self.clock
        start = clock.now()
        d, token = tighten(seconds, clock)
        return Budget(d, seconds, start, token)

    @staticmethod
    def end(budget: Budget | None) -> None:
        """Take the deadline :meth:`begin` set off the current context."""
        if budget is not None:
            DEADLINE.reset(budget.token)

    def limiter_for(self, key: Hashable | None) -> RateLimiter | None:
        """The limiter a request draws on: the shared one or its client's (``None``: no limit)."""
        keyed = self._keyed
        if keyed is None:
            return self._limiter
        if key is None:
            return None
        limiter = keyed.for_key(key)
        if not isinstance(limiter, RateLimiter):
            raise TypeError(
                "rate_limit=Keyed(...) must make a RateLimiter per client; its factory made "
                f"{limiter!r}"
            )
        return limiter

    def rejected(self, error: RejectedError) -> Answer:
        """The answer to a rejection by the middleware's own limiter (429) or bulkhead (503)."""
        if isinstance(error, RateLimitedError):
            seconds = retry_after_seconds(error.retry_after, self.options.default_retry_after)
            return answer(429, "rate_limited", seconds)
        return self._overloaded

    def escaped(self, error: BaseException, budget: Budget | None) -> Answer | None:
        """The answer to an exception that escaped the app, or ``None``: it is the app's error.

        A timeout once the request's deadline has passed is a 504 (an inner ``Timeout`` or
        an HTTP client under the same deadline raised it); an open breaker is a 503 when
        ``map_circuit_open`` is on.
        """
        if (
            isinstance(error, TimeoutExceededError)
            and budget is not None
            and budget.deadline.expired()
        ):
            return self.late(budget)
        if self.options.map_circuit_open and isinstance(error, CircuitOpenError):
            if error.retry_after is None:
                return self._circuit_default
            seconds = retry_after_seconds(error.retry_after, self.options.default_retry_after)
            return answer(503, "unavailable", seconds)
        return None

    def late(self, budget: Budget) -> Answer:
        """The request ran out of time before its response started: 504 (and the event)."""
        self.cut(budget)
        return self.timeout_answer

    def cut(self, budget: Budget) -> TimeoutExceededError:
        """The request ran out of time: publish :class:`~resilience.TimedOut`, return the error."""
        name = self.options.name
        if EVENTS.wants(name):
            now = self.clock.now()
            EVENTS.publish(
                TimedOut(
                    policy=name,
                    strategy="timeout",
                    time=now,
                    timeout=budget.seconds,
                    elapsed=now - budget.start,
                )
            )
        return self.error(budget)

    def error(self, budget: Budget) -> TimeoutExceededError:
        """The error of a request past its deadline (no event: :meth:`cut` publishes it)."""
        name = self.options.name
        elapsed = self.clock.now() - budget.start
        return TimeoutExceededError(
            f"{name}: the request did not finish within its deadline "
            f"({budget.seconds:g} s, {elapsed:.3f} s elapsed)",
            policy=name,
            timeout=budget.seconds,
            elapsed=elapsed,
        )


class Budget:
    """One request's deadline: when it started, the seconds it was given, the context token."""

    __slots__ = ("deadline", "seconds", "start", "token")

    def __init__(
        self,
        deadline: Deadline,
        seconds: float,
        start: float,
        token: contextvars.Token[Deadline | None],
    ) -> None:
        self.deadline = deadline
        self.seconds = seconds
        self.start = start
        self.token = token

    def expired(self) -> bool:
        return self.deadline.expired()


# -- the constructor -------------------------------------------------------------------------------
AppT = TypeVar("AppT")
RequestT = TypeVar("RequestT")


class ServerMiddleware(Generic[AppT, RequestT]):
    """The constructor of both ``ResilienceMiddleware``: options validated, policy settled.

    ``AppT`` is the application's type, ``RequestT`` what ``client_key`` reads (an ASGI
    scope, a WSGI environ). A subclass is the driver for one server interface: it reads
    the request, takes the permits, runs the app and sends the answers.
    """

    _application: ClassVar[str]
    """What ``app`` must be, for the error: ``"an ASGI application"``."""
    _client_key: Callable[[RequestT], Hashable | None]
    """Set by :meth:`_configure`: ``client_key``, or the interface's remote address."""

    def __init__(
        self,
        app: AppT,
        *,
        bulkhead: Bulkhead | None = None,
        rate_limit: RateLimiter | Keyed[RateLimiter] | None = None,
        client_key: Callable[[RequestT], Hashable | None] | None = None,
        timeout: float | timedelta | None = None,
        timeout_header: str | None = None,
        map_circuit_open: bool = False,
        default_retry_after: int = 1,
        exclude: Iterable[str] = (),
        name: str = "http_server",
        clock: Clock | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be {self._application}, got {app!r}")
        self.app = app
        self._policy = ServerPolicy(
            ServerOptions(
                bulkhead=bulkhead,
                rate_limit=rate_limit,
                client_key=client_key,
                timeout=timeout,
                timeout_header=timeout_header,
                map_circuit_open=map_circuit_open,
                default_retry_after=default_retry_after,
                exclude=exclude,
                name=name,
                clock=clock,
            )
        )
        self._configure(self._policy)

    def _configure(self, policy: ServerPolicy) -> None:
        """Settle what the driver reads per request (the client key, the header's name)."""
        raise NotImplementedError

    def _limiter(self, request: RequestT) -> RateLimiter | None:
        """The limiter ``request`` draws on: the shared one, its client's, or ``None``."""
        policy = self._policy
        return policy.limiter_for(self._client_key(request) if policy.per_client else None)

    def __repr__(self) -> str:
        o = self._policy.options
        return (
            f"ResilienceMiddleware({self.app!r}, bulkhead={o.bulkhead!r}, "
            f"rate_limit={o.rate_limit!r}, timeout={o.timeout!r})"
        )
