"""WSGI middleware (Flask, Django, any WSGI app): the IETF Idempotency-Key header.

The same answers as :mod:`resilience.idempotency.asgi` (400 missing or invalid key, 409
in flight with ``Retry-After``, 422 mismatch, 503 store unavailable, replays with
``Idempotent-Replayed: true``), for WSGI. The guarded response is collected before it
is passed to the server, so that it can be stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from ._guard import store_key
from ._http import (
    REFUSED,
    HttpOptions,
    Middleware,
    authorization_scope,
    failure_reason,
    request_fingerprint,
    status_line,
)
from .store import Completed

__all__ = ["IdempotencyMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class IdempotencyMiddleware(Middleware[WSGIApp, Environ]):
    """Make a WSGI app's unsafe requests idempotent by their ``Idempotency-Key``.

    The parameters are those of :class:`resilience.idempotency.asgi.IdempotencyMiddleware`,
    except that ``scope`` is a function of the WSGI ``environ`` and the store needs sync
    methods.
    """

    _interface = "WSGI"
    _asynchronous = False

    def _configure(self, opts: HttpOptions) -> None:
        self._environ_key = "HTTP_" + opts.header.upper().replace("-", "_")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        opts = self._opts
        if environ.get("REQUEST_METHOD", "GET").upper() not in opts.methods:
            return self.app(environ, start_response)
        raw = environ.get(self._environ_key)
        # A WSGI server joins repeated headers with ", ".
        key = self._key([] if raw is None else raw.split(",") if '"' in raw else [raw])
        if key is None:
            return self.app(environ, start_response)
        if not isinstance(key, str):
            return _answer(start_response, *key)
        if opts.scope is not None:
            owner = opts.scope(environ)
        else:
            owner = authorization_scope(environ.get("HTTP_AUTHORIZATION"))

        body = _read_body(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        fp = request_fingerprint(
            environ["REQUEST_METHOD"].upper(),
            environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""),
            body,
        )
        guard = self._guard
        try:
            entry = guard.begin(self._scope, key, store_key(opts.name, owner, key), fp)
        except REFUSED as exc:
            return _answer(start_response, *self._refused(exc))
        if entry is None:  # the store failed and the middleware fails open
            return self.app(environ, start_response)
        if isinstance(entry, Completed):
            return _answer(start_response, *self._replay(entry, key))

        captured: dict[str, Any] = {}
        written: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return written.append

        try:
            guard.start_beat(entry)
            result = self.app(environ, capture)
            try:
                written.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:
            guard.settle(entry, None, failure_reason(exc))
            raise
        if "status" not in captured:
            guard.settle(entry, None, "not_stored")
            raise RuntimeError("the WSGI application returned without calling start_response")
        status_text: str = captured["status"]
        headers: list[tuple[str, str]] = captured["headers"]
        data = b"".join(written)
        guard.settle(entry, *self._outcome(int(status_text.split(None, 1)[0]), headers, data))
        start_response(status_text, headers)
        return [data]


def _read_body(environ: Environ) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        data: bytes = stream.read(length)
        return data
    if environ.get("wsgi.input_terminated"):
        data = stream.read()
        return data
    return b""


def _answer(
    start_response: StartResponse, status: int, headers: list[tuple[str, str]], body: bytes
) -> list[bytes]:
    start_response(status_line(status), headers)
    return [body]
