"""resilience.requests against a real loopback server with scripted faults."""

from __future__ import annotations

import io
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from _http_support import FaultServer, TripAfter, closed_port, cut, reply, reset, slow
from resilience import Backoff, GiveUpReason, RejectedError, RetryBudget, RetryGaveUp, deadline
from resilience.requests import (
    BodyNotReplayableError,
    RequestAttempted,
    ResilientAdapter,
    resend_count,
)
from resilience.testing import CapturingListener, FakeClock, no_wait


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer()
    yield s
    s.close()


@pytest.fixture
def sessions() -> Iterator[Any]:
    made: list[requests.Session] = []

    def make(**options: Any) -> requests.Session:
        s = requests.Session()
        s.mount("http://", ResilientAdapter(**options))
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What each attempt handed to urllib3's adapter: the timeout and the resend count."""
    seen: list[dict[str, Any]] = []
    original = HTTPAdapter.send

    def spy(self: HTTPAdapter, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        seen.append({"timeout": kwargs.get("timeout"), "resend": resend_count()})
        return original(self, request, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", spy)
    return seen


def test_connection_refused_is_retried_for_every_method(
    sessions: Any, events: CapturingListener
) -> None:
    s = sessions()
    url = f"http://127.0.0.1:{closed_port()}/x"
    for method in ("GET", "POST"):
        events.clear()
        with no_wait(), pytest.raises(requests.ConnectionError):
            s.request(method, url)
        assert [e.attempt for e in events.of_type(RequestAttempted)] == [1, 2, 3]


def test_retryable_status_then_success(sessions: Any, server: FaultServer) -> None:
    server.script("/a", reply(503), reply(200, b"ok"))
    with no_wait():
        r = sessions().get(server.url("/a"))
    assert (r.status_code, r.text) == (200, "ok")
    assert len(server.hits("/a")) == 2


def test_exhausted_status_returns_the_last_response(
    sessions: Any, server: FaultServer, events: CapturingListener
) -> None:
    server.script("/busy", reply(503, b"busy"))
    with no_wait():
        r = sessions(attempts=2).get(server.url("/busy"))
    assert (r.status_code, r.text) == (503, "busy")
    assert len(server.hits("/busy")) == 2
    assert events.of_type(RetryGaveUp)[0].reason is GiveUpReason.ATTEMPTS


def test_post_without_key_is_not_retried_after_a_read_error(
    sessions: Any, server: FaultServer
) -> None:
    server.script("/pay", reset(), reply(201))
    with no_wait(), pytest.raises(requests.ConnectionError):
        sessions().post(server.url("/pay"), data=b"charge 10")
    assert len(server.hits("/pay")) == 1


def test_post_with_key_is_retried_after_a_read_error(sessions: Any, server: FaultServer) -> None:
    server.script("/pay", reset(), reply(201))
    with no_wait():
        r = sessions().post(server.url("/pay"), data=b"x", headers={"Idempotency-Key": "k-9"})
    assert r.status_code == 201
    assert [h.headers["idempotency-key"] for h in server.hits("/pay")] == ["k-9", "k-9"]


def test_add_idempotency_key_sends_the_same_key_on_every_attempt(
    sessions: Any, server: FaultServer
) -> None:
    server.script("/orders", reply(502), reset(), reply(201))
    s = sessions(add_idempotency_key=True)
    with no_wait():
        assert s.post(server.url("/orders"), json={"n": 1}).status_code == 201
        s.get(server.url("/list"))
    keys = {h.headers["idempotency-key"] for h in server.hits("/orders")}
    assert len(server.hits("/orders")) == 3
    assert len(keys) == 1
    uuid.UUID(keys.pop())
    assert "idempotency-key" not in server.hits("/list")[0].headers


def test_retry_after_seconds_and_http_date(sessions: Any, server: FaultServer) -> None:
    clock = FakeClock()
    when = formatdate(time.time() + 3, usegmt=True)
    server.script(
        "/r",
        reply(429, headers={"Retry-After": "2"}),
        reply(503, headers={"Retry-After": when}),
        reply(200),
    )
    assert sessions(clock=clock).get(server.url("/r")).status_code == 200
    first, second = clock.sleeps
    assert first == 2.0
    assert 1.0 < second <= 3.0


def test_retry_after_past_the_deadline_gives_up(sessions: Any, server: FaultServer) -> None:
    clock = FakeClock()
    server.script("/r", reply(503, headers={"Retry-After": "60"}), reply(200))
    s = sessions(clock=clock)
    with deadline(5.0, clock=clock):
        assert s.get(server.url("/r")).status_code == 503
    assert len(server.hits("/r")) == 1


def test_reset_mid_body_is_retried_when_not_streaming(sessions: Any, server: FaultServer) -> None:
    server.script("/body", cut(), reply(200, b"whole"))
    with no_wait():
        assert sessions().get(server.url("/body")).text == "whole"
    assert len(server.hits("/body")) == 2


def test_a_streamed_response_is_handed_over_unread(sessions: Any, server: FaultServer) -> None:
    server.script("/body", cut(), reply(200, b"whole"))
    with no_wait(), sessions().get(server.url("/body"), stream=True) as r:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            r.content  # noqa: B018
    assert len(server.hits("/body")) == 1


def test_responses_are_closed_so_the_pool_is_never_exhausted(server: FaultServer) -> None:
    # pool_block=True with two connections, streamed responses: one response of a failed
    # attempt left open and the third request would wait for a connection forever.
    server.script("/down", reply(503, b"x" * 100))
    session = requests.Session()
    session.mount("http://", ResilientAdapter(pool_maxsize=2, pool_block=True))
    statuses: list[int] = []

    def run() -> None:
        for _ in range(1000):
            with session.get(server.url("/down"), stream=True) as r:
                statuses.append(r.status_code)

    with no_wait():
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout=30)
    session.close()
    assert not worker.is_alive(), "the pool ran dry"
    assert statuses == [503] * 1000
    assert len(server.hits("/down")) == 3000


class _Interrupted(BaseException):
    """Stands for a KeyboardInterrupt while the retry waits between attempts."""


class InterruptingClock(FakeClock):
    def sleep(self, seconds: float) -> None:
        raise _Interrupted


def test_an_interrupted_call_closes_the_response_it_held(server: FaultServer) -> None:
    # One pooled connection, pool_block=True: had the held 503 stayed open, the next
    # request would wait for a connection forever.
    server.script("/wait", reply(503, b"x" * 100))
    session = requests.Session()
    session.mount(
        "http://", ResilientAdapter(pool_maxsize=1, pool_block=True, clock=InterruptingClock())
    )
    outcome: list[object] = []

    def run() -> None:
        try:
            session.get(server.url("/wait"), stream=True)
        except _Interrupted as exc:
            outcome.append(exc)
        with session.get(server.url("/next"), stream=True) as r:
            outcome.append(r.status_code)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=30)
    session.close()
    assert not worker.is_alive(), "the held response kept the only connection"
    assert isinstance(outcome[0], _Interrupted)
    assert outcome[1:] == [200]


def test_the_deadline_caps_the_timeout_of_every_attempt(
    sessions: Any, server: FaultServer, sent: list[dict[str, Any]]
) -> None:
    clock = FakeClock()
    server.script("/d", reply(503), reply(503), reply(200))
    s = sessions(clock=clock, backoff=Backoff.constant(0.5))
    with deadline(2.0, clock=clock):
        assert s.get(server.url("/d"), timeout=(30, 1.8)).status_code == 200
    assert [x["timeout"] for x in sent] == [(2.0, 1.8), (1.5, 1.5), (1.0, 1.0)]
    assert [x["resend"] for x in sent] == [0, 1, 2]
    sent.clear()
    with deadline(2.0, clock=clock):
        s.get(server.url("/e"), timeout=urllib3.Timeout(connect=0.5, read=9))
        s.get(server.url("/e"))
    assert [x["timeout"] for x in sent] == [(0.5, 2.0), 2.0]


def test_attempt_timeout_cuts_a_slow_response_and_retries(
    sessions: Any, server: FaultServer, sent: list[dict[str, Any]]
) -> None:
    server.script("/slow", slow(10.0), reply(200, b"fast"))
    with no_wait():
        assert sessions(attempt_timeout=0.2).get(server.url("/slow"), timeout=30).text == "fast"
    assert len(server.hits("/slow")) == 2
    assert all(0.0 < x["timeout"] <= 0.2 for x in sent)


def test_a_streaming_body_is_not_re_sent(sessions: Any, server: FaultServer) -> None:
    server.script("/up", reply(503), reply(200))
    with no_wait():
        r = sessions().put(server.url("/up"), data=(c for c in [b"ab", b"cd"]))
    assert r.status_code == 503
    assert [h.body for h in server.hits("/up")] == [b"abcd"]


def test_a_streaming_body_is_retried_after_an_error_before_sending(
    sessions: Any, events: CapturingListener
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/up"
    with no_wait(), pytest.raises(requests.ConnectionError):
        sessions().post(url, data=(c for c in [b"ab", b"cd"]))
    assert len(events.of_type(RequestAttempted)) == 3


def test_a_partly_read_stream_is_never_re_sent(
    sessions: Any, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_then_fail(self: HTTPAdapter, request: requests.PreparedRequest, **kw: Any) -> Any:
        next(iter(request.body))  # type: ignore[call-overload]
        raise requests.ConnectTimeout("timed out after reading")

    monkeypatch.setattr(HTTPAdapter, "send", read_then_fail)
    with no_wait(), pytest.raises(BodyNotReplayableError) as info:
        sessions().post(server.url("/up"), data=(c for c in [b"ab", b"cd"]))
    assert isinstance(info.value.__cause__, requests.ConnectTimeout)


def test_a_seekable_file_body_is_re_sent_intact(sessions: Any, server: FaultServer) -> None:
    server.script("/up", reply(503), reset(), reply(200))
    payload = b"0123456789" * 10_000
    file = io.BytesIO(b"head" + payload)
    file.seek(4)  # the body starts where the file stands, and starts there again
    with no_wait():
        assert sessions().put(server.url("/up"), data=file, timeout=2).status_code == 200
    assert [h.body for h in server.hits("/up")] == [payload] * 3


def test_one_bad_host_does_not_trip_calls_to_another(sessions: Any) -> None:
    bad, good = FaultServer(), FaultServer()
    try:
        bad.script("/", reply(503))
        s = sessions(per_host=lambda key: TripAfter(2), max_hosts=8)
        with no_wait():
            for _ in range(3):
                with pytest.raises(RejectedError):
                    s.get(bad.url("/"))
            assert [s.get(good.url("/")).status_code for _ in range(4)] == [200] * 4
        assert (len(bad.hits("/")), len(good.hits("/"))) == (2, 4)
    finally:
        bad.close()
        good.close()


def test_a_session_with_the_adapter_pickles(server: FaultServer) -> None:
    server.script("/p", reply(503), reply(200, b"ok"))
    session = requests.Session()
    session.mount("http://", ResilientAdapter(attempts=5, add_idempotency_key=True, name="api"))
    copy = pickle.loads(pickle.dumps(session))
    session.close()
    try:
        adapter = copy.get_adapter(server.url("/p"))
        assert isinstance(adapter, ResilientAdapter)
        assert adapter.options.attempts == 5
        assert adapter.options.add_idempotency_key
        with no_wait():
            assert copy.post(server.url("/p"), data=b"x").text == "ok"
        hits = server.hits("/p")
        assert len(hits) == 2
        assert hits[0].headers["idempotency-key"]
    finally:
        copy.close()


def test_an_adapter_with_a_shared_budget_refuses_to_pickle() -> None:
    adapter = ResilientAdapter(budget=RetryBudget())
    with pytest.raises(TypeError, match="RetryBudget"):
        pickle.dumps(adapter)
    adapter.close()


def test_attempts_carry_the_resend_count_and_no_url(
    sessions: Any, server: FaultServer, events: CapturingListener
) -> None:
    server.script("/secret", reply(504), reply(200))
    with no_wait():
        sessions(name="search").get(server.url("/secret?q=private"))
    attempts = events.of_type(RequestAttempted)
    assert [(a.policy, a.method, a.resend_count, a.status) for a in attempts] == [
        ("search", "GET", 0, 504),
        ("search", "GET", 1, 200),
    ]
    assert attempts[0].server_port == server.port
    assert all("secret" not in repr(a) and "private" not in repr(a) for a in attempts)


def test_otel_spans_follow_the_http_client_conventions(server: FaultServer, sessions: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import resilience.otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server.script("/items", reply(503), reply(503), reply(200, b"ok"))
    session = sessions(attempts=3, name="catalog-requests")
    resilience.otel.enable(provider)
    try:
        with no_wait():
            response = session.get(server.url("/items?secret=1"))
    finally:
        resilience.otel.disable()
        provider.shutdown()
    assert response.status_code == 200
    [span] = [s for s in exporter.get_finished_spans() if s.name == "catalog-requests"]
    assert span.attributes is not None
    assert span.attributes["http.request.resend_count"] == 2
    attempts = [
        dict(e.attributes or {}) for e in span.events if e.name == "resilience.http.attempt"
    ]
    assert [a["http.request.resend_count"] for a in attempts] == [0, 1, 2]
    assert [a.get("http.response.status_code") for a in attempts] == [503, 503, 200]
    assert attempts[0]["error.type"] == "503"
    assert {a["server.address"] for a in attempts} == {"127.0.0.1"}
    assert all("secret" not in str(v) for a in attempts for v in a.values())
