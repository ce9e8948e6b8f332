"""A JSON status view of every named policy, and apps that serve it.

Like Spring Boot's actuator ``circuitbreakers`` endpoint: :func:`status` reads the
``snapshot()`` of every decorated policy (breaker state and rates, bulkhead usage,
limiter permits, retry budget, time since the last transition …) at the moment it is
called, and adds the most recent events when :func:`record_events` is on. The result is
plain JSON data (``json.dumps`` works on it, with no ``NaN`` or ``Infinity``).

::

    import resilience
    from resilience import actuator

    actuator.record_events(limit=100)       # keep the last 100 events
    app.mount("/status", actuator.asgi_app())

Events are rendered to JSON when they happen (only failure paths publish events), so the
buffer holds no exceptions, tracebacks or results alive.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import timedelta
from typing import Any

from ._core.clock import SYSTEM_CLOCK
from ._core.events import EVENTS, Event
from ._core.telemetry import POLICIES, error_type

__all__ = [
    "EventLog",
    "asgi_app",
    "json_safe",
    "record_events",
    "render_event",
    "status",
    "stop_recording",
    "wsgi_app",
]

_TEXT_LIMIT = 200


def _text(value: str) -> str:
    return value if len(value) <= _TEXT_LIMIT else value[: _TEXT_LIMIT - 1] + "…"


def json_safe(value: Any, _depth: int = 0) -> Any:
    """``value`` as plain JSON data: non-finite floats become ``None``, enums their value,
    exceptions ``{"type", "message"}``, durations seconds, anything else a short ``repr``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return json_safe(value.value, _depth + 1)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, BaseException):
        try:
            message = _text(str(value))
        except Exception:
            message = "<unprintable>"
        return {"type": error_type(value), "message": message}
    if _depth > 8:
        return _text(repr(value))
    if isinstance(value, dict):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, deque)):
        return [json_safe(v, _depth + 1) for v in value]
    try:
        return _text(repr(value))
    except Exception:
        return f"<{type(value).__name__}>"


def render_event(event: Event) -> dict[str, Any]:
    """One event as JSON data: its type, severity, source and every field."""
    out: dict[str, Any] = {
        "event": type(event).__name__,
        "severity": event.severity.name.lower(),
        "source": event.source,
    }
    for f in dataclasses.fields(event):
        out[f.name] = json_safe(getattr(event, f.name))
    return out


class EventLog:
    """A listener keeping the last ``limit`` events, rendered to JSON data on arrival."""

    def __init__(self, limit: int = 100) -> None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        self.limit = limit
        self._events: deque[dict[str, Any]] = deque(maxlen=limit)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        rendered = render_event(event)
        with self._lock:
            rendered["seq"] = next(self._seq)
            self._events.append(rendered)

    def events(self) -> list[dict[str, Any]]:
        """The kept events, oldest first; ``seq`` numbers them since recording began."""
        with self._lock:
            return list(self._events)


_lock = threading.Lock()
_log: EventLog | None = None


def record_events(limit: int = 100) -> EventLog:
    """Keep the last ``limit`` events of every policy for :func:`status` (replaces any log)."""
    global _log
    log = EventLog(limit)
    with _lock:
        if _log is not None:
            EVENTS.unsubscribe(_log)
        _log = log
        EVENTS.subscribe(log)
    return log


def stop_recording() -> None:
    """Stop keeping events; :func:`status` then reports none."""
    global _log
    with _lock:
        if _log is not None:
            EVENTS.unsubscribe(_log)
            _log = None


def _snapshot(policy: str, strategy: Any) -> dict[str, Any]:
    try:
        snap = json_safe(strategy.snapshot())
    except Exception as exc:
        return {"policy": policy, "kind": strategy.kind, "error": error_type(exc)}
    return {"policy": policy, **snap} if isinstance(snap, dict) else {"policy": policy}


def status(*, events: bool = True) -> dict[str, Any]:
    """Every named policy's snapshot, and the recorded events (JSON data).

    ``policies`` lists one entry per registered strategy, sorted by policy name, each its
    ``snapshot()`` plus ``policy``. ``events`` holds the events kept by
    :func:`record_events` (empty while it is off); ``now`` is the system clock's monotonic
    time, to compare with the ``time`` of events published on that clock, and
    ``wall_time`` the wall clock's at the same moment (seconds since the epoch): an
    event happened at ``wall_time - (now - event["time"])``, a breaker's last transition
    at ``wall_time - last_transition_age``.
    """
    log = _log
    return {
        "policies": [_snapshot(name, s) for name, s in POLICIES.items()],
        "events": log.events() if (events and log is not None) else [],
        "recording_events": log is not None,
        "now": SYSTEM_CLOCK.now(),
        "wall_time": time.time(),
    }


def _body() -> bytes:
    return json.dumps(status(), allow_nan=False).encode()


ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], ASGIReceive, ASGISend], Awaitable[None]]


def asgi_app() -> ASGIApp:
    """An ASGI app answering ``GET`` with :func:`status` as ``application/json``."""

    async def app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            code, body = 405, b'{"error": "method not allowed"}'
        else:
            code, body = 200, _body()
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    return app


StartResponse = Callable[[str, list[tuple[str, str]]], object]


def wsgi_app() -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app answering ``GET`` with :func:`status` as ``application/json``."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            code, body = "405 Method Not Allowed", b'{"error": "method not allowed"}'
        else:
            code, body = "200 OK", _body()
        start_response(
            code,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [b"" if method == "HEAD" else body]

    return app
