"""The store protocol every idempotency store implements, sync and async.

A record lives under one *store key* and is in one of two states:

- **in flight**: claimed by a call holding a random ``token``, until the lease ends;
- **completed**: holding the encoded outcome, until its time-to-live ends.

Four operations, each atomic in the store, make the whole protocol (plus their async
twins ``aclaim``, ``acomplete``, ``arelease``, ``arenew``):

- ``claim(key, fingerprint, token, lease)``: with no live record, write an in-flight
  record and answer :class:`Claimed`; otherwise answer the live record
  (:class:`InFlight` or :class:`Completed`) and change nothing.
- ``complete(key, fingerprint, token, payload, ttl)``: store the outcome if the record is
  still ours (or gone); ``False`` if another call has taken the key over.
- ``release(key, token)``: delete the record if it is still ours.
- ``renew(key, token, lease)``: extend our lease; ``False`` if the record is not ours.

An expired record (lease or time-to-live over) counts as absent. Expiry is judged by the
store's own time (the Redis or PostgreSQL server's, SQLite's ``julianday('now')``), so
every process agrees on it; the in-memory store uses its injected clock.

Stores map their driver's exceptions to :class:`~resilience.idempotency.IdempotencyStoreError`
(``raise … from``), so the guard can apply ``on_store_error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["IdempotencyStore", "ClaimResult", "Claimed", "InFlight", "Completed", "CLAIMED"]


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key was free (or its record had expired) and is now ours."""


CLAIMED = Claimed()


@dataclass(frozen=True, slots=True)
class InFlight:
    """Another call holds the key; its lease ends in ``expires_in`` seconds."""

    fingerprint: str
    expires_in: float


@dataclass(frozen=True, slots=True)
class Completed:
    """An earlier call stored its outcome: ``payload`` as encoded by the codec."""

    fingerprint: str
    payload: bytes


ClaimResult = Claimed | InFlight | Completed


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where claims and outcomes live. See the module docstring for the contract.

    ``supports_sync`` / ``supports_async`` say which half works (a store built on an
    asyncio client has no sync half); the guard checks them when it decorates.
    """

    @property
    def supports_sync(self) -> bool: ...

    @property
    def supports_async(self) -> bool: ...

    def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult: ...

    def complete(
        self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float
    ) -> bool: ...

    def release(self, key: str, token: str) -> bool: ...

    def renew(self, key: str, token: str, lease: float) -> bool: ...

    async def aclaim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult: ...

    async def acomplete(
        self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float
    ) -> bool: ...

    async def arelease(self, key: str, token: str) -> bool: ...

    async def arenew(self, key: str, token: str, lease: float) -> bool: ...
