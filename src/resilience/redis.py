"""Shared state across the replicas of a service, kept in Redis (redis-py, sync or asyncio).

Parts: :class:`RedisRateLimiter` (a :class:`~resilience.RateLimiter` whose permits are
shared by every process that names the same key), :class:`RedisCircuitBreaker` (one
circuit for a fleet; see :mod:`resilience._redis_breaker`) and the events
:class:`SharedStateLost` / :class:`SharedStateRestored`.

The limiter runs the local limiter's arithmetic (GCRA, time in whole microseconds
scaled by ``rate``) inside one Lua script, atomic per key, with Redis ``TIME`` as the
clock: no replica's clock is ever trusted. The script answers the wait in the same units
the local :class:`~resilience.rate_limit._Gcra` uses, and the Python side turns it into
seconds, events and errors with the very code of :class:`~resilience.RateLimiter`.

Importing :mod:`resilience` never imports this module nor ``redis``.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Any, Literal

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ._core.clock import Clock
from ._core.events import EVENTS
from ._core.options import to_int, to_seconds
from ._core.strategy import AnyCallable, AsyncCallable, Scope, Strategy
from ._core.telemetry import PolicyGate
from ._redis_breaker import RedisCircuitBreaker
from ._redis_link import SharedStateLost, SharedStateRestored, _Link, _report_lost, _report_restored
from .rate_limit import _US, RateLimited, RateLimitedError, RateLimiter

__all__ = ["RedisCircuitBreaker", "RedisRateLimiter", "SharedStateLost", "SharedStateRestored"]

OnRedisError = Literal["fail_open", "fail_closed"]

# KEYS[1]: the limiter's hash {b: base seconds, t: tat in units since base, r: rate}.
# ARGV: rate, interval (units), tolerance (units), max wait (units, -1: no limit).
# Answers {wait, used, seconds, microseconds}: wait 0 = admitted now, > 0 and admitted
# when wait <= max wait (the permit is the caller's once it has slept the wait), else
# refused; ``used`` is tat - now after the decision; the last two are Redis TIME.
# Times are kept relative to a base second moved forward every hour, so that every
# number stays far below 2^53 (Lua numbers are doubles) and integer arithmetic is exact.
_TAKE = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local usec = tonumber(t[2])
local rate = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'b', 't', 'r')
local base = tonumber(s[1])
local tat
if base == nil then
  base = sec
  tat = 0
else
  tat = tonumber(s[2])
  local old = tonumber(s[3])
  if old ~= rate then tat = math.floor(tat / old * rate) end
  if sec - base > 3600 then
    tat = tat - (sec - base) * 1000000 * rate
    base = sec
  end
end
local now = ((sec - base) * 1000000 + usec) * rate
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > 0 and max_wait >= 0 and wait > max_wait then
  return {wait, tat - now, sec, usec}
end
tat = tat + interval
redis.call('HSET', KEYS[1], 'b', base, 't', tat, 'r', rate)
-- Once tat has passed the key holds nothing a fresh key would not: let it vanish.
redis.call('PEXPIRE', KEYS[1], math.floor((tat - now) / rate / 1000) + 1000)
return {wait, tat - now, sec, usec}
"""


class _Reply:
    """One answer of the script: the wait (units), ``tat - now`` (units), Redis time (µs)."""

    __slots__ = ("server_us", "used", "wait")

    def __init__(self, raw: Any) -> None:
        self.wait = int(raw[0])
        self.used = int(raw[1])
        self.server_us = int(raw[2]) * _US + int(raw[3])


class RedisRateLimiter(RateLimiter):
    """A :class:`~resilience.RateLimiter` whose permits are shared by every replica.

    Every process that builds a limiter with the same ``prefix`` + ``key`` draws from one
    budget of ``rate`` calls per ``period`` plus ``burst``, decided atomically in Redis.

    Parameters:
        client: a ``redis.Redis`` (sync; coroutine functions run its command in a worker
            thread) or a ``redis.asyncio.Redis`` (coroutine functions only). Give it a
            small ``socket_timeout`` and ``socket_connect_timeout`` and no retries
            (``retry=Retry(NoBackoff(), 0)``): they bound how long a call can wait on a
            sick Redis (:meth:`from_url` sets all three).
        rate, period, burst, max_wait: as for :class:`~resilience.RateLimiter`, over the
            whole fleet. A caller that waits reserves its permit in Redis and sleeps
            until it is due: one round trip, first come first served across the fleet;
            a waiter cancelled while it sleeps forfeits the permit it reserved.
        key: the Redis key suffix naming the shared budget (a tenant id with
            :class:`~resilience.Keyed`); default ``name``. One of the two is required.
        prefix: prepended to ``key``; default ``"resilience:ratelimit:"``.
        on_redis_error: ``"fail_open"`` (default) admits calls through a local
            :class:`~resilience.RateLimiter` of ``rate / fleet_size`` while Redis is
            unreachable; ``"fail_closed"`` rejects them with :class:`RateLimitedError`.
        fleet_size: replicas sharing the budget, an int ``>= 1``; default 1. Sizes the
            local fallback: ``rate`` per ``period * fleet_size``, ``burst // fleet_size``.
        min_backoff, max_backoff: seconds between attempts to reach Redis again after a
            failure, doubling from ``min_backoff`` (default 0.5) up to ``max_backoff``
            (default 5).
        name: the policy name (telemetry); ``clock``: injected time for local sleeps
            and the fallback (tests). Timestamps of the budget are Redis ``TIME``.
    """

    __slots__ = (
        "_client",
        "_fallback",
        "_fleet_size",
        "_is_async",
        "_key",
        "_link",
        "_on_error",
        "_owned",
        "_prefix",
        "_script",
        "_used",
    )

    def __init__(
        self,
        client: Any,
        rate: int,
        *,
        period: float | timedelta = 1.0,
        burst: int = 0,
        max_wait: float | timedelta | None = 0.0,
        key: str | None = None,
        prefix: str = "resilience:ratelimit:",
        on_redis_error: OnRedisError = "fail_open",
        fleet_size: int = 1,
        min_backoff: float | timedelta = 0.5,
        max_backoff: float | timedelta = 5.0,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            rate, period=period, burst=burst, max_wait=max_wait, name=name, clock=clock
        )
        if isinstance(client, redis.asyncio.Redis):
            self._is_async = True
        elif isinstance(client, redis.Redis):
            self._is_async = False
        else:
            raise TypeError(f"client must be a redis.Redis or redis.asyncio.Redis, got {client!r}")
        if key is None:
            key = self.name
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"key must be a non-empty str (or give name=, the default key), got {key!r}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        if on_redis_error not in ("fail_open", "fail_closed"):
            raise ValueError(
                f"on_redis_error must be 'fail_open' or 'fail_closed', got {on_redis_error!r}"
            )
        self._fleet_size = to_int("fleet_size", fleet_size, minimum=1)
        low = to_seconds("min_backoff", min_backoff, exclusive_minimum=True)
        high = to_seconds("max_backoff", max_backoff, minimum=low)
        self._key = prefix + key
        self._prefix = prefix
        self._on_error: OnRedisError = on_redis_error
        self._client = client
        self._owned = False
        self._script = client.register_script(_TAKE)
        self._link = _Link(low, high)
        self._used = 0
        n = self._fleet_size
        self._fallback = RateLimiter(
            self._rate,
            period=self._period * n,
            burst=self._burst // n,
            max_wait=self._max_wait,
            name=name,
            clock=clock,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        rate: int,
        *,
        async_client: bool = False,
        timeout: float = 0.05,
        **options: Any,
    ) -> RedisRateLimiter:
        """A limiter with its own client for ``url``, connect and command timeouts ``timeout``.

        ``options`` are the keyword arguments of the constructor. :meth:`close` /
        :meth:`aclose` close the client.
        """
        timeout = to_seconds("timeout", timeout, exclusive_minimum=True)
        # No retries inside redis-py: one failed command must cost one timeout at most;
        # the limiter's own backoff decides when to try Redis again.
        if async_client:
            client: Any = redis.asyncio.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=AsyncRetry(NoBackoff(), 0),
            )
        else:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        limiter = cls(client, rate, **options)
        limiter._owned = True
        return limiter

    def close(self) -> None:
        """Close the client if this limiter made it (:meth:`from_url`)."""
        if self._owned and not self._is_async:
            self._client.close()

    async def aclose(self) -> None:
        """Close the client if this limiter made it (:meth:`from_url`)."""
        if self._owned:
            if self._is_async:
                await self._client.aclose()
            else:
                self._client.close()

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter({self._rate}, period={self._period:g}, key={self._key!r}"
            + (f", burst={self._burst}" if self._burst else "")
            + f", on_redis_error={self._on_error!r}, fleet_size={self._fleet_size}"
            + (f", name={self.name!r}" if self.name else "")
            + ")"
        )

    # -- configuration and live state -------------------------------------------------------
    @property
    def key(self) -> str:
        """The Redis key holding the shared budget (``prefix + key``)."""
        return self._key

    @property
    def fleet_size(self) -> int:
        """Replicas the local fallback assumes share the budget."""
        return self._fleet_size

    @property
    def shared(self) -> bool:
        """Whether the last attempt to reach Redis worked."""
        return self._link.down_since is None

    @property
    def available(self) -> float:
        """Permits available at the last decision (no round trip); the fallback's in an outage."""
        if not self.shared:
            return self._fallback.available
        free = self._gcra.tolerance + self._gcra.interval - self._used
        return free / self._gcra.interval if free > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        """The local limiter's keys (``available`` as of the last decision), plus ``shared``,
        ``key`` and ``fleet_size``. Reads no Redis."""
        return {
            "kind": self.kind,
            "name": self.name,
            "rate": self._rate,
            "period": self._period,
            "burst": self._burst,
            "available": self.available,
            "rejected": self._gcra.rejected + self._fallback._gcra.rejected,
            "shared": self.shared,
            "key": self._key,
            "fleet_size": self._fleet_size,
        }

    # -- shared decisions -----------------------------------------------------------------
    def _args(self, budget: float | None) -> tuple[int, int, int, int]:
        g = self._gcra
        limit = -1 if budget is None else math.floor(budget * _US) * g.rate
        return (g.rate, g.interval, g.tolerance, limit)

    def _lost(self, scope: Scope, exc: BaseException) -> None:
        if not self._link.failed(self._clock.now()):
            return
        local = self._on_error == "fail_open"
        _report_lost(
            scope,
            self._clock.now(),
            "local" if local else "closed",
            exc,
            "limiting locally at rate/fleet_size" if local else "rejecting calls",
        )

    def _restored(self, scope: Scope) -> None:
        now = self._clock.now()
        outage = self._link.worked(now)
        if outage is not None:
            from_state = "local" if self._on_error == "fail_open" else "closed"
            _report_restored(scope, now, from_state, outage, "limiting")

    def _unavailable(self, scope: Scope) -> RateLimitedError:
        retry_after = max(self._link.retry_at - self._clock.now(), 1e-6)
        self._gcra.rejected += 1
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                RateLimited(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._clock.now(),
                    reason="redis_unavailable",
                    retry_after=retry_after,
                )
            )
        return RateLimitedError(
            f"{scope.policy}/{scope.strategy}: the shared rate limit cannot be checked "
            "(Redis is unreachable and on_redis_error='fail_closed')",
            policy=scope.policy,
            retry_after=retry_after,
        )

    def _decide(self, scope: Scope, reply: _Reply, budget: float | None) -> float:
        """Seconds to sleep until the reserved permit is due (0: admitted now), or raise."""
        self._used = reply.used
        g = self._gcra
        if reply.wait == 0:
            return 0.0
        seconds = g.seconds(reply.wait)
        if budget is not None and (budget == 0.0 or seconds > budget):
            g.rejected += 1
            raise self._refuse(scope, seconds, budget)
        return seconds

    def _take_sync(self, budget: float | None) -> _Reply:
        """One round trip: the script's answer (raises redis errors)."""
        return _Reply(self._script(keys=[self._key], args=self._args(budget)))

    async def _take_async(self, budget: float | None) -> _Reply:
        if self._is_async:
            return _Reply(await self._script(keys=[self._key], args=self._args(budget)))
        return await asyncio.to_thread(self._take_sync, budget)

    # -- sync driver ------------------------------------------------------------------------
    def _check_sync(self, fn: AnyCallable) -> None:
        if self._is_async:
            raise TypeError(
                f"RedisRateLimiter with a redis.asyncio client cannot limit the sync function "
                f"{getattr(fn, '__qualname__', fn)!r}: give it a redis.Redis client"
            )

    def _acquire_sync(self, scope: Scope) -> None:
        if self._is_async:
            raise TypeError("acquire() needs a redis.Redis client; use aacquire()")
        clock = self._clock
        start = clock.now()
        budget = self._wait_budget()
        if self._link.may_try(start):
            try:
                reply = self._take_sync(budget)
            except RedisError as exc:
                self._lost(scope, exc)
            except BaseException:
                self._link.probing = False
                raise
            else:
                self._restored(scope)
                seconds = self._decide(scope, reply, budget)
                if seconds > 0.0:
                    clock.sleep(seconds)  # the permit is reserved: it is ours once due
                    self._waited(scope, start)
                return
        if self._on_error == "fail_closed":
            raise self._unavailable(scope)
        self._fallback._acquire_sync(scope)

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        acquire = self._acquire_sync

        def redis_rate_limited_sync(*args: Any, **kwargs: Any) -> Any:
            acquire(scope)
            return fn(*args, **kwargs)

        return redis_rate_limited_sync

    def _wrap_sync_policy(self, fn: AnyCallable, scope: Scope, gate: PolicyGate) -> AnyCallable:
        # Its own closure (a round trip per call) in the separate policy wrapper, not the
        # local limiter's closure with the gate fused in.
        return Strategy._wrap_sync_policy(self, fn, scope, gate)

    # -- async driver -----------------------------------------------------------------------
    async def _acquire_async(self, scope: Scope) -> None:
        clock = self._clock
        start = clock.now()
        budget = self._wait_budget()
        if self._link.may_try(start):
            try:
                reply = await self._take_async(budget)
            except RedisError as exc:
                self._lost(scope, exc)
            except BaseException:
                # Cancelled mid round trip: a probe must not stay granted for ever.
                self._link.probing = False
                raise
            else:
                self._restored(scope)
                seconds = self._decide(scope, reply, budget)
                if seconds > 0.0:
                    await clock.asleep(seconds)
                    self._waited(scope, start)
                return
        if self._on_error == "fail_closed":
            raise self._unavailable(scope)
        await self._fallback._acquire_async(scope)

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        acquire = self._acquire_async

        async def redis_rate_limited_async(*args: Any, **kwargs: Any) -> Any:
            await acquire(scope)
            return await fn(*args, **kwargs)

        return redis_rate_limited_async

    def _wrap_async_policy(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate
    ) -> AsyncCallable:
        return Strategy._wrap_async_policy(self, fn, scope, gate)

    # -- direct use ---------------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """Take a permit if one is available now; never waits, raises nothing (sync client)."""
        scope = self._cm_scope
        try:
            self._acquire_sync_now(scope)
        except RateLimitedError:
            return False
        return True

    def _acquire_sync_now(self, scope: Scope) -> None:
        if self._is_async:
            raise TypeError("try_acquire() needs a redis.Redis client")
        now = self._clock.now()
        if self._link.may_try(now):
            try:
                reply = self._take_sync(0.0)
            except RedisError as exc:
                self._lost(scope, exc)
            else:
                self._restored(scope)
                self._used = reply.used
                if reply.wait > 0:
                    self._gcra.rejected += 1
                    raise RateLimitedError("", retry_after=self._gcra.seconds(reply.wait))
                return
        if self._on_error == "fail_closed":
            self._gcra.rejected += 1
            raise RateLimitedError("", retry_after=1e-6)
        if not self._fallback.try_acquire():
            raise RateLimitedError("", retry_after=1e-6)

    def __enter__(self) -> RedisRateLimiter:
        self._acquire_sync(self._cm_scope)
        return self

    async def __aenter__(self) -> RedisRateLimiter:
        await self._acquire_async(self._cm_scope)
        return self
