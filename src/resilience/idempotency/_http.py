"""What the ASGI and WSGI middleware share: the constructor and options, the decisions
(key, owner, refusals, replays, what is stored), fingerprints, stored responses and the
error answers. The drivers in :mod:`.asgi` and :mod:`.wsgi` only do the I/O.

The error answers are RFC 9457 problem details: small, fixed JSON bodies that name the
problem and never echo the key, the request or anything from the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar

from resilience._core.clock import Clock
from resilience._core.strategy import Scope

from ._guard import (
    DEFAULT_MAX_KEY_LENGTH,
    Guard,
    GuardOptions,
    check_key,
    guard_options,
)
from .errors import (
    IdempotencyConflictError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyKeyMismatchError,
    IdempotencyStoreError,
)
from .store import Completed, IdempotencyStore

DEFAULT_METHODS: Final = ("POST", "PATCH")
DEFAULT_REPLAY_HEADERS: Final = (
    "content-type",
    "content-language",
    "content-location",
    "location",
    "cache-control",
    "etag",
    "last-modified",
)
REPLAYED_HEADER: Final = "idempotent-replayed"
_FORMAT: Final = 1

# (status, title, detail) of every answer the middleware gives on its own.
PROBLEMS: Final = {
    "missing": (
        400,
        "Idempotency-Key is missing",
        "This request must carry an Idempotency-Key header.",
    ),
    "invalid": (
        400,
        "Idempotency-Key is invalid",
        "The Idempotency-Key header must be one value of 1 to {max} printable ASCII characters.",
    ),
    "conflict": (
        409,
        "Request in progress",
        "A request with this Idempotency-Key is still being processed. Retry later.",
    ),
    "mismatch": (
        422,
        "Idempotency-Key reused",
        "This Idempotency-Key was already used for a different request.",
    ),
    "unavailable": (
        503,
        "Idempotency check unavailable",
        "The request could not be checked for duplicates. Retry later.",
    ),
}


def default_store_status(status: int) -> bool:
    """Store every response below 500; a 5xx releases the key so a retry runs again."""
    return status < 500


@dataclass(frozen=True, slots=True)
class HttpOptions:
    guard: GuardOptions
    methods: frozenset[str]
    header: str
    required: bool
    scope: Callable[[Any], str | None] | None
    store_status: Callable[[int], bool]
    replay_headers: frozenset[str]
    name: str


Reply = tuple[int, list[tuple[str, str]], bytes]
"""``(status, headers, body)`` of an answer the middleware gives without running the app."""

REFUSED: Final = (IdempotencyConflictError, IdempotencyKeyMismatchError, IdempotencyStoreError)
"""What claiming a key raises instead of handing out a ticket; :meth:`Middleware._refused`."""

AppT = TypeVar("AppT")
RequestT = TypeVar("RequestT")


class Middleware(Generic[AppT, RequestT]):
    """The constructor of both ``IdempotencyMiddleware`` and every decision they share.

    ``AppT`` is the application's type, ``RequestT`` what ``scope`` reads (an ASGI scope,
    a WSGI environ). A subclass is the driver for one server interface: it reads the
    key and the body, claims the key (sync or async), runs the app and sends the answers
    these methods decide.
    """

    _interface: ClassVar[str]
    """``"ASGI"`` or ``"WSGI"``, for the errors."""
    _asynchronous: ClassVar[bool]
    """Whether the store's async methods are the ones used (else its sync ones)."""

    def __init__(
        self,
        app: AppT,
        *,
        store: IdempotencyStore,
        methods: Iterable[str] = DEFAULT_METHODS,
        header: str = "Idempotency-Key",
        required: bool = True,
        scope: Callable[[RequestT], str | None] | None = None,
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
        guard = guard_options(
            store=store,
            ttl=ttl,
            lease=lease,
            heartbeat=heartbeat,
            wait=wait,
            poll_interval=poll_interval,
            on_store_error=on_store_error,
            max_key_length=max_key_length,
            clock=clock,
        )
        if isinstance(methods, str) or not all(isinstance(m, str) and m for m in methods):
            raise TypeError(f"methods must be an iterable of HTTP method names, got {methods!r}")
        if not isinstance(header, str) or not header or not header.isascii():
            raise TypeError(f"header must be a non-empty ASCII header name, got {header!r}")
        if not isinstance(required, bool):
            raise TypeError(f"required must be a bool, got {required!r}")
        if scope is not None and not callable(scope):
            raise TypeError(f"scope must be a function of the request or None, got {scope!r}")
        if not callable(store_status):
            raise TypeError(
                f"store_status must be a function of the status code, got {store_status!r}"
            )
        if isinstance(replay_headers, str) or not all(isinstance(h, str) for h in replay_headers):
            raise TypeError(
                f"replay_headers must be an iterable of header names, got {replay_headers!r}"
            )
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if not (store.supports_async if self._asynchronous else store.supports_sync):
            kind = "async" if self._asynchronous else "sync"
            raise TypeError(
                f"{store!r} has no {kind} methods; the {self._interface} middleware needs them"
            )
        self._opts = HttpOptions(
            guard=guard,
            methods=frozenset(m.upper() for m in methods),
            header=header.lower(),
            required=required,
            scope=scope,
            store_status=store_status,
            replay_headers=frozenset(h.lower() for h in replay_headers),
            name=name,
        )
        self._guard = Guard(guard)
        self._scope = Scope(name, "idempotency")
        self._configure(self._opts)

    def _configure(self, opts: HttpOptions) -> None:
        """Settle what the driver reads per request (where the key's header is)."""
        raise NotImplementedError

    # -- the decisions (no I/O) ----------------------------------------------------------------
    def _key(self, values: list[str]) -> str | Reply | None:
        """The key from the header's values (none: ``[]``), or the 400 to answer instead.

        ``None``: there is no key and none is required; the request runs unguarded.
        """
        opts = self._opts
        max_len = opts.guard.max_key_length
        if not values:
            return problem("missing", max_len) if opts.required else None
        try:
            return parse_key(values, max_len, opts.name)
        except IdempotencyKeyError:
            return problem("invalid", max_len)

    def _refused(self, error: IdempotencyError) -> Reply:
        """The answer to a claim refused with one of :data:`REFUSED`: 409, 422 or 503."""
        max_len = self._opts.guard.max_key_length
        if isinstance(error, IdempotencyConflictError):
            return problem("conflict", max_len, error.retry_after)
        if isinstance(error, IdempotencyKeyMismatchError):
            return problem("mismatch", max_len)
        return problem("unavailable", max_len)

    def _replay(self, entry: Completed, key: str) -> Reply:
        """The stored response, marked replayed; 503 when what is stored is not one."""
        try:
            status, kept, body = decode_response(entry.payload)
        except ValueError:
            return problem("unavailable", self._opts.guard.max_key_length)
        self._guard.replayed(self._scope, key, None)
        return status, replay_headers(kept, body), body

    def _outcome(
        self, status: int | None, headers: Iterable[tuple[str, str]], body: bytes
    ) -> tuple[bytes | None, str]:
        """What to settle the ticket with: the stored response, or ``None`` and why not.

        ``status`` is ``None`` when the app did not complete a response.
        """
        opts = self._opts
        if status is None or not opts.store_status(status):
            return None, "not_stored"
        return encode_response(status, kept_headers(headers, opts.replay_headers), body), ""


def failure_reason(error: BaseException) -> str:
    """Why a key is released when the app raised ``error``, as the guard says it.

    An exception is an ``unknown_failure``; anything else (cancellation,
    ``KeyboardInterrupt``, ``SystemExit``) means the request did not finish: ``cancelled``.
    """
    return "unknown_failure" if isinstance(error, Exception) else "cancelled"


def parse_key(values: list[str], max_length: int, policy: str) -> str:
    """The key from the header's values; one value, optionally a quoted sf-string."""
    if len(values) != 1:
        raise IdempotencyKeyError("expected exactly one Idempotency-Key header", policy=policy)
    raw = values[0].strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        raw = raw[1:-1]
    return check_key(raw, max_length, policy)


def authorization_scope(authorization: str | None) -> str | None:
    """The default scope: a hash of the Authorization header (``None`` without one)."""
    if not authorization:
        return None
    return hashlib.sha256(authorization.encode("latin-1")).hexdigest()


def request_fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """SHA-256 of the method, path, query string and body; only the hash is stored."""
    h = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogateescape"), query.encode("latin-1")):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    h.update(body)
    return h.hexdigest()


def encode_response(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    return json.dumps(
        {
            "v": _FORMAT,
            "status": status,
            "headers": [[k, v] for k, v in headers],
            "body": base64.b64encode(body).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode()


def decode_response(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """The stored ``(status, headers, body)``; ``ValueError`` if it is not one."""
    try:
        doc = json.loads(data)
        if doc.get("v") != _FORMAT:
            raise ValueError("unknown format")
        headers = [(str(k), str(v)) for k, v in doc["headers"]]
        return int(doc["status"]), headers, base64.b64decode(doc["body"])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError("not a stored response") from exc


def kept_headers(
    headers: Iterable[tuple[str, str]], allowed: frozenset[str]
) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers if k.lower() in allowed]


def replay_headers(headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
    return [*headers, ("content-length", str(len(body))), (REPLAYED_HEADER, "true")]


def problem(
    kind: str, max_key_length: int, retry_after: float | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` of one of the middleware's own answers."""
    status, title, detail = PROBLEMS[kind]
    body = json.dumps(
        {
            "type": "about:blank",
            "title": title,
            "status": status,
            "detail": detail.format(max=max_key_length),
        },
        separators=(",", ":"),
    ).encode()
    headers = [("content-type", "application/problem+json"), ("content-length", str(len(body)))]
    if retry_after is not None:
        headers.append(("retry-after", str(max(1, math.ceil(retry_after)))))
    return status, headers, body


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"
