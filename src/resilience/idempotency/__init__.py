"""Idempotency keys: run a call at most once per key and replay its outcome.

Parts: the :class:`Idempotency` strategy (decorator, pipeline member), the store
protocol with four stores (:class:`MemoryStore`, :class:`SQLiteStore`,
:class:`RedisStore`, :class:`PostgresStore`), codecs, the errors and the events, and the
HTTP middleware in :mod:`resilience.idempotency.asgi` and :mod:`resilience.idempotency.wsgi`.

``RedisStore`` and ``PostgresStore`` are imported on first use, so importing this
package imports neither ``redis`` nor ``psycopg``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._guard import canonical, fingerprint_of
from .codec import Codec, JsonCodec, MsgspecCodec, OrjsonCodec, PickleCodec
from .errors import (
    IdempotencyConflictError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyKeyMismatchError,
    IdempotencyStoreError,
    ReplayedError,
)
from .events import (
    IdempotencyConflict,
    IdempotencyKeyMismatch,
    IdempotencyLeaseLost,
    IdempotencyReleased,
    IdempotencyReplayed,
    IdempotencyStoreFailed,
)
from .memory import MemoryStore
from .sqlite import SQLiteStore
from .store import Claimed, ClaimResult, Completed, IdempotencyStore, InFlight
from .strategy import Idempotency

if TYPE_CHECKING:
    from .postgres import PostgresStore
    from .redis import RedisStore

__all__ = [
    "ClaimResult",
    "Claimed",
    "Codec",
    "Completed",
    "Idempotency",
    "IdempotencyConflict",
    "IdempotencyConflictError",
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyKeyMismatch",
    "IdempotencyKeyMismatchError",
    "IdempotencyLeaseLost",
    "IdempotencyReleased",
    "IdempotencyReplayed",
    "IdempotencyStore",
    "IdempotencyStoreError",
    "IdempotencyStoreFailed",
    "InFlight",
    "JsonCodec",
    "MemoryStore",
    "MsgspecCodec",
    "OrjsonCodec",
    "PickleCodec",
    "PostgresStore",
    "RedisStore",
    "ReplayedError",
    "SQLiteStore",
    "canonical",
    "fingerprint_of",
]


def __getattr__(name: str) -> Any:
    # The server stores import their driver; load them only when asked for.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
