"""The in-memory store: one process, for tests and single-process apps."""

from __future__ import annotations

import threading
from typing import Any

from resilience._core.clock import SYSTEM_CLOCK, Clock

from .store import CLAIMED, ClaimResult, Completed, InFlight

__all__ = ["MemoryStore"]


class _Record:
    __slots__ = ("expires", "fingerprint", "payload", "token")

    def __init__(
        self, fingerprint: str, token: str | None, payload: bytes | None, expires: float
    ) -> None:
        self.fingerprint = fingerprint
        self.token = token
        self.payload = payload
        self.expires = expires


class MemoryStore:
    """Records in a dict guarded by a lock; time from the injected ``clock``.

    Nothing survives the process, and other processes see nothing: use
    :class:`~resilience.idempotency.SQLiteStore` or a server store for that. Expired
    records are dropped when touched and by :meth:`cleanup`.
    """

    supports_sync = True
    supports_async = True
    __slots__ = ("_clock", "_lock", "_records")

    def __init__(self, *, clock: Clock | None = None) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)})"

    def __len__(self) -> int:
        return len(self._records)

    def _live(self, key: str, now: float) -> _Record | None:
        rec = self._records.get(key)
        if rec is not None and rec.expires <= now:
            del self._records[key]
            return None
        return rec

    def claim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        with self._lock:
            now = self._clock.now()
            rec = self._live(key, now)
            if rec is None:
                self._records[key] = _Record(fingerprint, token, None, now + lease)
                return CLAIMED
            if rec.payload is not None:
                return Completed(rec.fingerprint, rec.payload)
            return InFlight(rec.fingerprint, rec.expires - now)

    def complete(self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float) -> bool:
        with self._lock:
            now = self._clock.now()
            rec = self._live(key, now)
            if rec is not None and rec.token != token:
                return False
            self._records[key] = _Record(fingerprint, None, bytes(payload), now + ttl)
            return True

    def release(self, key: str, token: str) -> bool:
        with self._lock:
            rec = self._records.get(key)
            if rec is None or rec.token != token:
                return False
            del self._records[key]
            return True

    def renew(self, key: str, token: str, lease: float) -> bool:
        with self._lock:
            rec = self._records.get(key)
            if rec is None or rec.token != token:
                return False
            rec.expires = self._clock.now() + lease
            return True

    def cleanup(self) -> int:
        """Drop every expired record; returns how many."""
        with self._lock:
            now = self._clock.now()
            dead = [k for k, r in self._records.items() if r.expires <= now]
            for k in dead:
                del self._records[k]
            return len(dead)

    # No I/O: the async twins run inline.
    async def aclaim(self, key: str, fingerprint: str, token: str, lease: float) -> ClaimResult:
        return self.claim(key, fingerprint, token, lease)

    async def acomplete(
        self, key: str, fingerprint: str, token: str, payload: bytes, ttl: float
    ) -> bool:
        return self.complete(key, fingerprint, token, payload, ttl)

    async def arelease(self, key: str, token: str) -> bool:
        return self.release(key, token)

    async def arenew(self, key: str, token: str, lease: float) -> bool:
        return self.renew(key, token, lease)

    def close(self) -> None:
        """Nothing to close; present so every store can be closed the same way."""

    async def aclose(self) -> None:
        """Nothing to close."""

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
