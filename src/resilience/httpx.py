"""resilience for httpx: a transport that retries safely and keeps the pool healthy.

::

    import httpx
    from resilience.httpx import ResilientTransport

    client = httpx.Client(transport=ResilientTransport(httpx.HTTPTransport()))

:class:`ResilientTransport` (for ``httpx.Client``) and :class:`AsyncResilientTransport`
(for ``httpx.AsyncClient``) wrap any httpx transport at the seam httpx draws,
``handle_request`` / ``handle_async_request``. Both share one decision object
(:class:`resilience._http.Engine`); what is retried, and when, is in ``docs/http.md``.

Only this module imports httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import timedelta
from typing import Any, Generic, TypeVar

import httpx

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
    Overrides,
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

try:  # httpx's own stream types; if they move, those bodies are treated as plain streams.
    from httpx._content import IteratorByteStream as _IteratorByteStream
    from httpx._multipart import MultipartStream as _MultipartStream
except ImportError:  # pragma: no cover
    _IteratorByteStream = None  # type: ignore[assignment,misc]
    _MultipartStream = None  # type: ignore[assignment,misc]

__all__ = [
    "AsyncResilientTransport",
    "BodyNotReplayableError",
    "DEFAULT_RETRY_STATUSES",
    "HTTPOptions",
    "IDEMPOTENT_METHODS",
    "KeyedStrategies",
    "RESPONSE_CLASSIFIER",
    "RequestAttempted",
    "ResilientTransport",
    "parse_retry_after",
    "resend_count",
]

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    TimeoutExceededError,
)
_TIMEOUT_KEYS = ("connect", "read", "write", "pool")


def _phase(exc: BaseException) -> Phase | None:
    """How far a request got before ``exc``: the mapping at httpx's boundary."""
    if isinstance(exc, _NOT_SENT):
        return Phase.NOT_SENT
    if isinstance(exc, _MAYBE_SENT):
        return Phase.MAYBE_SENT
    return None


def _status(response: httpx.Response) -> int:
    return response.status_code


def _header(response: httpx.Response, name: str) -> str | None:
    value: str | None = response.headers.get(name)
    return value


def _describe(request: httpx.Request) -> tuple[str, str, int]:
    url = request.url
    port = url.port or (443 if url.scheme == "https" else 80)
    return request.method, url.host, port


RESPONSE_CLASSIFIER = response_classifier(_status)
"""A :class:`~resilience.Classifier` for a breaker around httpx calls: 5xx and 429 count as
failures, other 4xx are known failures, the rest successes."""


class _TrackedStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A request body that cannot be rewound, noting when any of it is read."""

    def __init__(self, inner: Any, body: StreamBody) -> None:
        self._inner = inner
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        self._body.started = True
        yield from self._inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._body.started = True
        async for chunk in self._inner:
            yield chunk

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    async def aclose(self) -> None:
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()


def _body(request: httpx.Request) -> Body | None:
    """``None`` for in-memory bodies, a seekable file, or a tracked one-shot stream."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        return None
    if _MultipartStream is not None and isinstance(stream, _MultipartStream):
        return None  # httpx seeks every file of a multipart body back to 0 itself
    if _IteratorByteStream is not None and type(stream) is _IteratorByteStream:
        file = getattr(stream, "_stream", None)
        seekable = getattr(file, "seekable", None)
        if hasattr(file, "seek") and hasattr(file, "tell") and (seekable is None or seekable()):
            try:
                return SeekableBody(file, file.tell())  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass
    body = StreamBody()
    request.stream = _TrackedStream(stream, body)
    return body


def _capped(call: Call, left: float) -> dict[str, Any]:
    ext: dict[str, Any] = call.extra
    timeout = ext.get("timeout") or {}
    return {**ext, "timeout": {k: cap_timeout(timeout.get(k), left) for k in _TIMEOUT_KEYS}}


def _bufferable(response: httpx.Response, limit: int) -> bool:
    if isinstance(response.stream, httpx.ByteStream) or response.status_code < 200:
        return False
    length = response.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= limit


def _buffer(response: httpx.Response) -> None:
    """Read the raw body now, inside the attempt, and hand the response on with it in memory.

    The response object itself is untouched (not read, not closed): the client reads and
    closes it as usual, and decodes the body as usual.
    """
    stream: Any = response.stream
    try:
        raw = b"".join(stream)
    finally:
        stream.close()  # the connection goes back to the pool now
    response.stream = httpx.ByteStream(raw)


async def _abuffer(response: httpx.Response) -> None:
    stream: Any = response.stream
    try:
        raw = b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()
    response.stream = httpx.ByteStream(raw)


def _discard(response: httpx.Response) -> None:
    """Read a little of a response nobody will see, then close it, freeing its connection."""
    try:
        chunks = response.iter_raw()
        try:
            n = 0
            for chunk in chunks:
                n += len(chunk)
                if n > DRAIN_LIMIT:
                    break
        finally:
            chunks.close()  # type: ignore[attr-defined]
    except Exception:  # a broken body of a discarded response changes nothing
        pass
    finally:
        response.close()


async def _adiscard(response: httpx.Response) -> None:
    try:
        chunks = response.aiter_raw()
        try:
            n = 0
            async for chunk in chunks:
                n += len(chunk)
                if n > DRAIN_LIMIT:
                    break
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
    except Exception:
        pass
    finally:
        await response.aclose()


def _host_of(request: httpx.Request) -> str:
    url = request.url
    return host_key(url.host, url.port, url.scheme)


T = TypeVar("T")


class _Transport(Generic[T]):
    """What the sync and async transports share: the constructor, options, planning.

    A subclass checks ``wrapped`` (and makes the default one) and builds its driver.
    """

    _engine: Engine
    _wrapped: T

    def __init__(
        self,
        wrapped: T | None = None,
        *,
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
        self._wrapped = self._checked(wrapped)
        self._engine = Engine(
            adapter_options(
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
            ),
            phase=_phase,
            status_of=_status,
            header_of=_header,
            describe=_describe,
            strategies=strategies,
            per_host=per_host,
            max_hosts=max_hosts,
            budget=budget,
            name=name,
            clock=clock,
            rng=rng,
        )
        self._build()

    def _checked(self, wrapped: T | None) -> T:
        """``wrapped`` if it is a transport of the right kind; the default one for ``None``."""
        raise NotImplementedError

    def _build(self) -> None:
        """Settle the driver: the send of one attempt, wrapped by the engine."""
        raise NotImplementedError

    @property
    def options(self) -> HTTPOptions:
        """The options in force."""
        return self._engine.options

    @property
    def wrapped(self) -> T:
        """The transport that sends each attempt."""
        return self._wrapped

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._wrapped!r}, name={self._engine.name!r}, "
            f"options={self._engine.options!r})"
        )

    def _plan(self, request: httpx.Request) -> tuple[int, Call]:
        ext = request.extensions
        raw = ext.get("resilience")
        body = _body(request)
        path = self._engine.plan(
            request.method,
            request.headers,
            not isinstance(body, StreamBody),
            None if raw is None else Overrides.parse(raw),
        )
        return path, Call(body, None, ext)


class ResilientTransport(_Transport[httpx.BaseTransport], httpx.BaseTransport):
    """An httpx transport that runs every request through a resilience policy.

    ``httpx.Client(transport=ResilientTransport(httpx.HTTPTransport(...)))``. Each
    request is retried by the rules in ``docs/http.md`` (errors before sending: always;
    after it may have been sent, and retryable statuses: only for idempotent requests),
    each attempt inside ``strategies`` (outermost first) and the ``per_host`` strategy.

    Parameters:
        wrapped: the transport that sends each attempt; default ``httpx.HTTPTransport()``.
            (Pass the client's ``limits``, ``verify`` … to it: a client given a
            ``transport=`` does not configure one.)
        options: an :class:`HTTPOptions` to start from; the keyword arguments named like
            its fields (``attempts``, ``backoff``, ``retry_statuses`` …) replace single
            fields.
        strategies: extra strategies run around every attempt, inside the retry
            (e.g. a circuit breaker, a bulkhead), outermost first.
        per_host: a factory ``"host:port" -> Strategy`` (one instance per host and
            port, kept in an LRU of ``max_hosts``), or a registry with a
            ``for_key(key)`` method, run innermost around every attempt, so one bad host
            does not trip calls to the others.
        max_hosts: per-host strategies kept, ``>= 1``; default 256.
        budget: a shared :class:`~resilience.RetryBudget`; default ``None``.
        name: the policy name in events and telemetry; default ``"http"``.
        clock, rng: injected time and randomness (tests).

    Per request, ``extensions={"resilience": {"retry": False}}`` sends once;
    ``"idempotent": True/False`` overrides the method's idempotency;
    ``"idempotency_key": True/False`` overrides ``add_idempotency_key``.
    """

    def _checked(self, wrapped: httpx.BaseTransport | None) -> httpx.BaseTransport:
        if wrapped is None:
            return httpx.HTTPTransport()
        if not isinstance(wrapped, httpx.BaseTransport):
            raise TypeError(
                "wrapped must be a sync httpx transport (httpx.BaseTransport); use "
                f"AsyncResilientTransport for httpx.Client; got {wrapped!r}"
            )
        return wrapped

    def _build(self) -> None:
        wrapped = self._wrapped
        limit = self._engine.options.buffer_limit
        policy = self._engine.name

        def send(request: httpx.Request, call: Call) -> httpx.Response:
            left = time_left(policy)
            if left is not None:
                request.extensions = _capped(call, left)
            response = wrapped.handle_request(request)
            if limit and _bufferable(response, limit):
                _buffer(response)
            return response

        self._run = self._engine.build_sync(send, _discard, _host_of)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path, call = self._plan(request)
        try:
            return self._run(path, request, call)  # type: ignore[no-any-return]
        finally:
            if request.extensions is not call.extra:
                request.extensions = call.extra

    def close(self) -> None:
        """Close the wrapped transport."""
        self._wrapped.close()


class AsyncResilientTransport(_Transport[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`ResilientTransport`, for ``httpx.AsyncClient``.

    Same parameters; ``wrapped`` defaults to ``httpx.AsyncHTTPTransport()``.
    """

    def _checked(self, wrapped: httpx.AsyncBaseTransport | None) -> httpx.AsyncBaseTransport:
        if wrapped is None:
            return httpx.AsyncHTTPTransport()
        if not isinstance(wrapped, httpx.AsyncBaseTransport):
            raise TypeError(
                "wrapped must be an async httpx transport (httpx.AsyncBaseTransport); use "
                f"ResilientTransport for httpx.Client; got {wrapped!r}"
            )
        return wrapped

    def _build(self) -> None:
        wrapped = self._wrapped
        limit = self._engine.options.buffer_limit
        policy = self._engine.name

        async def send(request: httpx.Request, call: Call) -> httpx.Response:
            left = time_left(policy)
            if left is not None:
                request.extensions = _capped(call, left)
            response = await wrapped.handle_async_request(request)
            if limit and _bufferable(response, limit):
                await _abuffer(response)
            return response

        self._run = self._engine.build_async(send, _adiscard, _host_of)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path, call = self._plan(request)
        try:
            return await self._run(path, request, call)  # type: ignore[no-any-return]
        finally:
            if request.extensions is not call.extra:
                request.extensions = call.extra

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._wrapped.aclose()
