"""ASGI middleware (Starlette, FastAPI, any ASGI app): shed load, limit clients, bound requests.

::

    from resilience import Bulkhead, Keyed, RateLimiter
    from resilience.asgi import ResilienceMiddleware

    app.add_middleware(
        ResilienceMiddleware,
        bulkhead=Bulkhead(64, max_queued=64, queue_timeout=0.5, name="api"),
        rate_limit=Keyed(lambda client: RateLimiter(20, burst=20, name="api"), name="api"),
        timeout=10.0,
        exclude=["/health", "/metrics"],
    )

=============================================  ======  =======================================
what happened                                  status  body (``application/json``)
=============================================  ======  =======================================
the client is over its rate                    429     ``{"error": "rate_limited",
                                                       "retry_after": 3}`` + ``Retry-After``
every permit in use and no room to queue       503     ``{"error": "overloaded",
                                                       "retry_after": 1}`` + ``Retry-After``
``CircuitOpenError`` from the app (opt-in)     503     ``{"error": "unavailable",
                                                       "retry_after": 30}`` + ``Retry-After``
the deadline passed, response not started      504     ``{"error": "timeout"}``
the deadline passed, response started          --      the connection is closed
=============================================  ======  =======================================

Only ``http`` requests are guarded: ``websocket`` and ``lifespan`` pass straight through.
This module imports no web framework.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._core.errors import RejectedError
from ._server import Answer, Budget, ServerMiddleware, ServerPolicy
from .timeout import _uncancel

__all__ = ["ResilienceMiddleware", "remote_address"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def remote_address(scope: Scope) -> str | None:
    """The client's IP address as the server saw it (``scope["client"]``), or ``None``.

    Behind a reverse proxy every request comes from the proxy: give ``client_key=`` a
    function reading the header your proxy sets (and only trust it from the proxy).
    """
    client = scope.get("client")
    return str(client[0]) if client else None


class _Watched:
    """The ``send`` handed to the app: notes when the response starts and completes."""

    __slots__ = ("_send", "complete", "on_complete", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.complete = False
        self.on_complete: Callable[[], object] | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
        elif (
            kind == "http.response.body" and not message.get("more_body", False)
        ) or kind == "http.response.pathsend":
            await self._send(message)
            self.complete = True
            if self.on_complete is not None:
                self.on_complete()
            return
        await self._send(message)


class ResilienceMiddleware(ServerMiddleware[ASGIApp, Scope]):
    """Guard an ASGI app: shed load with a bulkhead, rate-limit clients, bound each request.

    Parameters:
        app: the ASGI application.
        bulkhead: a :class:`~resilience.Bulkhead` every request must get a permit from;
            one that finds no permit (and no room or time to queue) is answered 503
            ``overloaded``. The permit is held until the app returns, whatever happens.
            Default ``None``: no load shedding.
        rate_limit: a :class:`~resilience.RateLimiter` shared by every client, or a
            :class:`~resilience.Keyed` making one per client (``Keyed(lambda client:
            RateLimiter(20, burst=20))``); a request it refuses is answered 429
            ``rate_limited`` with ``Retry-After``. A limiter with ``max_wait`` makes
            requests wait for their turn instead. Checked before the bulkhead, so a
            client over its rate takes no permit.
        client_key: function of the ASGI scope returning the client's key for a keyed
            ``rate_limit`` (hashable), or ``None`` to leave that request unlimited.
            Default: :func:`remote_address`.
        timeout: seconds (float or ``timedelta``, ``> 0``) a request may take, or
            ``None`` (default): no deadline unless ``timeout_header`` brings one. The app
            runs under it (:func:`resilience.remaining` tells it what is left, and HTTP
            clients of this library cap their timeouts by it) and is cancelled when it
            passes: 504 ``timeout`` if the response has not started, else the connection
            is closed. Queueing for the bulkhead or the limiter counts.
        timeout_header: a request header carrying the client's own time budget in plain
            decimal seconds (``"X-Request-Timeout: 2.5"``), or ``None`` (default). It can
            only shorten ``timeout``; a malformed value is ignored; ``0`` is answered 504
            at once.
        map_circuit_open: answer a :class:`~resilience.CircuitOpenError` escaping the app
            (before the response started) with 503 ``unavailable`` and the breaker's
            ``retry_after``; default ``False``.
        default_retry_after: the ``Retry-After`` seconds when a rejection does not say
            (a full bulkhead; a breaker without ``retry_after``), ``1..86400``; default 1.
        exclude: paths that bypass the middleware (``"/health"``); one ending in ``*``
            is a prefix (``"/static/*"``).
        name: the policy name of the :class:`~resilience.TimedOut` events; default
            ``"http_server"``. The bulkhead's and limiters' events carry their own names.
        clock: injected time (tests).

    A permit is given back on every path: a normal return, an error, a timeout, a
    client that disconnects or a server that cancels the request mid-response. Once the
    response is complete the deadline stops applying: work the app does after it
    (background tasks) runs on, still holding the permit.
    """

    _application = "an ASGI application"

    def _configure(self, policy: ServerPolicy) -> None:
        options = policy.options
        self._client_key = options.client_key or remote_address
        header = options.timeout_header
        self._header = None if header is None else header.lower().encode("latin-1")
        # Watch the response only when something depends on whether it has started.
        self._watch = policy.has_deadline or options.map_circuit_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy = self._policy
        if scope["type"] != "http" or policy.excluded(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        head = scope.get("method") == "HEAD"
        budget = policy.begin(self._header_value(scope)) if policy.has_deadline else None
        try:
            if budget is not None and budget.expired():
                await _answer(send, policy.late(budget), head)
                return
            bulkhead = policy.bulkhead
            try:
                if policy.limits:
                    limiter = self._limiter(scope)
                    if limiter is not None:
                        await limiter.aacquire()
                if bulkhead is not None:
                    await bulkhead.__aenter__()
            except RejectedError as exc:
                await _answer(send, policy.rejected(exc), head)
                return
            if bulkhead is None:
                await self._run(scope, receive, send, budget, head)
                return
            # The permit is ours from here: it goes back on every path, cancellation included.
            try:
                answered = await self._run(scope, receive, send, budget, head)
            except BaseException as exc:
                await bulkhead.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            # An error answered for the app still says how the call ended: a thread-mode
            # Timeout's worker that runs on keeps the permit until it is done.
            await bulkhead.__aexit__(
                None if answered is None else type(answered),
                answered,
                None if answered is None else answered.__traceback__,
            )
        finally:
            policy.end(budget)

    def _header_value(self, scope: Scope) -> str | None:
        name = self._header
        if name is None:
            return None
        for k, v in scope.get("headers") or ():
            if k.lower() == name:
                return bytes(v).decode("latin-1")
        return None

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, budget: Budget | None, head: bool
    ) -> BaseException | None:
        """Run the app; answers the app's error that was answered for it (else ``None``)."""
        if not self._watch:
            await self.app(scope, receive, send)
            return None
        policy = self._policy
        watched = _Watched(send)
        if budget is None:
            try:
                await self.app(scope, receive, watched)
            except Exception as exc:
                mapped = None if watched.started else policy.escaped(exc, None)
                if mapped is None:
                    raise
                await _answer(send, mapped, head)
                return exc
            return None

        task = asyncio.current_task()
        if task is None:  # pragma: no cover - an ASGI app always runs in a task under asyncio
            raise RuntimeError("ResilienceMiddleware needs a running asyncio task")
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        d = budget.deadline
        handle = d.clock.call_at(d.when, fire)
        # A complete response is out of the deadline's reach: background work runs on.
        watched.on_complete = handle.cancel
        reply: Answer | None = None
        error: BaseException | None = None
        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:
            handle.cancel()
            if not fired or _uncancel(task) > 0:
                raise  # an outer cancellation (the server, a disconnect) stays one
            error = policy.cut(budget)
            if watched.started:
                # Too late for a 504: the server sees the error and closes the connection.
                raise error from None
            reply = policy.timeout_answer
        except Exception as exc:
            handle.cancel()
            if fired:
                _uncancel(task)  # the app turned our cancellation into an error of its own
            reply = None if watched.started else policy.escaped(exc, budget)
            if reply is None:
                raise
            error = exc
        else:
            handle.cancel()
            if fired:
                _uncancel(task)  # the app swallowed the cancellation
            if not watched.started and budget.expired():
                reply = policy.late(budget)
        if reply is not None:
            await _answer(send, reply, head)
        return error


async def _answer(send: Send, reply: Answer, head: bool) -> None:
    await send(
        {"type": "http.response.start", "status": reply.status, "headers": reply.raw_headers}
    )
    await send({"type": "http.response.body", "body": b"" if head else reply.body})
