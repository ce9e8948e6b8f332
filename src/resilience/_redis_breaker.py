"""A circuit breaker whose state a whole fleet shares through Redis.

:class:`RedisCircuitBreaker` keeps a local :class:`~resilience.CircuitBreaker` and one
shared circuit in Redis, and decides each call locally, from the last known shared state:

- **The hot path sends nothing.** A call of a closed circuit runs through the local
  breaker and adds its outcome to three counters (calls, unknown failures, slow calls).
- **A background worker syncs** every ``poll_interval``, in one round trip (one script):
  it adds the counters to the current one-second bucket of the fleet's window, moves the
  shared state on (an open circuit whose time is up is half-open; a probe lease that was
  never returned expires), trips the shared circuit when the fleet's failure or
  slow-call rate over the window passes the breaker's threshold, or when this replica's
  own breaker has just tripped, and answers the shared state, which the local breaker
  then adopts (``reason="shared"`` transitions).
- **Half-open probes are leased.** While the shared circuit is half-open, a call runs only
  with a lease from Redis (one round trip); the fleet grants ``half_open_probes`` leases
  in all, each reporting its outcome (one more round trip): all succeed, the circuit
  closes; one fails, it opens again (for longer, with the breaker's multiplier).

Every shared time is Redis ``TIME``; a replica only turns "open for 840 ms more" into its
own monotonic clock. While Redis cannot be reached, the local breaker alone decides and
the worker retries with backoff (:class:`~resilience._redis_link._Link`).

The decisions are two plain objects with no I/O, :class:`_Settings` (the script
arguments) and :class:`_View` (the last known shared state and the counters not yet
sent); the sync and async drivers only differ in how they reach Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import threading
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar

import redis
import redis.asyncio
from redis.exceptions import RedisError

from ._core.clock import SYSTEM_CLOCK, Clock
from ._core.events import EVENTS
from ._core.options import to_int, to_seconds
from ._core.strategy import AnyCallable, AsyncCallable, Scope, Strategy
from ._redis_link import _Link, _report_lost, _report_restored
from .circuit_breaker import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitRejected,
    CircuitState,
    WindowType,
)

__all__ = ["RedisCircuitBreaker"]

_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_STATES = (_CLOSED, _OPEN, _HALF_OPEN)

# -- the scripts ----------------------------------------------------------------------------------
# KEYS[1]: the circuit, a hash: s state (0 closed, 1 open, 2 half-open), u end of the open
# time, l open level (growth), g probe leases granted in this half-open epoch (minus those
# given back), k probes that succeeded, d probe lease deadline, e epoch (one more per
# transition; a new hash starts at the time, so that epochs keep growing when a circuit is
# deleted or expires and is made again), r reason of the last transition, t its time.
# Times are Redis TIME in ms.
# KEYS[2]: the window, a hash of one-second buckets: c<sec> calls, f<sec> failures,
# s<sec> slow calls.
# ARGV[1..6]: open duration (ms), multiplier, max open duration (ms), max probe wait (ms),
# half_open_probes, TTL of the circuit hash (ms). Every script answers
# {s, open ms left, e, r, ms since t, g, k, calls, failed, slow, granted}.
_PRELUDE = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local base_ms = tonumber(ARGV[1])
local mult = tonumber(ARGV[2])
local max_ms = tonumber(ARGV[3])
local wait_ms = tonumber(ARGV[4])
local probes = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local h = redis.call('HMGET', KEYS[1], 's', 'u', 'l', 'g', 'k', 'd', 'e', 'r', 't')
local s = tonumber(h[1]) or 0
local u = tonumber(h[2]) or 0
local l = tonumber(h[3]) or 0
local g = tonumber(h[4]) or 0
local k = tonumber(h[5]) or 0
local d = tonumber(h[6]) or 0
local e = tonumber(h[7]) or now
local r = h[8] or ''
local at = tonumber(h[9]) or now
local dirty = false
local calls, failed, slow = 0, 0, 0
local function duration()
  local ms = base_ms * mult ^ l
  if ms > max_ms then ms = max_ms end
  return math.floor(ms)
end
local function go(state, reason)
  s = state
  e = e + 1
  g = 0
  k = 0
  r = reason
  at = now
  dirty = true
end
local function open(reason, grow)
  if grow then
    if duration() < max_ms then l = l + 1 end
  else
    l = 0
  end
  u = now + duration()
  go(1, reason)
end
local function close(reason)
  l = 0
  u = 0
  go(0, reason)
  redis.call('DEL', KEYS[2])
end
local function reply(granted)
  if dirty then
    redis.call('HSET', KEYS[1], 's', s, 'u', u, 'l', l, 'g', g, 'k', k, 'd', d, 'e', e,
      'r', r, 't', at)
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  local left = 0
  if s == 1 then left = u - now end
  return {s, left, e, r, now - at, g, k, calls, failed, slow, granted}
end
if s == 1 and now >= u then go(2, 'open_duration_elapsed') end
if s == 2 and g > k and now >= d then open('probe_timeout', true) end
"""

# ARGV[7..]: calls, failures, slow calls to add; trip ('' or this replica's reason);
# window (s); minimum calls; failure rate threshold (%, -1 off); slow-call rate threshold
# (%, -1 off); manual change ('', 'open', 'close' or 'reset').
_SYNC = (
    _PRELUDE
    + """
local dc = tonumber(ARGV[7])
local df = tonumber(ARGV[8])
local ds = tonumber(ARGV[9])
local trip = ARGV[10]
local win = tonumber(ARGV[11])
local min_calls = tonumber(ARGV[12])
local rate = tonumber(ARGV[13])
local slow_rate = tonumber(ARGV[14])
local manual = ARGV[15]
if manual == 'reset' then
  redis.call('DEL', KEYS[1], KEYS[2])
  s, u, l, g, k, d, r, at, dirty = 0, 0, 0, 0, 0, 0, 'manual', now, true
  e = math.max(e + 1, now)
elseif manual == 'open' then
  open('manual', false)
elseif manual == 'close' and s ~= 0 then
  close('manual')
end
if s == 0 then
  if dc > 0 then
    redis.call('HINCRBY', KEYS[2], 'c' .. sec, dc)
    if df > 0 then redis.call('HINCRBY', KEYS[2], 'f' .. sec, df) end
    if ds > 0 then redis.call('HINCRBY', KEYS[2], 's' .. sec, ds) end
    redis.call('PEXPIRE', KEYS[2], (win + 2) * 1000)
  end
  local all = redis.call('HGETALL', KEYS[2])
  local old = {}
  for i = 1, #all, 2 do
    local field = all[i]
    if tonumber(string.sub(field, 2)) <= sec - win then
      old[#old + 1] = field
    else
      local kind = string.sub(field, 1, 1)
      local n = tonumber(all[i + 1])
      if kind == 'c' then calls = calls + n
      elseif kind == 'f' then failed = failed + n
      else slow = slow + n end
    end
  end
  if #old > 0 then redis.call('HDEL', KEYS[2], unpack(old)) end
  if trip ~= '' then
    open(trip, false)
  elseif calls >= min_calls then
    if rate >= 0 and failed > 0 and failed * 100 >= rate * calls then
      open('fleet_failure_rate', false)
    elseif slow_rate >= 0 and slow > 0 and slow * 100 >= slow_rate * calls then
      open('fleet_slow_call_rate', false)
    end
  end
end
return reply(0)
"""
)

_PROBE = (
    _PRELUDE
    + """
if s == 2 and g < probes then
  g = g + 1
  d = now + wait_ms
  dirty = true
  return reply(1)
end
return reply(0)
"""
)

# ARGV[7]: the half-open epoch of the lease; ARGV[8]: 'ok', 'fail', 'slow' or 'release'.
_REPORT = (
    _PRELUDE
    + """
if s == 2 and e == tonumber(ARGV[7]) then
  local outcome = ARGV[8]
  dirty = true
  if outcome == 'ok' then
    k = k + 1
    if k >= probes then close('probes_succeeded') end
  elseif outcome == 'fail' then
    open('probe_failed', true)
  elseif outcome == 'slow' then
    open('probe_slow', true)
  elseif g > 0 then
    g = g - 1
  end
end
return reply(0)
"""
)


# -- decisions without I/O ----------------------------------------------------------------------


class _Settings:
    """The breaker's options as script arguments (fixed at construction)."""

    __slots__ = ("common", "min_calls", "rate", "slow", "slow_rate", "window")

    def __init__(self, breaker: CircuitBreaker, window: int) -> None:
        m = breaker._machine
        o = breaker.options
        base = to_seconds("open_duration", o.open_duration)
        wait = to_seconds("max_half_open_wait", o.max_half_open_wait)
        cap = m._max_open
        ttl = max(86_400.0, 2.0 * cap + wait + window)
        self.common: tuple[int | float, ...] = (
            _ms(base),
            float(o.open_duration_multiplier),
            _ms(cap),
            _ms(wait),
            o.half_open_probes,
            _ms(ttl),
        )
        self.window = window
        self.min_calls: int = m._min_calls
        self.rate = -1.0 if o.failure_rate_threshold is None else float(o.failure_rate_threshold)
        self.slow: float | None = (
            None
            if o.slow_call_duration is None
            else to_seconds("slow_call_duration", o.slow_call_duration)
        )
        self.slow_rate = -1.0 if self.slow is None else float(o.slow_call_rate_threshold)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000.0))


class _Reply:
    """One answer of a script."""

    __slots__ = ("calls", "epoch", "failed", "granted", "left", "reason", "slow", "state")

    def __init__(self, raw: Any) -> None:
        self.state = _STATES[int(raw[0])]
        self.left = int(raw[1]) / 1000.0
        self.epoch = int(raw[2])
        reason = raw[3]
        self.reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        self.calls = int(raw[7])
        self.failed = int(raw[8])
        self.slow = int(raw[9])
        self.granted = bool(int(raw[10]))


class _View:
    """The last known shared state, and the outcomes not yet sent to Redis.

    The drivers read ``guarded`` (any shared state but closed) and ``open_until`` (this
    replica's clock), and add to the counters; under the GIL each ``+=`` and each
    take-and-zero below runs without a thread switch in between (no call inside), so no
    outcome is counted twice or lost. On a free-threaded build the counts feed a rate and
    may be off by the few updates that race.
    """

    __slots__ = (
        "calls",
        "epoch",
        "failed",
        "fleet",
        "guarded",
        "manual",
        "open_until",
        "reason",
        "seen",
        "slow",
        "state",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.failed = 0
        self.slow = 0
        self.state: CircuitState | None = None  # None: not known (not yet synced, or outage)
        self.guarded = False
        self.open_until = 0.0
        self.epoch = -1
        self.reason = ""
        self.fleet = (0, 0, 0)
        self.seen = -1  # the local breaker's epoch when last looked at
        self.manual = ""  # a manual change to send with the next sync

    def take(self) -> tuple[int, int, int]:
        """The counters since the last call, zeroed."""
        calls, self.calls = self.calls, 0
        failed, self.failed = self.failed, 0
        slow, self.slow = self.slow, 0
        return calls, failed, slow

    def apply(self, reply: _Reply, now: float) -> bool:
        """Adopt ``reply`` unless an answer of a later epoch was already adopted."""
        if reply.epoch < self.epoch:
            return False
        self.epoch = reply.epoch
        self.state = reply.state
        self.reason = reply.reason
        self.open_until = now + reply.left if reply.state is _OPEN else 0.0
        self.guarded = reply.state is not _CLOSED
        if reply.calls or reply.state is _CLOSED:
            self.fleet = (reply.calls, reply.failed, reply.slow)
        return True

    def forget(self) -> None:
        """Redis is unreachable: the local breaker alone decides."""
        self.state = None
        self.guarded = False
        self.open_until = 0.0


# One ``with`` block of a shared breaker: (the fleet's half-open epoch when it holds a
# probe lease, else -1; the start time).
_BLOCKS: contextvars.ContextVar[tuple[tuple[int, float], ...]] = contextvars.ContextVar(
    "resilience_shared_breaker_blocks", default=()
)


class RedisCircuitBreaker(Strategy):
    """A :class:`~resilience.CircuitBreaker` whose state the whole fleet shares in Redis.

    Every replica that names the same ``prefix`` + ``key`` shares one circuit: when it
    opens (on one replica's trip, or on the fleet's failure rate), every replica rejects
    within about ``poll_interval``; when it may be probed, the fleet sends at most the
    breaker's ``half_open_probes`` probes in all. A call never waits on Redis, except a
    probe (one round trip for its lease, one for its outcome).

    Parameters:
        breaker: the local :class:`~resilience.CircuitBreaker`. Its options are the
            circuit's: the trip rules (consecutive failures and the local window trip
            this replica, which trips the fleet; ``failure_rate_threshold``,
            ``slow_call_*`` and ``minimum_calls`` also apply to the fleet's window),
            ``open_duration`` and its growth, ``half_open_probes``, ``max_half_open_wait``,
            ``ignore`` and the classifier.
        client: a ``redis.Redis`` (sync functions, and coroutine functions, whose probes
            then use a worker thread) or a ``redis.asyncio.Redis`` (coroutine functions
            only). Give it short timeouts (``socket_timeout``, ``socket_connect_timeout``,
            e.g. 0.05 s) and no retries: they bound how long a probe can wait on a sick
            Redis.
        key: names the shared circuit; default ``name``, else the breaker's name.
            Different keys never interact.
        prefix: prepended to the Redis keys, default ``"resilience:breaker:"``.
        poll_interval: seconds between two syncs, ``> 0`` and ``<= 1``; default 0.25.
            Every replica learns of a trip within about that long.
        window: seconds of the fleet's failure-rate window, an int ``1..3600``; default
            the breaker's ``window_size`` for a time window, else 10.
        min_backoff, max_backoff: seconds between attempts to reach Redis after a
            failure (default 0.5 and 5); meanwhile the local breaker alone decides.
        name: the policy name when used alone; ``clock``: injected time (tests).

    Call :meth:`stop` (or ``await`` :meth:`astop`) at shutdown to end the background
    worker; the shared state stays in Redis.
    """

    kind: ClassVar[str] = "circuit_breaker"
    __slots__ = (
        "_async",
        "_breaker",
        "_client",
        "_clock",
        "_keys",
        "_link",
        "_lock",
        "_loop",
        "_poll",
        "_probe",
        "_report",
        "_returns",
        "_scope",
        "_settings",
        "_stop",
        "_sync",
        "_task",
        "_thread",
        "_view",
        "_wake",
        "_wake_async",
    )

    def __init__(
        self,
        breaker: CircuitBreaker,
        client: Any,
        *,
        key: str | None = None,
        prefix: str = "resilience:breaker:",
        poll_interval: float | timedelta = 0.25,
        window: int | None = None,
        min_backoff: float | timedelta = 0.5,
        max_backoff: float | timedelta = 5.0,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"breaker must be a CircuitBreaker, got {breaker!r}")
        if not isinstance(client, (redis.Redis, redis.asyncio.Redis)):
            raise TypeError(f"client must be a redis.Redis or redis.asyncio.Redis, got {client!r}")
        if key is None:
            key = self.name or breaker.name
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"key must be a non-empty str (or give name=, the default key), got {key!r}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        self._poll = to_seconds("poll_interval", poll_interval, exclusive_minimum=True, maximum=1.0)
        if window is None:
            o = breaker.options
            window = (
                max(1, math.ceil(to_seconds("window_size", o.window_size)))
                if o.window_type is WindowType.TIME
                else 10
            )
            window = min(window, 3600)
        else:
            window = to_int("window", window, minimum=1, maximum=3600)
        low = to_seconds("min_backoff", min_backoff, exclusive_minimum=True)
        high = to_seconds("max_backoff", max_backoff, minimum=low)
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        self._breaker = breaker
        self._client = client
        self._async = isinstance(client, redis.asyncio.Redis)
        # One hash tag for both keys: one Redis Cluster slot, so one script may touch both.
        circuit = f"{prefix}{{{key}}}"
        self._keys = (circuit, circuit + ":window")
        self._settings = _Settings(breaker, window)
        self._sync = client.register_script(_SYNC)
        self._probe = client.register_script(_PROBE)
        self._report = client.register_script(_REPORT)
        self._link = _Link(low, high)
        self._lock = threading.Lock()
        self._view = _View()
        self._scope = Scope(self.name or breaker.name or key, self.kind)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._wake_async: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._returns: set[asyncio.Future[Any]] = set()  # reports in flight after a cancel
        self._thread: threading.Thread | None = None
        if not self._async:
            self._thread = threading.Thread(
                target=self._run, name=f"resilience-breaker:{key}", daemon=True
            )
            self._thread.start()

    def __repr__(self) -> str:
        return f"RedisCircuitBreaker({self._breaker!r}, key={self._keys[0]!r})"

    # -- reading ------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """The Redis key of the shared circuit (its window is ``key + ":window"``)."""
        return self._keys[0]

    @property
    def breaker(self) -> CircuitBreaker:
        """The local breaker (it adopts the shared state as it learns it)."""
        return self._breaker

    @property
    def state(self) -> CircuitState:
        """The local breaker's state: the shared one as last learnt, or its own."""
        return self._breaker.state

    @property
    def shared_state(self) -> CircuitState | None:
        """The shared state as last learnt; ``None`` before the first sync or in an outage."""
        return self._view.state

    @property
    def shared_open(self) -> bool:
        """Whether the last known shared state rejects calls now."""
        return self._clock.now() < self._view.open_until

    @property
    def shared(self) -> bool:
        """Whether the last attempt to reach Redis worked."""
        return self._link.down_since is None

    def snapshot(self) -> dict[str, Any]:
        """The local breaker's snapshot plus the shared circuit's.

        Added keys: ``key``, ``shared`` (Redis answered last), ``shared_state``,
        ``shared_open``, ``shared_reason`` (of its last transition), ``fleet_calls``,
        ``fleet_failed_calls``, ``fleet_slow_calls`` (in the fleet's window when last
        synced) and ``window`` (its seconds).
        """
        view = self._view
        snap = self._breaker.snapshot()
        snap.update(
            key=self._keys[0],
            shared=self.shared,
            shared_state=None if view.state is None else view.state.value,
            shared_open=self.shared_open,
            shared_reason=view.reason,
            fleet_calls=view.fleet[0],
            fleet_failed_calls=view.fleet[1],
            fleet_slow_calls=view.fleet[2],
            window=self._settings.window,
        )
        return snap

    # -- manual control -------------------------------------------------------------------------
    def open(self) -> None:
        """Open the circuit for the whole fleet (and this replica's breaker at once)."""
        self._breaker.open()
        self._ask("open")

    def close(self) -> None:
        """Close the circuit for the whole fleet (and this replica's breaker at once)."""
        self._breaker.close()
        self._ask("close")

    def reset(self) -> None:
        """Forget the shared circuit (its keys are deleted) and reset the local breaker."""
        self._breaker.reset()
        self._ask("reset")

    def _ask(self, change: str) -> None:
        """Send a manual change with the next sync, which starts now."""
        view = self._view
        view.manual = change
        if change == "open":
            view.open_until = self._clock.now() + self._settings.common[0] / 1000.0
            view.guarded = True
        else:
            view.open_until = 0.0
            view.guarded = False
        self._poke()

    def _poke(self) -> None:
        self._wake.set()
        loop, event = self._loop, self._wake_async
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    # -- the background worker -------------------------------------------------------------------
    def stop(self) -> None:
        """End the background worker (the shared state stays in Redis)."""
        self._stop.set()
        self._poke()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    async def astop(self) -> None:
        """:meth:`stop`, then wait for the asyncio worker to end."""
        self.stop()
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=5.0)

    def _sync_args(self) -> list[Any]:
        """The sync script's arguments; takes the counters and any pending trip."""
        view, st, m = self._view, self._settings, self._breaker._machine
        calls, failed, slow = view.take()
        trip = ""
        # The local breaker opened by itself since it was last looked at (not by adopting
        # the shared state): that is this replica's trip, for the fleet.
        if m._state is _OPEN and m._epoch != view.seen:
            trip = "replica_tripped"
        manual = view.manual
        return [
            *st.common,
            calls,
            failed,
            slow,
            trip,
            st.window,
            st.min_calls,
            st.rate,
            st.slow_rate,
            manual,
        ]

    def _synced(self, raw: Any, args: list[Any]) -> None:
        """Adopt the sync's answer; a manual change it carried has been made."""
        if self._view.manual == args[-1]:
            self._view.manual = ""
        self._adopt(raw)
        self._worked()

    def _adopt(self, raw: Any) -> _Reply:
        """Take a script's answer: the view, then the local breaker, follow it."""
        reply = _Reply(raw)
        now = self._clock.now()
        with self._lock:
            if not self._view.apply(reply, now):
                return reply
            state = reply.state
            open_until = now + reply.left
            transition, self._view.seen = self._breaker._machine.follow(
                state, open_until, now, self._view.seen
            )
        if transition is not None:
            self._breaker._emit(transition, self._breaker._home_scope())
        return reply

    def _lost(self, exc: BaseException) -> None:
        self._view.forget()
        if self._link.failed(self._clock.now()):
            _report_lost(self._scope, self._clock.now(), "local", exc)

    def _worked(self) -> None:
        outage = self._link.worked(self._clock.now())
        if outage is not None:
            _report_restored(self._scope, self._clock.now(), "local", outage)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._link.may_try(self._clock.now()):
                args = self._sync_args()
                try:
                    raw = self._sync(keys=self._keys, args=args)
                except RedisError as exc:
                    self._lost(exc)
                else:
                    self._synced(raw, args)
            self._wake.wait(self._poll)
            self._wake.clear()

    async def _run_async(self) -> None:
        event = self._wake_async
        assert event is not None
        while not self._stop.is_set():
            if self._link.may_try(self._clock.now()):
                args = self._sync_args()
                try:
                    raw = await self._sync(keys=self._keys, args=args)
                except RedisError as exc:
                    self._lost(exc)
                else:
                    self._synced(raw, args)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), self._poll)
            event.clear()

    def _start_async(self) -> None:
        """Start the asyncio worker on the running loop (again, if its loop ended)."""
        loop = asyncio.get_running_loop()
        task = self._task
        if (task is not None and not task.done() and self._loop is loop) or self._stop.is_set():
            return
        self._loop = loop
        self._wake_async = asyncio.Event()
        self._task = loop.create_task(self._run_async(), name=f"resilience-breaker:{self.key}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The worker ended (stopped, or cancelled as its loop ended: ``asyncio.run``
        cancels what is left); the next call on a running loop starts a new one."""
        if self._task is task:
            self._task = None

    # -- per call ---------------------------------------------------------------------------
    def _wake_if_tripped(self) -> None:
        """After a failure: sync now if the local breaker has just opened."""
        if self._breaker._machine._state is _OPEN and self._view.state is not _OPEN:
            self._poke()

    def _failed(self, exc: BaseException, duration: float) -> None:
        view = self._view
        if self._breaker._machine.counts_as_failure(exc):
            view.calls += 1
            view.failed += 1
            slow = self._settings.slow
            if slow is not None and duration >= slow:
                view.slow += 1
            self._wake_if_tripped()

    def _returned(self, result: Any, duration: float) -> None:
        """Count a call that returned (timed or classifying results only)."""
        view = self._view
        m = self._breaker._machine
        fails = m.result_fails(result) if self._breaker._classifies_results() else False
        if fails is None:
            return
        view.calls += 1
        if fails:
            view.failed += 1
        slow = self._settings.slow
        if slow is not None and duration >= slow:
            view.slow += 1
        if fails or slow is not None:
            self._wake_if_tripped()

    def _probe_outcome(self, result: Any, duration: float) -> str:
        m = self._breaker._machine
        if self._breaker._classifies_results():
            fails = m.result_fails(result)
            if fails is None:
                return "release"
            if fails:
                return "fail"
        slow = self._settings.slow
        return "slow" if slow is not None and duration >= slow else "ok"

    def _error_outcome(self, exc: BaseException) -> str:
        if (
            isinstance(exc, Exception)
            and not isinstance(exc, CircuitOpenError)  # refused: nothing ran
            and self._breaker._machine.counts_as_failure(exc)
        ):
            return "fail"
        return "release"

    def _reject(self, scope: Scope, now: float, reply_state: CircuitState) -> CircuitOpenError:
        view = self._view
        retry_after = view.open_until - now if reply_state is _OPEN else None
        if retry_after is not None and retry_after <= 0:
            retry_after = None
        if EVENTS.active and EVENTS.wants(scope.policy):
            EVENTS.publish(
                CircuitRejected(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=now,
                    reason="circuit_open",
                    retry_after=retry_after,
                    state=reply_state.value,
                )
            )
        where = "open" if reply_state is _OPEN else "half-open with every probe leased"
        return CircuitOpenError(
            f"{scope.policy}/{scope.strategy}: the shared circuit {self.key!r} is {where}"
            + ("" if retry_after is None else f"; next probe in {retry_after:.3f} s"),
            policy=scope.policy,
            state=reply_state,
            retry_after=retry_after,
        )

    def _report_args(self, epoch: int, outcome: str) -> list[Any]:
        return [*self._settings.common, epoch, outcome]

    # -- sync ----------------------------------------------------------------------------------
    def _lease_sync(self, scope: Scope, now: float) -> int | None:
        """A probe lease: the fleet's half-open epoch, ``None`` in an outage (decide
        locally); raises the rejection when every lease is taken."""
        if not self._link.may_try(now):
            return None
        try:
            raw = self._probe(keys=self._keys, args=list(self._settings.common))
        except RedisError as exc:
            self._lost(exc)
            return None
        return self._leased(scope, raw)

    def _leased(self, scope: Scope, raw: Any) -> int:
        """The lease's epoch from the probe script's answer, or raise the rejection."""
        self._worked()
        reply = self._adopt(raw)
        if not reply.granted:
            raise self._reject(scope, self._clock.now(), reply.state)
        return reply.epoch

    def _give_sync(self, epoch: int, outcome: str) -> None:
        try:
            raw = self._report(keys=self._keys, args=self._report_args(epoch, outcome))
        except RedisError as exc:
            self._lost(exc)  # the lease expires after max_half_open_wait
        else:
            self._adopt(raw)

    def _guarded_sync(self, inner: AnyCallable, scope: Scope, args: Any, kwargs: Any) -> Any:
        """A call while the shared circuit is not closed: rejected, or run as a probe."""
        now = self._clock.now
        t = now()
        if t < self._view.open_until:
            raise self._reject(scope, t, _OPEN)
        epoch = self._lease_sync(scope, t)
        if epoch is None:
            return inner(*args, **kwargs)  # Redis is unreachable: the local breaker decides
        start = now()
        try:
            result = inner(*args, **kwargs)
        except BaseException as exc:
            self._give_sync(epoch, self._error_outcome(exc))
            raise
        self._give_sync(epoch, self._probe_outcome(result, now() - start))
        return result

    def _check_sync(self, fn: AnyCallable) -> None:
        if self._async:
            raise TypeError(
                "a RedisCircuitBreaker with a redis.asyncio client decorates coroutine "
                "functions only; give it a redis.Redis to protect sync functions"
            )

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        inner = self._breaker._wrap_sync(fn, scope)
        view = self._view
        guarded = self._guarded_sync
        failed = self._failed
        if self._settings.slow is not None or self._breaker._classifies_results():
            now = self._clock.now
            returned = self._returned

            def shared_breaker_timed(*args: Any, **kwargs: Any) -> Any:
                if view.guarded:
                    return guarded(inner, scope, args, kwargs)
                start = now()
                try:
                    result = inner(*args, **kwargs)
                except CircuitOpenError:
                    raise  # the local breaker refused: nothing ran
                except Exception as exc:
                    failed(exc, now() - start)
                    raise
                returned(result, now() - start)
                return result

            return shared_breaker_timed

        def shared_breaker_sync(*args: Any, **kwargs: Any) -> Any:
            if view.guarded:
                return guarded(inner, scope, args, kwargs)
            try:
                result = inner(*args, **kwargs)
            except CircuitOpenError:
                raise  # the local breaker refused: nothing ran
            except Exception as exc:
                failed(exc, 0.0)
                raise
            view.calls += 1
            return result

        return shared_breaker_sync

    # -- async ---------------------------------------------------------------------------------
    async def _lease_async(self, scope: Scope, now: float) -> int | None:
        if not self._link.may_try(now):
            return None
        common = list(self._settings.common)
        if self._async:
            request: asyncio.Future[Any] = asyncio.ensure_future(
                self._probe(keys=self._keys, args=common)
            )
        else:
            request = asyncio.ensure_future(
                asyncio.to_thread(self._probe, keys=self._keys, args=common)
            )
        try:
            raw = await asyncio.shield(request)
        except asyncio.CancelledError:
            # Cancelled while asking: a lease granted meanwhile is given back.
            request.add_done_callback(self._give_back_if_granted)
            raise
        except RedisError as exc:
            self._lost(exc)
            return None
        return self._leased(scope, raw)

    def _give_back_if_granted(self, request: asyncio.Future[Any]) -> None:
        if request.cancelled() or request.exception() is not None:
            return
        reply = self._adopt(request.result())
        if reply.granted:
            self._give_later(reply.epoch, "release")

    def _give_later(self, epoch: int, outcome: str) -> None:
        """Report from a task of its own (the caller was cancelled); kept until done."""
        task = asyncio.ensure_future(self._give_async(epoch, outcome))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    async def _give_async(self, epoch: int, outcome: str) -> None:
        args = self._report_args(epoch, outcome)
        try:
            if self._async:
                raw = await self._report(keys=self._keys, args=args)
            else:
                raw = await asyncio.to_thread(self._report, keys=self._keys, args=args)
        except RedisError as exc:
            self._lost(exc)  # the lease expires after max_half_open_wait
        else:
            self._adopt(raw)

    async def _guarded_async(
        self, inner: AsyncCallable, scope: Scope, args: Any, kwargs: Any
    ) -> Any:
        now = self._clock.now
        t = now()
        if t < self._view.open_until:
            raise self._reject(scope, t, _OPEN)
        epoch = await self._lease_async(scope, t)
        if epoch is None:
            return await inner(*args, **kwargs)
        start = now()
        try:
            result = await inner(*args, **kwargs)
        except asyncio.CancelledError:
            self._give_later(epoch, "release")
            raise
        except BaseException as exc:
            await self._give_async(epoch, self._error_outcome(exc))
            raise
        await self._give_async(epoch, self._probe_outcome(result, now() - start))
        return result

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        inner = self._breaker._wrap_async(fn, scope)
        view = self._view
        guarded = self._guarded_async
        failed = self._failed
        returned = self._returned
        timed = self._settings.slow is not None or self._breaker._classifies_results()
        now = self._clock.now
        # With an asyncio client the worker is a task of the loop the calls run on.
        worker = self._start_async if self._async else None

        async def shared_breaker_async(*args: Any, **kwargs: Any) -> Any:
            if worker is not None and self._task is None:
                worker()
            if view.guarded:
                return await guarded(inner, scope, args, kwargs)
            start = now() if timed else 0.0
            try:
                result = await inner(*args, **kwargs)
            except CircuitOpenError:
                raise  # the local breaker refused: nothing ran
            except Exception as exc:
                failed(exc, now() - start if timed else 0.0)
                raise
            if timed:
                returned(result, now() - start)
            else:
                view.calls += 1
            return result

        return shared_breaker_async

    # -- with blocks ---------------------------------------------------------------------------
    def __enter__(self) -> RedisCircuitBreaker:
        if self._async:
            raise TypeError("use `async with` with a redis.asyncio client")
        now = self._clock.now()
        epoch = -1
        if self._view.guarded:
            if now < self._view.open_until:
                raise self._reject(self._scope, now, _OPEN)
            epoch = self._lease_sync(self._scope, now) or -1
        self._enter_local(epoch)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        epoch, outcome = self._exit_local(exc)
        if epoch >= 0:
            self._give_sync(epoch, outcome)

    async def __aenter__(self) -> RedisCircuitBreaker:
        if self._async:
            self._start_async()
        now = self._clock.now()
        epoch = -1
        if self._view.guarded:
            if now < self._view.open_until:
                raise self._reject(self._scope, now, _OPEN)
            epoch = (await self._lease_async(self._scope, now)) or -1
        self._enter_local(epoch)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        epoch, outcome = self._exit_local(exc)
        if epoch >= 0:
            if isinstance(exc, asyncio.CancelledError):
                self._give_later(epoch, "release")
            else:
                await self._give_async(epoch, outcome)

    def _enter_local(self, epoch: int) -> None:
        try:
            self._breaker._enter()
        except BaseException:
            if epoch >= 0:
                self._give_lease_now(epoch)
            raise
        _BLOCKS.set((*_BLOCKS.get(), (epoch, self._clock.now())))

    def _give_lease_now(self, epoch: int) -> None:
        if self._async:
            self._give_later(epoch, "release")
        else:
            self._give_sync(epoch, "release")

    def _exit_local(self, exc: BaseException | None) -> tuple[int, str]:
        """Close the local block and count its outcome: (lease epoch or -1, outcome)."""
        blocks = _BLOCKS.get()
        epoch, start = blocks[-1]
        _BLOCKS.set(blocks[:-1])
        self._breaker._exit(exc)
        duration = self._clock.now() - start
        if exc is not None:
            if epoch < 0 and isinstance(exc, Exception) and not isinstance(exc, CircuitOpenError):
                self._failed(exc, duration)
            return epoch, self._error_outcome(exc)
        slow = self._settings.slow
        if epoch < 0:
            view = self._view
            view.calls += 1
            if slow is not None and duration >= slow:
                view.slow += 1
                self._wake_if_tripped()
        return epoch, "slow" if slow is not None and duration >= slow else "ok"
