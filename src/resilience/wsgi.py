"""WSGI middleware (Flask, Django, any WSGI app): shed load, limit clients, bound requests.

::

    from resilience import Bulkhead, Keyed, RateLimiter
    from resilience.wsgi import ResilienceMiddleware

    app.wsgi_app = ResilienceMiddleware(  # Flask; Django: wrap get_wsgi_application()
        app.wsgi_app,
        bulkhead=Bulkhead(16, name="api"),
        rate_limit=Keyed(lambda client: RateLimiter(20, burst=20, name="api"), name="api"),
        timeout=10.0,
        exclude=["/health"],
    )

The answers are those of :mod:`resilience.asgi` (429 ``rate_limited``, 503
``overloaded``, 503 ``unavailable`` opt-in, 504 ``timeout``). The difference is the
deadline: a WSGI app runs in a thread that cannot be interrupted, so it is
**cooperative**. The app sees it through :func:`resilience.remaining` (and the HTTP
clients of this library cap their timeouts by it); the middleware checks it when the
app returns and after each chunk of the body. Past the deadline, a response that has
not started is replaced by the 504; one that has is cut off by raising
:class:`~resilience.TimeoutExceededError` to the server, which closes the connection.

The headers the app gives ``start_response`` are passed to the server just before the
first non-empty chunk of the body, as PEP 3333 allows, so that a late or failed
response can still be replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from ._core.deadline import DEADLINE
from ._core.errors import RejectedError
from ._server import Answer, Budget, ServerMiddleware, ServerPolicy
from .bulkhead import Bulkhead

__all__ = ["ResilienceMiddleware", "remote_address"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def remote_address(environ: Environ) -> str | None:
    """The client's IP address as the server saw it (``REMOTE_ADDR``), or ``None``.

    Behind a reverse proxy every request comes from the proxy: give ``client_key=`` a
    function reading the header your proxy sets (and only trust it from the proxy).
    """
    addr = environ.get("REMOTE_ADDR")
    return str(addr) if addr else None


class ResilienceMiddleware(ServerMiddleware[WSGIApp, Environ]):
    """Guard a WSGI app: shed load with a bulkhead, rate-limit clients, bound each request.

    The parameters are those of :class:`resilience.asgi.ResilienceMiddleware`, except
    that ``client_key`` is a function of the WSGI ``environ`` (default
    :func:`remote_address`) and the deadline is cooperative (see the module).

    A permit is held until the server closes the response (PEP 3333 ``close()``), or
    until its body is exhausted, whichever comes first; it is given back on every path,
    including an error while the body is produced and a client that disconnects.
    """

    _application = "a WSGI application"

    def _configure(self, policy: ServerPolicy) -> None:
        options = policy.options
        self._client_key = options.client_key or remote_address
        header = options.timeout_header
        self._header = None if header is None else "HTTP_" + header.upper().replace("-", "_")
        # Watch the response only when something depends on it.
        self._watch = (
            options.bulkhead is not None or policy.has_deadline or options.map_circuit_open
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        policy = self._policy
        if policy.excluded(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        head = environ.get("REQUEST_METHOD") == "HEAD"
        header = None if self._header is None else environ.get(self._header)
        budget = policy.begin(header) if policy.has_deadline else None
        try:
            if budget is not None and budget.expired():
                return _answer(start_response, policy.late(budget), head)
            bulkhead = policy.bulkhead
            try:
                if policy.limits:
                    limiter = self._limiter(environ)
                    if limiter is not None:
                        limiter.acquire()
                if bulkhead is not None:
                    bulkhead.__enter__()
            except RejectedError as exc:
                return _answer(start_response, policy.rejected(exc), head)
            if not self._watch:
                return self.app(environ, start_response)
            # The permit is ours from here: the response gives it back on every path.
            response = _Response(policy, bulkhead, budget, start_response, head)
            try:
                result = self.app(environ, response.start_response)
            except BaseException as exc:
                response.release(exc)
                mapped = None
                if isinstance(exc, Exception) and not response.started:
                    mapped = policy.escaped(exc, budget)
                if mapped is None:
                    raise
                return _answer(start_response, mapped, head)
            return response.wrap(result)
        finally:
            policy.end(budget)


class _Response:
    """The app's response on its way to the server: headers held back, deadline checked.

    The iterable the server gets. Per PEP 3333 the server calls :meth:`close` once it is
    done (normally, after an error or after a disconnect); the permit is released then,
    or when the body is exhausted, exactly once.
    """

    __slots__ = (
        "_budget",
        "_bulkhead",
        "_closed",
        "_head",
        "_headers",
        "_it",
        "_policy",
        "_released",
        "_result",
        "_start_response",
        "_status",
        "_write",
        "started",
    )

    def __init__(
        self,
        policy: ServerPolicy,
        bulkhead: Bulkhead | None,
        budget: Budget | None,
        start_response: StartResponse,
        head: bool,
    ) -> None:
        self._policy = policy
        self._bulkhead = bulkhead
        self._budget = budget
        self._start_response = start_response
        self._head = head
        self._status: str | None = None
        self._headers: list[tuple[str, str]] = []
        self._write: Callable[[bytes], object] | None = None
        self._result: Iterable[bytes] | None = None
        self._it: Iterator[bytes] | None = None
        self._released = False
        self._closed = False
        self.started = False

    # -- what the app sees -------------------------------------------------------------------
    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None and self.started:
            # The headers are out: the server re-raises the app's error, as PEP 3333 says.
            return self._start_response(status, headers, exc_info)
        self._status, self._headers = status, headers
        return self._legacy_write

    def _legacy_write(self, data: bytes) -> None:
        """The ``write()`` of PEP 3333's imperative API: the headers must go out now."""
        budget = self._budget
        if budget is not None and budget.expired():
            if self.started:
                raise self._policy.cut(budget)  # the server closes the connection
            # Raised through the app, mapped to the 504 (which publishes the event) on the way out.
            raise self._policy.error(budget)
        self._begin()
        assert self._write is not None
        self._write(data)

    # -- what the server sees ----------------------------------------------------------------
    def wrap(self, result: Iterable[bytes]) -> _Response:
        self._result = result
        return self

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._released:
            raise StopIteration  # the app's body is done, or our own answer went out whole
        budget = self._budget
        token = None if budget is None else DEADLINE.set(budget.deadline)
        try:
            if self._it is None:
                assert self._result is not None
                self._it = iter(self._result)
            chunk: bytes | None = next(self._it)
        except StopIteration:
            chunk = None
        except Exception as exc:
            # Released with the error: a thread-mode Timeout's worker keeps the permit.
            self.release(exc)
            mapped = None if self.started else self._policy.escaped(exc, budget)
            if mapped is None:
                raise
            return self._replace(mapped)
        except BaseException as exc:
            self.release(exc)
            raise
        finally:
            if token is not None:
                DEADLINE.reset(token)
        if budget is not None and budget.expired():
            if not self.started:
                return self._replace(self._policy.late(budget))
            error = self._policy.cut(budget)
            self.release(error)
            raise error  # the server closes the connection mid-response
        if chunk is None:
            self._begin()  # an empty body: the headers still go out
            self.release(None)
            raise StopIteration
        if chunk and not self.started:
            self._begin()
        return chunk

    def close(self) -> None:
        try:
            self._close_app()
        finally:
            self.release(None)

    # -- internals -------------------------------------------------------------------------------
    def _begin(self) -> None:
        if self.started:
            return
        if self._status is None:
            error = RuntimeError("the WSGI application did not call start_response")
            self.release(error)
            raise error
        self.started = True
        self._write = self._start_response(self._status, self._headers)

    def _replace(self, reply: Answer) -> bytes:
        """Answer ``reply`` instead of the app's response, which has not started."""
        try:
            self._close_app()
        finally:
            self.release(None)
        # The server's start_response was never called (nothing started): no exc_info needed.
        self._start_response(reply.status_line, list(reply.headers))
        return b"" if self._head else reply.body

    def _close_app(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._result, "close", None)
        if close is not None:
            close()

    def release(self, error: BaseException | None) -> None:
        """Give the bulkhead permit back, once."""
        if self._released:
            return
        self._released = True
        bulkhead = self._bulkhead
        if bulkhead is not None:
            bulkhead.__exit__(
                None if error is None else type(error),
                error,
                None if error is None else error.__traceback__,
            )


def _answer(start_response: StartResponse, reply: Answer, head: bool) -> list[bytes]:
    start_response(reply.status_line, list(reply.headers))
    return [b"" if head else reply.body]
