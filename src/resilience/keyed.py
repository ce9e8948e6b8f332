"""Keyed: one strategy per key (per upstream host, per tenant), in a bounded registry.

:class:`Keyed` wraps a factory of strategies. ``keyed.for_key(k)`` returns the strategy
of ``k``, made by the factory on first use; used as a decorator with ``key=``, each call
runs through the strategy of the key computed from its arguments.

The registry is an LRU with a maximum size and an idle expiry, so an unbounded stream
of keys (user ids, URLs) cannot grow it without bound. An entry whose strategy has
calls in flight through the keyed decorator is never evicted while they run: a
bulkhead per tenant stays one bulkhead, and a call in flight always finishes on the
strategy it started on.

Keys never reach telemetry: the events of every child carry the keyed policy's name and
the child's kind, and :meth:`Keyed.snapshot` aggregates the children unless asked for
the keys.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

from ._core.clock import SYSTEM_CLOCK, Clock
from ._core.options import to_int, to_seconds
from ._core.strategy import AnyCallable, AsyncCallable, Scope, Strategy

__all__ = ["Keyed"]

S = TypeVar("S", bound=Strategy)


class _Entry:
    """One key's strategy, its per-call-site closures and its use."""

    __slots__ = ("active", "strategy", "used", "wrappers")

    def __init__(self, strategy: Strategy, now: float) -> None:
        self.strategy = strategy
        self.wrappers: dict[int, Any] = {}
        self.active = 0
        self.used = now


class Keyed(Strategy, Generic[S]):
    """A strategy per key, made on first use by ``factory`` and kept in a bounded LRU.

    Parameters:
        factory: called with a key, returns that key's strategy (any
            :class:`~resilience.Strategy`: a breaker, a bulkhead, a limiter, a
            pipeline …). Do not put the key into the strategy's name: names become
            metric labels.
        key: function of the decorated call's arguments (``*args, **kwargs``, ``self``
            included for methods) returning the key, which must be hashable. Needed to
            decorate; ``None`` (default) allows :meth:`for_key` only.
        max_keys: the most keys kept, ``>= 1``; default 1024. The least recently used
            key without calls in flight is evicted first.
        idle_expiry: seconds (float or ``timedelta``) after which an unused key is
            forgotten, ``> 0``; default 600. ``None`` keeps keys until evicted by size.
        name: the policy name when used alone (default: the function's qualified name).
        clock: injected time (tests).

    A key that is evicted or expires starts afresh on its next use (a new breaker is
    closed, a new limiter is full). Calls in flight through the decorator pin their
    key: it is evicted only once they finish, so the registry holds at most
    ``max_keys`` keys plus one per call in flight. A strategy obtained with
    :meth:`for_key` stays usable after its key is evicted; the registry just no longer
    hands it out.
    """

    kind: ClassVar[str] = "keyed"
    __slots__ = (
        "_clock",
        "_entries",
        "_evicted",
        "_factory",
        "_idle",
        "_key",
        "_lock",
        "_max_keys",
        "_sites",
    )

    def __init__(
        self,
        factory: Callable[[Any], S],
        *,
        key: Callable[..., Hashable] | None = None,
        max_keys: int = 1024,
        idle_expiry: float | timedelta | None = 600.0,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        if not callable(factory):
            raise TypeError(f"factory must be a callable returning a Strategy, got {factory!r}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable of the call's arguments or None, got {key!r}")
        self._factory = factory
        self._key = key
        self._max_keys = to_int("max_keys", max_keys, minimum=1)
        self._idle = (
            None
            if idle_expiry is None
            else to_seconds("idle_expiry", idle_expiry, exclusive_minimum=True)
        )
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._evicted = 0
        self._sites = itertools.count()

    def __repr__(self) -> str:
        idle = "None" if self._idle is None else f"{self._idle:g}"
        return (
            f"Keyed({self._factory!r}, max_keys={self._max_keys}, idle_expiry={idle}"
            + (f", name={self.name!r}" if self.name else "")
            + ")"
        )

    def __len__(self) -> int:
        """The number of keys held now."""
        return len(self._entries)

    @property
    def max_keys(self) -> int:
        """The most keys kept."""
        return self._max_keys

    @property
    def idle_expiry(self) -> float | None:
        """Seconds after which an unused key is forgotten (``None``: never)."""
        return self._idle

    # -- the registry ---------------------------------------------------------------------
    def for_key(self, key: Hashable) -> S:
        """The strategy of ``key``, made by the factory on first use."""
        entry = self._checkout(key, pin=False)
        return entry.strategy  # type: ignore[return-value]

    def _make(self, key: Hashable) -> Strategy:
        strategy = self._factory(key)
        if not isinstance(strategy, Strategy):
            raise TypeError(
                f"factory must return a Strategy; it returned {type(strategy).__name__} "
                f"{strategy!r}"
            )
        return strategy

    def _checkout(self, key: Hashable, *, pin: bool) -> _Entry:
        """The entry of ``key``, now most recently used (and pinned while a call runs)."""
        idle = self._idle
        now = self._clock.now() if idle is not None else 0.0
        entries = self._entries
        with self._lock:
            entry = entries.get(key)
            if entry is not None and (idle is None or entry.active or now - entry.used < idle):
                entries.move_to_end(key)
                entry.used = now
                if pin:
                    entry.active += 1
                return entry
        # A miss (or an idle entry to replace): make the strategy outside the lock, since
        # the factory is user code; a concurrent maker of the same key wins the race.
        made = self._make(key)
        with self._lock:
            entry = entries.get(key)
            if entry is not None and (idle is None or entry.active or now - entry.used < idle):
                entries.move_to_end(key)
            else:
                if entry is not None:  # expired while idle: forget it
                    del entries[key]
                    self._evicted += 1
                entry = _Entry(made, now)
                entries[key] = entry
                self._prune(now, keep=entry)
            entry.used = now
            if pin:
                entry.active += 1
            return entry

    def _checkin(self, entry: _Entry) -> None:
        now = self._clock.now() if self._idle is not None else 0.0
        with self._lock:
            entry.active -= 1
            entry.used = now

    def _prune(self, now: float, *, keep: _Entry) -> None:
        """Drop idle keys, then the least recently used ones beyond ``max_keys``.

        The lock is held. Entries with calls in flight are kept (and count as used now):
        evicting them would split one key's state in two. ``keep``, the entry just made,
        is kept too.
        """
        entries = self._entries
        idle = self._idle
        if idle is not None:
            for _ in range(len(entries)):
                k, e = next(iter(entries.items()))
                if now - e.used < idle:
                    break
                if e.active:
                    e.used = now
                    entries.move_to_end(k)
                    continue
                del entries[k]
                self._evicted += 1
        for _ in range(len(entries)):
            if len(entries) <= self._max_keys:
                break
            k, e = next(iter(entries.items()))
            if e.active or e is keep:
                e.used = now
                entries.move_to_end(k)
                continue
            del entries[k]
            self._evicted += 1

    def snapshot(self, *, include_keys: bool = False) -> dict[str, Any]:
        """The registry's size and an aggregate of its children's snapshots.

        ``children`` sums up the children without naming any key: for every numeric
        field its ``sum``, ``min`` and ``max``; for every text field (a breaker's
        ``state``) how many children have each value. ``include_keys=True`` adds
        ``by_key``, each key (as ``str``) with its child's snapshot: keep it out of
        metrics.
        """
        with self._lock:
            items = list(self._entries.items())
            evicted = self._evicted
        snaps = [(k, e.strategy.snapshot()) for k, e in items]
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "keys": len(items),
            "max_keys": self._max_keys,
            "evicted": evicted,
            "children": _aggregate([s for _, s in snaps]),
        }
        if include_keys:
            out["by_key"] = {str(k): s for k, s in snaps}
        return out

    # -- drivers ----------------------------------------------------------------------------
    def _need_key(self) -> Callable[..., Hashable]:
        if self._key is None:
            raise TypeError(
                "Keyed needs key= (a function of the call's arguments returning the key) to "
                "decorate a function; without it use keyed.for_key(key)"
            )
        return self._key

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        key = self._need_key()
        site = next(self._sites)
        checkout = self._checkout
        checkin = self._checkin

        def build(entry: _Entry) -> AnyCallable:
            child = entry.strategy
            child._check_sync(fn)
            wrapped = child._wrap_sync(fn, Scope(scope.policy, child.kind))
            return entry.wrappers.setdefault(site, wrapped)  # type: ignore[no-any-return]

        def keyed_sync(*args: Any, **kwargs: Any) -> Any:
            entry = checkout(key(*args, **kwargs), pin=True)
            try:
                call = entry.wrappers.get(site) or build(entry)
                return call(*args, **kwargs)
            finally:
                checkin(entry)

        return keyed_sync

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        key = self._need_key()
        site = next(self._sites)
        checkout = self._checkout
        checkin = self._checkin

        def build(entry: _Entry) -> AsyncCallable:
            child = entry.strategy
            wrapped = child._wrap_async(fn, Scope(scope.policy, child.kind))
            return entry.wrappers.setdefault(site, wrapped)  # type: ignore[no-any-return]

        async def keyed_async(*args: Any, **kwargs: Any) -> Any:
            entry = checkout(key(*args, **kwargs), pin=True)
            try:
                call = entry.wrappers.get(site) or build(entry)
                return await call(*args, **kwargs)
            finally:
                checkin(entry)

        return keyed_async


def _aggregate(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per field: ``sum`` / ``min`` / ``max`` of numbers, counts of text values."""
    out: dict[str, Any] = {}
    kinds = {s.get("kind") for s in snaps}
    if kinds:
        out["kind"] = kinds.pop() if len(kinds) == 1 else "mixed"
    for snap in snaps:
        for field, value in snap.items():
            if field in ("kind", "name") or value is None or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                agg = out.get(field)
                if agg is None:
                    out[field] = {"sum": value, "min": value, "max": value}
                else:
                    agg["sum"] += value
                    agg["min"] = min(agg["min"], value)
                    agg["max"] = max(agg["max"], value)
            elif isinstance(value, str):
                counts = out.setdefault(field, {})
                counts[value] = counts.get(value, 0) + 1
    return out
