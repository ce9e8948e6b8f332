"""Per-host policies in the HTTP clients with the real strategies, against real loopback
servers: a dead host trips its own breaker (and then sees no more requests) while calls
to a healthy host go on; a per-host bulkhead bounds one host without touching another."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import requests

from _http_support import Action, FaultServer, reply, reset
from resilience import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Keyed,
    Pipeline,
)
from resilience.httpx import RESPONSE_CLASSIFIER as HTTPX_CLASSIFIER
from resilience.httpx import AsyncResilientTransport, ResilientTransport
from resilience.requests import RESPONSE_CLASSIFIER as REQUESTS_CLASSIFIER
from resilience.requests import ResilientAdapter
from resilience.testing import no_wait

WAIT = 10.0
CLIENTS = ["httpx", "httpx-async", "requests"]


class Client:
    """One kind of resilient client behind a blocking ``get``."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.kind = kind
        if kind == "httpx":
            self.client: Any = httpx.Client(transport=ResilientTransport(**options), timeout=WAIT)
        elif kind == "httpx-async":
            self.loop = asyncio.new_event_loop()
            self.client = httpx.AsyncClient(
                transport=AsyncResilientTransport(**options), timeout=WAIT
            )
        else:
            self.client = requests.Session()
            self.client.mount("http://", ResilientAdapter(**options))

    def get(self, url: str) -> int:
        if self.kind == "httpx-async":
            return self.loop.run_until_complete(self.client.get(url)).status_code  # type: ignore[no-any-return]
        if self.kind == "requests":
            return self.client.get(url, timeout=WAIT).status_code  # type: ignore[no-any-return]
        return self.client.get(url).status_code  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.kind == "httpx-async":
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()
        else:
            self.client.close()


def classifier_of(kind: str) -> Any:
    return REQUESTS_CLASSIFIER if kind == "requests" else HTTPX_CLASSIFIER


@pytest.fixture
def servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    dead, healthy = FaultServer(), FaultServer()
    yield dead, healthy
    dead.close()
    healthy.close()


def breaker_per_host(form: str, classifier: Any) -> Any:
    def make(host: str) -> Any:
        breaker = CircuitBreaker(failure_threshold=3, open_duration=60, classifier=classifier)
        return breaker if form != "pipeline" else Pipeline(breaker, Bulkhead(4))

    return Keyed(make, name="hosts") if form == "keyed" else make


@pytest.mark.parametrize("dead_action", ["503", "reset"])
@pytest.mark.parametrize("form", ["keyed", "factory", "pipeline"])
@pytest.mark.parametrize("kind", CLIENTS)
def test_a_dead_host_trips_its_own_breaker(
    servers: tuple[FaultServer, FaultServer], kind: str, form: str, dead_action: str
) -> None:
    dead, healthy = servers
    action: Action = reply(503, b"down") if dead_action == "503" else reset()
    dead.script("/", action)
    client = Client(kind, per_host=breaker_per_host(form, classifier_of(kind)))
    try:
        with no_wait():
            # Three attempts (the default) fail: the third trips the dead host's breaker.
            if dead_action == "503":
                assert client.get(dead.url("/")) == 503
            else:
                with pytest.raises((httpx.HTTPError, requests.RequestException)):
                    client.get(dead.url("/"))
            assert len(dead.hits("/")) == 3
            for _ in range(4):  # now it fails fast, without a request
                with pytest.raises(CircuitOpenError) as caught:
                    client.get(dead.url("/"))
                assert caught.value.retry_after is not None
                assert 0 < caught.value.retry_after <= 60
            assert [client.get(healthy.url("/")) for _ in range(5)] == [200] * 5
        assert len(dead.hits("/")) == 3  # the dead server saw nothing more
        assert len(healthy.hits("/")) == 5
    finally:
        client.close()


def test_a_keyed_registry_holds_one_breaker_per_host(
    servers: tuple[FaultServer, FaultServer],
) -> None:
    dead, healthy = servers
    dead.script("/", reply(503))
    breakers = breaker_per_host("keyed", HTTPX_CLASSIFIER)
    client = Client("httpx", per_host=breakers)
    try:
        with no_wait():
            client.get(dead.url("/"))
            client.get(healthy.url("/"))
    finally:
        client.close()
    snap = breakers.snapshot(include_keys=True)
    assert snap["keys"] == 2
    assert snap["children"]["state"] == {"open": 1, "closed": 1}
    assert snap["by_key"][f"127.0.0.1:{dead.port}"]["state"] == "open"
    assert snap["by_key"][f"127.0.0.1:{healthy.port}"]["state"] == "closed"


def held(gate: threading.Event) -> Action:
    """Answer 200 once the test opens ``gate``."""

    def act(h: Any) -> None:
        gate.wait(WAIT)
        reply(200, b"late")(h)

    return act


def bulkhead_per_host(classifier: Any) -> Callable[[str], Pipeline]:
    return lambda host: Pipeline(
        CircuitBreaker(failure_threshold=3, classifier=classifier), Bulkhead(1)
    )


def wait_for_hits(server: FaultServer, path: str, n: int) -> None:
    for _ in range(int(WAIT / 0.005)):
        if len(server.hits(path)) >= n:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"the server did not see {n} requests to {path}")


@pytest.mark.parametrize("kind", ["httpx", "requests"])
def test_a_per_host_bulkhead_bounds_one_host_only_sync(
    servers: tuple[FaultServer, FaultServer], kind: str
) -> None:
    busy, other = servers
    gate = threading.Event()
    busy.script("/held", held(gate))
    client = Client(kind, per_host=bulkhead_per_host(classifier_of(kind)))
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.get, busy.url("/held"))
            wait_for_hits(busy, "/held", 1)  # the first request holds the host's one permit
            with pytest.raises(BulkheadFullError):
                client.get(busy.url("/held"))
            assert client.get(other.url("/")) == 200
            gate.set()
            assert first.result(WAIT) == 200
        assert client.get(busy.url("/")) == 200  # the permit is back
    finally:
        gate.set()
        client.close()
    assert len(busy.hits("/held")) == 1


async def test_a_per_host_bulkhead_bounds_one_host_only_async(
    servers: tuple[FaultServer, FaultServer],
) -> None:
    busy, other = servers
    gate = threading.Event()
    busy.script("/held", held(gate))
    transport = AsyncResilientTransport(per_host=bulkhead_per_host(HTTPX_CLASSIFIER))
    try:
        async with httpx.AsyncClient(transport=transport, timeout=WAIT) as c:
            first = asyncio.create_task(c.get(busy.url("/held")))
            for _ in range(int(WAIT / 0.005)):
                if busy.hits("/held"):
                    break
                await asyncio.sleep(0.005)
            with pytest.raises(BulkheadFullError):
                await c.get(busy.url("/held"))
            assert (await c.get(other.url("/"))).status_code == 200
            gate.set()
            assert (await first).status_code == 200
            assert (await c.get(busy.url("/"))).status_code == 200
    finally:
        gate.set()
    assert len(busy.hits("/held")) == 1
