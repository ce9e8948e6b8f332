"""resilience for requests: an ``HTTPAdapter`` that retries safely.

::

    import requests
    from resilience.requests import ResilientAdapter

    session = requests.Session()
    session.mount("https://", ResilientAdapter())
    session.mount("http://", ResilientAdapter())

:class:`ResilientAdapter` replaces urllib3's own retries (it keeps them at 0) with the
rules in ``docs/http.md``, shared with :mod:`resilience.httpx` through one decision
object. With ``stream=False`` (the default) the body is read inside the attempt, so an
error mid-body is retried like any other.

Only this module imports requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.exceptions as rex
import urllib3.exceptions as uex
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout as _Urllib3Timeout

from ._core.clock import Clock, Rng
from ._core.errors import TimeoutExceededError
from ._core.options import UNSET, Unset
from ._core.strategy import Strategy
from ._http import (
    DEFAULT_RETRY_STATUSES,
    DRAIN_LIMIT,
    IDEMPOTENT_METHODS,
    Body,
    BodyNotReplayableError,
    Call,
    Engine,
    HTTPOptions,
    KeyedStrategies,
    Phase,
    RequestAttempted,
    SeekableBody,
    StreamBody,
    adapter_options,
    cap_timeout,
    host_key,
    parse_retry_after,
    resend_count,
    response_classifier,
    time_left,
)
from .backoff import Schedule
from .retry import RetryBudget

__all__ = [
    "BodyNotReplayableError",
    "DEFAULT_RETRY_STATUSES",
    "HTTPOptions",
    "IDEMPOTENT_METHODS",
    "KeyedStrategies",
    "RESPONSE_CLASSIFIER",
    "RequestAttempted",
    "ResilientAdapter",
    "parse_retry_after",
    "resend_count",
]

_NEVER = (rex.SSLError, rex.ProxyError, rex.InvalidURL, rex.InvalidHeader)


def _phase(exc: BaseException) -> Phase | None:
    """How far a request got before ``exc``: the mapping at requests' boundary."""
    if isinstance(exc, _NEVER):
        return None
    if isinstance(exc, rex.ConnectTimeout):
        return Phase.NOT_SENT
    if isinstance(exc, rex.ConnectionError):
        cause = exc.args[0] if exc.args else None
        if isinstance(cause, uex.MaxRetryError):
            cause = cause.reason
        if isinstance(cause, uex.ConnectTimeoutError):  # NewConnectionError included
            return Phase.NOT_SENT
        if isinstance(cause, uex.ClosedPoolError):
            return None  # the adapter was closed: nothing will work again
        return Phase.MAYBE_SENT
    if isinstance(exc, (rex.ReadTimeout, rex.ChunkedEncodingError, TimeoutExceededError)):
        return Phase.MAYBE_SENT
    if isinstance(exc, uex.EmptyPoolError):
        return Phase.NOT_SENT
    return None


def _status(response: requests.Response) -> int:
    return response.status_code


def _header(response: requests.Response, name: str) -> str | None:
    return response.headers.get(name)


def _split(request: requests.PreparedRequest) -> tuple[str, str, int | None]:
    parts = urlsplit(request.url or "")
    return parts.scheme, parts.hostname or "", parts.port


def _describe(request: requests.PreparedRequest) -> tuple[str, str, int]:
    scheme, host, port = _split(request)
    return request.method or "", host, port or (443 if scheme == "https" else 80)


def _host_of(request: requests.PreparedRequest) -> str:
    scheme, host, port = _split(request)
    return host_key(host, port, scheme)


RESPONSE_CLASSIFIER = response_classifier(_status)
"""A :class:`~resilience.Classifier` for a breaker around requests calls: 5xx and 429 count
as failures, other 4xx are known failures, the rest successes."""


class _TrackedReader:
    """A file-like body that cannot be rewound, noting when any of it is read."""

    def __init__(self, inner: Any, body: StreamBody) -> None:
        self._inner = inner
        self._body = body

    def read(self, *args: Any) -> Any:
        self._body.started = True
        return self._inner.read(*args)


def _tracked_iter(inner: Iterable[Any], body: StreamBody) -> Iterator[Any]:
    body.started = True
    yield from inner


def _body(request: requests.PreparedRequest) -> Body | None:
    """``None`` for in-memory bodies, a seekable file, or a tracked one-shot stream."""
    data: Any = request.body
    if data is None or isinstance(data, (bytes, str)):
        return None
    position = getattr(request, "_body_position", None)
    if isinstance(position, int) and hasattr(data, "seek"):
        return SeekableBody(data, position)
    body = StreamBody()
    if hasattr(data, "read"):
        request.body = _TrackedReader(data, body)  # type: ignore[assignment]
    else:
        request.body = _tracked_iter(data, body)  # type: ignore[assignment]
    return body


def _capped(timeout: Any, left: float) -> Any:
    """requests' ``timeout=`` (seconds, a (connect, read) pair or a urllib3 Timeout) capped."""
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (cap_timeout(connect, left), cap_timeout(read, left))
    if isinstance(timeout, _Urllib3Timeout):
        connect, read = timeout.connect_timeout, timeout.read_timeout
        return (
            cap_timeout(connect if isinstance(connect, (int, float)) else None, left),
            cap_timeout(read if isinstance(read, (int, float)) else None, left),
        )
    return cap_timeout(timeout, left)


def _discard(response: requests.Response) -> None:
    """Read a small body of a response nobody will see, then close it, freeing the connection."""
    try:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) <= DRAIN_LIMIT:
            response.content  # noqa: B018 - reading lets the connection go back to the pool
    except Exception:  # a broken body of a discarded response changes nothing
        pass
    finally:
        response.close()


class ResilientAdapter(HTTPAdapter):
    """A requests transport adapter that runs every request through a resilience policy.

    ``session.mount("https://", ResilientAdapter())``. Requests are retried by the
    rules in ``docs/http.md``; urllib3's own retries stay off. Mount a differently
    configured adapter on a longer prefix for per-endpoint settings
    (``session.mount("https://api.example.com/upload", ResilientAdapter(attempts=1))``).

    Parameters:
        pool_connections, pool_maxsize, pool_block: as for ``HTTPAdapter``.
        options: an :class:`HTTPOptions` to start from; the keyword arguments named like
            its fields (``attempts``, ``backoff``, ``retry_statuses`` …) replace single
            fields.
        strategies: extra strategies run around every attempt, inside the retry
            (e.g. a circuit breaker), outermost first.
        per_host: a factory ``"host:port" -> Strategy`` (instances kept in an LRU of
            ``max_hosts``) or a registry with a ``for_key(key)`` method.
        max_hosts: per-host strategies kept, ``>= 1``; default 256.
        budget: a shared :class:`~resilience.RetryBudget` (an adapter with one cannot
            be pickled).
        name: the policy name in events and telemetry; default ``"http"``.
        clock, rng: injected time and randomness (tests).

    The adapter pickles with its session as long as its strategies and ``per_host``
    do; the decision object is rebuilt on unpickling.
    """

    def __init__(
        self,
        *,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        pool_block: bool = False,
        options: HTTPOptions | None = None,
        attempts: int | Unset = UNSET,
        backoff: Schedule | object = UNSET,
        retry_statuses: Iterable[int] | Unset = UNSET,
        idempotent_methods: Iterable[str] | Unset = UNSET,
        respect_retry_after: bool | Unset = UNSET,
        max_retry_after: float | timedelta | Unset = UNSET,
        attempt_timeout: float | timedelta | Unset | None = UNSET,
        total_timeout: float | timedelta | Unset | None = UNSET,
        add_idempotency_key: bool | Unset = UNSET,
        idempotency_header: str | Unset = UNSET,
        buffer_limit: int | Unset = UNSET,
        strategies: Iterable[Strategy] | Strategy = (),
        per_host: Any = None,
        max_hosts: int = 256,
        budget: RetryBudget | None = None,
        name: str = "http",
        clock: Clock | None = None,
        rng: Rng | None = None,
    ) -> None:
        merged = adapter_options(
            options,
            attempts=attempts,
            backoff=backoff,
            retry_statuses=retry_statuses,
            idempotent_methods=idempotent_methods,
            respect_retry_after=respect_retry_after,
            max_retry_after=max_retry_after,
            attempt_timeout=attempt_timeout,
            total_timeout=total_timeout,
            add_idempotency_key=add_idempotency_key,
            idempotency_header=idempotency_header,
            buffer_limit=buffer_limit,
        )
        self._setup(
            {
                "options": merged,
                "strategies": strategies,
                "per_host": per_host,
                "max_hosts": max_hosts,
                "budget": budget,
                "name": name,
                "clock": clock,
                "rng": rng,
            }
        )
        super().__init__(pool_connections, pool_maxsize, pool_block=pool_block)

    def _setup(self, config: dict[str, Any]) -> None:
        self._config = config
        self._engine = Engine(
            phase=_phase, status_of=_status, header_of=_header, describe=_describe, **config
        )
        self._run = self._engine.build_sync(self._send_once, _discard, _host_of)

    @property
    def options(self) -> HTTPOptions:
        """The options in force."""
        return self._engine.options

    def __repr__(self) -> str:
        return f"ResilientAdapter(name={self._engine.name!r}, options={self._engine.options!r})"

    # requests pickles adapters with their session: keep the configuration, rebuild the rest.
    def __getstate__(self) -> dict[str, Any]:
        if self._config["budget"] is not None:
            raise TypeError(
                "a ResilientAdapter with a shared RetryBudget cannot be pickled: the budget "
                "counts this process's traffic; give the unpickled copy its own"
            )
        state: dict[str, Any] = super().__getstate__()  # type: ignore[misc]
        state["_resilience"] = dict(self._config)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        config = state.pop("_resilience")
        super().__setstate__(state)  # type: ignore[misc]
        self._setup(config)

    def _send_once(self, request: requests.PreparedRequest, call: Call) -> requests.Response:
        stream, timeout, verify, cert, proxies = call.extra
        left = time_left(self._engine.name)
        if left is not None:
            timeout = _capped(timeout, left)
        response = super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )
        if not stream:
            # Read now, inside the attempt, as the session would right after: an error
            # mid-body is then retried like any other.
            try:
                response.content  # noqa: B018
            except BaseException:
                response.close()
                raise
        return response

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` through the policy; the arguments are those of ``HTTPAdapter``."""
        body = _body(request)
        path = self._engine.plan(
            request.method or "GET", request.headers, not isinstance(body, StreamBody)
        )
        call = Call(body, None, (stream, timeout, verify, cert, proxies))
        return self._run(path, request, call)  # type: ignore[no-any-return]
