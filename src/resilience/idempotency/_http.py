"""What the ASGI and WSGI middleware share: options, fingerprints, stored responses,
and the error answers.

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
from http import HTTPStatus
from typing import Any, Final

from resilience._core.strategy import Scope

from ._guard import GuardOptions, check_key, guard_options
from .errors import IdempotencyKeyError

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


def http_options(
    *,
    store: object,
    methods: Iterable[str],
    header: str,
    required: bool,
    scope: object,
    ttl: object,
    lease: object,
    heartbeat: object,
    wait: object,
    poll_interval: object,
    store_status: object,
    replay_headers: Iterable[str],
    on_store_error: object,
    max_key_length: object,
    name: object,
    clock: object,
) -> HttpOptions:
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
        raise TypeError(f"store_status must be a function of the status code, got {store_status!r}")
    if isinstance(replay_headers, str) or not all(isinstance(h, str) for h in replay_headers):
        raise TypeError(
            f"replay_headers must be an iterable of header names, got {replay_headers!r}"
        )
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    return HttpOptions(
        guard=guard,
        methods=frozenset(m.upper() for m in methods),
        header=header.lower(),
        required=required,
        scope=scope,
        store_status=store_status,
        replay_headers=frozenset(h.lower() for h in replay_headers),
        name=name,
    )


def event_scope(opts: HttpOptions) -> Scope:
    return Scope(opts.name, "idempotency")


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
