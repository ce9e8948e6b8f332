"""ASGI middleware (Starlette, FastAPI, any ASGI app): the IETF Idempotency-Key header.

For the unsafe methods it guards (``POST`` and ``PATCH`` by default):

===============================================  ==========================================
request                                          answer
===============================================  ==========================================
no ``Idempotency-Key`` (and ``required=True``)   400 problem+json
malformed or too long key                        400 problem+json
first request with the key                       the app's response, stored (< 500)
same key, same request, first one finished       the stored status, allow-listed headers
                                                 and body, with ``Idempotent-Replayed: true``
same key, first one still running                409 problem+json with ``Retry-After``
same key, different method/path/query/body       422 problem+json
the store fails (``fail_closed``)                503 problem+json
===============================================  ==========================================

::

    app = IdempotencyMiddleware(app, store=SQLiteStore("idempotency.sqlite3"))
    # Starlette / FastAPI:
    app.add_middleware(IdempotencyMiddleware, store=store)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._guard import Ticket, store_key
from ._http import (
    REFUSED,
    HttpOptions,
    Middleware,
    authorization_scope,
    failure_reason,
    request_fingerprint,
)
from .store import Completed

__all__ = ["IdempotencyMiddleware"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class IdempotencyMiddleware(Middleware[ASGIApp, MutableMapping[str, Any]]):
    """Make an ASGI app's unsafe requests idempotent by their ``Idempotency-Key``.

    Parameters:
        app: the ASGI application.
        store: an idempotency store with async methods.
        methods: the methods guarded; default ``("POST", "PATCH")``.
        header: the key's header; default ``Idempotency-Key``.
        required: answer 400 to a guarded request without a key (default); with
            ``False`` such requests pass through unguarded.
        scope: function of the ASGI scope returning who owns the key (a tenant or user
            id), or ``None``. Default: a hash of the ``Authorization`` header, so two
            clients with different credentials never see each other's responses.
        ttl, lease, heartbeat, wait, poll_interval, on_store_error, max_key_length,
        clock: as for :class:`~resilience.idempotency.Idempotency`.
        store_status: function of the status code: store the response (``True``) or
            release the key so a retry runs again. Default: store every status below 500.
        replay_headers: response headers kept for replays (case-insensitive); default
            content-type, content-language, content-location, location, cache-control,
            etag, last-modified.
        name: the policy name of its events and the namespace of its keys; default
            ``"http"``.

    The request fingerprint is a SHA-256 of the method, path, query string and body.
    The request body is read before the app runs, and the response is kept in memory
    until it is stored.
    """

    _interface = "ASGI"
    _asynchronous = True

    def _configure(self, opts: HttpOptions) -> None:
        self._header = opts.header.encode("latin-1")

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        opts = self._opts
        if scope["type"] != "http" or scope["method"] not in opts.methods:
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        key = self._key([v.decode("latin-1") for k, v in headers if k.lower() == self._header])
        if key is None:
            await self.app(scope, receive, send)
            return
        if not isinstance(key, str):
            await _answer(send, *key)
            return
        if opts.scope is not None:
            owner = opts.scope(scope)
        else:
            auth = next((v for k, v in headers if k.lower() == b"authorization"), None)
            owner = authorization_scope(None if auth is None else auth.decode("latin-1"))

        body, more = await _read_body(receive)
        replay_receive = _replaying(body, more, receive)
        fp = request_fingerprint(
            scope["method"],
            scope.get("path", ""),
            (scope.get("query_string") or b"").decode("latin-1"),
            body,
        )
        try:
            entry = await self._guard.abegin(self._scope, key, store_key(opts.name, owner, key), fp)
        except REFUSED as exc:
            await _answer(send, *self._refused(exc))
            return
        if entry is None:  # the store failed and the middleware fails open
            await self.app(scope, replay_receive, send)
            return
        if isinstance(entry, Completed):
            await _answer(send, *self._replay(entry, key))
            return
        await self._run(entry, scope, replay_receive, send)

    async def _run(
        self, ticket: Ticket, scope: MutableMapping[str, Any], receive: Receive, send: Send
    ) -> None:
        guard = self._guard
        status: int | None = None
        headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        done = False

        async def capture(message: Message) -> None:
            nonlocal status, headers, done
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]
                ]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                done = not message.get("more_body", False)
            await send(message)

        try:
            guard.astart_beat(ticket)
            await self.app(scope, receive, capture)
        except BaseException as exc:
            await guard.asettle(ticket, None, failure_reason(exc))
            raise
        # A response the app did not finish is not stored.
        await guard.asettle(
            ticket, *self._outcome(status if done else None, headers, b"".join(chunks))
        )


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client disconnected before sending it."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts), False
        parts.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            return b"".join(parts), True


def _replaying(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then the real stream."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            if complete:
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}
        return await receive()

    return replay


async def _answer(send: Send, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
