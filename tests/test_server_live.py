"""The server middleware under real servers on 127.0.0.1: uvicorn (ASGI) and a threaded
wsgiref server (WSGI), with concurrent clients. Loops are bounded; nothing asserts speed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from resilience import Bulkhead, remaining
from resilience.asgi import ResilienceMiddleware
from resilience.wsgi import ResilienceMiddleware as WSGIResilienceMiddleware

WAIT = 10.0
"""The longest any test waits for the servers (a bound, not an expectation)."""


def wait_until(condition: Any, what: str) -> None:
    for _ in range(int(WAIT / 0.005)):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"timed out waiting until {what}")


async def await_until(condition: Any, what: str) -> None:
    for _ in range(int(WAIT / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting until {what}")


# == uvicorn ======================================================================================
class Service:
    """Endpoints held open by a gate the test opens (a threading.Event: another loop)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.inside = 0
        self.seen: list[float | None] = []

    async def held(self) -> None:
        self.inside += 1
        try:
            await await_until(self.gate.is_set, "the gate opens")
        finally:
            self.inside -= 1

    async def work(self, request: Request) -> PlainTextResponse:
        self.seen.append(remaining())
        await self.held()
        return PlainTextResponse("done")

    async def stream(self, request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first\n"
            await self.held()
            yield b"second\n"

        return StreamingResponse(body(), media_type="text/plain")

    async def sleepy(self, request: Request) -> PlainTextResponse:
        await asyncio.sleep(WAIT)  # cut short by the request's deadline
        return PlainTextResponse("woke up")


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="critical", lifespan="off", http="h11", ws="none")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, "uvicorn has started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


@pytest.fixture
def live() -> Iterator[tuple[str, Service, Bulkhead]]:
    service = Service()
    bulkhead = Bulkhead(3, name="live")
    app = Starlette(
        routes=[
            Route("/work", service.work),
            Route("/stream", service.stream),
            Route("/sleepy", service.sleepy),
        ],
        middleware=[
            Middleware(
                ResilienceMiddleware,
                bulkhead=bulkhead,
                timeout=WAIT,
                timeout_header="X-Request-Timeout",
            )
        ],
    )
    try:
        with uvicorn_server(app) as url:
            yield url, service, bulkhead
    finally:
        service.gate.set()


async def test_uvicorn_sheds_what_exceeds_max_concurrent(
    live: tuple[str, Service, Bulkhead],
) -> None:
    url, service, bulkhead = live
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=url, timeout=WAIT, limits=limits) as c:
        tasks = [asyncio.create_task(c.get("/work")) for _ in range(8)]
        # Three requests hold the three permits at the gate; the five others are shed.
        await await_until(lambda: sum(t.done() for t in tasks) == 5, "five requests are shed")
        assert service.inside == 3
        assert bulkhead.in_flight == 3
        shed = [t.result() for t in tasks if t.done()]
        service.gate.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in shed] == [503] * 5
    assert all(r.json() == {"error": "overloaded", "retry_after": 1} for r in shed)
    assert all(r.headers["retry-after"] == "1" for r in shed)
    assert sorted(r.status_code for r in responses) == [200] * 3 + [503] * 5
    assert all(0 < s <= WAIT for s in service.seen if s is not None)
    assert len(service.seen) == 3
    await await_until(lambda: bulkhead.in_flight == 0, "every permit is back")


async def test_uvicorn_a_client_gone_mid_stream_gives_its_permit_back(
    live: tuple[str, Service, Bulkhead],
) -> None:
    url, service, bulkhead = live
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as c:
        async with c.stream("GET", "/stream") as r:
            async for chunk in r.aiter_raw():
                assert chunk.startswith(b"first")
                break
            assert bulkhead.in_flight == 1
        # Leaving the block unread closes the connection: the server sees a disconnect.
    await await_until(lambda: bulkhead.in_flight == 0, "the permit is back")
    assert not service.gate.is_set()


async def test_uvicorn_the_deadline_answers_504_or_closes_the_connection(
    live: tuple[str, Service, Bulkhead],
) -> None:
    url, _, bulkhead = live
    short = {"X-Request-Timeout": "0.2"}
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as c:
        late = await c.get("/sleepy", headers=short)
        assert (late.status_code, late.json()) == (504, {"error": "timeout"})
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/stream", headers=short)  # started, then cut: no complete body
    await await_until(lambda: bulkhead.in_flight == 0, "every permit is back")


# == a threaded WSGI server =======================================================================
class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = False
    block_on_close = True


class WSGIService:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.inside = 0
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/work":
            with self.lock:
                self.inside += 1
            try:
                assert self.gate.wait(WAIT)
            finally:
                with self.lock:
                    self.inside -= 1
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
            return [b"done"]
        if path == "/late":
            threading.Event().wait(0.3)  # past the 0.1 s deadline, then returns
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"too late"]
        # /trickle: a body that outlives the deadline after it has started
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
        return self.trickle()

    def trickle(self) -> Iterator[bytes]:
        yield b"first "
        threading.Event().wait(0.3)
        yield b"second"


@pytest.fixture
def wsgi_live() -> Iterator[tuple[str, WSGIService, Bulkhead]]:
    service = WSGIService()
    bulkhead = Bulkhead(2, name="wsgi-live")
    app = WSGIResilienceMiddleware(
        service, bulkhead=bulkhead, timeout=WAIT, timeout_header="X-Request-Timeout"
    )
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", service, bulkhead
    finally:
        service.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def test_wsgi_server_sheds_what_exceeds_max_concurrent(
    wsgi_live: tuple[str, WSGIService, Bulkhead],
) -> None:
    url, service, bulkhead = wsgi_live
    with httpx.Client(base_url=url, timeout=WAIT) as c, ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(c.get, "/work") for _ in range(5)]
        wait_until(lambda: sum(f.done() for f in futures) == 3, "three requests are shed")
        assert service.inside == 2
        assert bulkhead.in_flight == 2
        shed = [f.result() for f in futures if f.done()]
        service.gate.set()
        responses = [f.result() for f in futures]
    assert [(r.status_code, r.json()) for r in shed] == [
        (503, {"error": "overloaded", "retry_after": 1})
    ] * 3
    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503]
    wait_until(lambda: bulkhead.in_flight == 0, "every permit is back")


def test_wsgi_server_the_deadline_answers_504_or_cuts_the_body(
    wsgi_live: tuple[str, WSGIService, Bulkhead],
) -> None:
    url, _, bulkhead = wsgi_live
    short = {"X-Request-Timeout": "0.1"}
    with httpx.Client(base_url=url, timeout=WAIT) as c:
        late = c.get("/late", headers=short)
        assert (late.status_code, late.json()) == (504, {"error": "timeout"})
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/trickle", headers=short)  # 6 of the 12 bytes it announced
        whole = c.get("/trickle")
        assert (whole.status_code, whole.text) == (200, "first second")
    wait_until(lambda: bulkhead.in_flight == 0, "every permit is back")
