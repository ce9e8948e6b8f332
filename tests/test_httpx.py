"""resilience.httpx against a real loopback server with scripted faults, sync and async."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from _http_support import (
    FaultServer,
    Registry,
    TripAfter,
    closed_port,
    cut,
    reply,
    reset,
    slow,
)
from resilience import (
    Backoff,
    GiveUpReason,
    RejectedError,
    RetryGaveUp,
    RetryScheduled,
    deadline,
)
from resilience.httpx import (
    AsyncResilientTransport,
    BodyNotReplayableError,
    RequestAttempted,
    ResilientTransport,
    resend_count,
)
from resilience.testing import CapturingListener, FakeClock, no_wait

KINDS = ["sync", "async"]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer()
    yield s
    s.close()


class SyncSpy(httpx.BaseTransport):
    """Records, per attempt, the timeouts handed down and the resend count; then sends."""

    def __init__(self, inner: httpx.BaseTransport, seen: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(
            {"timeout": dict(request.extensions.get("timeout", {})), "resend": resend_count()}
        )
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncSpy(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, seen: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(
            {"timeout": dict(request.extensions.get("timeout", {})), "resend": resend_count()}
        )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Driver:
    """One client, sync or async, behind the same blocking interface for the tests."""

    def __init__(
        self,
        kind: str,
        *,
        limits: httpx.Limits | None = None,
        timeout: Any = 5.0,
        inner: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> None:
        self.kind = kind
        self.seen: list[dict[str, Any]] = []
        lim = limits or httpx.Limits()
        if kind == "sync":
            base: Any = SyncSpy(httpx.HTTPTransport(limits=lim), self.seen)
            self.transport: Any = ResilientTransport(inner(base) if inner else base, **options)
            self.client: Any = httpx.Client(transport=self.transport, timeout=timeout)
        else:
            self.loop = asyncio.new_event_loop()
            base = AsyncSpy(httpx.AsyncHTTPTransport(limits=lim), self.seen)
            self.transport = AsyncResilientTransport(inner(base) if inner else base, **options)
            self.client = httpx.AsyncClient(transport=self.transport, timeout=timeout)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.kind == "sync":
            return self.client.request(method, url, **kwargs)  # type: ignore[no-any-return]
        return self.loop.run_until_complete(self.client.request(method, url, **kwargs))

    def body(self, *chunks: bytes) -> Any:
        """A one-shot streaming body of the right flavour."""
        if self.kind == "sync":
            return (c for c in chunks)

        async def agen() -> AsyncIterator[bytes]:
            for c in chunks:
                yield c

        return agen()

    def close(self) -> None:
        if self.kind == "sync":
            self.client.close()
        else:
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Driver]]:
    drivers: list[Driver] = []

    def factory(**kwargs: Any) -> Driver:
        d = Driver(request.param, **kwargs)
        drivers.append(d)
        return d

    yield factory
    for d in drivers:
        d.close()


def attempts_of(events: CapturingListener) -> list[RequestAttempted]:
    return events.of_type(RequestAttempted)


# -- errors before the request left: retried for every method -------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_connection_refused_is_retried_for_every_method(
    make: Callable[..., Driver], events: CapturingListener, method: str
) -> None:
    d = make(attempts=3)
    with no_wait(), pytest.raises(httpx.ConnectError) as info:
        d.request(method, f"http://127.0.0.1:{closed_port()}/x")
    assert len(d.seen) == 3
    assert [e.attempt for e in attempts_of(events)] == [1, 2, 3]
    assert "gave up after 3 attempt(s)" in "".join(getattr(info.value, "__notes__", []))


# -- statuses -------------------------------------------------------------------------------------
def test_retryable_status_then_success(make: Callable[..., Driver], server: FaultServer) -> None:
    server.script("/a", reply(503), reply(200, b"ok"))
    with no_wait():
        r = make().request("GET", server.url("/a"))
    assert (r.status_code, r.text) == (200, "ok")
    assert len(server.hits("/a")) == 2


def test_exhausted_status_returns_the_last_response(
    make: Callable[..., Driver], server: FaultServer, events: CapturingListener
) -> None:
    server.script("/busy", reply(503, b"busy"))
    with no_wait():
        r = make(attempts=4).request("GET", server.url("/busy"))
    assert (r.status_code, r.text) == (503, "busy")
    assert len(server.hits("/busy")) == 4
    (gave_up,) = events.of_type(RetryGaveUp)
    assert (gave_up.attempts, gave_up.reason) == (4, GiveUpReason.ATTEMPTS)


def test_post_is_not_retried_on_a_retryable_status(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/p", reply(503), reply(200))
    with no_wait():
        r = make().request("POST", server.url("/p"), content=b"order")
    assert r.status_code == 503
    assert len(server.hits("/p")) == 1


def test_flapping_health(make: Callable[..., Driver], server: FaultServer) -> None:
    server.script("/flap", reply(503), reply(200, b"up"), cycle=True)
    d = make()
    with no_wait():
        statuses = [d.request("GET", server.url("/flap")).status_code for _ in range(10)]
    assert statuses == [200] * 10
    assert len(server.hits("/flap")) == 20


# -- errors after the request may have left -------------------------------------------------------
def test_post_without_key_is_not_retried_after_a_read_error(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/pay", reset(), reply(201))
    with no_wait(), pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        make().request("POST", server.url("/pay"), content=b"charge 10")
    assert len(server.hits("/pay")) == 1


def test_post_with_key_is_retried_after_a_read_error(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/pay", reset(), reply(201, b"done"))
    with no_wait():
        r = make().request(
            "POST", server.url("/pay"), content=b"charge 10", headers={"Idempotency-Key": "k-1"}
        )
    assert r.status_code == 201
    hits = server.hits("/pay")
    assert [h.headers["idempotency-key"] for h in hits] == ["k-1", "k-1"]
    assert [h.body for h in hits] == [b"charge 10", b"charge 10"]


def test_get_is_retried_after_a_read_error(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/g", reset(), reply(200, b"ok"))
    with no_wait():
        assert make().request("GET", server.url("/g")).text == "ok"
    assert len(server.hits("/g")) == 2


def test_add_idempotency_key_sends_the_same_key_on_every_attempt(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/orders", reply(503), reply(503), reply(201), reply(201))
    d = make(add_idempotency_key=True)
    with no_wait():
        assert d.request("POST", server.url("/orders"), json={"n": 1}).status_code == 201
        assert d.request("POST", server.url("/orders"), json={"n": 2}).status_code == 201
        d.request("GET", server.url("/list"))
    keys = [h.headers["idempotency-key"] for h in server.hits("/orders")]
    assert len(keys) == 4
    assert keys[0] == keys[1] == keys[2] != keys[3]
    uuid.UUID(keys[0])
    assert "idempotency-key" not in server.hits("/list")[0].headers


# -- response bodies: read inside the attempt, or handed over -------------------------------------
def test_reset_mid_body_is_retried_for_get(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/body", cut(declared=1000, sent=10), reply(200, b"whole"))
    with no_wait():
        r = make().request("GET", server.url("/body"))
    assert r.text == "whole"
    assert len(server.hits("/body")) == 2


def test_reset_mid_body_of_a_post_is_not_retried(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/body", cut(), reply(200))
    with no_wait(), pytest.raises(httpx.RemoteProtocolError):
        make().request("POST", server.url("/body"), content=b"x")
    assert len(server.hits("/body")) == 1


def test_unbuffered_bodies_are_handed_over_unread(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/body", cut(declared=1000, sent=10), reply(200, b"whole"))
    with no_wait(), pytest.raises(httpx.RemoteProtocolError):
        make(buffer_limit=0).request("GET", server.url("/body"))
    assert len(server.hits("/body")) == 1


def test_responses_are_closed_so_the_pool_is_never_exhausted(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    # Two connections for 1,000 calls of three failing attempts each: one response left
    # open would starve the pool and end in PoolTimeout.
    server.script("/down", reply(503, b"x" * 100))
    d = make(
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
        timeout=httpx.Timeout(5.0, pool=1.0),
        buffer_limit=0,
    )
    with no_wait():
        for _ in range(1000):
            assert d.request("GET", server.url("/down")).status_code == 503
    assert len(server.hits("/down")) == 3000


# -- Retry-After ----------------------------------------------------------------------------------
def test_retry_after_seconds_replaces_the_backoff(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    clock = FakeClock()
    server.script("/r", reply(429, headers={"Retry-After": "2"}), reply(200))
    assert make(clock=clock).request("GET", server.url("/r")).status_code == 200
    assert clock.sleeps == [2.0]


def test_retry_after_http_date(make: Callable[..., Driver], server: FaultServer) -> None:
    clock = FakeClock()
    when = formatdate(time.time() + 3, usegmt=True)  # whole seconds: 2 < wait <= 3
    server.script("/r", reply(503, headers={"Retry-After": when}), reply(200))
    assert make(clock=clock).request("GET", server.url("/r")).status_code == 200
    (wait,) = clock.sleeps
    assert 1.0 < wait <= 3.0


def test_retry_after_is_clamped(make: Callable[..., Driver], server: FaultServer) -> None:
    clock = FakeClock()
    server.script("/r", reply(503, headers={"Retry-After": "3600"}), reply(200))
    make(clock=clock, max_retry_after=5).request("GET", server.url("/r"))
    assert clock.sleeps == [5.0]


def test_retry_after_past_the_deadline_gives_up(
    make: Callable[..., Driver], server: FaultServer, events: CapturingListener
) -> None:
    clock = FakeClock()
    server.script("/r", reply(429, b"slow down", headers={"Retry-After": "30"}), reply(200))
    d = make(clock=clock)
    with deadline(10.0, clock=clock):
        r = d.request("GET", server.url("/r"))
    assert (r.status_code, r.text) == (429, "slow down")
    assert clock.sleeps == []
    assert len(server.hits("/r")) == 1
    assert events.of_type(RetryGaveUp)[0].reason is GiveUpReason.DEADLINE


# -- timeouts and deadlines -----------------------------------------------------------------------
def test_the_deadline_caps_the_timeouts_of_every_attempt(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    clock = FakeClock()
    server.script("/d", reply(503), reply(503), reply(200))
    d = make(clock=clock, backoff=Backoff.constant(0.5), timeout=httpx.Timeout(30.0, read=1.8))
    with deadline(2.0, clock=clock):
        r = d.request("GET", server.url("/d"))
    assert r.status_code == 200
    assert [s["timeout"] for s in d.seen] == [
        {"connect": 2.0, "read": 1.8, "write": 2.0, "pool": 2.0},
        {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5},
        {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0},
    ]
    # The request keeps the client's own timeouts once the call is over.
    assert r.request.extensions["timeout"]["connect"] == 30.0


def test_total_timeout_is_the_deadline_of_the_attempts(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    clock = FakeClock()
    server.script("/t", reply(503), reply(200))
    d = make(clock=clock, backoff=Backoff.constant(0.25), total_timeout=1.0, timeout=30.0)
    assert d.request("GET", server.url("/t")).status_code == 200
    assert [s["timeout"]["read"] for s in d.seen] == [1.0, 0.75]


def test_no_request_is_sent_once_the_deadline_has_passed(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    clock = FakeClock()
    d = make(clock=clock)
    with deadline(0.0, clock=clock), pytest.raises(TimeoutError):
        d.request("GET", server.url("/late"))
    assert server.hits("/late") == []


def test_attempt_timeout_cuts_a_slow_response_and_retries(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/slow", slow(10.0), reply(200, b"fast"))
    d = make(attempt_timeout=0.2)
    with no_wait():
        r = d.request("GET", server.url("/slow"))
    assert r.text == "fast"
    assert len(server.hits("/slow")) == 2
    assert all(0.0 < s["timeout"]["read"] <= 0.2 for s in d.seen)


def test_attempt_timeout_does_not_retry_a_slow_post(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/slow", slow(10.0), reply(200))
    with no_wait(), pytest.raises(httpx.ReadTimeout):
        make(attempt_timeout=0.2).request("POST", server.url("/slow"), content=b"x")
    assert len(server.hits("/slow")) == 1


# -- request bodies -------------------------------------------------------------------------------
def test_a_streaming_body_is_not_re_sent(make: Callable[..., Driver], server: FaultServer) -> None:
    server.script("/up", reply(503), reply(200))
    d = make()
    with no_wait():
        r = d.request("PUT", server.url("/up"), content=d.body(b"ab", b"cd"))
    assert r.status_code == 503
    assert [h.body for h in server.hits("/up")] == [b"abcd"]


def test_a_streaming_body_is_retried_after_an_error_before_sending(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    def refuse_once(base: Any) -> Any:
        state = {"n": 0}

        class Sync(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                state["n"] += 1
                if state["n"] == 1:
                    raise httpx.ConnectError("refused", request=request)
                return base.handle_request(request)  # type: ignore[no-any-return]

            def close(self) -> None:
                base.close()

        class Async(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                state["n"] += 1
                if state["n"] == 1:
                    raise httpx.ConnectError("refused", request=request)
                return await base.handle_async_request(request)  # type: ignore[no-any-return]

            async def aclose(self) -> None:
                await base.aclose()

        return Sync() if isinstance(base, httpx.BaseTransport) else Async()

    d = make(inner=refuse_once)
    with no_wait():
        r = d.request("POST", server.url("/up"), content=d.body(b"ab", b"cd"))
    assert r.status_code == 200
    assert [h.body for h in server.hits("/up")] == [b"abcd"]


def test_a_partly_read_stream_is_never_re_sent(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    def read_then_fail(base: Any) -> Any:
        class Sync(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                next(iter(request.stream))  # type: ignore[call-overload]
                raise httpx.ConnectError("refused after reading", request=request)

            def close(self) -> None:
                base.close()

        class Async(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                await request.stream.__aiter__().__anext__()  # type: ignore[union-attr]
                raise httpx.ConnectError("refused after reading", request=request)

            async def aclose(self) -> None:
                await base.aclose()

        return Sync() if isinstance(base, httpx.BaseTransport) else Async()

    d = make(inner=read_then_fail)
    with no_wait(), pytest.raises(BodyNotReplayableError) as info:
        d.request("POST", server.url("/up"), content=d.body(b"ab", b"cd"))
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert server.hits("/up") == []


def test_a_bytes_body_is_re_sent_intact(make: Callable[..., Driver], server: FaultServer) -> None:
    server.script("/up", reply(503), reset(), reply(200))
    payload = bytes(range(256)) * 100
    with no_wait():
        assert make().request("PUT", server.url("/up"), content=payload).status_code == 200
    assert [h.body for h in server.hits("/up")] == [payload] * 3


def test_a_multipart_body_is_re_sent_intact(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/form", reply(503), reply(200))
    file = io.BytesIO(b"report contents")
    with no_wait():
        r = make().request("PUT", server.url("/form"), data={"a": "1"}, files={"f": file})
    assert r.status_code == 200
    first, second = (h.body for h in server.hits("/form"))
    assert first == second
    assert b"report contents" in first


def test_a_seekable_file_body_is_re_sent_intact(server: FaultServer) -> None:
    server.script("/up", reply(503), reply(200))
    payload = b"0123456789" * 10_000
    file = io.BytesIO(payload)  # left at its end by the first attempt, sought back for the next
    with no_wait(), httpx.Client(transport=ResilientTransport()) as client:
        assert client.put(server.url("/up"), content=file).status_code == 200
    assert [h.body for h in server.hits("/up")] == [payload, payload]


# -- per-request overrides ------------------------------------------------------------------------
def test_retry_can_be_switched_off_per_request(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/o", reply(503), reply(200))
    with no_wait():
        r = make().request("GET", server.url("/o"), extensions={"resilience": {"retry": False}})
    assert r.status_code == 503
    assert len(server.hits("/o")) == 1


def test_a_post_can_be_declared_idempotent_per_request(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/o", reset(), reply(200))
    with no_wait():
        r = make().request(
            "POST", server.url("/o"), extensions={"resilience": {"idempotent": True}}
        )
    assert r.status_code == 200
    assert len(server.hits("/o")) == 2


def test_a_key_can_be_asked_for_per_request(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    server.script("/o", reply(503), reply(200))
    with no_wait():
        r = make().request(
            "PATCH", server.url("/o"), extensions={"resilience": {"idempotency_key": True}}
        )
    assert r.status_code == 200
    hits = server.hits("/o")
    assert len({h.headers["idempotency-key"] for h in hits}) == 1
    assert len(hits) == 2


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"retries": 2}, ValueError, "unknown key 'retries'"),
        ({"retry": "no"}, TypeError, "must be a bool"),
        ("off", TypeError, "must be a dict"),
    ],
)
def test_bad_overrides_are_refused(value: Any, error: type[Exception], match: str) -> None:
    client = httpx.Client(transport=ResilientTransport(httpx.MockTransport(lambda r: None)))  # type: ignore[arg-type,return-value]
    with client, pytest.raises(error, match=match):
        client.get("http://example.test/", extensions={"resilience": value})


# -- per-host strategies --------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["factory", "registry"])
def test_one_bad_host_does_not_trip_calls_to_another(
    make: Callable[..., Driver], form: str
) -> None:
    bad, good = FaultServer(), FaultServer()
    try:
        bad.script("/", reply(503))
        per_host: Any = (
            (lambda key: TripAfter(2)) if form == "factory" else Registry(lambda key: TripAfter(2))
        )
        d = make(per_host=per_host)
        with no_wait():
            for _ in range(4):
                with pytest.raises(RejectedError):
                    d.request("GET", bad.url("/"))
            for _ in range(5):
                assert d.request("GET", good.url("/")).status_code == 200
        assert len(bad.hits("/")) == 2  # then the bad host's strategy rejected locally
        assert len(good.hits("/")) == 5
        if isinstance(per_host, Registry):
            assert set(per_host.by_key) == {f"127.0.0.1:{bad.port}", f"127.0.0.1:{good.port}"}
    finally:
        bad.close()
        good.close()


def test_user_strategies_run_around_every_attempt(
    make: Callable[..., Driver], server: FaultServer
) -> None:
    trip = TripAfter(100)
    server.script("/s", reply(503), reply(503), reply(200))
    with no_wait():
        assert make(strategies=[trip]).request("GET", server.url("/s")).status_code == 200
    assert trip.calls == 3


# -- events and the resend count ------------------------------------------------------------------
def test_attempts_carry_the_resend_count_and_no_url(
    make: Callable[..., Driver], server: FaultServer, events: CapturingListener
) -> None:
    server.script("/secret/path", reply(503), reply(502), reply(200))
    d = make(name="payments")
    with no_wait():
        d.request("GET", server.url("/secret/path?token=abc"))
    assert [s["resend"] for s in d.seen] == [0, 1, 2]
    attempts = attempts_of(events)
    assert [(a.attempt, a.resend_count, a.status) for a in attempts] == [
        (1, 0, 503),
        (2, 1, 502),
        (3, 2, 200),
    ]
    a = attempts[0]
    assert (a.policy, a.method, a.server_address, a.server_port) == (
        "payments",
        "GET",
        "127.0.0.1",
        server.port,
    )
    assert all("secret" not in repr(a) and "token" not in repr(a) for a in attempts)
    assert [e.attempt for e in events.of_type(RetryScheduled)] == [1, 2]
    assert resend_count() is None


# -- cancellation ---------------------------------------------------------------------------------
class _Interrupted(BaseException):
    """Stands for a KeyboardInterrupt while the retry waits between attempts."""


class InterruptingClock(FakeClock):
    def sleep(self, seconds: float) -> None:
        raise _Interrupted


def test_an_interrupted_sync_call_closes_the_response_it_held(server: FaultServer) -> None:
    server.script("/wait", reply(503))
    transport = ResilientTransport(
        httpx.HTTPTransport(limits=httpx.Limits(max_connections=1)),
        buffer_limit=0,
        clock=InterruptingClock(),
    )
    with httpx.Client(transport=transport, timeout=httpx.Timeout(5.0, pool=1.0)) as c:
        with pytest.raises(_Interrupted):
            c.get(server.url("/wait"))
        # The only connection is free again: the 503 held during the wait was closed.
        assert (
            c.get(server.url("/next"), extensions={"resilience": {"retry": False}}).status_code
            == 200
        )


async def test_a_cancelled_call_closes_the_response_it_held(
    server: FaultServer, events: CapturingListener
) -> None:
    server.script("/wait", reply(503, headers={"Retry-After": "30"}))
    transport = AsyncResilientTransport(
        httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1)), buffer_limit=0
    )
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, pool=1.0)) as c:
        task = asyncio.create_task(c.get(server.url("/wait")))
        for _ in range(500):  # until the retry sleeps on Retry-After, holding the 503
            if events.of_type(RetryScheduled):
                break
            await asyncio.sleep(0.01)
        assert events.of_type(RetryScheduled)[0].delay == 30.0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The only connection is free again: the 503 held during the wait was closed.
        assert (await c.get(server.url("/next"))).status_code == 200
