"""WSGI middleware (Flask, Django, any WSGI app): the IETF Idempotency-Key header.

The same answers as :mod:`resilience.idempotency.asgi` (400 missing or invalid key, 409
in flight with ``Retry-After``, 422 mismatch, 503 store unavailable, replays with
``Idempotent-Replayed: true``), for WSGI. The guarded response is collected before it
is passed to the server, so that it can be stored.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, Literal

from resilience._core.clock import Clock

from ._guard import DEFAULT_MAX_KEY_LENGTH, Guard, store_key
from ._http import (
    DEFAULT_METHODS,
    DEFAULT_REPLAY_HEADERS,
    authorization_scope,
    decode_response,
    default_store_status,
    encode_response,
    event_scope,
    http_options,
    kept_headers,
    parse_key,
    problem,
    replay_headers,
    request_fingerprint,
    status_line,
)
from .errors import (
    IdempotencyConflictError,
    IdempotencyKeyError,
    IdempotencyKeyMismatchError,
    IdempotencyStoreError,
)
from .store import Completed, IdempotencyStore

__all__ = ["IdempotencyMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class IdempotencyMiddleware:
    """Make a WSGI app's unsafe requests idempotent by their ``Idempotency-Key``.

    The parameters are those of :class:`resilience.idempotency.asgi.IdempotencyMiddleware`,
    except that ``scope`` is a function of the WSGI ``environ`` and the store needs sync
    methods.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        store: IdempotencyStore,
        methods: Iterable[str] = DEFAULT_METHODS,
        header: str = "Idempotency-Key",
        required: bool = True,
        scope: Callable[[Environ], str | None] | None = None,
        ttl: float | timedelta = 86_400.0,
        lease: float | timedelta = 60.0,
        heartbeat: bool = False,
        wait: float | timedelta | None = None,
        poll_interval: float | timedelta = 0.05,
        store_status: Callable[[int], bool] = default_store_status,
        replay_headers: Iterable[str] = DEFAULT_REPLAY_HEADERS,
        on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed",
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        name: str = "http",
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self._opts = http_options(
            store=store,
            methods=methods,
            header=header,
            required=required,
            scope=scope,
            ttl=ttl,
            lease=lease,
            heartbeat=heartbeat,
            wait=wait,
            poll_interval=poll_interval,
            store_status=store_status,
            replay_headers=replay_headers,
            on_store_error=on_store_error,
            max_key_length=max_key_length,
            name=name,
            clock=clock,
        )
        if not store.supports_sync:
            raise TypeError(f"{store!r} has no sync methods; the WSGI middleware needs them")
        self._guard = Guard(self._opts.guard)
        self._scope = event_scope(self._opts)
        self._environ_key = "HTTP_" + self._opts.header.upper().replace("-", "_")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        opts = self._opts
        if environ.get("REQUEST_METHOD", "GET").upper() not in opts.methods:
            return self.app(environ, start_response)
        raw = environ.get(self._environ_key)
        max_len = opts.guard.max_key_length
        if raw is None:
            if opts.required:
                return _answer(start_response, *problem("missing", max_len))
            return self.app(environ, start_response)
        try:
            # A WSGI server joins repeated headers with ", ".
            key = parse_key(raw.split(",") if '"' in raw else [raw], max_len, opts.name)
        except IdempotencyKeyError:
            return _answer(start_response, *problem("invalid", max_len))
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
        guard, escope = self._guard, self._scope
        try:
            entry = guard.begin(escope, key, store_key(opts.name, owner, key), fp)
        except IdempotencyConflictError as exc:
            return _answer(start_response, *problem("conflict", max_len, exc.retry_after))
        except IdempotencyKeyMismatchError:
            return _answer(start_response, *problem("mismatch", max_len))
        except IdempotencyStoreError:
            return _answer(start_response, *problem("unavailable", max_len))
        if entry is None:  # the store failed and the middleware fails open
            return self.app(environ, start_response)
        if isinstance(entry, Completed):
            try:
                status, kept, stored = decode_response(entry.payload)
            except ValueError:
                return _answer(start_response, *problem("unavailable", max_len))
            guard.replayed(escope, key, None)
            return _answer(start_response, status, replay_headers(kept, stored), stored)

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
            guard.settle(
                entry, None, "unknown_failure" if isinstance(exc, Exception) else "cancelled"
            )
            raise
        if "status" not in captured:
            guard.settle(entry, None, "not_stored")
            raise RuntimeError("the WSGI application returned without calling start_response")
        status_text: str = captured["status"]
        headers: list[tuple[str, str]] = captured["headers"]
        data = b"".join(written)
        code = int(status_text.split(None, 1)[0])
        if opts.store_status(code):
            kept = kept_headers(headers, opts.replay_headers)
            guard.settle(entry, encode_response(code, kept, data), "")
        else:
            guard.settle(entry, None, "not_stored")
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
