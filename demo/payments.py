"""The last scene: a charge whose answer is lost on the way back.

:class:`PaymentsService` is a small WSGI app on loopback: ``POST /charges`` with
``{"amount": 42}`` charges the amount and answers ``201``; ``GET /charges`` lists every
charge made. It runs behind :class:`resilience.idempotency.wsgi.IdempotencyMiddleware`
(a ``MemoryStore``; requests without a key pass unguarded), and behind a scripted
network fault: :meth:`PaymentsService.lose_answers` makes the next answers vanish after
the handler ran and the middleware stored the response, by cutting the connection before
a byte of it is sent. The client sees ``httpx.RemoteProtocolError`` and cannot tell
whether the card was charged.

:func:`run_scene` sends "charge 42" twice: bare (httpx, no key, no retry), then through
:class:`resilience.httpx.ResilientTransport` with ``add_idempotency_key=True``. How often
the charge ran is the service's own count; the attempts are the transport's
``RequestAttempted`` events.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

import resilience
from resilience import Backoff, Event
from resilience.httpx import RequestAttempted, ResilientTransport
from resilience.idempotency import MemoryStore
from resilience.idempotency.wsgi import IdempotencyMiddleware

from .wsgi_server import LoopbackWSGIServer, WSGIApp

__all__ = ["CLIENT_POLICY", "PaymentsService", "Attempt", "ChargeResult", "run_scene"]

CLIENT_POLICY = "payments-client"
"""The resilient transport's policy name (its events and metrics)."""
SERVER_POLICY = "payments"
"""The idempotency middleware's policy name."""


def _json(start_response: Callable[..., Any], status: str, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


class PaymentsService:
    """``/charges`` behind the idempotency middleware and a network that can lose answers."""

    def __init__(self, *, port: int = 0) -> None:
        self._lock = threading.Lock()
        self.charges: list[dict[str, Any]] = []
        """Every execution of the charge handler, in order."""
        self.answers_lost = 0
        self._to_lose = 0
        guarded = IdempotencyMiddleware(
            self._app, store=MemoryStore(), required=False, name=SERVER_POLICY
        )
        self._server = LoopbackWSGIServer(self._lossy(guarded), port=port)

    @property
    def url(self) -> str:
        return self._server.url + "charges"

    def lose_answers(self, n: int = 1) -> None:
        """Cut the connection of the next ``n`` POSTs after their handler ran."""
        with self._lock:
            self._to_lose = n

    @property
    def executions(self) -> int:
        """How many times the charge handler ran."""
        with self._lock:
            return len(self.charges)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "").rstrip("/") != "/charges":
            return _json(start_response, "404 Not Found", {"error": "not found"})
        if environ["REQUEST_METHOD"] == "GET":
            with self._lock:
                return _json(start_response, "200 OK", {"charges": list(self.charges)})
        if environ["REQUEST_METHOD"] != "POST":
            return _json(start_response, "405 Method Not Allowed", {"error": "POST or GET"})
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            amount = json.loads(environ["wsgi.input"].read(length))["amount"]
        except (ValueError, KeyError, TypeError):
            return _json(start_response, "400 Bad Request", {"error": 'send {"amount": 42}'})
        with self._lock:
            charge = {
                "charge": f"ch_{len(self.charges) + 1}",
                "amount": amount,
                "idempotency_key": environ.get("HTTP_IDEMPOTENCY_KEY"),
            }
            self.charges.append(charge)
        return _json(start_response, "201 Created", {k: charge[k] for k in ("charge", "amount")})

    def _take_loss(self) -> bool:
        with self._lock:
            if self._to_lose <= 0:
                return False
            self._to_lose -= 1
            self.answers_lost += 1
            return True

    def _lossy(self, app: WSGIApp) -> WSGIApp:
        def network(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ["REQUEST_METHOD"] != "POST" or not self._take_loss():
                return app(environ, start_response)
            held: list[Any] = []

            def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                held[:] = [status, headers]
                return lambda data: None

            body = b"".join(app(environ, hold))  # the charge runs; its answer is stored
            # The answer is lost: the client sees the connection close with no response.
            # wsgiref then fails to write it and treats that as a client that went away.
            environ["demo.connection"].shutdown(socket.SHUT_RDWR)
            start_response(*held)
            return [body]

        return network

    def start(self) -> PaymentsService:
        self._server.start()
        return self

    def close(self) -> None:
        self._server.close()

    def __enter__(self) -> PaymentsService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt as the transport reported it: a status or an error type."""

    status: int | None
    error: str | None

    def __str__(self) -> str:
        return str(self.status) if self.error is None else self.error


@dataclass(slots=True)
class ChargeResult:
    """What one client saw, and what the service did, for one "charge 42"."""

    client: str
    key: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    status: int | None = None
    body: dict[str, Any] | None = None
    replayed: bool = False
    error: str | None = None
    """What the call raised, as ``Type: message``."""
    error_type: str | None = None
    executions: int = 0
    """Times the charge handler ran for this request (the service's count)."""
    answers_lost: int = 0


class _Attempts:
    def __init__(self, into: ChargeResult) -> None:
        self.into = into

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestAttempted):
            error = None if event.error is None else type(event.error).__name__
            self.into.attempts.append(Attempt(event.status, error))


def _charge(
    service: PaymentsService, client: httpx.Client, result: ChargeResult, amount: int
) -> ChargeResult:
    before, lost = service.executions, service.answers_lost
    service.lose_answers(1)
    try:
        response = client.post(service.url, json={"amount": amount})
    except httpx.HTTPError as exc:
        result.error_type = type(exc).__name__
        result.error = f"{result.error_type}: {exc}"
    else:
        result.key = response.request.headers.get("Idempotency-Key")
        result.status = response.status_code
        result.body = response.json()
        result.replayed = response.headers.get("Idempotent-Replayed") == "true"
    finally:
        service.lose_answers(0)
    result.executions = service.executions - before
    result.answers_lost = service.answers_lost - lost
    return result


def run_scene(service: PaymentsService, amount: int = 42) -> tuple[ChargeResult, ChargeResult]:
    """ "Charge ``amount``" with the first answer lost: bare, then with a key and retries."""
    with httpx.Client(timeout=5.0) as client:
        bare = _charge(service, client, ChargeResult("bare httpx"), amount)
    # No retry: what the call raised or returned is its one attempt.
    bare.attempts.append(Attempt(bare.status, bare.error_type))

    transport = ResilientTransport(
        attempts=3, backoff=Backoff.constant(0.05), add_idempotency_key=True, name=CLIENT_POLICY
    )
    protected = ChargeResult("ResilientTransport(add_idempotency_key=True)")
    listener = _Attempts(protected)
    resilience.subscribe(listener, policy=CLIENT_POLICY)
    try:
        with httpx.Client(transport=transport, timeout=5.0) as client:
            _charge(service, client, protected, amount)
    finally:
        resilience.unsubscribe(listener, policy=CLIENT_POLICY)
    return bare, protected
