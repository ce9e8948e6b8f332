"""The server middleware (resilience.asgi / resilience.wsgi) through httpx's ASGI and WSGI
transports: exact statuses, headers and bodies; permits back to zero on every path; the
deadline the app sees; and the decision module on its own."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import resilience
import resilience.asgi as rasgi
import resilience.wsgi as rwsgi
from resilience import (
    Bulkhead,
    BulkheadRejected,
    CircuitBreaker,
    CircuitOpenError,
    Keyed,
    RateLimited,
    RateLimiter,
    TimedOut,
    Timeout,
    TimeoutExceededError,
    remaining,
)
from resilience._server import ServerOptions, ServerPolicy, parse_timeout, retry_after_seconds
from resilience.asgi import ResilienceMiddleware
from resilience.testing import CapturingListener, FakeClock
from resilience.wsgi import ResilienceMiddleware as WSGIResilienceMiddleware

JSON_HEADERS = {"content-type": "application/json", "cache-control": "no-store"}


def body_of(response: httpx.Response) -> Any:
    return json.loads(response.content)


def expect(response: httpx.Response, status: int, body: dict[str, Any]) -> None:
    """The exact answer: status, JSON headers, Retry-After iff the body has retry_after."""
    assert response.status_code == status
    assert body_of(response) == body
    for k, v in JSON_HEADERS.items():
        assert response.headers[k] == v
    assert response.headers["content-length"] == str(len(response.content))
    if "retry_after" in body:
        assert response.headers["retry-after"] == str(body["retry_after"])
    else:
        assert "retry-after" not in response.headers


# == the decision module ==========================================================================
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2.5", 2.5),
        ("10", 10.0),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("0.001", 0.001),
        ("-1", None),
        ("1e3", None),
        ("nan", None),
        ("inf", None),
        ("", None),
        ("1.", None),
        ("soon", None),
        ("1,2", None),
    ],
)
def test_parse_timeout(value: str, seconds: float | None) -> None:
    assert parse_timeout(value) == seconds


@pytest.mark.parametrize(
    ("hint", "seconds"),
    [(None, 7), (0.0, 1), (0.2, 1), (1.0, 1), (1.000001, 2), (2.9, 3), (30.0, 30)],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    hint: float | None, seconds: int
) -> None:
    assert retry_after_seconds(hint, 7) == seconds


def test_retry_after_falls_back_for_a_hint_that_is_not_finite() -> None:
    assert retry_after_seconds(float("inf"), 4) == 4
    assert retry_after_seconds(float("nan"), 4) == 4


@pytest.mark.parametrize(
    ("timeout", "header", "seconds"),
    [
        (10.0, None, 10.0),
        (10.0, "2", 2.0),
        (10.0, "20", 10.0),  # a client cannot extend the server's own limit
        (10.0, "soon", 10.0),  # malformed: ignored
        (None, "3", 3.0),
        (None, None, None),
        (None, "-3", None),
    ],
)
def test_the_request_budget(timeout: float | None, header: str | None, seconds: float) -> None:
    policy = ServerPolicy(ServerOptions(timeout=timeout, timeout_header="X-Request-Timeout"))
    assert policy.seconds(header) == seconds


def test_excluded_paths_are_exact_or_prefixes() -> None:
    policy = ServerPolicy(ServerOptions(exclude=["/health", "/static/*"]))
    assert policy.excluded("/health")
    assert not policy.excluded("/health/deep")
    assert not policy.excluded("/healthz")
    assert policy.excluded("/static/")
    assert policy.excluded("/static/app.js")
    assert not policy.excluded("/static")
    assert not policy.excluded("/api")
    assert not ServerPolicy(ServerOptions()).excluded("/health")


def test_timeouts_accept_a_timedelta() -> None:
    assert ServerOptions(timeout=timedelta(milliseconds=1500)).timeout == 1.5


BAD_OPTIONS = [
    ({"bulkhead": 3}, TypeError, r"bulkhead must be a resilience.Bulkhead or None, got 3"),
    ({"rate_limit": "10/s"}, TypeError, r"rate_limit must be a resilience.RateLimiter .* '10/s'"),
    (
        {"client_key": lambda s: "k"},
        ValueError,
        r"client_key is only used with rate_limit=Keyed\(...\)",
    ),
    (
        {"rate_limit": RateLimiter(5), "client_key": lambda s: "k"},
        ValueError,
        r"client_key is only used with rate_limit=Keyed",
    ),
    (
        {"rate_limit": Keyed(lambda k: RateLimiter(5)), "client_key": "REMOTE_ADDR"},
        TypeError,
        r"client_key must be a callable or None, got 'REMOTE_ADDR'",
    ),
    ({"timeout": 0}, ValueError, r"timeout must be > 0 seconds, got 0"),
    ({"timeout": -1.5}, ValueError, r"timeout must be > 0 seconds, got -1.5"),
    ({"timeout": "5"}, TypeError, r"timeout must be a number of seconds .* got str '5'"),
    ({"timeout_header": "X Timeout"}, ValueError, r"timeout_header must be an HTTP header name"),
    ({"timeout_header": b"X-T"}, ValueError, r"timeout_header must be an HTTP header name"),
    ({"map_circuit_open": 1}, TypeError, r"map_circuit_open must be a bool, got int 1"),
    ({"default_retry_after": 0}, ValueError, r"default_retry_after must be between 1 and 86400"),
    ({"default_retry_after": 1.5}, TypeError, r"default_retry_after must be an int, got float"),
    ({"exclude": "/health"}, TypeError, r"exclude must be an iterable of paths, got '/health'"),
    ({"exclude": ["health"]}, ValueError, r"exclude must hold paths starting with '/'"),
    ({"name": ""}, ValueError, r"name must be a non-empty str or None, got ''"),
    ({"name": None}, TypeError, r"name must be a non-empty str, got None"),
    ({"clock": object()}, TypeError, r"clock must be a Clock"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_OPTIONS)
@pytest.mark.parametrize("middleware", [ResilienceMiddleware, WSGIResilienceMiddleware])
def test_bad_options_name_the_parameter_and_value(
    middleware: Any, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        middleware(lambda *a: None, **kwargs)


@pytest.mark.parametrize("middleware", [ResilienceMiddleware, WSGIResilienceMiddleware])
def test_the_app_must_be_callable(middleware: Any) -> None:
    with pytest.raises(TypeError, match=r"app must be an? (ASGI|WSGI) application"):
        middleware("app")


@pytest.mark.parametrize("module", [rasgi, rwsgi])
def test_all_is_complete(module: types.ModuleType) -> None:
    assert module.__all__ == ["ResilienceMiddleware", "remote_address"]
    own = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and getattr(v, "__module__", None) == module.__name__
        and isinstance(v, (type, types.FunctionType))
    }
    assert own == set(module.__all__)
    for name in module.__all__:
        assert (getattr(module, name).__doc__ or "").strip(), name


# == ASGI =========================================================================================
class Gate:
    """Requests to /slow wait here until the test opens it; counts who got in."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        self.calls = 0

    async def wait_inside(self, n: int) -> None:
        for _ in range(500):
            if self.inside >= n:
                return
            await asyncio.sleep(0.002)
        raise AssertionError(f"only {self.inside} requests got in, expected {n}")


def starlette_app(gate: Gate, seen: dict[str, Any]) -> Starlette:
    async def slow(request: Request) -> PlainTextResponse:
        gate.calls += 1
        gate.inside += 1
        try:
            await gate.open.wait()
        finally:
            gate.inside -= 1
        return PlainTextResponse("done")

    async def fast(request: Request) -> JSONResponse:
        gate.calls += 1
        seen["remaining"] = remaining()
        return JSONResponse({"ok": True})

    def sync_endpoint(request: Request) -> JSONResponse:
        seen["sync_remaining"] = remaining()
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/slow", slow),
            Route("/fast", fast, methods=["GET", "HEAD"]),
            Route("/health", fast),
            Route("/static/app.js", fast),
            Route("/sync", sync_endpoint),
        ]
    )


def asgi_client(app: Any, client: tuple[str, int] = ("127.0.0.1", 123)) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app, client=client), base_url="http://testserver"
    )


async def test_load_is_shed_with_503_overloaded_and_permits_go_back(
    events: CapturingListener,
) -> None:
    gate, seen = Gate(), {}
    bulkhead = Bulkhead(2, name="api")
    app = ResilienceMiddleware(starlette_app(gate, seen), bulkhead=bulkhead)
    async with asgi_client(app) as c:
        held = [asyncio.create_task(c.get("/slow")) for _ in range(2)]
        await gate.wait_inside(2)
        assert bulkhead.in_flight == 2
        shed = [await c.get("/fast") for _ in range(3)]
        gate.open.set()
        done = await asyncio.gather(*held)
    for r in shed:
        expect(r, 503, {"error": "overloaded", "retry_after": 1})
    assert [r.status_code for r in done] == [200, 200]
    assert gate.calls == 2  # the shed requests never reached the app
    assert bulkhead.in_flight == 0
    rejected = events.of_type(BulkheadRejected)
    assert [(e.policy, e.reason) for e in rejected] == [("api", "bulkhead_full")] * 3


async def test_the_overloaded_retry_after_is_configurable() -> None:
    bulkhead = Bulkhead(1)
    app = ResilienceMiddleware(starlette_app(Gate(), {}), bulkhead=bulkhead, default_retry_after=5)
    async with bulkhead, asgi_client(app) as c:
        expect(await c.get("/fast"), 503, {"error": "overloaded", "retry_after": 5})
    assert bulkhead.in_flight == 0


async def test_a_queued_request_waits_for_a_permit(clock: FakeClock) -> None:
    gate = Gate()
    bulkhead = Bulkhead(1, max_queued=1)
    app = ResilienceMiddleware(starlette_app(gate, {}), bulkhead=bulkhead)
    async with asgi_client(app) as c:
        first = asyncio.create_task(c.get("/slow"))
        await gate.wait_inside(1)
        queued = asyncio.create_task(c.get("/fast"))
        for _ in range(500):
            if bulkhead.queued:
                break
            await asyncio.sleep(0.002)
        assert bulkhead.queued == 1
        expect(await c.get("/fast"), 503, {"error": "overloaded", "retry_after": 1})
        gate.open.set()
        assert [(await first).status_code, (await queued).status_code] == [200, 200]
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


async def test_clients_are_rate_limited_one_by_one_with_429(
    clock: FakeClock, events: CapturingListener
) -> None:
    gate, seen = Gate(), {}
    limiters = Keyed(
        lambda client: RateLimiter(2, period=10, burst=1, name="api", clock=clock),
        name="api",
        clock=clock,
    )
    app = ResilienceMiddleware(starlette_app(gate, seen), rate_limit=limiters)
    async with asgi_client(app, ("10.0.0.1", 5000)) as a, asgi_client(app, ("10.0.0.2", 6000)) as b:
        assert [(await a.get("/fast")).status_code for _ in range(2)] == [200, 200]
        expect(await a.get("/fast"), 429, {"error": "rate_limited", "retry_after": 5})
        clock.advance(0.5)  # 4.5 s to go: rounded up
        expect(await a.get("/fast"), 429, {"error": "rate_limited", "retry_after": 5})
        clock.advance(3.6)  # 0.9 s to go: at least 1
        expect(await a.get("/fast"), 429, {"error": "rate_limited", "retry_after": 1})
        assert [(await b.get("/fast")).status_code for _ in range(2)] == [200, 200]
        clock.advance(0.9)
        assert (await a.get("/fast")).status_code == 200
    assert gate.calls == 5
    assert sorted(limiters.snapshot(include_keys=True)["by_key"]) == ["10.0.0.1", "10.0.0.2"]
    limited = events.of_type(RateLimited)
    assert [(e.policy, e.retry_after) for e in limited] == [
        ("api", 5.0),
        ("api", 4.5),
        ("api", 0.9),
    ]


async def test_the_client_key_is_a_function_of_the_scope(clock: FakeClock) -> None:
    def api_key(scope: Any) -> str | None:
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key")
        return None if key == b"internal" else (key or b"anonymous").decode()

    app = ResilienceMiddleware(
        starlette_app(Gate(), {}),
        rate_limit=Keyed(lambda client: RateLimiter(1, period=60, clock=clock), clock=clock),
        client_key=api_key,
    )
    async with asgi_client(app) as c:
        assert (await c.get("/fast", headers={"x-api-key": "a"})).status_code == 200
        assert (await c.get("/fast", headers={"x-api-key": "a"})).status_code == 429
        assert (await c.get("/fast", headers={"x-api-key": "b"})).status_code == 200
        assert (await c.get("/fast")).status_code == 200
        assert (await c.get("/fast")).status_code == 429
        # None: never limited
        statuses = {(await c.get("/fast", headers={"x-api-key": "internal"})).status_code}
        statuses.add((await c.get("/fast", headers={"x-api-key": "internal"})).status_code)
        assert statuses == {200}


async def test_one_limiter_can_be_shared_by_every_client(clock: FakeClock) -> None:
    app = ResilienceMiddleware(
        starlette_app(Gate(), {}), rate_limit=RateLimiter(1, period=2, clock=clock)
    )
    async with asgi_client(app, ("10.0.0.1", 1)) as a, asgi_client(app, ("10.0.0.2", 2)) as b:
        assert (await a.get("/fast")).status_code == 200
        expect(await b.get("/fast"), 429, {"error": "rate_limited", "retry_after": 2})


async def test_a_limited_request_takes_no_permit(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, name="api")
    app = ResilienceMiddleware(
        starlette_app(Gate(), {}),
        bulkhead=bulkhead,
        rate_limit=RateLimiter(1, period=60, clock=clock),
    )
    async with asgi_client(app) as c:
        assert (await c.get("/fast")).status_code == 200
        assert (await c.get("/fast")).status_code == 429
    assert bulkhead.snapshot()["rejected"] == 0
    assert bulkhead.in_flight == 0


async def test_a_keyed_factory_must_make_rate_limiters() -> None:
    app = ResilienceMiddleware(
        starlette_app(Gate(), {}), rate_limit=Keyed(lambda client: Bulkhead(1))
    )
    async with asgi_client(app) as c:
        with pytest.raises(TypeError, match="must make a RateLimiter per client; its factory made"):
            await c.get("/fast")


async def test_the_app_sees_its_deadline(clock: FakeClock) -> None:
    seen: dict[str, Any] = {}
    app = ResilienceMiddleware(
        starlette_app(Gate(), seen), timeout=5, timeout_header="X-Request-Timeout", clock=clock
    )
    async with asgi_client(app) as c:
        await c.get("/fast")
        assert seen["remaining"] == 5.0
        await c.get("/fast", headers={"x-request-timeout": "2.5"})
        assert seen["remaining"] == 2.5
        await c.get("/fast", headers={"x-request-timeout": "50"})
        assert seen["remaining"] == 5.0
        await c.get("/fast", headers={"x-request-timeout": "soon"})
        assert seen["remaining"] == 5.0
        await c.get("/sync")  # a sync endpoint, in Starlette's thread pool
        assert seen["sync_remaining"] == 5.0
    assert remaining() is None


async def test_a_deadline_header_alone(clock: FakeClock) -> None:
    seen: dict[str, Any] = {}
    app = ResilienceMiddleware(
        starlette_app(Gate(), seen), timeout_header="X-Request-Timeout", clock=clock
    )
    async with asgi_client(app) as c:
        await c.get("/fast", headers={"X-Request-Timeout": "1.5"})
        assert seen["remaining"] == 1.5
        await c.get("/fast")
        assert seen["remaining"] is None


async def test_the_app_is_cancelled_at_the_deadline_with_504(
    clock: FakeClock, events: CapturingListener
) -> None:
    log: list[str] = []
    bulkhead = Bulkhead(4, name="api")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await clock.asleep(30)
        except asyncio.CancelledError:
            log.append(f"cancelled at {clock.now():g}")
            raise

    mw = ResilienceMiddleware(app, bulkhead=bulkhead, timeout=2, clock=clock)
    async with asgi_client(mw) as c:
        expect(await c.get("/"), 504, {"error": "timeout"})
    assert log == ["cancelled at 2"]
    assert bulkhead.in_flight == 0
    [timed_out] = events.of_type(TimedOut)
    assert (timed_out.policy, timed_out.strategy) == ("http_server", "timeout")
    assert (timed_out.timeout, timed_out.elapsed) == (2.0, 2.0)


async def test_a_spent_deadline_header_is_answered_at_once(
    clock: FakeClock, events: CapturingListener
) -> None:
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["path"])

    mw = ResilienceMiddleware(
        app, timeout_header="X-Request-Timeout", bulkhead=Bulkhead(1), clock=clock
    )
    async with asgi_client(mw) as c:
        expect(await c.get("/", headers={"X-Request-Timeout": "0"}), 504, {"error": "timeout"})
    assert called == []
    assert len(events.of_type(TimedOut)) == 1


async def test_past_the_deadline_after_the_response_started_the_connection_is_cut(
    clock: FakeClock, events: CapturingListener
) -> None:
    bulkhead = Bulkhead(1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await clock.asleep(30)

    mw = ResilienceMiddleware(app, bulkhead=bulkhead, timeout=1, clock=clock)
    # httpx's ASGI transport raises what the app raised; a server closes the connection.
    async with asgi_client(mw) as c:
        with pytest.raises(TimeoutExceededError, match="did not finish within its deadline"):
            await c.get("/")
    assert bulkhead.in_flight == 0
    assert len(events.of_type(TimedOut)) == 1


async def test_work_after_a_complete_response_is_not_cut(
    clock: FakeClock, events: CapturingListener
) -> None:
    log: list[str] = []
    bulkhead = Bulkhead(1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        assert bulkhead.in_flight == 1  # background work still holds the permit
        await clock.asleep(30)  # a background task, well past the deadline
        log.append("background done")

    mw = ResilienceMiddleware(app, bulkhead=bulkhead, timeout=1, clock=clock)
    async with asgi_client(mw) as c:
        assert (await c.get("/")).text == "done"
    assert log == ["background done"]
    assert events.of_type(TimedOut) == []
    assert bulkhead.in_flight == 0


async def test_an_app_that_swallows_the_cancellation_still_gets_504(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await clock.asleep(30)
        except asyncio.CancelledError:
            return  # badly behaved: neither re-raised nor answered

    mw = ResilienceMiddleware(app, timeout=1, clock=clock)
    async with asgi_client(mw) as c:
        expect(await c.get("/"), 504, {"error": "timeout"})


async def test_an_inner_timeout_at_the_request_deadline_is_a_504(clock: FakeClock) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with Timeout(60, clock=clock):  # the request's deadline is earlier
            await clock.asleep(30)

    mw = ResilienceMiddleware(app, timeout=1, clock=clock)
    async with asgi_client(mw) as c:
        expect(await c.get("/"), 504, {"error": "timeout"})


async def test_a_504_for_a_worker_thread_that_runs_on_keeps_the_permit_until_it_ends(
    clock: FakeClock,
) -> None:
    worker: Future[None] = Future()
    bulkhead = Bulkhead(1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await clock.asleep(30)
        except asyncio.CancelledError:
            # As a thread-mode Timeout reports a worker it could not stop.
            raise TimeoutExceededError("db", timeout=1.0, elapsed=1.0, pending=worker) from None

    mw = ResilienceMiddleware(app, bulkhead=bulkhead, timeout=1, clock=clock)
    async with asgi_client(mw) as c:
        expect(await c.get("/"), 504, {"error": "timeout"})
    assert bulkhead.in_flight == 1  # the worker still runs the app's call
    worker.set_result(None)
    assert bulkhead.in_flight == 0


async def test_an_app_timeout_before_the_request_deadline_is_the_apps_error(
    clock: FakeClock,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with Timeout(0.5, clock=clock):  # the app's own, shorter limit
            await clock.asleep(30)

    mw = ResilienceMiddleware(app, timeout=10, clock=clock)
    async with asgi_client(mw) as c:
        with pytest.raises(TimeoutExceededError) as caught:
            await c.get("/")
    assert caught.value.timeout == 0.5


async def test_an_outer_cancellation_stays_a_cancellation(clock: FakeClock) -> None:
    started = asyncio.Event()
    bulkhead = Bulkhead(1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        started.set()
        await asyncio.Event().wait()

    mw = ResilienceMiddleware(app, bulkhead=bulkhead, timeout=10, clock=clock)
    task = asyncio.create_task(mw(http_scope(), idle_receive, discard_send))
    await asyncio.wait_for(started.wait(), 5)
    assert bulkhead.in_flight == 1
    task.cancel()  # what a server does when the client disconnects, or on shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.in_flight == 0


def http_scope(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        **extra,
    }


async def idle_receive() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def discard_send(message: Any) -> None:
    return None


@pytest.mark.parametrize("timeout", [None, 10.0])
async def test_a_disconnect_mid_response_gives_the_permit_back(timeout: float | None) -> None:
    bulkhead = Bulkhead(1)
    sent: list[Any] = []
    gone = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await gone.wait()
        raise OSError("the client went away")  # what writing to a closed socket raises

    async def send(message: Any) -> None:
        sent.append(message["type"])

    mw = ResilienceMiddleware(app, bulkhead=bulkhead, timeout=timeout)
    task = asyncio.create_task(mw(http_scope(), idle_receive, send))
    for _ in range(500):
        if len(sent) == 2:
            break
        await asyncio.sleep(0.002)
    assert bulkhead.in_flight == 1
    gone.set()
    with pytest.raises(OSError, match="went away"):
        await task
    assert bulkhead.in_flight == 0
    assert sent == ["http.response.start", "http.response.body"]


async def test_a_request_cancelled_while_queued_leaves_the_queue() -> None:
    bulkhead = Bulkhead(1, max_queued=1)
    mw = ResilienceMiddleware(discard_app, bulkhead=bulkhead)
    async with bulkhead:
        task = asyncio.create_task(mw(http_scope(), idle_receive, discard_send))
        for _ in range(500):
            if bulkhead.queued:
                break
            await asyncio.sleep(0.002)
        assert bulkhead.queued == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    assert bulkhead.in_flight == 0


async def discard_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("retry_after", [12.2, None])
async def test_an_open_breaker_in_the_app_can_be_answered_503(
    clock: FakeClock, retry_after: float | None
) -> None:
    breaker = CircuitBreaker(name="db", open_duration=12.2, clock=clock)
    if retry_after is None:
        breaker.isolate()  # held open: no known time to come back
    else:
        breaker.open()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with breaker:
            await discard_app(scope, receive, send)

    mapped = ResilienceMiddleware(app, map_circuit_open=True, default_retry_after=3)
    async with asgi_client(mapped) as c:
        expected = 13 if retry_after else 3
        expect(await c.get("/"), 503, {"error": "unavailable", "retry_after": expected})
    async with asgi_client(ResilienceMiddleware(app)) as c:
        with pytest.raises(CircuitOpenError):
            await c.get("/")


async def test_an_open_breaker_after_the_response_started_is_not_mapped() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise CircuitOpenError(policy="db", retry_after=1.0)

    async with asgi_client(ResilienceMiddleware(app, map_circuit_open=True, timeout=5)) as c:
        with pytest.raises(CircuitOpenError):
            await c.get("/")


async def test_rejections_raised_by_the_app_are_the_apps_errors() -> None:
    inner = Bulkhead(1, name="db")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with inner:
            await discard_app(scope, receive, send)

    mw = ResilienceMiddleware(app, bulkhead=Bulkhead(5), map_circuit_open=True, timeout=5)
    async with inner, asgi_client(mw) as c:
        with pytest.raises(resilience.BulkheadFullError):
            await c.get("/")


async def test_a_head_request_gets_the_headers_without_the_body() -> None:
    bulkhead = Bulkhead(1)
    app = ResilienceMiddleware(starlette_app(Gate(), {}), bulkhead=bulkhead)
    async with bulkhead, asgi_client(app) as c:
        r = await c.head("/fast")
    assert r.status_code == 503
    assert r.content == b""
    assert r.headers["content-length"] == str(len(b'{"error": "overloaded", "retry_after": 1}'))
    assert r.headers["retry-after"] == "1"


async def test_excluded_paths_bypass_everything(clock: FakeClock) -> None:
    gate = Gate()
    bulkhead = Bulkhead(1)
    app = ResilienceMiddleware(
        starlette_app(gate, {}),
        bulkhead=bulkhead,
        rate_limit=RateLimiter(1, period=60, clock=clock),
        timeout=1,
        exclude=["/health", "/static/*"],
        clock=clock,
    )
    async with bulkhead, asgi_client(app) as c:
        assert [(await c.get("/health")).status_code for _ in range(3)] == [200] * 3
        assert (await c.get("/static/app.js")).status_code == 200
        # Not excluded: the limiter's one permit, then the full bulkhead; then the limiter.
        assert [(await c.get("/fast")).status_code for _ in range(2)] == [503, 429]


async def test_websocket_and_lifespan_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    bulkhead = Bulkhead(1)
    mw = ResilienceMiddleware(app, bulkhead=bulkhead, timeout=0.001)
    async with bulkhead:
        await mw({"type": "lifespan"}, idle_receive, discard_send)
        await mw(http_scope(type="websocket"), idle_receive, discard_send)
    assert seen == ["lifespan", "websocket"]


async def test_the_middleware_publishes_only_the_strategies_events(
    clock: FakeClock, events: CapturingListener
) -> None:
    bulkhead = Bulkhead(1, name="api")
    app = ResilienceMiddleware(
        starlette_app(Gate(), {}),
        bulkhead=bulkhead,
        rate_limit=Keyed(lambda c: RateLimiter(1, period=60, name="api", clock=clock)),
        client_key=lambda scope: dict(scope["headers"]).get(b"x-client"),
    )
    async with asgi_client(app) as c:
        await c.get("/fast", headers={"x-client": "a"})
        await c.get("/fast", headers={"x-client": "a"})
        async with bulkhead:
            await c.get("/fast", headers={"x-client": "b"})
    assert [type(e) for e in events.events] == [RateLimited, BulkheadRejected]


async def test_the_strategies_show_in_status() -> None:
    bulkhead = Bulkhead(3, name="status-probe-api")
    ResilienceMiddleware(discard_app, bulkhead=bulkhead)
    [probe] = [p for p in resilience.status()["policies"] if p["name"] == "status-probe-api"]
    assert probe["kind"] == "bulkhead"


def test_the_middleware_works_as_starlette_middleware() -> None:
    gate, seen = Gate(), {}
    bulkhead = Bulkhead(1, name="api")
    app = Starlette(
        routes=starlette_app(gate, seen).routes,
        middleware=[Middleware(ResilienceMiddleware, bulkhead=bulkhead, timeout=5.0)],
    )

    async def main() -> list[httpx.Response]:
        async with asgi_client(app) as c:
            ok = await c.get("/fast")
            async with bulkhead:
                shed = await c.get("/fast")
            return [ok, shed]

    ok, shed = asyncio.run(main())
    assert ok.status_code == 200
    assert 0 < seen["remaining"] <= 5.0
    expect(shed, 503, {"error": "overloaded", "retry_after": 1})


async def test_a_sync_endpoint_past_the_deadline_gets_504_while_its_thread_runs_on() -> None:
    release = threading.Event()
    finished = threading.Event()

    def blocking(request: Request) -> PlainTextResponse:
        release.wait(10)  # cannot be interrupted
        finished.set()
        return PlainTextResponse("too late")

    bulkhead = Bulkhead(1)
    app = Starlette(
        routes=[Route("/", blocking)],
        middleware=[Middleware(ResilienceMiddleware, bulkhead=bulkhead, timeout=0.05)],
    )
    try:
        async with asgi_client(app) as c:
            expect(await c.get("/"), 504, {"error": "timeout"})
        assert bulkhead.in_flight == 0  # given back at the 504 ...
        assert not finished.is_set()  # ... while the worker thread still runs
    finally:
        release.set()
    for _ in range(1000):
        if finished.is_set():
            break
        await asyncio.sleep(0.005)
    assert finished.is_set()


# == WSGI =========================================================================================
class WSGIApp:
    """A WSGI app doing what each path says; records remaining() and closes."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock
        self.seen: dict[str, Any] = {}
        self.calls = 0
        self.closed = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.calls += 1
        path = environ["PATH_INFO"]
        self.seen["remaining"] = remaining()
        if path == "/late":  # returns after the deadline
            assert self.clock is not None
            self.clock.advance(5)
        if path == "/stream":
            return self.stream(start_response)
        if path == "/legacy":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"written")
            return []
        if path == "/empty":
            start_response("204 No Content", [])
            return Closing([], self)
        if path == "/breaker":
            raise CircuitOpenError(policy="db", retry_after=4.5)
        if path == "/timeout":
            raise TimeoutExceededError("upstream", timeout=1.0, elapsed=1.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"hello ", b"world"], self)

    def stream(self, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        self.seen["in_body"] = remaining()
        try:
            yield b"first "
            if self.clock is not None:
                self.clock.advance(5)  # the deadline passes while the body is produced
            yield b"second"
        finally:
            self.closed += 1


class Closing:
    """An app iterable with close(), as PEP 3333 has the server call it."""

    def __init__(self, chunks: list[bytes], owner: WSGIApp) -> None:
        self.chunks = chunks
        self.owner = owner

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.owner.closed += 1


def wsgi_client(app: Any, remote_addr: str = "127.0.0.1") -> httpx.Client:
    return httpx.Client(
        transport=httpx.WSGITransport(app, remote_addr=remote_addr), base_url="http://testserver"
    )


def test_wsgi_sheds_load_with_503(events: CapturingListener) -> None:
    app = WSGIApp()
    bulkhead = Bulkhead(1, name="api")
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead)
    with wsgi_client(mw) as c:
        with bulkhead:
            expect(c.get("/"), 503, {"error": "overloaded", "retry_after": 1})
        ok = c.get("/")
    assert (ok.status_code, ok.text) == (200, "hello world")
    assert app.calls == 1
    assert app.closed == 1
    assert bulkhead.in_flight == 0
    assert [e.policy for e in events.of_type(BulkheadRejected)] == ["api"]


def test_wsgi_rate_limits_each_client(clock: FakeClock) -> None:
    app = WSGIApp()
    mw = WSGIResilienceMiddleware(
        app,
        rate_limit=Keyed(lambda c: RateLimiter(1, period=3, clock=clock), clock=clock),
    )
    with wsgi_client(mw, "10.0.0.1") as a, wsgi_client(mw, "10.0.0.2") as b:
        assert a.get("/").status_code == 200
        expect(a.get("/"), 429, {"error": "rate_limited", "retry_after": 3})
        assert b.get("/").status_code == 200
        clock.advance(3)
        assert a.get("/").status_code == 200
    assert app.calls == 3


def test_wsgi_the_app_and_its_body_see_the_deadline(clock: FakeClock) -> None:
    app = WSGIApp()
    mw = WSGIResilienceMiddleware(
        app, timeout=5, timeout_header="X-Request-Timeout", clock=clock, bulkhead=Bulkhead(1)
    )
    with wsgi_client(mw) as c:
        c.get("/")
        assert app.seen["remaining"] == 5.0
        assert c.get("/stream", headers={"X-Request-Timeout": "2"}).text == "first second"
        assert (app.seen["remaining"], app.seen["in_body"]) == (2.0, 2.0)
    assert remaining() is None


def test_wsgi_a_late_response_is_replaced_by_504(
    clock: FakeClock, events: CapturingListener
) -> None:
    app = WSGIApp(clock)
    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, timeout=2, clock=clock)
    with wsgi_client(mw) as c:
        expect(c.get("/late"), 504, {"error": "timeout"})
    assert app.closed == 1  # the app's own response was closed unsent
    assert bulkhead.in_flight == 0
    [timed_out] = events.of_type(TimedOut)
    assert (timed_out.policy, timed_out.timeout, timed_out.elapsed) == ("http_server", 2.0, 5.0)


def test_wsgi_past_the_deadline_mid_body_the_response_is_cut(
    clock: FakeClock, events: CapturingListener
) -> None:
    app = WSGIApp(clock)
    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, timeout=2, clock=clock)
    with wsgi_client(mw) as c, pytest.raises(TimeoutExceededError):
        c.get("/stream")
    assert app.closed == 1
    assert bulkhead.in_flight == 0
    assert len(events.of_type(TimedOut)) == 1


def test_wsgi_a_spent_deadline_header_is_answered_at_once(clock: FakeClock) -> None:
    app = WSGIApp()
    mw = WSGIResilienceMiddleware(app, timeout_header="X-Request-Timeout", clock=clock)
    with wsgi_client(mw) as c:
        expect(c.get("/", headers={"X-Request-Timeout": "0"}), 504, {"error": "timeout"})
    assert app.calls == 0


def test_wsgi_a_timeout_raised_by_the_app(clock: FakeClock) -> None:
    app = WSGIApp(clock)
    mw = WSGIResilienceMiddleware(app, timeout=2, clock=clock, bulkhead=Bulkhead(1))
    with wsgi_client(mw) as c:
        with pytest.raises(TimeoutExceededError, match="upstream"):
            c.get("/timeout")  # the deadline has not passed: the app's own error

    def late_then_raise(environ: Any, start_response: Any) -> Any:
        clock.advance(3)
        raise TimeoutExceededError("upstream", timeout=1.0, elapsed=1.0)

    with wsgi_client(WSGIResilienceMiddleware(late_then_raise, timeout=2, clock=clock)) as c:
        expect(c.get("/"), 504, {"error": "timeout"})


def test_wsgi_a_504_for_a_worker_thread_that_runs_on_keeps_the_permit(clock: FakeClock) -> None:
    worker: Future[None] = Future()
    bulkhead = Bulkhead(1)

    def app(environ: Any, start_response: Any) -> list[bytes]:
        clock.advance(3)
        raise TimeoutExceededError("db", timeout=1.0, elapsed=1.0, pending=worker)

    def generated(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        clock.advance(3)
        raise TimeoutExceededError("db", timeout=1.0, elapsed=1.0, pending=worker)
        yield b"never"

    for wsgi_app in (app, generated):
        worker = Future()
        mw = WSGIResilienceMiddleware(wsgi_app, bulkhead=bulkhead, timeout=2, clock=clock)
        with wsgi_client(mw) as c:
            expect(c.get("/"), 504, {"error": "timeout"})
        assert bulkhead.in_flight == 1
        worker.set_result(None)
        assert bulkhead.in_flight == 0


def test_wsgi_an_open_breaker_can_be_answered_503() -> None:
    app = WSGIApp()
    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, map_circuit_open=True)
    with wsgi_client(mw) as c:
        expect(c.get("/breaker"), 503, {"error": "unavailable", "retry_after": 5})
    with wsgi_client(WSGIResilienceMiddleware(app)) as c, pytest.raises(CircuitOpenError):
        c.get("/breaker")
    assert bulkhead.in_flight == 0


def test_wsgi_an_open_breaker_while_the_body_starts_is_answered_503() -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        raise CircuitOpenError(policy="db", retry_after=None)
        yield b"never"

    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, map_circuit_open=True)
    with wsgi_client(mw) as c:
        expect(c.get("/"), 503, {"error": "unavailable", "retry_after": 1})
    assert bulkhead.in_flight == 0


def test_wsgi_the_legacy_write_api(clock: FakeClock) -> None:
    # httpx's WSGI transport ignores write(): drive the middleware as a server would.
    app = WSGIApp(clock)
    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, timeout=2, clock=clock)
    calls, start_response = start_response_spy()
    body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/legacy"}, start_response)
    assert list(body) == []
    assert calls == [("200 OK", [("Content-Type", "text/plain")])]
    assert WRITTEN == [b"written"]
    assert bulkhead.in_flight == 0

    def late_writer(environ: Any, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        clock.advance(3)
        write(b"too late")
        return []

    WRITTEN.clear()
    mw = WSGIResilienceMiddleware(late_writer, bulkhead=bulkhead, timeout=2, clock=clock)
    with wsgi_client(mw) as c:
        expect(c.get("/"), 504, {"error": "timeout"})
    assert WRITTEN == []
    assert bulkhead.in_flight == 0


def test_wsgi_an_empty_body_still_sends_its_headers() -> None:
    app = WSGIApp()
    mw = WSGIResilienceMiddleware(app, bulkhead=Bulkhead(1))
    with wsgi_client(mw) as c:
        r = c.get("/empty")
    assert (r.status_code, r.content) == (204, b"")
    assert app.closed == 1


def test_wsgi_head_and_excluded_paths() -> None:
    app = WSGIApp()
    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, exclude=["/health"])
    with wsgi_client(mw) as c, bulkhead:
        head = c.head("/")
        assert (head.status_code, head.content, head.headers["retry-after"]) == (503, b"", "1")
        assert c.get("/health").status_code == 200


WRITTEN: list[bytes] = []


def start_response_spy() -> tuple[list[tuple[str, Any]], Callable[..., Any]]:
    """A server's start_response; what the legacy write() sends goes to ``WRITTEN``."""
    calls: list[tuple[str, Any]] = []
    WRITTEN.clear()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        calls.append((status, headers))
        return WRITTEN.append

    return calls, start_response


@pytest.mark.parametrize("read", [0, 1, 2, 3])
def test_wsgi_the_permit_goes_back_however_far_the_server_reads(read: int) -> None:
    app = WSGIApp()
    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead)
    calls, start_response = start_response_spy()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "127.0.0.1"}
    body = mw(environ, start_response)
    it = iter(body)
    chunks = [next(it) for _ in range(min(read, 2))]
    if read == 3:
        with pytest.raises(StopIteration):
            next(it)
        assert bulkhead.in_flight == 0  # exhausted: released before close()
    else:
        assert bulkhead.in_flight == 1
    assert chunks == [b"hello ", b"world"][: min(read, 2)]
    assert calls == ([] if read == 0 else [("200 OK", [("Content-Type", "text/plain")])])
    body.close()  # type: ignore[attr-defined]  # the server's duty (a disconnect included)
    body.close()  # type: ignore[attr-defined]
    assert bulkhead.in_flight == 0
    assert app.closed == 1


def test_wsgi_a_close_that_raises_still_gives_the_permit_back(clock: FakeClock) -> None:
    class BadClose:
        def __iter__(self) -> Iterator[bytes]:
            clock.advance(3)  # late: the middleware replaces it, closing it first
            yield b"late"

        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: Any, start_response: Any) -> BadClose:
        start_response("200 OK", [])
        return BadClose()

    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, timeout=2, clock=clock)
    _, start_response = start_response_spy()
    with pytest.raises(OSError, match="close failed"):
        list(mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response))
    assert bulkhead.in_flight == 0


def test_wsgi_an_error_while_the_body_is_produced_gives_the_permit_back() -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        raise ValueError("broken body")

    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead)
    _, start_response = start_response_spy()
    body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response)
    it = iter(body)
    assert next(it) == b"a"
    with pytest.raises(ValueError, match="broken body"):
        next(it)
    assert bulkhead.in_flight == 0
    body.close()  # type: ignore[attr-defined]
    assert bulkhead.in_flight == 0


def test_wsgi_an_app_that_raises_gives_the_permit_back() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        raise KeyError("boom")

    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(app, bulkhead=bulkhead, timeout=5)
    with wsgi_client(mw) as c, pytest.raises(KeyError):
        c.get("/")
    assert bulkhead.in_flight == 0


def test_wsgi_an_app_that_never_calls_start_response() -> None:
    bulkhead = Bulkhead(1)
    mw = WSGIResilienceMiddleware(lambda environ, start_response: [b"x"], bulkhead=bulkhead)
    _, start_response = start_response_spy()
    body = iter(mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response))
    with pytest.raises(RuntimeError, match="did not call start_response"):
        next(body)
    assert bulkhead.in_flight == 0


def test_wsgi_start_response_with_exc_info_before_the_headers_went_out() -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-Partial", "1")])
        try:
            raise ValueError("rendering failed")
        except ValueError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b"error page"]

    calls, start_response = start_response_spy()
    mw = WSGIResilienceMiddleware(app, bulkhead=Bulkhead(1))
    assert b"".join(mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response)) == (
        b"error page"
    )
    assert calls == [("500 Internal Server Error", [])]


def test_wsgi_with_only_a_limiter_the_response_is_not_wrapped(clock: FakeClock) -> None:
    app = WSGIApp()
    mw = WSGIResilienceMiddleware(app, rate_limit=RateLimiter(5, clock=clock))
    _, start_response = start_response_spy()
    body = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "1.2.3.4"}, start_response)
    assert isinstance(body, Closing)
