"""The guard's decisions and its two drivers, shared by the decorator and the middleware.

:func:`decide` is the whole state machine of one call, with no I/O: given what the store
answered to a claim, it says *run*, *replay*, *conflict*, *mismatch* or *poll again after
this many seconds*. :class:`Guard` drives it against a store, sync (``begin``,
``settle``, ``release``) and async (``abegin``, ``asettle``, ``arelease``); the
:class:`~resilience.idempotency.Idempotency` strategy and the ASGI/WSGI middleware are
thin layers over those.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import decimal
import enum
import hashlib
import json
import logging
import math
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from resilience._core.clock import SYSTEM_CLOCK, Clock
from resilience._core.deadline import remaining
from resilience._core.events import EVENTS, Event
from resilience._core.options import to_int, to_seconds
from resilience._core.strategy import Scope

from .errors import (
    IdempotencyConflictError,
    IdempotencyKeyError,
    IdempotencyKeyMismatchError,
    IdempotencyStoreError,
)
from .events import (
    IdempotencyConflict,
    IdempotencyKeyMismatch,
    IdempotencyLeaseLost,
    IdempotencyReleased,
    IdempotencyReplayed,
    IdempotencyStoreFailed,
)
from .store import Claimed, ClaimResult, Completed, IdempotencyStore, InFlight

logger = logging.getLogger("resilience")

DEFAULT_MAX_KEY_LENGTH: Final = 255
MAX_KEY_LENGTH_LIMIT: Final = 4096

RUN: Final = "run"
REPLAY: Final = "replay"
CONFLICT: Final = "conflict"
MISMATCH: Final = "mismatch"

STORE_ERROR_POLICIES: Final = ("fail_closed", "fail_open")


# -- keys and fingerprints -----------------------------------------------------------------
def check_key(key: object, max_length: int, policy: str) -> str:
    """The key itself if it is usable; else :class:`IdempotencyKeyError` saying why."""
    if not isinstance(key, str):
        if key is None:
            raise IdempotencyKeyError("the idempotency key is missing", policy=policy)
        raise IdempotencyKeyError(
            f"the idempotency key must be a str, got {type(key).__name__}", policy=policy
        )
    if not key:
        raise IdempotencyKeyError("the idempotency key is empty", policy=policy, key=key)
    if len(key) > max_length:
        raise IdempotencyKeyError(
            f"the idempotency key is {len(key)} characters long; at most {max_length} are allowed",
            policy=policy,
            key=None,
        )
    if not (key.isascii() and key.isprintable()):
        raise IdempotencyKeyError(
            "the idempotency key must be printable ASCII (0x20-0x7E)", policy=policy, key=None
        )
    return key


def store_key(namespace: str, scope: str | None, key: str) -> str:
    """Where a key's record lives: ``namespace:sha256(scope, key)``.

    Hashing the scope (tenant, principal …) together with the key means that the same
    key sent by two principals names two unrelated records.
    """
    # Length-prefixed, so no (scope, key) pair can be spelled like another.
    owner = "" if scope is None else f"{len(scope)}:{scope}"
    digest = hashlib.sha256(f"{owner}|{key}".encode()).hexdigest()
    return f"{namespace}:{digest}"


def _sort_key(item: Any) -> str:
    return json.dumps(item, sort_keys=True, ensure_ascii=True)


# Types that are their own canonical form (exact types: subclasses take the long way).
_PLAIN: Final = frozenset((str, int, bool, type(None)))


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data that is equal exactly when the values are equal.

    Dicts are ordered by key, sets sorted, tuples become lists; bytes, dates, decimals,
    UUIDs, enums, dataclasses and pydantic models get a tagged form. Anything else raises
    ``TypeError``.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    # The common shapes first, without a call per plain item.
    if kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                break
            out[k] = v if type(v) in _PLAIN else canonical(v)
        else:
            return out
    elif kind is list:
        return [v if type(v) in _PLAIN else canonical(v) for v in value]
    return _canonical_other(value)


def _canonical_other(value: Any) -> Any:
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: canonical(v) for k, v in value.items()}
        pairs = [[canonical(k), canonical(v)] for k, v in value.items()]
        return {"$map": sorted(pairs, key=_sort_key)}
    if isinstance(value, (set, frozenset)):
        return {"$set": sorted((canonical(v) for v in value), key=_sort_key)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, enum.Enum):
        return {"$enum": f"{type(value).__qualname__}.{value.name}"}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return {"$" + type(value).__name__: value.isoformat()}
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return {"$" + type(value).__name__: str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$" + type(value).__qualname__: fields}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return {"$" + type(value).__qualname__: canonical(dump(mode="json"))}
    raise TypeError(
        f"cannot fingerprint a {type(value).__qualname__} argument; give the guard a "
        "fingerprint= function (or fingerprint=None to turn the check off)"
    )


def _canonical_json() -> Callable[[Any], str]:
    """``json.dumps(value, sort_keys=True, separators=(",", ":"))``, built once.

    ``json.dumps`` with options builds a new encoder on every call, which costs more
    than the encoding of a few arguments itself; the C encoder, made once, does not.
    Canonical data is a fresh tree (no cycles to look for). Should the C encoder be
    missing or answer differently, the pure-Python encoder serves.
    """
    encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    try:
        iterencode = make(
            None,
            encoder.default,
            json.encoder.encode_basestring_ascii,
            None,
            ":",
            ",",
            True,
            False,
            True,
        )

        def dump(value: Any) -> str:
            return "".join(iterencode(value, 0))

        sample = [{"b": [1, 2.5, None, True, "\u00e9\n"], "a": {"$map": []}}, -0.0, 10**20]
        if dump(sample) == encoder.encode(sample):
            return dump
    except Exception:  # another signature: keep the portable encoder
        pass
    return encoder.encode


_dump_canonical: Final = _canonical_json()


def fingerprint_of(*parts: Any) -> str:
    """The SHA-256 (hex) of the canonical JSON of ``parts``: what the guard compares.

    Only this hash is stored, never the arguments or body themselves.
    """
    data = _dump_canonical([canonical(part) for part in parts])
    return hashlib.sha256(data.encode()).hexdigest()


def new_token() -> str:
    """A random lease token (128 bits from the OS)."""
    return secrets.token_hex(16)


# -- the decision --------------------------------------------------------------------------
def decide(
    got: ClaimResult, fingerprint: str, now: float, wait_until: float | None, poll: float
) -> str | float:
    """What to do after a claim: ``RUN``, ``REPLAY``, ``CONFLICT``, ``MISMATCH`` or a delay.

    A delay (``float`` seconds) means: the key is in flight and we may still wait, so
    claim again after it. An empty fingerprint on either side matches anything (the
    check is off).
    """
    if isinstance(got, Claimed):
        return RUN
    theirs = got.fingerprint
    if fingerprint and theirs and theirs != fingerprint:
        return MISMATCH
    if isinstance(got, Completed):
        return REPLAY
    if wait_until is None or now >= wait_until:
        return CONFLICT
    return min(poll, wait_until - now)


# -- options -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GuardOptions:
    """The validated options every guard shares (decorator and middleware)."""

    store: IdempotencyStore
    ttl: float
    lease: float
    heartbeat: float | None
    wait: float | None
    poll_interval: float
    fail_open: bool
    max_key_length: int
    clock: Clock


def guard_options(
    *,
    store: object,
    ttl: object,
    lease: object,
    heartbeat: object,
    wait: object,
    poll_interval: object,
    on_store_error: object,
    max_key_length: object,
    clock: object,
) -> GuardOptions:
    """Validate the shared options once, naming the parameter, the value and the range."""
    if not isinstance(store, IdempotencyStore):
        raise TypeError(
            "store must be an idempotency store (MemoryStore, SQLiteStore, RedisStore, "
            f"PostgresStore or your own IdempotencyStore), got {store!r}"
        )
    ttl_s = to_seconds("ttl", ttl, exclusive_minimum=True)
    lease_s = to_seconds("lease", lease, exclusive_minimum=True)
    if not isinstance(heartbeat, bool):
        raise TypeError(f"heartbeat must be a bool, got {heartbeat!r}")
    wait_s = None if wait is None else to_seconds("wait", wait)
    poll_s = to_seconds("poll_interval", poll_interval, exclusive_minimum=True, maximum=60.0)
    if on_store_error not in STORE_ERROR_POLICIES:
        raise ValueError(
            f"on_store_error must be one of {', '.join(map(repr, STORE_ERROR_POLICIES))}, "
            f"got {on_store_error!r}"
        )
    max_len = to_int("max_key_length", max_key_length, minimum=1, maximum=MAX_KEY_LENGTH_LIMIT)
    if clock is not None and not isinstance(clock, Clock):
        raise TypeError(f"clock must be a Clock, got {clock!r}")
    return GuardOptions(
        store=store,
        ttl=ttl_s,
        lease=lease_s,
        heartbeat=lease_s / 3 if heartbeat else None,
        wait=wait_s or None,
        poll_interval=poll_s,
        fail_open=on_store_error == "fail_open",
        max_key_length=max_len,
        clock=clock or SYSTEM_CLOCK,
    )


# -- the drivers ---------------------------------------------------------------------------
class Ticket:
    """The claim one call holds while it runs."""

    __slots__ = ("beat", "fingerprint", "key", "scope", "store_key", "token")

    def __init__(self, scope: Scope, key: str, store_key: str, fingerprint: str, token: str):
        self.scope = scope
        self.key = key
        self.store_key = store_key
        self.fingerprint = fingerprint
        self.token = token
        self.beat: _Beat | asyncio.Task[None] | None = None


class _Beat(threading.Thread):
    """Renews a sync call's lease every ``interval`` seconds until stopped."""

    def __init__(self, store: IdempotencyStore, ticket: Ticket, lease: float, interval: float):
        super().__init__(name="resilience-idempotency-heartbeat", daemon=True)
        self._store = store
        self._ticket = ticket
        self._lease = lease
        self._interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        t = self._ticket
        while not self._stop_event.wait(self._interval):
            try:
                if not self._store.renew(t.store_key, t.token, self._lease):
                    return
            except IdempotencyStoreError:
                continue  # try again on the next beat; the lease may still hold

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class Guard:
    """Claims, replays, stores and releases for one guard configuration."""

    __slots__ = ("_opts",)

    def __init__(self, opts: GuardOptions) -> None:
        self._opts = opts

    @property
    def options(self) -> GuardOptions:
        return self._opts

    def _publish(self, event: Event) -> None:
        EVENTS.publish(event)

    def _wait_until(self, now: float) -> float | None:
        wait = self._opts.wait
        if wait is None:
            return None
        left = remaining()
        if left is not None and left < wait:
            wait = left
        return now + wait

    def _store_failed(
        self, scope: Scope, key: str, operation: str, exc: BaseException, fail_open: bool
    ) -> None:
        if not fail_open:
            logger.warning(
                "resilience: idempotency store failed on %s for %s/%s: %r",
                operation,
                scope.policy,
                scope.strategy,
                exc,
            )
        if EVENTS.wants(scope.policy):
            self._publish(
                IdempotencyStoreFailed(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._opts.clock.now(),
                    key=key,
                    operation=operation,
                    error=exc,
                    fail_open=fail_open,
                )
            )

    def _verdict(
        self,
        scope: Scope,
        key: str,
        store_key: str,
        fp: str,
        token: str,
        got: ClaimResult,
        act: str,
    ) -> Ticket | Completed:
        """Turn a final decision into a ticket, a stored outcome, or the error to raise."""
        if act == RUN:
            return Ticket(scope, key, store_key, fp, token)
        if act == REPLAY:
            assert isinstance(got, Completed)
            return got
        now = self._opts.clock.now()
        wants = EVENTS.wants(scope.policy)
        if act == MISMATCH:
            if wants:
                self._publish(
                    IdempotencyKeyMismatch(
                        policy=scope.policy, strategy=scope.strategy, time=now, key=key
                    )
                )
            raise IdempotencyKeyMismatchError(
                "this idempotency key was already used for a different request",
                policy=scope.policy,
                key=key,
            )
        assert isinstance(got, InFlight)
        retry_after = max(0.0, got.expires_in)
        if wants:
            self._publish(
                IdempotencyConflict(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=now,
                    reason="idempotency_conflict",
                    retry_after=retry_after,
                    key=key,
                )
            )
        raise IdempotencyConflictError(
            "a call with this idempotency key is still in progress",
            policy=scope.policy,
            key=key,
            retry_after=retry_after,
        )

    # -- sync ------------------------------------------------------------------------------
    def begin(self, scope: Scope, key: str, store_key: str, fp: str) -> Ticket | Completed | None:
        """Claim the key: a :class:`Ticket` to run, the :class:`Completed` record to replay,
        or ``None`` to run unguarded (the store failed and the guard fails open).

        Raises the conflict or mismatch error, or the store error when failing closed.
        """
        opts = self._opts
        store, clock, token = opts.store, opts.clock, new_token()
        wait_until: float | None = None
        while True:
            try:
                got = store.claim(store_key, fp, token, opts.lease)
            except IdempotencyStoreError as exc:
                self._store_failed(scope, key, "claim", exc, opts.fail_open)
                if opts.fail_open:
                    return None
                raise
            if isinstance(got, Claimed):
                return Ticket(scope, key, store_key, fp, token)
            now = clock.now()
            if wait_until is None and isinstance(got, InFlight):
                wait_until = self._wait_until(now)
            act = decide(got, fp, now, wait_until, opts.poll_interval)
            if isinstance(act, float):
                clock.sleep(act)
                continue
            return self._verdict(scope, key, store_key, fp, token, got, act)

    def settle(self, ticket: Ticket, payload: bytes | None, reason: str) -> None:
        """Store ``payload`` for the ticket's key, or release the key (``payload=None``).

        Never raises: the caller's outcome is passed on whatever the store does.
        """
        self._stop_sync_beat(ticket)
        store = self._opts.store
        op = "release" if payload is None else "complete"
        try:
            if payload is None:
                store.release(ticket.store_key, ticket.token)
                self._released(ticket, reason)
            elif not store.complete(
                ticket.store_key, ticket.fingerprint, ticket.token, payload, self._opts.ttl
            ):
                self._lost(ticket)
        except IdempotencyStoreError as exc:
            self._store_failed(ticket.scope, ticket.key, op, exc, False)

    def start_beat(self, ticket: Ticket) -> None:
        interval = self._opts.heartbeat
        if interval is not None:
            beat = _Beat(self._opts.store, ticket, self._opts.lease, interval)
            ticket.beat = beat
            beat.start()

    def _stop_sync_beat(self, ticket: Ticket) -> None:
        beat = ticket.beat
        if isinstance(beat, _Beat):
            ticket.beat = None
            beat.stop()

    def _released(self, ticket: Ticket, reason: str) -> None:
        scope = ticket.scope
        if EVENTS.wants(scope.policy):
            self._publish(
                IdempotencyReleased(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._opts.clock.now(),
                    key=ticket.key,
                    reason=reason,
                )
            )

    def _lost(self, ticket: Ticket) -> None:
        scope = ticket.scope
        logger.warning(
            "resilience: %s/%s finished after its idempotency lease was taken over; "
            "the outcome was not stored (raise lease= or set heartbeat=True)",
            scope.policy,
            scope.strategy,
        )
        if EVENTS.wants(scope.policy):
            self._publish(
                IdempotencyLeaseLost(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._opts.clock.now(),
                    key=ticket.key,
                )
            )

    def replayed(self, scope: Scope, key: str, error: str | None) -> None:
        if EVENTS.wants(scope.policy):
            self._publish(
                IdempotencyReplayed(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._opts.clock.now(),
                    key=key,
                    error=error,
                )
            )

    # -- async -----------------------------------------------------------------------------
    async def abegin(
        self, scope: Scope, key: str, store_key: str, fp: str
    ) -> Ticket | Completed | None:
        """The async twin of :meth:`begin`."""
        opts = self._opts
        store, clock, token = opts.store, opts.clock, new_token()
        wait_until: float | None = None
        while True:
            try:
                got = await store.aclaim(store_key, fp, token, opts.lease)
            except IdempotencyStoreError as exc:
                self._store_failed(scope, key, "claim", exc, opts.fail_open)
                if opts.fail_open:
                    return None
                raise
            except BaseException:
                # Cancelled while the claim was on the wire: it may have been written.
                # Releasing with our token is a no-op if it was not.
                await asyncio.shield(self._arelease_token(store_key, token))
                raise
            if isinstance(got, Claimed):
                return Ticket(scope, key, store_key, fp, token)
            now = clock.now()
            if wait_until is None and isinstance(got, InFlight):
                wait_until = self._wait_until(now)
            act = decide(got, fp, now, wait_until, opts.poll_interval)
            if isinstance(act, float):
                await clock.asleep(act)
                continue
            return self._verdict(scope, key, store_key, fp, token, got, act)

    async def asettle(self, ticket: Ticket, payload: bytes | None, reason: str) -> None:
        """The async twin of :meth:`settle`; shielded, so a second cancellation of the
        caller cannot leave the key claimed."""
        await asyncio.shield(self._asettle(ticket, payload, reason))

    async def _asettle(self, ticket: Ticket, payload: bytes | None, reason: str) -> None:
        await self._stop_async_beat(ticket)
        store = self._opts.store
        op = "release" if payload is None else "complete"
        try:
            if payload is None:
                await store.arelease(ticket.store_key, ticket.token)
                self._released(ticket, reason)
            elif not await store.acomplete(
                ticket.store_key, ticket.fingerprint, ticket.token, payload, self._opts.ttl
            ):
                self._lost(ticket)
        except IdempotencyStoreError as exc:
            self._store_failed(ticket.scope, ticket.key, op, exc, False)

    def astart_beat(self, ticket: Ticket) -> None:
        interval = self._opts.heartbeat
        if interval is None:
            return
        store, clock, lease = self._opts.store, self._opts.clock, self._opts.lease

        async def beat() -> None:
            while True:
                await clock.asleep(interval)
                try:
                    if not await store.arenew(ticket.store_key, ticket.token, lease):
                        return
                except IdempotencyStoreError:
                    continue  # try again on the next beat; the lease may still hold

        ticket.beat = asyncio.get_running_loop().create_task(beat())

    async def _arelease_token(self, store_key: str, token: str) -> None:
        with contextlib.suppress(IdempotencyStoreError):  # the lease ends on its own
            await self._opts.store.arelease(store_key, token)

    async def _stop_async_beat(self, ticket: Ticket) -> None:
        beat = ticket.beat
        if isinstance(beat, asyncio.Task):
            ticket.beat = None
            beat.cancel()
            # asyncio.wait, not `await beat`: a cancellation of *this* task must propagate,
            # the beat's own CancelledError must not.
            await asyncio.wait([beat])
