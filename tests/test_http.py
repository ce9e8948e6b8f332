"""What the HTTP adapters share: options, Retry-After, classification, per-host strategies."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
import types
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import requests

import resilience.httpx as rhttpx
import resilience.requests as rrequests
from _http_support import Registry, TripAfter
from resilience import Backoff, Outcome, Retry
from resilience._core.strategy import Scope
from resilience._http import (
    FULL,
    NO_RETRY,
    NOT_SENT_ONLY,
    Engine,
    HostStrategies,
    HTTPOptions,
    Overrides,
    Phase,
    host_key,
    parse_retry_after,
    status_outcome,
)
from resilience.testing import FakeClock, no_wait

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


# -- options ------------------------------------------------------------------------------------
def test_default_options() -> None:
    o = HTTPOptions()
    assert o.attempts == 3
    assert o.retry_statuses == {429, 502, 503, 504}
    assert o.idempotent_methods == {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}
    assert o.respect_retry_after is True
    assert o.max_retry_after == 60.0
    assert o.attempt_timeout is None
    assert o.total_timeout is None
    assert o.add_idempotency_key is False
    assert o.idempotency_header == "Idempotency-Key"
    assert o.buffer_limit == 1_048_576
    assert o.backoff == Backoff.exponential()


def test_options_normalise_what_they_are_given() -> None:
    o = HTTPOptions(
        retry_statuses=[500, 503],
        idempotent_methods={"get", "Post"},
        max_retry_after=timedelta(seconds=5),
        attempt_timeout=timedelta(milliseconds=250),
    )
    assert o.retry_statuses == frozenset({500, 503})
    assert o.idempotent_methods == frozenset({"GET", "POST"})
    assert (o.max_retry_after, o.attempt_timeout) == (5.0, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attempts": 0}, ValueError, r"attempts must be between 1 and 1000, got 0"),
        ({"attempts": 2.5}, TypeError, r"attempts must be an int, got float 2.5"),
        ({"retry_statuses": {700}}, ValueError, r"retry_statuses .* between 100 and 599, got 700"),
        ({"retry_statuses": "503"}, TypeError, r"retry_statuses must be a set of ints"),
        ({"retry_statuses": {True}}, TypeError, r"retry_statuses must hold ints"),
        ({"idempotent_methods": {"GE T"}}, ValueError, r"idempotent_methods .* got 'GE T'"),
        ({"respect_retry_after": "yes"}, TypeError, r"respect_retry_after must be a bool"),
        ({"max_retry_after": -1}, ValueError, r"max_retry_after must be >= 0 seconds, got -1"),
        ({"attempt_timeout": 0}, ValueError, r"attempt_timeout must be > 0 seconds, got 0"),
        ({"total_timeout": "1s"}, TypeError, r"total_timeout must be a number of seconds"),
        ({"add_idempotency_key": 1}, TypeError, r"add_idempotency_key must be a bool"),
        ({"idempotency_header": "Idem Key"}, ValueError, r"idempotency_header .* 'Idem Key'"),
        ({"buffer_limit": -1}, ValueError, r"buffer_limit must be >= 0, got -1"),
        ({"backoff": 0.5}, TypeError, r"backoff must be a resilience.Backoff"),
    ],
)
def test_bad_options_name_the_parameter_value_and_range(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        HTTPOptions(**kwargs)


def test_adapters_validate_their_keywords_at_construction() -> None:
    with pytest.raises(ValueError, match="attempts"):
        rhttpx.ResilientTransport(httpx.MockTransport(lambda r: httpx.Response(200)), attempts=0)
    with pytest.raises(ValueError, match="retry_statuses"):
        rrequests.ResilientAdapter(retry_statuses={42})


def test_options_are_frozen_and_pickle() -> None:
    o = HTTPOptions(attempts=5, retry_statuses={503})
    with pytest.raises(AttributeError):
        o.attempts = 2  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(o)) == o


def test_keywords_replace_fields_of_a_shared_options_object() -> None:
    shared = HTTPOptions(attempts=5, add_idempotency_key=True)
    t = rhttpx.ResilientTransport(
        httpx.MockTransport(lambda r: httpx.Response(200)), options=shared, attempts=2
    )
    assert (t.options.attempts, t.options.add_idempotency_key) == (2, True)
    a = rrequests.ResilientAdapter(options=shared, buffer_limit=0)
    assert (a.options.attempts, a.options.buffer_limit) == (5, 0)
    a.close()
    assert shared.merge() is shared


@pytest.mark.parametrize(
    "adapter",
    [rhttpx.ResilientTransport, rhttpx.AsyncResilientTransport, rrequests.ResilientAdapter],
)
def test_every_option_is_a_keyword_of_every_adapter(adapter: type) -> None:
    params = inspect.signature(adapter).parameters
    for f in fields(HTTPOptions):
        assert f.name in params, f"{adapter.__name__} lacks {f.name}="
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY


def test_transports_refuse_the_wrong_kind_of_wrapped_transport() -> None:
    with pytest.raises(TypeError, match="AsyncResilientTransport"):
        rhttpx.ResilientTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ResilientTransport for httpx\.Client"):
        rhttpx.AsyncResilientTransport(httpx.HTTPTransport())  # type: ignore[arg-type]


def test_bad_structure_arguments_are_refused() -> None:
    mock = httpx.MockTransport(lambda r: httpx.Response(200))
    with pytest.raises(TypeError, match=r"strategies\[0\] must be a Strategy"):
        rhttpx.ResilientTransport(mock, strategies=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="per_host must be a factory"):
        rhttpx.ResilientTransport(mock, per_host=42)
    with pytest.raises(ValueError, match="max_hosts must be >= 1, got 0"):
        rhttpx.ResilientTransport(mock, per_host=lambda k: TripAfter(1), max_hosts=0)
    with pytest.raises(ValueError, match="max_hosts must be >= 1, got -1"):
        rhttpx.ResilientTransport(mock, max_hosts=-1)
    with pytest.raises(TypeError, match="options must be an HTTPOptions"):
        rhttpx.ResilientTransport(mock, options={"attempts": 2})  # type: ignore[arg-type]


# -- Retry-After ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Saturday, 01-Mar-25 12:01:00 GMT", 60.0),  # obsolete RFC 850 form
        ("Sat Mar  1 12:00:05 2025", 5.0),  # asctime
        ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),  # in the past: now
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
    ],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_an_http_date_is_read_against_the_wall_clock() -> None:
    later = datetime.now(timezone.utc) + timedelta(seconds=90)
    wait = parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert wait is not None
    assert 85.0 < wait <= 90.0


# -- classification ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (304, Outcome.SUCCESS),
        (404, Outcome.KNOWN_FAILURE),
        (429, Outcome.UNKNOWN_FAILURE),
        (500, Outcome.UNKNOWN_FAILURE),
        (503, Outcome.UNKNOWN_FAILURE),
    ],
)
def test_status_outcome(status: int, outcome: Outcome) -> None:
    assert status_outcome(status) is outcome
    assert rhttpx.RESPONSE_CLASSIFIER.classify_result(httpx.Response(status)) is outcome
    r = requests.Response()
    r.status_code = status
    assert rrequests.RESPONSE_CLASSIFIER.classify_result(r) is outcome


def test_httpx_errors_map_to_how_far_the_request_got() -> None:
    req = httpx.Request("GET", "http://x/")
    phase = rhttpx._phase
    for exc in (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
        assert phase(exc("e", request=req)) is Phase.NOT_SENT
    for exc in (
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.ReadError,
        httpx.WriteError,
        httpx.RemoteProtocolError,
    ):
        assert phase(exc("e", request=req)) is Phase.MAYBE_SENT
    for other in (httpx.UnsupportedProtocol("e"), httpx.LocalProtocolError("e"), ValueError()):
        assert phase(other) is None


def test_requests_errors_map_to_how_far_the_request_got() -> None:
    import urllib3.exceptions as u

    phase = rrequests._phase
    refused = u.MaxRetryError(None, "/", reason=u.NewConnectionError(None, "refused"))  # type: ignore[arg-type]
    assert phase(requests.ConnectionError(refused)) is Phase.NOT_SENT
    assert phase(requests.ConnectTimeout()) is Phase.NOT_SENT
    aborted = u.ProtocolError("Connection aborted.", ConnectionResetError())
    assert phase(requests.ConnectionError(aborted)) is Phase.MAYBE_SENT
    assert phase(requests.ReadTimeout()) is Phase.MAYBE_SENT
    assert phase(requests.exceptions.ChunkedEncodingError()) is Phase.MAYBE_SENT
    assert phase(requests.exceptions.SSLError()) is None
    assert phase(requests.exceptions.InvalidURL()) is None
    assert phase(requests.ConnectionError(u.ClosedPoolError(None, "closed"))) is None  # type: ignore[arg-type]


def _engine(**kw: Any) -> Engine:
    return Engine(
        HTTPOptions(**kw),
        phase=rhttpx._phase,
        status_of=lambda r: 200,
        header_of=lambda r, n: None,
        describe=lambda r: ("GET", "h", 80),
    )


@pytest.mark.parametrize(
    ("method", "headers", "replayable", "options", "overrides", "path"),
    [
        ("GET", {}, True, {}, None, FULL),
        ("DELETE", {}, True, {}, None, FULL),
        ("POST", {}, True, {}, None, NOT_SENT_ONLY),
        ("PATCH", {}, True, {}, None, NOT_SENT_ONLY),
        ("POST", {"idempotency-key": "k"}, True, {}, None, FULL),
        ("POST", {}, True, {"add_idempotency_key": True}, None, FULL),
        ("PUT", {}, False, {}, None, NOT_SENT_ONLY),  # a one-shot body is never re-sent
        ("POST", {"idempotency-key": "k"}, False, {}, None, NOT_SENT_ONLY),
        ("GET", {}, True, {"attempts": 1}, None, NO_RETRY),
        ("GET", {}, True, {}, Overrides(retry=False), NO_RETRY),
        ("POST", {}, True, {}, Overrides(idempotent=True), FULL),
        ("GET", {}, True, {}, Overrides(idempotent=False), NOT_SENT_ONLY),
        ("POST", {}, True, {}, Overrides(idempotency_key=True), FULL),
        (
            "POST",
            {},
            True,
            {"add_idempotency_key": True},
            Overrides(idempotency_key=False),
            NOT_SENT_ONLY,
        ),
    ],
)
def test_the_path_a_request_takes(
    method: str,
    headers: dict[str, str],
    replayable: bool,
    options: dict[str, Any],
    overrides: Overrides | None,
    path: int,
) -> None:
    h = httpx.Headers(headers)
    assert _engine(**options).plan(method, h, replayable, overrides) == path


def test_a_key_is_added_only_where_it_is_needed() -> None:
    e = _engine(add_idempotency_key=True)
    get, post, keyed = httpx.Headers(), httpx.Headers(), httpx.Headers({"Idempotency-Key": "mine"})
    e.plan("GET", get, True)
    e.plan("POST", post, True)
    e.plan("POST", keyed, True)
    assert "idempotency-key" not in get
    assert len(post["idempotency-key"]) == 36
    assert keyed["idempotency-key"] == "mine"


# -- per-host strategies ---------------------------------------------------------------------------
def test_host_key() -> None:
    assert host_key("api.example.com", None, "https") == "api.example.com:443"
    assert host_key("api.example.com", None, "http") == "api.example.com:80"
    assert host_key("127.0.0.1", 8080, "http") == "127.0.0.1:8080"
    assert host_key("::1", 8443, "https") == "[::1]:8443"


def test_per_host_strategies_live_in_a_bounded_lru() -> None:
    made: list[str] = []

    def factory(key: str) -> TripAfter:
        made.append(key)
        return TripAfter(1)

    hosts = HostStrategies(factory, 2, Scope("http", "per_host"))
    a = hosts.entry("a:80").strategy
    hosts.entry("b:80")
    assert hosts.entry("a:80").strategy is a  # used: now the most recent
    hosts.entry("c:80")  # evicts b, the least recently used
    assert len(hosts) == 2
    assert hosts.entry("a:80").strategy is a
    hosts.entry("b:80")
    assert made == ["a:80", "b:80", "c:80", "b:80"]


def test_a_registry_owns_its_instances() -> None:
    registry = Registry(lambda key: TripAfter(1))
    hosts = HostStrategies(registry, 4, Scope("http", "per_host"))
    send = hosts.send_for("a:80", lambda r, c: "sent")
    assert hosts.send_for("a:80", lambda r, c: "other") is send  # the wrapping is cached
    registry.by_key["a:80"] = TripAfter(1)  # the registry replaced the instance
    assert hosts.send_for("a:80", lambda r, c: "sent") is not send
    assert registry.asked == ["a:80", "a:80", "a:80"]


def test_a_factory_must_make_strategies() -> None:
    hosts = HostStrategies(lambda key: "breaker", 4, Scope("http", "per_host"))
    with pytest.raises(TypeError, match="per_host must produce a Strategy for 'a:80'"):
        hosts.entry("a:80")


# -- the public surface ----------------------------------------------------------------------------
@pytest.mark.parametrize("module", [rhttpx, rrequests])
def test_all_is_complete(module: types.ModuleType) -> None:
    for name in module.__all__:
        assert hasattr(module, name), name
    own = {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and getattr(v, "__module__", None) == module.__name__
        and (inspect.isclass(v) or inspect.isfunction(v))
    }
    assert own <= set(module.__all__)


def test_importing_resilience_imports_no_http_client() -> None:
    code = (
        "import resilience, resilience._http, sys; "
        "print('httpx' in sys.modules, 'requests' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_engine_uses_the_core_retry() -> None:
    t = rhttpx.ResilientTransport(httpx.MockTransport(lambda r: httpx.Response(200)), attempts=4)
    assert isinstance(t._engine._full, Retry)
    assert t._engine._full.attempts_limit == 4


# -- options at work (httpx.MockTransport) ----------------------------------------------------
def _client(handler: Any, **options: Any) -> httpx.Client:
    return httpx.Client(
        transport=rhttpx.ResilientTransport(httpx.MockTransport(handler), **options)
    )


def test_retry_after_can_be_ignored() -> None:
    clock = FakeClock()
    answers = iter([httpx.Response(503, headers={"Retry-After": "30"}), httpx.Response(200)])
    with _client(
        lambda r: next(answers),
        respect_retry_after=False,
        backoff=Backoff.constant(0.25),
        clock=clock,
    ) as client:
        assert client.get("http://api.test/").status_code == 200
    assert clock.sleeps == [0.25]


def test_custom_methods_and_statuses() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) == 1:
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(500 if len(seen) == 2 else 200)

    with no_wait(), _client(handler, idempotent_methods={"POST"}, retry_statuses={500}) as c:
        assert c.post("http://api.test/").status_code == 200
    assert seen == ["POST", "POST", "POST"]
    seen.clear()
    with (
        no_wait(),
        _client(handler, idempotent_methods={"POST"}) as c,
        pytest.raises(httpx.ReadError),
    ):
        c.get("http://api.test/")  # GET is not idempotent here
    assert seen == ["GET"]
