"""The ASGI and WSGI middleware (IETF Idempotency-Key), through httpx's transports and
once under a real uvicorn server."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from resilience.idempotency import (
    IdempotencyConflict,
    IdempotencyReleased,
    IdempotencyReplayed,
    IdempotencyStoreFailed,
    MemoryStore,
    SQLiteStore,
)
from resilience.idempotency.asgi import IdempotencyMiddleware
from resilience.idempotency.wsgi import IdempotencyMiddleware as WSGIIdempotencyMiddleware
from resilience.testing import CapturingListener

PROBLEM_KEYS = {"type", "title", "status", "detail"}


class Orders:
    """A tiny order service: every POST creates an order; counts its executions."""

    def __init__(self) -> None:
        self.created = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail_next = 0

    async def create(self, request: Request) -> JSONResponse | PlainTextResponse:
        body = await request.json()
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            return PlainTextResponse("upstream down", status_code=503)
        self.created += 1
        return JSONResponse(
            {"order": self.created, "item": body["item"]},
            status_code=201,
            headers={"location": f"/orders/{self.created}", "x-internal-trace": "secret"},
        )

    async def read(self, request: Request) -> JSONResponse:
        return JSONResponse({"created": self.created})

    def app(self, **middleware: Any) -> Any:
        app = Starlette(
            routes=[Route("/orders", self.create, methods=["POST"]), Route("/orders", self.read)]
        )
        app.add_middleware(IdempotencyMiddleware, **middleware)
        return app


@pytest.fixture
def orders() -> Orders:
    return Orders()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = response.json()
    assert set(doc) == PROBLEM_KEYS
    assert doc["status"] == status
    return doc


async def test_first_request_runs_and_the_retry_is_replayed(
    orders: Orders, events: CapturingListener
) -> None:
    async with client(orders.app(store=MemoryStore())) as c:
        first = await c.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": "a1"})
        again = await c.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": "a1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"order": 1, "item": "book"}
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == "/orders/1"
    assert again.headers["content-type"] == "application/json"
    assert "x-internal-trace" not in again.headers  # not on the allow-list
    assert orders.created == 1
    assert [e.policy for e in events.of_type(IdempotencyReplayed)] == ["http"]


async def test_missing_key_is_400_and_the_app_does_not_run(orders: Orders) -> None:
    async with client(orders.app(store=MemoryStore())) as c:
        response = await c.post("/orders", json={"item": "book"})
    doc = assert_problem(response, 400)
    assert doc["title"] == "Idempotency-Key is missing"
    assert orders.created == 0


async def test_key_can_be_optional(orders: Orders) -> None:
    async with client(orders.app(store=MemoryStore(), required=False)) as c:
        for _ in range(2):
            assert (await c.post("/orders", json={"item": "x"})).status_code == 201
    assert orders.created == 2


@pytest.mark.parametrize(
    "key",
    ["x" * 256, "", "caf\u00e9".encode().decode("latin-1")],
    ids=["too-long", "empty", "not-ascii"],
)
async def test_invalid_key_is_400(orders: Orders, key: str) -> None:
    async with client(orders.app(store=MemoryStore())) as c:
        response = await c.post(
            "/orders", json={"item": "x"}, headers={"Idempotency-Key": key.encode("latin-1")}
        )
    doc = assert_problem(response, 400)
    assert doc["detail"] == (
        "The Idempotency-Key header must be one value of 1 to 255 printable ASCII characters."
    )
    assert orders.created == 0


async def test_quoted_structured_field_key_is_accepted(orders: Orders) -> None:
    async with client(orders.app(store=MemoryStore())) as c:
        a = await c.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": '"k-1"'})
        b = await c.post("/orders", json={"item": "x"}, headers={"Idempotency-Key": "k-1"})
    assert a.status_code == b.status_code == 201
    assert b.headers["idempotent-replayed"] == "true"


async def test_same_key_different_body_is_422(orders: Orders) -> None:
    async with client(orders.app(store=MemoryStore())) as c:
        await c.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": "k"})
        response = await c.post("/orders", json={"item": "pen"}, headers={"Idempotency-Key": "k"})
    doc = assert_problem(response, 422)
    assert doc["title"] == "Idempotency-Key reused"
    assert "book" not in response.text
    assert "pen" not in response.text
    assert orders.created == 1


async def test_request_in_flight_is_409_with_retry_after(
    orders: Orders, events: CapturingListener
) -> None:
    orders.gate = asyncio.Event()
    async with client(orders.app(store=MemoryStore(), lease=20)) as c:
        headers = {"Idempotency-Key": "slow"}
        first = asyncio.create_task(c.post("/orders", json={"item": "x"}, headers=headers))
        await orders.entered.wait()  # the first request holds the key and is running
        second = await c.post("/orders", json={"item": "x"}, headers=headers)
        assert_problem(second, 409)
        assert 19 <= int(second.headers["retry-after"]) <= 20
        orders.gate.set()
        assert (await first).status_code == 201
    assert orders.created == 1
    assert len(events.of_type(IdempotencyConflict)) == 1


async def test_waiting_request_gets_the_replay(orders: Orders) -> None:
    orders.gate = asyncio.Event()
    async with client(orders.app(store=MemoryStore(), wait=5, poll_interval=0.01)) as c:
        headers = {"Idempotency-Key": "w"}
        first = asyncio.create_task(c.post("/orders", json={"item": "x"}, headers=headers))
        second = asyncio.create_task(c.post("/orders", json={"item": "x"}, headers=headers))
        await asyncio.sleep(0.05)
        orders.gate.set()
        a, b = await first, await second
    assert a.status_code == b.status_code == 201
    assert a.json() == b.json()
    assert orders.created == 1


async def test_server_errors_are_not_stored(orders: Orders, events: CapturingListener) -> None:
    orders.fail_next = 1
    async with client(orders.app(store=MemoryStore())) as c:
        headers = {"Idempotency-Key": "k"}
        assert (await c.post("/orders", json={"item": "x"}, headers=headers)).status_code == 503
        assert (await c.post("/orders", json={"item": "x"}, headers=headers)).status_code == 201
    assert [e.reason for e in events.of_type(IdempotencyReleased)] == ["not_stored"]


async def test_safe_methods_pass_through(orders: Orders) -> None:
    async with client(orders.app(store=MemoryStore())) as c:
        assert (await c.get("/orders")).json() == {"created": 0}


async def test_keys_are_scoped_to_the_credentials(orders: Orders) -> None:
    async with client(orders.app(store=MemoryStore())) as c:
        alice = {"Idempotency-Key": "k", "Authorization": "Bearer alice"}
        mallory = {"Idempotency-Key": "k", "Authorization": "Bearer mallory"}
        a = await c.post("/orders", json={"item": "x"}, headers=alice)
        m = await c.post("/orders", json={"item": "x"}, headers=mallory)
    assert a.json()["order"] == 1
    assert m.json()["order"] == 2  # mallory never sees alice's stored response
    assert "idempotent-replayed" not in m.headers


async def test_custom_scope_function(orders: Orders) -> None:
    def tenant(scope: Any) -> str | None:
        return dict(scope["headers"]).get(b"x-tenant", b"").decode() or None

    async with client(orders.app(store=MemoryStore(), scope=tenant)) as c:
        for t in ("t1", "t2", "t1"):
            headers = {"Idempotency-Key": "k", "X-Tenant": t}
            await c.post("/orders", json={"item": "x"}, headers=headers)
    assert orders.created == 2


async def test_store_outage_is_503_or_passes_through(
    orders: Orders, tmp_path: Path, events: CapturingListener
) -> None:
    store = SQLiteStore(tmp_path / "down.sqlite3")
    store.close()
    headers = {"Idempotency-Key": "k"}
    async with client(orders.app(store=store)) as c:
        doc = assert_problem(await c.post("/orders", json={"item": "x"}, headers=headers), 503)
    assert "sqlite" not in json.dumps(doc).lower()
    async with client(orders.app(store=store, on_store_error="fail_open")) as c:
        assert (await c.post("/orders", json={"item": "x"}, headers=headers)).status_code == 201
    assert orders.created == 1
    assert [e.fail_open for e in events.of_type(IdempotencyStoreFailed)] == [False, True]


async def test_app_exception_releases_the_key() -> None:
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guarded = IdempotencyMiddleware(app, store=MemoryStore())
    transport = httpx.ASGITransport(app=guarded, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        headers = {"Idempotency-Key": "k"}
        assert (await c.post("/", content=b"x", headers=headers)).status_code == 500
        assert (await c.post("/", content=b"x", headers=headers)).text == "ok"
        assert (await c.post("/", content=b"x", headers=headers)).text == "ok"
    assert calls == 2


# -- WSGI ----------------------------------------------------------------------------------
class WsgiOrders:
    def __init__(self) -> None:
        self.created = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [str(self.created).encode()]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        item = json.loads(environ["wsgi.input"].read(length))["item"]
        self.created += 1
        body = json.dumps({"order": self.created, "item": item}).encode()
        start_response(
            "201 Created",
            [("Content-Type", "application/json"), ("Location", f"/orders/{self.created}")],
        )
        return [body]


def test_wsgi_replay_mismatch_and_missing_key() -> None:
    orders = WsgiOrders()
    app = WSGIIdempotencyMiddleware(orders, store=MemoryStore())
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://test") as c:
        headers = {"Idempotency-Key": "w1"}
        first = c.post("/orders", json={"item": "book"}, headers=headers)
        again = c.post("/orders", json={"item": "book"}, headers=headers)
        other = c.post("/orders", json={"item": "pen"}, headers=headers)
        missing = c.post("/orders", json={"item": "book"})
        long_key = c.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": "x" * 300})
        read = c.get("/orders")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"order": 1, "item": "book"}
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == "/orders/1"
    assert_problem(other, 422)
    assert_problem(missing, 400)
    assert_problem(long_key, 400)
    assert read.text == "1"
    assert orders.created == 1


def test_wsgi_in_flight_is_409(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    created = 0

    def slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal created
        created += 1
        entered.set()
        release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    with SQLiteStore(tmp_path / "wsgi.sqlite3") as store:
        app = WSGIIdempotencyMiddleware(slow, store=store, lease=30)
        transport = httpx.WSGITransport(app=app)
        results: list[httpx.Response] = []
        with httpx.Client(transport=transport, base_url="http://test") as c:
            t = threading.Thread(
                target=lambda: results.append(
                    c.post("/", content=b"x", headers={"Idempotency-Key": "k"})
                )
            )
            t.start()
            assert entered.wait(10)
            conflict = c.post("/", content=b"x", headers={"Idempotency-Key": "k"})
            release.set()
            t.join(10)
            replay = c.post("/", content=b"x", headers={"Idempotency-Key": "k"})
    assert_problem(conflict, 409)
    assert int(conflict.headers["retry-after"]) >= 29
    assert results[0].text == replay.text == "done"
    assert replay.headers["idempotent-replayed"] == "true"
    assert created == 1


def test_wsgi_app_exception_releases_the_key() -> None:
    calls = 0

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        start_response("200 OK", [])
        return [b"ok"]

    guarded = WSGIIdempotencyMiddleware(app, store=MemoryStore())
    with httpx.Client(transport=httpx.WSGITransport(app=guarded), base_url="http://t") as c:
        with pytest.raises(RuntimeError):
            c.post("/", content=b"x", headers={"Idempotency-Key": "k"})
        assert c.post("/", content=b"x", headers={"Idempotency-Key": "k"}).text == "ok"
    assert calls == 2


class _Abort(BaseException):
    """Not an ``Exception``: the request did not finish, like ``KeyboardInterrupt``."""


@pytest.mark.parametrize(
    ("error", "reason"), [(RuntimeError, "unknown_failure"), (_Abort, "cancelled")]
)
async def test_asgi_and_wsgi_release_the_key_of_a_failed_request_for_the_same_reason(
    error: type[BaseException], reason: str, events: CapturingListener
) -> None:
    async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
        raise error("boom")

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error("boom")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"x", "more_body": False}

    async def send(message: Any) -> None:
        pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k")],
    }
    with pytest.raises(error):
        await IdempotencyMiddleware(asgi_app, store=MemoryStore())(scope, receive, send)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "HTTP_IDEMPOTENCY_KEY": "k",
        "CONTENT_LENGTH": "1",
        "wsgi.input": io.BytesIO(b"x"),
    }
    with pytest.raises(error):
        WSGIIdempotencyMiddleware(wsgi_app, store=MemoryStore())(environ, lambda *a: None)
    assert [e.reason for e in events.of_type(IdempotencyReleased)] == [reason, reason]


def test_middleware_options_are_validated() -> None:
    with pytest.raises(TypeError, match="store must be"):
        IdempotencyMiddleware(Orders().app, store=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="methods must be"):
        IdempotencyMiddleware(Orders().app, store=MemoryStore(), methods="POST")
    with pytest.raises(ValueError, match="ttl must be > 0"):
        WSGIIdempotencyMiddleware(WsgiOrders(), store=MemoryStore(), ttl=0)


# -- a real server -------------------------------------------------------------------------
@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[tuple[str, Orders]]:
    orders = Orders()
    store = SQLiteStore(tmp_path / "live.sqlite3")
    app = orders.app(store=store)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}", orders
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        store.close()


async def test_under_a_real_uvicorn_server(live_server: tuple[str, Orders]) -> None:
    url, orders = live_server
    headers = {"Idempotency-Key": "live-1"}
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        burst = await asyncio.gather(
            *(c.post("/orders", json={"item": "lamp"}, headers=headers) for _ in range(10))
        )
        replay = None
        for _ in range(100):  # bounded: retry the conflicts until the outcome is stored
            replay = await c.post("/orders", json={"item": "lamp"}, headers=headers)
            if replay.status_code != 409:
                break
            await asyncio.sleep(0.02)
        mismatch = await c.post("/orders", json={"item": "sofa"}, headers=headers)
    assert {r.status_code for r in burst} <= {201, 409}
    assert (
        sum(r.headers.get("idempotent-replayed") != "true" and r.status_code == 201 for r in burst)
        == 1
    )
    assert replay is not None
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == {"order": 1, "item": "lamp"}
    assert_problem(mismatch, 422)
    assert orders.created == 1
