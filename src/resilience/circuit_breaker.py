"""Circuit breaker: stop calling a dependency that keeps failing, and probe it to recover.

Parts: :class:`CircuitBreakerOptions` (frozen, validated once), :class:`CircuitBreaker`
(the strategy: decorator, ``with`` / ``async with`` block, pipeline member, manual
controls), :class:`CircuitState`, the events :class:`CircuitStateChanged` and
:class:`CircuitRejected`, and the error :class:`CircuitOpenError`.

Every decision is made by :class:`_Machine`, a state machine with no I/O and a small
protocol shared by the sync driver, the async driver and the ``with`` blocks:

- ``acquire(now)`` -> a permit (an ``int``) or a rejection tuple;
- ``on_success(permit, now, duration)`` / ``on_failure(permit, error, now, duration)``
  / ``on_result(permit, result, now, duration)`` -> a transition or ``None``;
- ``release(permit)`` gives a permit back unrecorded (cancellation, ignored errors).

A permit is the machine's *epoch* when it was issued; every transition starts a new
epoch, so the late report of a call admitted before a transition (a hung half-open
probe, a call that outlived a trip) is recognised and ignored. Half-open epochs are odd
and all others even, so a permit also says whether it was a probe.

The machine takes a short lock around each decision and never while the protected call
runs. In the closed state the drivers admit without the lock: they read the epoch and
then the state, and transitions write the state before the epoch, so a permit read
this way is either current and closed, or stale and ignored. Under the GIL two more
decisions skip it: a success of the current closed epoch (count window) and a rejection
by an open breaker not yet due, each a check and an update with no thread switch
possible in between.
"""

from __future__ import annotations

import contextvars
import enum
import math
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar, NamedTuple

from ._core.clock import SYSTEM_CLOCK, Clock
from ._core.errors import RejectedError
from ._core.events import EVENTS, CallRejected, StateChanged
from ._core.options import UNSET, Unset, to_float, to_int, to_seconds
from ._core.outcome import DEFAULT_CLASSIFIER, Classifier, Outcome, _check_types
from ._core.strategy import AnyCallable, AsyncCallable, GatedStrategy, Scope
from ._core.telemetry import (
    COUNT,
    COUNT_TIME,
    NEVER,
    NEVER_STATS,
    PolicyGate,
    unfailed,
    unobserved,
    untimed,
)

__all__ = [
    "CircuitBreaker",
    "CircuitBreakerOptions",
    "CircuitOpenError",
    "CircuitRejected",
    "CircuitState",
    "CircuitStateChanged",
    "WindowType",
]


class CircuitState(str, enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls run; outcomes are recorded and may trip the breaker."""
    OPEN = "open"
    """Calls are rejected until ``open_duration`` has passed."""
    HALF_OPEN = "half_open"
    """``half_open_probes`` trial calls run; the others are rejected."""
    FORCED_OPEN = "forced_open"
    """Every call is rejected until the breaker is closed or reset by hand."""
    DISABLED = "disabled"
    """Every call runs and nothing is recorded."""
    METRICS_ONLY = "metrics_only"
    """Every call runs; outcomes are recorded but never trip the breaker."""


class WindowType(str, enum.Enum):
    """How the failure-rate window is measured."""

    COUNT = "count"
    """The last ``window_size`` calls."""
    TIME = "time"
    """The calls of the last ``window_size`` seconds (in ten buckets)."""


_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED
_METRICS_ONLY = CircuitState.METRICS_ONLY

# -- events and error ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitStateChanged(StateChanged):
    """The breaker moved from ``from_state`` to ``to_state``.

    Attributes:
        reason: why: ``consecutive_failures``, ``failure_rate``, ``slow_call_rate``,
            ``open_duration_elapsed``, ``probes_succeeded``, ``probe_failed``,
            ``probe_slow``, ``probe_timeout``, ``manual`` or ``shared`` (the state of a
            fleet's shared circuit, adopted by this replica's breaker; see
            :class:`~resilience.redis.RedisCircuitBreaker`).
        failure_rate: percent of failed calls in the closed-state window when it
            happened (``None`` when the breaker does not measure it, e.g. pybreaker).
        slow_call_rate: percent of slow calls in that window (``None`` likewise).
    """

    reason: str
    failure_rate: float | None
    slow_call_rate: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitRejected(CallRejected):
    """The breaker refused a call (``reason="circuit_open"``) while in ``state``.

    ``retry_after`` is the number of seconds until the next probe may run, or ``None``
    when that is not known (forced open, or half-open with every probe in flight).
    """

    state: str


class CircuitOpenError(RejectedError):
    """The circuit breaker refused to run the call.

    ``policy`` names the breaker's policy, ``state`` is the state that refused
    (``open``, ``half_open`` or ``forced_open``) and ``retry_after`` the seconds until
    the next probe may run (``None`` when unknown), so a surrounding
    :class:`~resilience.Retry` waits exactly until then. Without a ``message`` the text
    is derived from those attributes.
    """

    # Slots (over the base classes' attributes) make building one ~90 ns cheaper: a
    # rejection is the hot path of an open breaker.
    __slots__ = ("policy", "retry_after", "state")

    state: CircuitState

    def __init__(
        self,
        message: str | None = None,
        *,
        policy: str = "",
        state: CircuitState = _OPEN,
        retry_after: float | None = None,
    ) -> None:
        if message is None:
            Exception.__init__(self)
        else:
            Exception.__init__(self, message)
        self.policy = policy
        self.retry_after = retry_after
        self.state = state

    def __str__(self) -> str:
        if self.args:
            return str(self.args[0])
        # Formatted when shown rather than when raised: rejections must stay cheap.
        text = f"circuit breaker {self.policy!r} is {CircuitState(self.state).value}"
        if self.retry_after is not None:
            text += f"; next probe in {self.retry_after:g} s"
        return text

    def __repr__(self) -> str:
        return f"CircuitOpenError({str(self)!r})"


_new_error = CircuitOpenError.__new__

# Whether the GIL serialises bytecodes (always before 3.13; 3.13t may run without it).
_GIL: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


# -- options -------------------------------------------------------------------------------

_MAX_COUNT = 1_000_000


def _percent(name: str, value: object) -> float:
    return to_float(name, value, minimum=0.0, maximum=100.0, exclusive_minimum=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerOptions:
    """The configuration of a :class:`CircuitBreaker`, validated once at construction.

    Durations are ``float`` seconds or ``timedelta``. Trip rules set to ``None`` are off;
    at least one of ``failure_threshold``, ``failure_rate_threshold`` and
    ``slow_call_duration`` must be on. ``UNSET`` means "derive the default" (see each
    field). See the options table in the documentation for ranges.
    """

    failure_threshold: int | None = 5
    """Consecutive unknown failures that trip the breaker, ``1..1_000_000``; ``None``: off."""
    failure_rate_threshold: float | None = 50.0
    """Percent of failed calls in the window that trips it, ``(0, 100]``; ``None``: off."""
    window_type: WindowType | str = WindowType.COUNT
    """``"count"`` (the last ``window_size`` calls) or ``"time"`` (the last seconds)."""
    window_size: float | timedelta = 100
    """Calls (an ``int``, ``1..1_000_000``) or seconds (``> 0``) in the window."""
    minimum_calls: int | Unset = UNSET
    """Calls the window needs before a rate can trip, ``>= 1``; default 10 (at most
    ``window_size`` for a count window)."""
    slow_call_duration: float | timedelta | None = None
    """A call that takes at least this long is slow, ``> 0``; ``None``: not measured."""
    slow_call_rate_threshold: float = 100.0
    """Percent of slow calls in the window that trips it, ``(0, 100]``."""
    open_duration: float | timedelta = 30.0
    """How long the breaker stays open before probing, ``> 0``."""
    open_duration_multiplier: float = 1.0
    """Growth of ``open_duration`` on each re-trip from half-open, ``1..1000``."""
    max_open_duration: float | timedelta | Unset = UNSET
    """Cap on the grown open duration, ``>= open_duration``; default
    ``max(300, open_duration)``."""
    half_open_probes: int = 1
    """Trial calls admitted in half-open; all must succeed to close, ``1..10_000``."""
    max_half_open_wait: float | timedelta = 60.0
    """A probe that has not reported back after this long re-opens the breaker, ``> 0``."""
    ignore: type[BaseException] | tuple[type[BaseException], ...] = ()
    """Exception types recorded as neither success nor failure."""
    classifier: Classifier | None = None
    """Known failures (and, with ``result=``, failed results); default: every
    ``Exception`` not ignored is an unknown failure and every result a success."""

    def __post_init__(self) -> None:
        if self.failure_threshold is not None:
            to_int("failure_threshold", self.failure_threshold, minimum=1, maximum=_MAX_COUNT)
        if self.failure_rate_threshold is not None:
            _percent("failure_rate_threshold", self.failure_rate_threshold)
        try:
            window_type = WindowType(self.window_type)
        except ValueError:
            raise ValueError(
                f"window_type must be 'count' or 'time', got {self.window_type!r}"
            ) from None
        object.__setattr__(self, "window_type", window_type)
        if window_type is WindowType.COUNT:
            if not isinstance(self.window_size, int) or isinstance(self.window_size, bool):
                raise TypeError(
                    "window_size must be an int number of calls for a count window, got "
                    f"{type(self.window_size).__name__} {self.window_size!r}"
                )
            size = float(to_int("window_size", self.window_size, minimum=1, maximum=_MAX_COUNT))
        else:
            size = to_seconds("window_size", self.window_size, exclusive_minimum=True)
        if not isinstance(self.minimum_calls, Unset):
            minimum = to_int("minimum_calls", self.minimum_calls, minimum=1, maximum=_MAX_COUNT)
            if window_type is WindowType.COUNT and minimum > size:
                raise ValueError(
                    f"minimum_calls must be <= window_size ({size:g}) for a count window, "
                    f"got {self.minimum_calls!r}"
                )
        if self.slow_call_duration is not None:
            to_seconds("slow_call_duration", self.slow_call_duration, exclusive_minimum=True)
        _percent("slow_call_rate_threshold", self.slow_call_rate_threshold)
        if (
            self.failure_threshold is None
            and self.failure_rate_threshold is None
            and self.slow_call_duration is None
        ):
            raise ValueError(
                "at least one trip rule is needed: failure_threshold, "
                "failure_rate_threshold or slow_call_duration; all are None"
            )
        opened = to_seconds("open_duration", self.open_duration, exclusive_minimum=True)
        to_float(
            "open_duration_multiplier", self.open_duration_multiplier, minimum=1.0, maximum=1000.0
        )
        if not isinstance(self.max_open_duration, Unset):
            to_seconds("max_open_duration", self.max_open_duration, minimum=opened)
        to_int("half_open_probes", self.half_open_probes, minimum=1, maximum=10_000)
        to_seconds("max_half_open_wait", self.max_half_open_wait, exclusive_minimum=True)
        object.__setattr__(self, "ignore", _check_types("ignore", self.ignore))
        if self.classifier is not None and not isinstance(self.classifier, Classifier):
            raise TypeError(f"classifier must be a Classifier or None, got {self.classifier!r}")


# -- windows -------------------------------------------------------------------------------

_FAILED = 1
_SLOW = 2


class _CountWindow:
    """The outcomes of the last ``size`` calls.

    A success only moves the call counter on (``seq``); failures and slow calls are
    kept as the sequence numbers at which they happened, and forgotten once ``size``
    newer calls have passed them. Each operation is O(1) amortised.
    """

    __slots__ = ("_failures", "_size", "_slows", "seq")

    def __init__(self, size: int) -> None:
        self._size = size
        self.clear(0.0)

    def clear(self, now: float) -> None:
        self.seq = 0
        self._failures: deque[int] = deque()
        self._slows: deque[int] = deque()

    def add_ok(self, now: float) -> None:
        self.seq += 1

    def add(self, code: int, now: float) -> None:
        self.seq += 1
        if code & _FAILED:
            self._failures.append(self.seq)
        if code & _SLOW:
            self._slows.append(self.seq)

    def counts(self, now: float) -> tuple[int, int, int]:
        """Calls, failed calls and slow calls in the window."""
        seq = self.seq
        oldest = seq - self._size  # sequence numbers above this are in the window
        failures, slows = self._failures, self._slows
        while failures and failures[0] <= oldest:
            failures.popleft()
        while slows and slows[0] <= oldest:
            slows.popleft()
        return (seq if seq < self._size else self._size), len(failures), len(slows)


class _TimeWindow:
    """Call, failure and slow-call counts of the last ``seconds``, in ten buckets."""

    BUCKETS = 10
    __slots__ = ("_c", "_f", "_next", "_s", "_tick", "_width", "calls", "failed", "slow")

    def __init__(self, seconds: float, now: float) -> None:
        self._width = seconds / self.BUCKETS
        self.clear(now)

    def clear(self, now: float) -> None:
        n = self.BUCKETS
        self._c = [0] * n
        self._f = [0] * n
        self._s = [0] * n
        self.calls = self.failed = self.slow = 0
        self._tick = math.floor(now / self._width)
        self._next = (self._tick + 1) * self._width

    def _roll(self, now: float) -> None:
        """Forget the buckets that fell out of the window (at most ten steps).

        A late report (``now`` before the current bucket) counts in the current one.
        """
        tick = max(math.floor(now / self._width), self._tick + 1)
        steps = tick - self._tick
        n = self.BUCKETS
        if steps >= n:
            self._c = [0] * n
            self._f = [0] * n
            self._s = [0] * n
            self.calls = self.failed = self.slow = 0
        else:
            c, f, s = self._c, self._f, self._s
            for i in range(self._tick + 1, tick + 1):
                idx = i % n
                self.calls -= c[idx]
                self.failed -= f[idx]
                self.slow -= s[idx]
                c[idx] = f[idx] = s[idx] = 0
        self._tick = tick
        self._next = (tick + 1) * self._width

    def add_ok(self, now: float) -> None:
        if now >= self._next:
            self._roll(now)
        self._c[self._tick % self.BUCKETS] += 1
        self.calls += 1

    def add(self, code: int, now: float) -> None:
        if now >= self._next:
            self._roll(now)
        idx = self._tick % self.BUCKETS
        self._c[idx] += 1
        self.calls += 1
        if code & _FAILED:
            self._f[idx] += 1
            self.failed += 1
        if code & _SLOW:
            self._s[idx] += 1
            self.slow += 1

    def counts(self, now: float) -> tuple[int, int, int]:
        """Calls, failed calls and slow calls in the window."""
        if now >= self._next:
            self._roll(now)
        return self.calls, self.failed, self.slow


# -- the state machine ---------------------------------------------------------------------


class _Transition(NamedTuple):
    from_state: CircuitState
    to_state: CircuitState
    reason: str
    time: float
    failure_rate: float
    slow_call_rate: float


# What ``acquire`` returns when it does not simply admit: (permit or None when rejected,
# the state that decided, retry_after, the transition it made or None).
_Decision = tuple[int | None, CircuitState, float | None, _Transition | None]


class _Machine:
    """The breaker's state and every decision; no I/O, no clock, no events.

    Each method takes the time from its caller and returns the transition it made (or
    ``None``) for the caller to publish once the lock is released.
    """

    __slots__ = (
        "_classifier",
        "_consecutive",
        "_count_window",
        "_epoch",
        "_failure_threshold",
        "_ignore",
        "_last_transition",
        "_lock",
        "_max_open",
        "_max_wait",
        "_min_calls",
        "_multiplier",
        "_not_permitted",
        "_open_base",
        "_open_level",
        "_open_until",
        "_probe_deadline",
        "_probe_in_flight",
        "_probe_ok",
        "_probes",
        "_rate_threshold",
        "_slow",
        "_slow_threshold",
        "_state",
        "_transitions",
        "_window",
        "on_success",
        "options",
    )

    def __init__(self, options: CircuitBreakerOptions, now: float) -> None:
        self.options = options
        o = options
        self._failure_threshold = (
            o.failure_threshold if o.failure_threshold is not None else math.inf
        )
        self._rate_threshold = (
            o.failure_rate_threshold if o.failure_rate_threshold is not None else math.inf
        )
        self._slow = (
            to_seconds("slow_call_duration", o.slow_call_duration)
            if o.slow_call_duration is not None
            else math.inf
        )
        self._slow_threshold = o.slow_call_rate_threshold
        self._window: _CountWindow | _TimeWindow
        self.on_success: Callable[[int, float, float], _Transition | None]
        """The call admitted with ``permit`` returned normally after ``duration`` seconds."""
        if o.window_type is WindowType.COUNT:
            size = int(to_seconds("window_size", o.window_size))
            self._window = self._count_window = _CountWindow(size)
            self.on_success = self._on_success_count
            default_min = min(10, size)
        else:
            self._window = _TimeWindow(to_seconds("window_size", o.window_size), now)
            self.on_success = self._on_success
            default_min = 10
        self._min_calls = default_min if isinstance(o.minimum_calls, Unset) else o.minimum_calls
        self._open_base = to_seconds("open_duration", o.open_duration)
        self._multiplier = float(o.open_duration_multiplier)
        self._max_open = (
            max(300.0, self._open_base)
            if isinstance(o.max_open_duration, Unset)
            else to_seconds("max_open_duration", o.max_open_duration)
        )
        self._probes = o.half_open_probes
        self._max_wait = to_seconds("max_half_open_wait", o.max_half_open_wait)
        self._ignore = _check_types("ignore", o.ignore)
        self._classifier = o.classifier or DEFAULT_CLASSIFIER
        self._lock = threading.Lock()
        self._state = _CLOSED
        self._epoch = 0
        self._consecutive = 0
        self._open_until = 0.0
        self._open_level = 0
        self._probe_in_flight = 0
        self._probe_ok = 0
        self._probe_deadline = 0.0
        self._not_permitted = 0
        self._transitions = 0
        self._last_transition: float | None = None

    # -- transitions (lock held) ------------------------------------------------------------
    def _rates(self, now: float) -> tuple[float, float]:
        calls, failed, slow = self._window.counts(now)
        if not calls:
            return 0.0, 0.0
        return failed * 100.0 / calls, slow * 100.0 / calls

    def _open_duration(self) -> float:
        if self._open_level == 0:
            return self._open_base
        grown = self._open_base * self._multiplier**self._open_level
        return grown if grown < self._max_open else self._max_open

    def _to(self, new: CircuitState, reason: str, now: float) -> _Transition:
        old = self._state
        failure_rate, slow_rate = self._rates(now)
        if new is _OPEN:
            self._open_until = now + self._open_duration()
        elif new is _CLOSED:
            self._window.clear(now)
            self._consecutive = 0
            self._open_level = 0
        self._probe_in_flight = 0
        self._probe_ok = 0
        # The state is written before the epoch: see the module docstring.
        self._state = new
        epoch = self._epoch + 1
        if (epoch & 1) != (new is _HALF_OPEN):
            epoch += 1
        self._epoch = epoch
        self._transitions += 1
        self._last_transition = now
        return _Transition(old, new, reason, now, failure_rate, slow_rate)

    def _reopen(self, reason: str, now: float) -> _Transition:
        # Grow only while below the cap, so that the power cannot overflow.
        if self._open_duration() < self._max_open:
            self._open_level += 1
        return self._to(_OPEN, reason, now)

    def _poll(self, now: float) -> _Transition | None:
        """Make the transitions that time alone makes due."""
        state = self._state
        if state is _OPEN and now >= self._open_until:
            return self._to(_HALF_OPEN, "open_duration_elapsed", now)
        if state is _HALF_OPEN and self._probe_in_flight and now >= self._probe_deadline:
            # A probe that never reported back (hung, or lost) must not wedge the breaker.
            return self._reopen("probe_timeout", now)
        return None

    def _record(self, code: int, now: float) -> _Transition | None:
        """Record a closed-state outcome and trip if a rule says so."""
        window = self._window
        window.add(code, now)
        calls, failed, slow = window.counts(now)  # also forgets what left the window
        if code & _FAILED:
            self._consecutive += 1
        if self._state is _METRICS_ONLY:
            return None
        if code & _FAILED and self._consecutive >= self._failure_threshold:
            return self._to(_OPEN, "consecutive_failures", now)
        if calls >= self._min_calls:
            if code & _FAILED and failed * 100.0 >= self._rate_threshold * calls:
                return self._to(_OPEN, "failure_rate", now)
            if code & _SLOW and slow * 100.0 >= self._slow_threshold * calls:
                return self._to(_OPEN, "slow_call_rate", now)
        return None

    # -- the decision protocol ----------------------------------------------------------------
    # The protocol methods take the lock with acquire()/release() rather than
    # ``with``: measured here, that halves the cost of the lock on the hot path.
    def acquire(self, now: float) -> int | _Decision:
        """A permit (the current epoch) when the call may run, else a rejection."""
        if _GIL and self._state is _OPEN and now < self._open_until:
            # Open and not due: rejected without the lock. The count is exact (under the
            # GIL one ``+=`` on an attribute is not interrupted) and the decision held
            # when the state was read.
            self._not_permitted += 1
            return None, _OPEN, self._open_until - now, None
        lock = self._lock
        lock.acquire()
        try:
            state = self._state
            if state is _OPEN and now < self._open_until:
                self._not_permitted += 1
                return None, state, self._open_until - now, None
            if state is _CLOSED or state is _METRICS_ONLY or state is _DISABLED:
                return self._epoch
            transition = self._poll(now)
            state = self._state
            if state is _HALF_OPEN:
                if self._probe_in_flight + self._probe_ok < self._probes:
                    self._probe_in_flight += 1
                    self._probe_deadline = now + self._max_wait
                    if transition is None:
                        return self._epoch
                    return self._epoch, state, None, transition
                retry_after = None
            elif state is _OPEN:  # a hung probe timed out just now
                retry_after = self._open_until - now
            else:
                retry_after = None
            self._not_permitted += 1
            return None, state, retry_after, transition
        finally:
            lock.release()

    def _on_success(self, permit: int, now: float, duration: float) -> _Transition | None:
        lock = self._lock
        lock.acquire()
        try:
            if permit == self._epoch and self._state is _CLOSED and duration < self._slow:
                self._consecutive = 0
                self._window.add_ok(now)
                return None
            return self._succeeded(permit, now, duration)
        finally:
            lock.release()

    def _on_success_count(self, permit: int, now: float, duration: float) -> _Transition | None:
        # _on_success with the count window's add_ok inlined: the healthy hot path. With
        # the GIL, the check that passed and the two updates below run without a thread
        # switch in between (no call, no jump taken, nothing allocated that the collector
        # tracks), so the current closed epoch's success needs no lock: it is counted
        # exactly once, before or after any locked decision. Every other report, and
        # every report on a free-threaded build, takes the lock.
        if _GIL and permit == self._epoch and self._state is _CLOSED and duration < self._slow:
            self._consecutive = 0
            self._count_window.seq += 1
            return None
        lock = self._lock
        lock.acquire()
        try:
            if permit == self._epoch and self._state is _CLOSED and duration < self._slow:
                self._consecutive = 0
                self._count_window.seq += 1
                return None
            return self._succeeded(permit, now, duration)
        finally:
            lock.release()

    def _succeeded(self, permit: int, now: float, duration: float) -> _Transition | None:
        if permit != self._epoch:
            return None  # a report from before the last transition
        state = self._state
        if state is _CLOSED or state is _METRICS_ONLY:
            self._consecutive = 0
            if duration < self._slow:
                self._window.add_ok(now)
                return None
            return self._record(_SLOW, now)
        if state is _HALF_OPEN:
            self._probe_in_flight -= 1
            if duration >= self._slow:
                return self._reopen("probe_slow", now)
            self._probe_ok += 1
            if self._probe_ok >= self._probes:
                return self._to(_CLOSED, "probes_succeeded", now)
        return None

    def on_failure(
        self, permit: int, error: BaseException, now: float, duration: float
    ) -> _Transition | None:
        """The call failed with ``error``.

        Ignored types and known failures are released unrecorded; only unknown
        failures count.
        """
        if isinstance(error, self._ignore) or (
            self._classifier.classify_exception(error) is not Outcome.UNKNOWN_FAILURE
        ):
            self._release(permit)
            return None
        return self._fail(permit, now, duration)

    def on_result(
        self, permit: int, result: Any, now: float, duration: float
    ) -> _Transition | None:
        """The call returned ``result``; the classifier says what it means."""
        outcome = self._classifier.classify_result(result)
        if outcome is Outcome.SUCCESS:
            return self._on_success(permit, now, duration)
        if outcome is Outcome.UNKNOWN_FAILURE:
            return self._fail(permit, now, duration)
        self._release(permit)
        return None

    def release(self, permit: int) -> None:
        """Give the permit back without recording an outcome (a probe slot is freed)."""
        self._release(permit)

    # The public methods above are called exactly once per permit and never call one
    # another; these are what they share.
    def _fail(self, permit: int, now: float, duration: float) -> _Transition | None:
        lock = self._lock
        lock.acquire()
        try:
            if permit != self._epoch:
                return None
            state = self._state
            if state is _CLOSED or state is _METRICS_ONLY:
                return self._record(_FAILED | (_SLOW if duration >= self._slow else 0), now)
            if state is _HALF_OPEN:
                self._probe_in_flight -= 1
                return self._reopen("probe_failed", now)
            return None
        finally:
            lock.release()

    def _release(self, permit: int) -> None:
        lock = self._lock
        lock.acquire()
        try:
            if permit == self._epoch and self._state is _HALF_OPEN:
                self._probe_in_flight -= 1
        finally:
            lock.release()

    # -- manual control and reading -----------------------------------------------------------
    def force(self, new: CircuitState, now: float) -> _Transition | None:
        with self._lock:
            if self._state is new:
                return None
            if new is _OPEN:
                self._open_level = 0
            return self._to(new, "manual", now)

    def follow(
        self, new: CircuitState, open_until: float, now: float, since: int
    ) -> tuple[_Transition | None, int]:
        """Adopt a state decided elsewhere (a fleet's shared circuit), reason ``shared``.

        ``open_until`` (this machine's clock) is the end of the open time when ``new`` is
        ``open``. ``since`` is the epoch the caller last saw: an open state reached after
        it is this machine's own trip, not yet known elsewhere, and is kept. So is a
        manual state (forced open, disabled, metrics only): a hand on this replica
        outranks the fleet. Answers the transition made (or ``None``) and the epoch the
        caller has now seen (``since`` again when a trip of its own was kept).
        """
        with self._lock:
            state = self._state
            if state is _FORCED_OPEN or state is _DISABLED or state is _METRICS_ONLY:
                return None, self._epoch
            if state is _OPEN and self._epoch != since and new is not _OPEN:
                return None, since
            transition = None
            if new is _OPEN:
                if state is not _OPEN:
                    transition = self._to(_OPEN, "shared", now)
                self._open_until = open_until
            elif state is not new:
                transition = self._to(new, "shared", now)
            return transition, self._epoch

    def counts_as_failure(self, error: BaseException) -> bool:
        """Whether ``error`` is an unknown failure this breaker records (not ignored)."""
        return not isinstance(error, self._ignore) and (
            self._classifier.classify_exception(error) is Outcome.UNKNOWN_FAILURE
        )

    def result_fails(self, result: Any) -> bool | None:
        """``True``: an unknown failure, ``False``: a success, ``None``: neither."""
        outcome = self._classifier.classify_result(result)
        if outcome is Outcome.SUCCESS:
            return False
        return True if outcome is Outcome.UNKNOWN_FAILURE else None

    def reset(self, now: float) -> _Transition | None:
        with self._lock:
            old = self._state
            # Even from closed: a new epoch, so that calls in flight are forgotten.
            transition = self._to(_CLOSED, "manual", now)
            self._not_permitted = 0
            self._transitions = 0
            self._last_transition = None
            return transition if old is not _CLOSED else None

    def state(self, now: float) -> tuple[CircuitState, _Transition | None]:
        with self._lock:
            transition = self._poll(now)
            return self._state, transition

    def snapshot(self, now: float) -> tuple[dict[str, Any], _Transition | None]:
        with self._lock:
            transition = self._poll(now)
            calls, failed, slow = self._window.counts(now)
            state = self._state
            return {
                "state": state.value,
                "failure_rate": failed * 100.0 / calls if calls else 0.0,
                "slow_call_rate": slow * 100.0 / calls if calls else 0.0,
                "calls_in_window": calls,
                "failed_calls": failed,
                "slow_calls": slow,
                "consecutive_failures": self._consecutive,
                "not_permitted_calls": self._not_permitted,
                "open_until": max(0.0, self._open_until - now) if state is _OPEN else None,
                "half_open_in_flight": self._probe_in_flight,
                "transitions": self._transitions,
                "last_transition_age": (
                    None if self._last_transition is None else now - self._last_transition
                ),
            }, transition


# -- the strategy --------------------------------------------------------------------------


class _Entry:
    """One ``with breaker:`` block: the permit it holds and when it started."""

    __slots__ = ("owner", "permit", "start")

    def __init__(self, owner: CircuitBreaker, permit: int, start: float) -> None:
        self.owner = owner
        self.permit = permit
        self.start = start


# A stack per context: nested and concurrent ``with`` blocks each find their own entry.
_ENTRIES: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar(
    "resilience_breaker_entries", default=()
)


class CircuitBreaker(GatedStrategy):
    """Fail fast while a dependency keeps failing; probe it to find out when it is back.

    Closed, the breaker runs every call and records its outcome; when a trip rule fires
    (``failure_threshold`` consecutive failures, or a failure or slow-call rate over the
    window) it opens and rejects calls with :class:`CircuitOpenError` for
    ``open_duration``. Then it lets ``half_open_probes`` trial calls through: if all
    succeed it closes, if any fails it opens again (for longer, with
    ``open_duration_multiplier``).

    Parameters:
        options: a :class:`CircuitBreakerOptions`; keyword arguments override its fields
            (every field of it is also a keyword argument here).
        name: the policy name when used alone (default: the function's qualified name).
        clock: injected time (tests).

    Use it as a decorator (sync, async, methods), as ``with breaker:`` /
    ``async with breaker:``, or inside a :class:`~resilience.Pipeline`. One breaker
    instance is one circuit: every function it decorates shares its state.
    """

    kind: ClassVar[str] = "circuit_breaker"
    __slots__ = ("_clock", "_home", "_machine", "options")

    def __init__(
        self,
        options: CircuitBreakerOptions | None = None,
        *,
        failure_threshold: int | Unset | None = UNSET,
        failure_rate_threshold: float | Unset | None = UNSET,
        window_type: WindowType | str | Unset = UNSET,
        window_size: float | timedelta | Unset = UNSET,
        minimum_calls: int | Unset = UNSET,
        slow_call_duration: float | timedelta | Unset | None = UNSET,
        slow_call_rate_threshold: float | Unset = UNSET,
        open_duration: float | timedelta | Unset = UNSET,
        open_duration_multiplier: float | Unset = UNSET,
        max_open_duration: float | timedelta | Unset = UNSET,
        half_open_probes: int | Unset = UNSET,
        max_half_open_wait: float | timedelta | Unset = UNSET,
        ignore: type[BaseException] | tuple[type[BaseException], ...] | Unset = UNSET,
        classifier: Classifier | Unset | None = UNSET,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        if options is not None and not isinstance(options, CircuitBreakerOptions):
            raise TypeError(f"options must be a CircuitBreakerOptions or None, got {options!r}")
        given = {
            "failure_threshold": failure_threshold,
            "failure_rate_threshold": failure_rate_threshold,
            "window_type": window_type,
            "window_size": window_size,
            "minimum_calls": minimum_calls,
            "slow_call_duration": slow_call_duration,
            "slow_call_rate_threshold": slow_call_rate_threshold,
            "open_duration": open_duration,
            "open_duration_multiplier": open_duration_multiplier,
            "max_open_duration": max_open_duration,
            "half_open_probes": half_open_probes,
            "max_half_open_wait": max_half_open_wait,
            "ignore": ignore,
            "classifier": classifier,
        }
        overrides: dict[str, Any] = {k: v for k, v in given.items() if not isinstance(v, Unset)}
        base = options if options is not None else CircuitBreakerOptions()
        self.options = replace(base, **overrides) if overrides else base
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK
        self._machine = _Machine(self.options, self._clock.now())
        self._home: Scope | None = None

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"CircuitBreaker(state={self._machine._state.value!r}{name})"

    # -- reading ------------------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose time is up reads ``half_open``)."""
        state, transition = self._machine.state(self._clock.now())
        if transition is not None:
            self._emit(transition, self._home_scope())
        return state

    def snapshot(self) -> dict[str, Any]:
        """The live state, JSON-serialisable.

        Keys: ``kind``, ``name``, ``state``, ``failure_rate`` and ``slow_call_rate``
        (percent of the calls in the window), ``calls_in_window``, ``failed_calls``,
        ``slow_calls``, ``consecutive_failures``, ``not_permitted_calls`` (rejections
        since construction or :meth:`reset`), ``open_until`` (seconds until the next
        probe while open, else ``None``), ``half_open_in_flight``, ``transitions``
        (count) and ``last_transition_age`` (seconds, or ``None``).
        """
        data, transition = self._machine.snapshot(self._clock.now())
        if transition is not None:
            self._emit(transition, self._home_scope())
        return {"kind": self.kind, "name": self.name, **data}

    # -- manual control -------------------------------------------------------------------------
    def _force(self, state: CircuitState) -> None:
        transition = self._machine.force(state, self._clock.now())
        if transition is not None:
            self._emit(transition, self._home_scope())

    def open(self) -> None:
        """Open now, for ``open_duration``; then probe as after a trip."""
        self._force(_OPEN)

    def close(self) -> None:
        """Close now, with an empty window."""
        self._force(_CLOSED)

    def isolate(self) -> None:
        """Hold the breaker open (``forced_open``) until :meth:`close` or :meth:`reset`."""
        self._force(_FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and record nothing, until another manual change."""
        self._force(_DISABLED)

    def metrics_only(self) -> None:
        """Let every call through and record outcomes without ever tripping."""
        self._force(_METRICS_ONLY)

    def reset(self) -> None:
        """Back to a new breaker: closed, an empty window, every counter at zero."""
        transition = self._machine.reset(self._clock.now())
        if transition is not None:
            self._emit(transition, self._home_scope())

    # -- events -----------------------------------------------------------------------------------
    def _home_scope(self) -> Scope:
        """The scope of events not caused by a call: the first one it was used in."""
        return self._home or Scope(self.name or self.kind, self.kind)

    def _adopt(self, scope: Scope) -> None:
        """Take ``scope`` as the home scope if there is none yet: the scope of the first
        function wrapped, directly or as a member of a pipeline (whose name it takes)."""
        if self._home is None:
            self._home = scope

    def _emit(self, t: _Transition, scope: Scope) -> None:
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                CircuitStateChanged(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=t.time,
                    from_state=t.from_state.value,
                    to_state=t.to_state.value,
                    reason=t.reason,
                    failure_rate=t.failure_rate,
                    slow_call_rate=t.slow_call_rate,
                )
            )

    def _admit(self, decision: int | _Decision, scope: Scope, now: float) -> int:
        """Publish what ``acquire`` decided; the permit, or raise :class:`CircuitOpenError`."""
        if isinstance(decision, int):
            return decision
        if decision[0] is None:
            # Raised without ever being bound to a local of a frame it passes through: that
            # would make a reference cycle (error -> traceback -> frame -> error) per call.
            raise self._rejected(decision, scope, now)
        return self._admitted(decision, scope)

    def _admitted(self, decision: _Decision, scope: Scope) -> int:
        """A permit that came with a transition (the probe that half-opened the breaker)."""
        permit, _, _, transition = decision
        if transition is not None:
            self._emit(transition, scope)
        assert permit is not None
        return permit

    def _rejected(self, decision: _Decision, scope: Scope, now: float) -> CircuitOpenError:
        """Publish a rejection; the error to raise (the caller raises it: no frame more
        for the exception to unwind)."""
        _, state, retry_after, transition = decision
        if transition is not None:
            self._emit(transition, scope)
        policy = scope.policy
        if EVENTS.active and EVENTS.wants(policy):
            EVENTS.publish(
                CircuitRejected(
                    policy=policy,
                    strategy=scope.strategy,
                    time=now,
                    reason="circuit_open",
                    retry_after=retry_after,
                    state=state.value,
                )
            )
        # Built without its __init__ (cheaper); the message is formatted only if shown.
        err = _new_error(CircuitOpenError)
        err.policy = policy
        err.state = state
        err.retry_after = retry_after
        return err

    # -- drivers --------------------------------------------------------------------------------
    # Both drivers admit a closed-state call without the lock (the epoch is read before
    # the state: see the module docstring) and ask the machine in every other state. The
    # clock is read only when something needs it: the slow-call rule, a time window or
    # a result classifier (``timed``), a failure, or a probe (an odd permit). A rejection
    # is raised from the driver's own frame. As a policy's outermost strategy, a driver's
    # closure also carries the policy's gate (see PolicyGate).

    def _classifies_results(self) -> bool:
        c = self.options.classifier
        return c is not None and c.result is not None

    def _timed(self) -> bool:
        o = self.options
        return (
            o.window_type is WindowType.TIME
            or o.slow_call_duration is not None
            or self._classifies_results()
        )

    def _sync_driver(self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None) -> AnyCallable:
        self._adopt(scope)
        m = self._machine
        acquire, on_success, on_failure, release = m.acquire, m.on_success, m.on_failure, m.release
        on_result = m.on_result if self._classifies_results() else None
        admitted, rejected, emit, now = self._admitted, self._rejected, self._emit, self._clock.now
        timed = self._timed()
        switch = NEVER
        observed: Callable[[Any, Any], Any] = unobserved
        stats, begin = NEVER_STATS, now  # the policy's counters, and its start of a call
        record: Callable[[float], None] = untimed
        failure: Callable[[BaseException, float | None], None] = unfailed
        if gate is not None:
            switch = gate.switch
            observed = gate.observe_sync(self._sync_driver(fn, scope, None))
            stats, _, failure = gate.tally()
            begin, record = gate.timer()

        def recorded(err: CircuitOpenError, t0: float | None) -> CircuitOpenError:
            failure(err, t0)
            return err

        # What only tracing, failures and rejections use, in one free variable: a
        # closure's free variables are copied into its frame on every call.
        slow = (observed, failure, recorded)

        def breaker(*args: Any, **kwargs: Any) -> Any:
            mode = switch.mode
            if mode:
                # Metrics are served in this frame (no observer frame).
                if mode == COUNT_TIME:
                    t0: float | None = begin()
                elif mode == COUNT:
                    t0 = None
                else:  # tracing, or a result classifier
                    return slow[0](args, kwargs)  # observed
            permit = m._epoch
            if m._state is not _CLOSED:
                start = now()
                decision = acquire(start)
                if decision.__class__ is int:
                    permit = decision
                elif decision[0] is None:  # type: ignore[index]
                    if mode:
                        raise slow[2](rejected(decision, scope, start), t0)  # type: ignore[arg-type]
                    raise rejected(decision, scope, start)  # type: ignore[arg-type]
                else:
                    permit = admitted(decision, scope)  # type: ignore[arg-type]
            else:
                start = now() if timed else 0.0  # untimed: no duration is ever compared
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                end = now()
                t = on_failure(permit, exc, end, end - start)
                if t is not None:
                    emit(t, scope)
                if mode:
                    slow[1](exc, t0)  # failure
                raise
            except BaseException as exc:
                release(permit)  # cancelled or interrupted: a probe slot is given back
                if mode:
                    slow[1](exc, t0)  # failure
                raise
            if mode:  # (a result classifier sends every call to ``observed``)
                if t0 is None:
                    stats.ok_untimed += 1
                else:
                    record(t0)
            if timed:
                end = now()
                if on_result is None:
                    t = on_success(permit, end, end - start)
                else:
                    t = on_result(permit, result, end, end - start)
            elif permit & 1:
                t = on_success(permit, now(), 0.0)
            else:
                # Closed, untimed: a success never transitions, so it needs no clock.
                on_success(permit, 0.0, 0.0)
                return result
            if t is not None:
                emit(t, scope)
            return result

        return breaker

    def _async_driver(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        self._adopt(scope)
        m = self._machine
        acquire, on_success, on_failure, release = m.acquire, m.on_success, m.on_failure, m.release
        on_result = m.on_result if self._classifies_results() else None
        admitted, rejected, emit, now = self._admitted, self._rejected, self._emit, self._clock.now
        timed = self._timed()
        switch = NEVER
        observed: Callable[[Any, Any], Any] = unobserved
        stats, begin = NEVER_STATS, now  # the policy's counters, and its start of a call
        record: Callable[[float], None] = untimed
        failure: Callable[[BaseException, float | None], None] = unfailed
        if gate is not None:
            switch = gate.switch
            observed = gate.observe_async(self._async_driver(fn, scope, None))
            stats, _, failure = gate.tally()
            begin, record = gate.timer()

        def recorded(err: CircuitOpenError, t0: float | None) -> CircuitOpenError:
            failure(err, t0)
            return err

        # What only tracing, failures and rejections use, in one free variable: a
        # closure's free variables are copied into its frame on every call.
        slow = (observed, failure, recorded)

        async def breaker(*args: Any, **kwargs: Any) -> Any:
            mode = switch.mode
            if mode:
                # Metrics are served in this frame (no observer frame).
                if mode == COUNT_TIME:
                    t0: float | None = begin()
                elif mode == COUNT:
                    t0 = None
                else:  # tracing, or a result classifier
                    return await slow[0](args, kwargs)  # observed
            permit = m._epoch
            if m._state is not _CLOSED:
                start = now()
                decision = acquire(start)
                if decision.__class__ is int:
                    permit = decision
                elif decision[0] is None:  # type: ignore[index]
                    if mode:
                        raise slow[2](rejected(decision, scope, start), t0)  # type: ignore[arg-type]
                    raise rejected(decision, scope, start)  # type: ignore[arg-type]
                else:
                    permit = admitted(decision, scope)  # type: ignore[arg-type]
            else:
                start = now() if timed else 0.0
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                end = now()
                t = on_failure(permit, exc, end, end - start)
                if t is not None:
                    emit(t, scope)
                if mode:
                    slow[1](exc, t0)  # failure
                raise
            except BaseException as exc:
                release(permit)  # cancelled: a probe slot taken is given back
                if mode:
                    slow[1](exc, t0)  # failure
                raise
            if mode:  # (a result classifier sends every call to ``observed``)
                if t0 is None:
                    stats.ok_untimed += 1
                else:
                    record(t0)
            if timed:
                end = now()
                if on_result is None:
                    t = on_success(permit, end, end - start)
                else:
                    t = on_result(permit, result, end, end - start)
            elif permit & 1:
                t = on_success(permit, now(), 0.0)
            else:
                on_success(permit, 0.0, 0.0)
                return result
            if t is not None:
                emit(t, scope)
            return result

        return breaker

    # -- with-blocks ----------------------------------------------------------------------------
    def _enter(self) -> None:
        scope = self._home_scope()
        start = self._clock.now()
        permit = self._admit(self._machine.acquire(start), scope, start)
        _ENTRIES.set((*_ENTRIES.get(), _Entry(self, permit, start)))

    def _exit(self, exc: BaseException | None) -> None:
        stack = _ENTRIES.get()
        if not stack or stack[-1].owner is not self:
            raise RuntimeError(
                "CircuitBreaker blocks must be exited in the order they were entered"
            )
        entry = stack[-1]
        _ENTRIES.set(stack[:-1])
        m = self._machine
        if exc is not None and not isinstance(exc, Exception):
            m.release(entry.permit)
            return
        end = self._clock.now()
        if exc is None:
            t = m.on_success(entry.permit, end, end - entry.start)
        else:
            t = m.on_failure(entry.permit, exc, end, end - entry.start)
        if t is not None:
            self._emit(t, self._home_scope())

    def __enter__(self) -> CircuitBreaker:
        """``with breaker:`` runs the block as one call, or raises :class:`CircuitOpenError`."""
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> CircuitBreaker:
        """``async with breaker:``; a cancelled block gives its probe slot back."""
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)
