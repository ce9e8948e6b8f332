"""The Idempotency strategy's semantics, on the in-memory store under a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import decimal
import hashlib
import json
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import Classifier, Outcome, Pipeline, Retry
from resilience.idempotency import (
    Completed,
    Idempotency,
    IdempotencyConflict,
    IdempotencyConflictError,
    IdempotencyKeyError,
    IdempotencyKeyMismatch,
    IdempotencyKeyMismatchError,
    IdempotencyLeaseLost,
    IdempotencyReleased,
    IdempotencyReplayed,
    IdempotencyStoreError,
    IdempotencyStoreFailed,
    MemoryStore,
    PickleCodec,
    ReplayedError,
    SQLiteStore,
    canonical,
    fingerprint_of,
)
from resilience.idempotency._guard import store_key
from resilience.testing import CapturingListener, FakeClock


class PaymentDeclined(ValueError):
    pass


class NeedsTwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(a, b)


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def guard(store: Any, clock: FakeClock, **kw: Any) -> Idempotency:
    kw.setdefault("key", "key")
    return Idempotency(store=store, clock=clock, **kw)


# -- replay --------------------------------------------------------------------------------
def test_second_call_replays_the_stored_result_without_running(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    calls: list[int] = []

    @guard(store, clock)
    def charge(key: str, amount: int) -> dict[str, Any]:
        calls.append(amount)
        return {"charged": amount, "id": len(calls)}

    first = charge("k1", 10)
    assert charge("k1", 10) == first == {"charged": 10, "id": 1}
    assert charge(key="k1", amount=10) == first
    assert calls == [10]
    replayed = events.of_type(IdempotencyReplayed)
    assert [(e.key, e.error) for e in replayed] == [("k1", None), ("k1", None)]
    assert replayed[0].source.endswith("charge/idempotency")


async def test_async_second_call_replays(store: MemoryStore, clock: FakeClock) -> None:
    calls = 0

    @guard(store, clock)
    async def charge(key: str, amount: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return amount * 2

    assert await charge("k", 2) == 4
    assert await charge("k", 2) == 4
    assert calls == 1


def test_json_codec_replays_what_json_round_trips(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock)
    def f(key: str) -> tuple[int, int]:
        return (1, 2)

    assert f("k") == (1, 2)
    assert f("k") == [1, 2]


def test_pickle_codec_replays_any_picklable_value(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock, codec=PickleCodec())
    def f(key: str) -> tuple[int, frozenset[int]]:
        return (1, frozenset({2}))

    assert f("k") == f("k") == (1, frozenset({2}))


@pytest.mark.parametrize("module", ["orjson", "msgspec"])
def test_optional_json_codecs(module: str, store: MemoryStore, clock: FakeClock) -> None:
    pytest.importorskip(module)
    from resilience.idempotency import MsgspecCodec, OrjsonCodec

    codec = OrjsonCodec() if module == "orjson" else MsgspecCodec()

    @guard(store, clock, codec=codec)
    def f(key: str) -> dict[str, Any]:
        return {"a": [1, 2.5, "x", None]}

    assert f("k") == f("k") == {"a": [1, 2.5, "x", None]}


@pytest.mark.parametrize(
    "data",
    [
        b'{"v":1,"result":"\xc3\xa9"}',  # what JsonCodec writes: UTF-8
        '{"v":1,"result":"\u00e9"}'.encode("utf-16"),
        b'\xef\xbb\xbf{"v":1,"result":"\xc3\xa9"}',  # UTF-8 with a BOM
    ],
)
def test_json_codec_reads_every_encoding_json_loads_reads(data: bytes) -> None:
    from resilience.idempotency import JsonCodec

    assert JsonCodec().decode(data) == json.loads(data) == {"v": 1, "result": "\u00e9"}


def test_json_codec_still_rejects_what_is_not_json() -> None:
    from resilience.idempotency import JsonCodec

    with pytest.raises(ValueError, match="Expecting"):
        JsonCodec().decode(b'{"v":')


# -- failures ------------------------------------------------------------------------------
def test_known_failure_is_stored_and_replayed_as_its_type(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    calls = 0

    @guard(store, clock, classifier=Classifier(known=(ValueError,)))
    def pay(key: str) -> None:
        nonlocal calls
        calls += 1
        raise PaymentDeclined("card declined")

    with pytest.raises(PaymentDeclined):
        pay("k")
    # PaymentDeclined itself is not allowed, its base ValueError is: rebuilt as that.
    with pytest.raises(ValueError, match="card declined") as info:
        pay("k")
    assert type(info.value) is ValueError
    assert any("replayed" in n for n in info.value.__notes__)
    assert calls == 1
    assert events.of_type(IdempotencyReplayed)[0].error == f"{__name__}.PaymentDeclined"


def test_replay_errors_rebuilds_the_exact_type(store: MemoryStore, clock: FakeClock) -> None:
    @guard(
        store, clock, classifier=Classifier(known=(ValueError,)), replay_errors=(PaymentDeclined,)
    )
    def pay(key: str) -> None:
        raise PaymentDeclined("declined")

    for _ in range(2):
        with pytest.raises(PaymentDeclined, match="declined"):
            pay("k")


def test_a_failure_whose_type_is_not_allowed_replays_as_replayed_error(
    store: MemoryStore, clock: FakeClock
) -> None:
    @guard(store, clock, classifier=Classifier(known_if=lambda e: True))
    def f(key: str) -> None:
        raise NeedsTwoArgs("a", "b")

    with pytest.raises(NeedsTwoArgs):
        f("k")
    with pytest.raises(ReplayedError) as info:
        f("k")
    assert info.value.type_name == f"{__name__}.NeedsTwoArgs"
    assert info.value.message == "('a', 'b')"


def test_a_type_that_cannot_be_rebuilt_from_its_message_replays_as_replayed_error(
    store: MemoryStore, clock: FakeClock
) -> None:
    @guard(store, clock, classifier=Classifier(known=(NeedsTwoArgs,)))
    def f(key: str) -> None:
        raise NeedsTwoArgs("a", "b")

    with pytest.raises(NeedsTwoArgs):
        f("k")
    with pytest.raises(ReplayedError):
        f("k")


def test_unknown_failure_releases_the_key_so_a_retry_runs(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    outcomes: list[Any] = [OSError("down"), "ok"]

    @guard(store, clock)
    def f(key: str) -> str:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return str(out)

    with pytest.raises(OSError):
        f("k")
    assert [e.reason for e in events.of_type(IdempotencyReleased)] == ["unknown_failure"]
    assert f("k") == "ok"
    assert f("k") == "ok"
    assert outcomes == []


def test_unknown_failure_can_be_stored(store: MemoryStore, clock: FakeClock) -> None:
    calls = 0

    @guard(store, clock, on_unknown_failure="store", replay_errors=(OSError,))
    def f(key: str) -> None:
        nonlocal calls
        calls += 1
        raise OSError("down")

    for _ in range(3):
        with pytest.raises(OSError, match="down"):
            f("k")
    assert calls == 1


def test_result_classified_as_unknown_failure_is_returned_but_not_stored(
    store: MemoryStore, clock: FakeClock
) -> None:
    calls = 0
    classifier = Classifier(
        result=lambda r: Outcome.UNKNOWN_FAILURE if r >= 500 else Outcome.SUCCESS
    )

    @guard(store, clock, classifier=classifier)
    def f(key: str) -> int:
        nonlocal calls
        calls += 1
        return 503 if calls == 1 else 200

    assert f("k") == 503
    assert f("k") == 200
    assert f("k") == 200
    assert calls == 2


def test_result_the_codec_cannot_encode_is_returned_and_the_key_released(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    made: list[object] = []

    @guard(store, clock)
    def f(key: str) -> object:
        made.append(object())
        return made[-1]

    assert f("k") is made[0]
    assert f("k") is made[1]
    assert [e.reason for e in events.of_type(IdempotencyReleased)] == ["not_encodable"] * 2


def test_keyboard_interrupt_releases_the_key(store: MemoryStore, clock: FakeClock) -> None:
    interrupt = [True, False]

    @guard(store, clock)
    def f(key: str) -> str:
        if interrupt.pop(0):
            raise KeyboardInterrupt
        return "ran"

    with pytest.raises(KeyboardInterrupt):
        f("k")
    assert f("k") == "ran"


async def test_cancellation_releases_the_key(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    started = asyncio.Event()
    runs = 0

    @guard(store, clock)
    async def f(key: str) -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            started.set()
            await asyncio.Event().wait()
        return "second run"

    task = asyncio.create_task(f("k"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.reason for e in events.of_type(IdempotencyReleased)] == ["cancelled"]
    assert await f("k") == "second run"


# -- conflicts and waiting -----------------------------------------------------------------
def test_call_while_in_flight_is_rejected_with_409(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    seen: list[BaseException] = []

    @guard(store, clock, lease=30)
    def f(key: str, nested: bool) -> str:
        if nested:
            try:
                f(key, nested=True)
            except IdempotencyConflictError as exc:
                seen.append(exc)
        return "outer"

    assert f("k", nested=True) == "outer"
    (exc,) = seen
    assert isinstance(exc, IdempotencyConflictError)
    assert exc.status_code == 409
    assert exc.retry_after == pytest.approx(30)
    assert exc.key == "k"
    (event,) = events.of_type(IdempotencyConflict)
    assert event.reason == "idempotency_conflict"
    assert event.retry_after == pytest.approx(30)


async def test_waiting_call_gets_the_replayed_outcome(store: MemoryStore, clock: FakeClock) -> None:
    gate = asyncio.Event()
    runs = 0

    @guard(store, clock, wait=10, poll_interval=0.5)
    async def f(key: str) -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    first = asyncio.create_task(f("k"))
    await asyncio.sleep(0)
    second = asyncio.create_task(f("k"))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, second) == [42, 42]
    assert runs == 1
    assert clock.sleeps
    assert all(s == 0.5 for s in clock.sleeps)


async def test_waiting_is_bounded(store: MemoryStore, clock: FakeClock) -> None:
    gate = asyncio.Event()

    @guard(store, clock, wait=2, poll_interval=0.5)
    async def f(key: str) -> int:
        await gate.wait()
        return 1

    first = asyncio.create_task(f("k"))
    await asyncio.sleep(0)
    start = clock.now()
    with pytest.raises(IdempotencyConflictError):
        await f("k")
    assert clock.now() - start == pytest.approx(2)
    assert sum(clock.sleeps) == pytest.approx(2)
    gate.set()
    assert await first == 1


def test_sync_waiting_polls_with_the_clock(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock, wait=1, poll_interval=0.25)
    def f(key: str, nested: bool) -> str:
        if nested:
            with pytest.raises(IdempotencyConflictError):
                f(key, nested=True)
        return "done"

    assert f("k", nested=True) == "done"
    assert clock.sleeps == [0.25, 0.25, 0.25, 0.25]


# -- mismatch ------------------------------------------------------------------------------
def test_same_key_different_arguments_is_a_mismatch(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    calls = 0

    @guard(store, clock)
    def charge(key: str, amount: int) -> int:
        nonlocal calls
        calls += 1
        return amount

    charge("k", 10)
    with pytest.raises(IdempotencyKeyMismatchError) as info:
        charge("k", 11)
    assert info.value.status_code == 422
    assert calls == 1
    assert [e.key for e in events.of_type(IdempotencyKeyMismatch)] == ["k"]


def test_mismatch_is_detected_while_in_flight_too(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock)
    def charge(key: str, amount: int) -> int:
        if amount == 1:
            with pytest.raises(IdempotencyKeyMismatchError):
                charge(key, 2)
        return amount

    assert charge("k", 1) == 1


def test_fingerprint_ignores_how_arguments_are_passed_and_the_key(
    store: MemoryStore, clock: FakeClock
) -> None:
    calls = 0

    @guard(store, clock)
    def f(key: str, a: int, b: dict[str, int], c: int = 3) -> int:
        nonlocal calls
        calls += 1
        return a

    f("k", 1, {"x": 1, "y": 2})
    f(key="k", a=1, b={"y": 2, "x": 1}, c=3)
    f("k", 1, b={"x": 1, "y": 2})
    assert calls == 1


def test_fingerprint_can_be_custom_or_off(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock, fingerprint=lambda key, amount, note: amount)
    def custom(key: str, amount: int, note: str) -> str:
        return note

    assert custom("k", 1, "first") == "first"
    assert custom("k", 1, "ignored by the fingerprint") == "first"
    with pytest.raises(IdempotencyKeyMismatchError):
        custom("k", 2, "first")

    @guard(store, clock, fingerprint=None)
    def off(key: str, amount: int) -> int:
        return amount

    assert off("j", 1) == 1
    assert off("j", 2) == 1


def test_methods_leave_self_out_of_the_fingerprint(store: MemoryStore, clock: FakeClock) -> None:
    class Service:
        def __init__(self) -> None:
            self.calls = 0

        @guard(store, clock)
        def pay(self, key: str, amount: int) -> int:
            self.calls += 1
            return amount

    a, b = Service(), Service()
    assert a.pay("k", 5) == 5
    assert b.pay("k", 5) == 5
    assert (a.calls, b.calls) == (1, 0)


def test_unfingerprintable_arguments_are_a_clear_type_error(
    store: MemoryStore, clock: FakeClock
) -> None:
    @guard(store, clock)
    def f(key: str, thing: object) -> None:
        return None

    with pytest.raises(TypeError, match="fingerprint="):
        f("k", object())


def test_canonical_forms() -> None:
    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    assert canonical({"b": 1, "a": (1, 2)}) == {"b": 1, "a": [1, 2]}
    assert canonical({1, 3, 2}) == {"$set": [1, 2, 3]}
    assert canonical(b"\x01") == {"$bytes": "01"}
    assert canonical(Point(1, 2)) == {"$" + Point.__qualname__: {"x": 1, "y": 2}}
    assert fingerprint_of({"a": 1, "b": 2}) == fingerprint_of({"b": 2, "a": 1})
    assert fingerprint_of(1) != fingerprint_of("1") != fingerprint_of(True)
    assert len(fingerprint_of("x")) == 64


def test_fingerprints_and_store_keys_do_not_change_between_versions() -> None:
    # Stored records carry these hashes: if they moved, an upgrade would answer every
    # retry of a request made before it with a key mismatch, or miss its record.
    assert (
        fingerprint_of({"amount": 1, "currency": "EUR"})
        == "688ebbbd4aecd07236a865198b2a1c388fe03f5d3097a748dba2cdae563dacef"
    )
    mixed = fingerprint_of(
        [1, 2.5, None, True, "\u00e9"],
        {"tags": {"b", "a"}, "when": datetime.date(2024, 1, 2)},
        (b"\x00", decimal.Decimal("1.10"), float("inf"), {1: "x"}),
    )
    assert mixed == "ab7718e07e935558af15a3d4b8b1e662e433fe9319acce2439cbeea2cb922162"
    assert store_key("shop", None, "k-1") == (
        "shop:117af7f341d43b6291c21e5339866d5bd444158ce8a0d9a7f7f883755f9cbdf3"
    )
    assert store_key("shop", "tenant", "k-1") == (
        "shop:478547bb5e14e8bd1feda7acce0b3345a5931a57bacc503252aeb0ce2e3896cc"
    )


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary(max_size=8)
    | st.dates(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.dictionaries(st.integers(), inner, max_size=3)
        | st.frozensets(st.integers() | st.text(max_size=3), max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_json_values, max_size=3))
def test_fingerprint_is_the_sha256_of_the_sorted_compact_json_of_the_canonical_form(
    parts: list[Any],
) -> None:
    # The reference definition: what every stored fingerprint was computed with.
    reference = json.dumps(canonical(list(parts)), sort_keys=True, separators=(",", ":"))
    assert fingerprint_of(*parts) == hashlib.sha256(reference.encode()).hexdigest()


def test_canonical_json_without_the_c_encoder_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    from resilience.idempotency._guard import _canonical_json

    value = [{"b": [1, 2.5, None, True, "\u00e9"], "a": {"$set": ["x"]}}]
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"))
    assert _canonical_json()(value) == expected
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    assert _canonical_json()(value) == expected


# -- keys and scopes -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "match"),
    [
        (None, "missing"),
        ("", "empty"),
        ("x" * 256, "256 characters"),
        ("caf\u00e9", "printable ASCII"),
        ("line\nbreak", "printable ASCII"),
        (42, "must be a str"),
    ],
)
def test_bad_keys_are_rejected_before_the_store(
    key: Any, match: str, store: MemoryStore, clock: FakeClock
) -> None:
    @guard(store, clock)
    def f(key: Any) -> None:
        raise AssertionError("must not run")

    with pytest.raises(IdempotencyKeyError, match=match) as info:
        f(key)
    assert isinstance(info.value, ValueError)
    assert info.value.status_code == 400
    assert len(store) == 0


def test_key_length_limit_is_configurable(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock, max_key_length=8)
    def f(key: str) -> str:
        return key

    assert f("x" * 8) == "x" * 8
    with pytest.raises(IdempotencyKeyError, match="at most 8"):
        f("x" * 9)


def test_optional_key_runs_unguarded(store: MemoryStore, clock: FakeClock) -> None:
    calls = 0

    @guard(store, clock, required=False)
    def f(key: str | None = None) -> int:
        nonlocal calls
        calls += 1
        return calls

    assert (f(), f()) == (1, 2)


def test_key_function_and_scopes(store: MemoryStore, clock: FakeClock) -> None:
    calls: list[str] = []

    @guard(
        store,
        clock,
        key=lambda tenant, request_id, amount: request_id,
        scope=lambda tenant, request_id, amount: tenant,
    )
    def charge(tenant: str, request_id: str, amount: int) -> str:
        calls.append(tenant)
        return f"{tenant}:{amount}"

    assert charge("acme", "r1", 5) == "acme:5"
    # Another tenant with the same key neither sees acme's result nor a mismatch.
    assert charge("globex", "r1", 7) == "globex:7"
    assert charge("acme", "r1", 5) == "acme:5"
    assert calls == ["acme", "globex"]


def test_namespaces_separate_functions(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock)
    def a(key: str) -> str:
        return "a"

    @guard(store, clock)
    def b(key: str) -> str:
        return "b"

    assert (a("k"), b("k")) == ("a", "b")


# -- leases --------------------------------------------------------------------------------
def test_a_dead_claimants_lease_expires_and_the_call_runs_once(
    store: MemoryStore, clock: FakeClock
) -> None:
    calls = 0
    ns = "dead"

    @guard(store, clock, lease=5, namespace=ns)
    def f(key: str) -> int:
        nonlocal calls
        calls += 1
        return calls

    from resilience.idempotency._guard import store_key

    # A claimant that died: claimed, never completed, never released.
    store.claim(store_key(ns, None, "k"), fingerprint_of({}), "dead-token", 5)
    with pytest.raises(IdempotencyConflictError):
        f("k")
    clock.advance(5)
    assert f("k") == 1
    assert f("k") == 1
    assert calls == 1


def test_a_call_longer_than_its_lease_loses_it(
    store: MemoryStore, clock: FakeClock, events: CapturingListener
) -> None:
    runs: list[str] = []

    @guard(store, clock, lease=1)
    def f(key: str) -> str:
        runs.append("run")
        if len(runs) == 1:
            clock.advance(2)  # past the lease: another call may take the key over
            assert f(key) == "second"
            return "first"
        return "second"

    assert f("k") == "first"  # the caller still gets its own outcome
    assert runs == ["run", "run"]
    assert [e.key for e in events.of_type(IdempotencyLeaseLost)] == ["k"]
    assert f("k") == "second"  # what the call holding the key stored


def test_outcome_expires_after_ttl(store: MemoryStore, clock: FakeClock) -> None:
    calls = 0

    @guard(store, clock, ttl=60)
    def f(key: str) -> int:
        nonlocal calls
        calls += 1
        return calls

    assert f("k") == 1
    clock.advance(59)
    assert f("k") == 1
    clock.advance(1)
    assert f("k") == 2


def test_sync_heartbeat_keeps_a_long_call_claimed() -> None:
    store = MemoryStore()
    entered = threading.Event()
    conflicts: list[BaseException] = []

    @Idempotency(store=store, key="key", lease=0.3, heartbeat=True)
    def slow(key: str) -> str:
        entered.set()
        time.sleep(0.6)
        return "slow"

    t = threading.Thread(target=slow, args=("k",))
    t.start()
    entered.wait(5)
    time.sleep(0.45)  # past the first lease
    try:
        slow("k")
    except IdempotencyConflictError as exc:
        conflicts.append(exc)
    t.join(5)
    assert len(conflicts) == 1
    assert slow("k") == "slow"
    assert not any(th.name == "resilience-idempotency-heartbeat" for th in threading.enumerate())


async def test_async_heartbeat_keeps_a_long_call_claimed() -> None:
    store = MemoryStore()
    entered = asyncio.Event()

    @Idempotency(store=store, key="key", lease=0.3, heartbeat=True)
    async def slow(key: str) -> str:
        entered.set()
        await asyncio.sleep(0.6)
        return "slow"

    task = asyncio.create_task(slow("k"))
    await entered.wait()
    await asyncio.sleep(0.45)
    with pytest.raises(IdempotencyConflictError):
        await slow("k")
    assert await task == "slow"
    assert await slow("k") == "slow"


# -- store failures ------------------------------------------------------------------------
def test_store_outage_fails_closed_by_default(tmp_path: Any, events: CapturingListener) -> None:
    store = SQLiteStore(tmp_path / "x.sqlite3")
    store.close()  # a store that cannot answer

    @Idempotency(store=store, key="key")
    def f(key: str) -> None:
        raise AssertionError("must not run")

    with pytest.raises(IdempotencyStoreError) as info:
        f("k")
    assert info.value.status_code == 503
    (event,) = events.of_type(IdempotencyStoreFailed)
    assert (event.operation, event.fail_open) == ("claim", False)


async def test_store_outage_can_fail_open(tmp_path: Any, events: CapturingListener) -> None:
    store = SQLiteStore(tmp_path / "x.sqlite3")
    store.close()
    calls = 0

    @Idempotency(store=store, key="key", on_store_error="fail_open")
    async def f(key: str) -> int:
        nonlocal calls
        calls += 1
        return calls

    assert (await f("k"), await f("k")) == (1, 2)
    assert [e.fail_open for e in events.of_type(IdempotencyStoreFailed)] == [True, True]


class FailingComplete(MemoryStore):
    def complete(self, *args: Any) -> bool:
        raise IdempotencyStoreError("disk full")


def test_store_failure_after_the_call_still_returns_the_result(
    clock: FakeClock, events: CapturingListener, caplog: pytest.LogCaptureFixture
) -> None:
    @Idempotency(store=FailingComplete(clock=clock), key="key", clock=clock)
    def f(key: str) -> str:
        return "computed"

    assert f("k") == "computed"
    (event,) = events.of_type(IdempotencyStoreFailed)
    assert event.operation == "complete"
    assert "store failed on complete" in caplog.text


def test_undecodable_stored_outcome_is_a_store_error(store: MemoryStore, clock: FakeClock) -> None:
    @guard(store, clock, fingerprint=None, namespace="n")
    def f(key: str) -> int:
        return 1

    from resilience.idempotency._guard import store_key

    skey = store_key("n", None, "k")
    store.claim(skey, "", "t", 10)
    store.complete(skey, "", "t", b"\x80not json", 10)
    with pytest.raises(IdempotencyStoreError, match="cannot be decoded"):
        f("k")
    assert isinstance(store.claim(skey, "", "t2", 10), Completed)


# -- composition and options ---------------------------------------------------------------
def test_retry_outside_the_guard_runs_again_after_an_unknown_failure(
    store: MemoryStore, clock: FakeClock
) -> None:
    outcomes: list[Any] = [OSError("flaky"), "paid"]

    @Pipeline(
        Retry(on=OSError, attempts=3, clock=clock),
        Idempotency(store=store, key="key", clock=clock),
        name="payments",
    )
    def pay(key: str) -> str:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return str(out)

    assert pay("k") == "paid"
    assert pay("k") == "paid"
    assert outcomes == []


def test_options_are_validated_once(store: MemoryStore) -> None:
    with pytest.raises(TypeError, match="store must be"):
        Idempotency(store=object(), key="key")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be > 0"):
        Idempotency(store=store, key="key", ttl=0)
    with pytest.raises(ValueError, match="lease must be > 0"):
        Idempotency(store=store, key="key", lease=-1)
    with pytest.raises(ValueError, match="on_store_error must be one of"):
        Idempotency(store=store, key="key", on_store_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_unknown_failure must be one of"):
        Idempotency(store=store, key="key", on_unknown_failure="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_key_length must be between 1 and 4096"):
        Idempotency(store=store, key="key", max_key_length=0)
    with pytest.raises(TypeError, match="key must be"):
        Idempotency(store=store, key=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll_interval"):
        Idempotency(store=store, key="key", poll_interval=0)
    with pytest.raises(TypeError, match="replay_errors"):
        Idempotency(store=store, key="key", replay_errors=[ValueError])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key='request_id' is not a parameter"):

        @Idempotency(store=store, key="request_id")
        def f(key: str) -> None:
            return None


def test_repr_and_snapshot(store: MemoryStore) -> None:
    g = Idempotency(store=store, key="key", ttl=60, lease=5, name="pay")
    assert "ttl=60" in repr(g)
    snap = g.snapshot()
    assert snap["kind"] == "idempotency"
    assert snap["store"] == "MemoryStore"
    assert (snap["on_unknown_failure"], snap["on_store_error"]) == ("release", "fail_closed")
