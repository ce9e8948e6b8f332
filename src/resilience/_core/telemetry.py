"""Per-call telemetry for decorated policies, and the registry of named policies.

Every decorated function gets one telemetry *gate*, built at decoration time: fused
into the outermost strategy's own closure where that strategy supports it (Retry,
CircuitBreaker, Timeout: see :class:`PolicyGate`), else a separate *policy wrapper*
frame. With telemetry off (the default: importing resilience switches nothing on) it
costs one attribute check per call. Integrations switch it on:

- metrics (:mod:`resilience.prometheus`, :mod:`resilience.otel`) make the gate count
  the call's outcome into plain in-process numbers (:class:`PolicyStats`), read at
  scrape time; with durations on (Prometheus' call-duration histogram) it also reads the
  clock twice and buckets the duration. No metrics-library object is touched per call.
- tracing (:mod:`resilience.otel`) installs one :class:`CallObserver` that opens a span
  around the call, or declines at once when no real tracer provider is configured.

Durations come from the policy's clock, bucketed by ``int.bit_length()`` of the duration
in nanoseconds: slot ``b`` holds durations in ``[2**(b-1), 2**b)`` ns, so a scrape can
expose any power-of-two bucket boundaries exactly. The hot path of a fused closure keeps
the clock's float seconds and handles the common case, a call shorter than the first
exposed bucket bound (:data:`QUICK`), with one comparison and two increments; on the
system clock the compiled :mod:`resilience._speedups` does that, and the two clock
reads, in C (:meth:`PolicyGate.timer`).

Policies also register here, weakly, under their policy name, so that
:func:`resilience.status` and the metric gauges can read every policy's ``snapshot()``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from .clock import SYSTEM_CLOCK, Clock, SystemClock
from .errors import RejectedError
from .outcome import DEFAULT_CLASSIFIER, Classifier, Outcome

if TYPE_CHECKING:
    from .strategy import AnyCallable, AsyncCallable, Scope, Strategy

__all__ = [
    "CALL_OUTCOMES",
    "CallObserver",
    "NEVER",
    "NEVER_STATS",
    "OBSERVED",
    "POLICIES",
    "QUICK",
    "STATS",
    "TELEMETRY",
    "TRACED",
    "PolicyGate",
    "PolicyStats",
    "decorate",
    "error_type",
    "instrument",
    "unfailed",
    "unobserved",
    "untimed",
]

COUNT: Final = 1
TRACING: Final = 2
TIME: Final = 4
COUNT_TIME: Final = COUNT | TIME
ALL_MODES: Final = COUNT | TRACING | TIME

SUCCESS, KNOWN, UNKNOWN, REJECTED, CANCELLED = range(5)
CALL_OUTCOMES: Final = ("success", "known_failure", "unknown_failure", "rejected", "cancelled")
"""The ``outcome`` label of a call, by index in :attr:`PolicyStats.hist`."""

SLOTS: Final = 65
"""Histogram slots: ``bit_length()`` of a duration in ns (0..64); then the calls counted
while durations were off, and the sum of the durations in seconds."""
UNTIMED: Final = 65
SECONDS: Final = 66

QUICK_SLOT: Final = 17
"""The slot of the first exposed bucket bound, ``2**17`` ns (131 µs): every duration
below it is in the first bucket, whatever its slot."""
QUICK: Final = 2**QUICK_SLOT / 1e9
""":data:`QUICK_SLOT`'s bound in seconds: a success timed in seconds below it is only
counted (:attr:`PolicyStats.ok_quick`), with no bucket to compute."""

_OUTCOME_INDEX: Final = {Outcome.SUCCESS: SUCCESS, Outcome.KNOWN_FAILURE: KNOWN}


def _compiled_tally() -> Any:
    """``resilience._speedups.Tally`` if it was compiled and may be used, else ``None``.

    Not on a free-threaded build (its counters rely on the GIL), and not with
    ``RESILIENCE_NO_EXTENSIONS=1`` in the environment.
    """
    if os.environ.get("RESILIENCE_NO_EXTENSIONS", "") not in {"", "0"}:
        return None
    gil_enabled = getattr(sys, "_is_gil_enabled", None)
    if gil_enabled is not None and not gil_enabled():
        return None
    try:
        from resilience._speedups import Tally
    except ImportError:
        return None
    return Tally


TALLY: Final[Any] = _compiled_tally()
"""The compiled :class:`resilience._speedups.Tally`, or ``None``: then every policy
records its successes with the Python code of :meth:`PolicyGate.timer`."""


class CallObserver(Protocol):
    """What tracing installs: called around every call of every decorated policy."""

    def begin(self, scope: Scope) -> object | None:
        """Start observing one call; ``None`` declines (then :meth:`end` is not called)."""
        ...

    def end(self, handle: object, outcome: str, error: BaseException | None) -> None:
        """The call finished with ``outcome`` (one of :data:`CALL_OUTCOMES`)."""
        ...


class _Telemetry:
    """The process-wide switches every policy wrapper reads.

    ``mode`` is a bit set of ``COUNT``, ``TIME`` and ``TRACING``; ``0`` is the fast path.
    ``follower``, if given, is kept at ``mode | TRACING`` while ``mode`` is nonzero.

    Every switch a closure reads (:data:`TELEMETRY`, :data:`OBSERVED`, :data:`NEVER`) is
    of this one class: a closure body shared by several closures reads ``mode`` at one
    site, which the interpreter specialises for one class only.
    """

    __slots__ = ("_counters", "_follower", "_lock", "_timers", "mode", "observer")

    def __init__(self, follower: _Telemetry | None = None) -> None:
        self.mode = 0
        self.observer: CallObserver | None = None
        self._counters = 0
        self._timers = 0
        self._follower = follower
        self._lock = threading.Lock()

    def _update(self) -> None:
        mode = (
            (COUNT if self._counters else 0)
            | (TIME if self._timers else 0)
            | (TRACING if self.observer is not None else 0)
        )
        self.mode = mode
        if self._follower is not None:
            self._follower.mode = mode | TRACING if mode else 0

    def acquire_metrics(self, *, durations: bool) -> None:
        """Start counting calls, and timing them with ``durations`` (reference-counted:
        Prometheus and OTel may both use it)."""
        with self._lock:
            self._counters += 1
            self._timers += bool(durations)
            self._update()

    def release_metrics(self, *, durations: bool) -> None:
        """Undo one :meth:`acquire_metrics` with the same ``durations``."""
        with self._lock:
            self._counters = max(0, self._counters - 1)
            self._timers = max(0, self._timers - bool(durations))
            self._update()

    def set_observer(self, observer: CallObserver | None) -> None:
        """Install (or with ``None`` remove) the tracing observer."""
        with self._lock:
            self.observer = observer
            self._update()


OBSERVED: Final = _Telemetry()
"""The switch of a fused closure whose calls all go through its observer (a policy with
a result classifier, whose outcome the closure cannot tell): nonzero exactly while
:data:`TELEMETRY` is, and then never ``COUNT`` or ``COUNT_TIME``."""

TELEMETRY: Final = _Telemetry(OBSERVED)


class PolicyStats:
    """In-process call counters of one ``(policy, strategy)``: a histogram per outcome.

    ``hist[outcome][b]`` counts calls whose duration in ns has ``bit_length() == b``;
    ``hist[outcome][SECONDS]`` is the sum of their durations in seconds, and
    ``hist[outcome][UNTIMED]`` counts the calls made while only counting was on.

    The success path of a fused closure has three counters of its own, plain attributes
    (cheaper to bump than list slots): ``ok_quick`` counts successes timed in seconds
    below :data:`QUICK`, ``ok_seconds`` sums the durations of every success timed in
    seconds (a slower one also gets its bucket, :meth:`slower`), ``ok_untimed`` counts
    successes while only counting is on. ``ok_quick`` is a ``float``: adding ``1.0``
    reuses a freed float where ``+ 1`` allocates a new ``int``, and it counts exactly
    up to 2**53 calls.

    Nothing is locked: under the GIL an ``int`` or ``float`` ``+=`` on a list slot or a
    slotted attribute runs without a thread switch in between (no call, no backward
    jump), and a lock would cost more than the whole update. A scrape copies each list
    before reading it. Read them through :meth:`calls`, :meth:`timed`, :meth:`seconds`
    and :meth:`slots`.
    """

    __slots__ = ("hist", "ok_quick", "ok_seconds", "ok_untimed", "policy", "strategy", "tally")

    def __init__(self, policy: str, strategy: str) -> None:
        self.policy = policy
        self.strategy = strategy
        self.hist: tuple[list[Any], ...] = tuple([0] * SECONDS + [0.0] for _ in CALL_OUTCOMES)
        self.ok_quick = 0.0
        self.ok_seconds = 0.0
        self.ok_untimed = 0
        # The compiled twin of ok_quick and ok_seconds, for successes timed on the system
        # clock (see PolicyGate.timer); a slower success still gets its bucket here.
        self.tally: Any = TALLY(QUICK, self.slower) if TALLY is not None else None

    def record_seconds(self, outcome: int, seconds: float) -> None:
        h = self.hist[outcome]
        h[math.trunc(seconds * 1e9).bit_length()] += 1
        h[SECONDS] += seconds

    def slower(self, seconds: float) -> None:
        """Bucket a success timed in seconds at :data:`QUICK` or more (its caller adds
        ``seconds`` to :attr:`ok_seconds`)."""
        self.hist[SUCCESS][math.trunc(seconds * 1e9).bit_length()] += 1

    def count(self, outcome: int) -> None:
        self.hist[outcome][UNTIMED] += 1

    def slots(self, outcome: int) -> list[Any]:
        """A copy of ``hist[outcome]`` with the success counters folded in: the quick
        successes in :data:`QUICK_SLOT`, their sum in ``SECONDS``, the untimed ones in
        ``UNTIMED``."""
        h = list(self.hist[outcome])
        if outcome == SUCCESS:
            h[QUICK_SLOT] += int(self.ok_quick)
            h[SECONDS] += self.ok_seconds
            h[UNTIMED] += self.ok_untimed
            if self.tally is not None:
                h[QUICK_SLOT] += int(self.tally.quick)
                h[SECONDS] += self.tally.seconds
        return h

    def calls(self, outcome: int) -> int:
        """Calls that ended with ``outcome``, timed or not."""
        h = self.slots(outcome)
        return int(sum(h[:SLOTS]) + h[UNTIMED])

    def timed(self, outcome: int) -> int:
        """Calls that ended with ``outcome`` and have a duration in the histogram."""
        return int(sum(self.slots(outcome)[:SLOTS]))

    def seconds(self, outcome: int) -> float:
        """The sum of the durations of the calls that ended with ``outcome``."""
        h = self.slots(outcome)
        return float(h[SECONDS])


class _StatsTable:
    """Every :class:`PolicyStats`, created at decoration time and kept for the process.

    Counters must survive the functions that fed them (a Prometheus counter never goes
    back), and their number is bounded by the policies in the code.
    """

    __slots__ = ("_lock", "_stats")

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], PolicyStats] = {}
        self._lock = threading.Lock()

    def get(self, policy: str, strategy: str) -> PolicyStats:
        key = (policy, strategy)
        with self._lock:
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = PolicyStats(policy, strategy)
            return stats

    def all(self) -> list[PolicyStats]:
        with self._lock:
            return list(self._stats.values())


STATS: Final = _StatsTable()


class PolicyRegistry:
    """Named policies, held weakly: a policy that is garbage collected drops out.

    A strategy registers under the policy name of every function it decorates; the same
    name can hold several strategies (two unnamed retries on two methods named ``get``).
    """

    __slots__ = ("_lock", "_refs")

    def __init__(self) -> None:
        self._refs: dict[str, list[weakref.ref[Strategy]]] = {}
        self._lock = threading.Lock()

    def add(self, policy: str, strategy: Strategy) -> None:
        with self._lock:
            refs = [r for r in self._refs.get(policy, ()) if r() is not None]
            if not any(r() is strategy for r in refs):
                refs.append(weakref.ref(strategy))
            self._refs[policy] = refs

    def items(self) -> list[tuple[str, Strategy]]:
        """Every live ``(policy name, strategy)``, sorted by name, then registration order."""
        out: list[tuple[str, Strategy]] = []
        with self._lock:
            for name in sorted(self._refs):
                live = [s for s in (r() for r in self._refs[name]) if s is not None]
                if live:
                    out.extend((name, s) for s in live)
                else:
                    del self._refs[name]
        return out


POLICIES: Final = PolicyRegistry()


def error_type(error: BaseException) -> str:
    """An exception's fully qualified class name (``builtins`` left out): a bounded label."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# -- what the wrapper learns about its policy at decoration time --------------------------------
def _find(strategy: Strategy, names: tuple[str, ...], kind: type[Any], skip: object = None) -> Any:
    """The first attribute of type ``kind`` (and not ``skip``) on the strategy, or on a
    pipeline's members, outermost first. A dotted name reads through an attribute
    (``options.classifier``)."""
    for attr in names:
        value: Any = strategy
        for part in attr.split("."):
            value = getattr(value, part, None)
        if isinstance(value, kind) and value is not skip:
            return value
    for inner in getattr(strategy, "strategies", ()):
        found = _find(inner, names, kind, skip)
        if found is not None:
            return found
    return None


def _classify_error(classifier: Classifier, exc: BaseException) -> int:
    if isinstance(exc, RejectedError):
        return REJECTED
    if not isinstance(exc, Exception):
        return CANCELLED
    try:
        return KNOWN if classifier.classify_exception(exc) is Outcome.KNOWN_FAILURE else UNKNOWN
    except Exception:  # a broken predicate must not break the call it observes
        return UNKNOWN


def _classify_result(classifier: Classifier, result: Any) -> int:
    try:
        return _OUTCOME_INDEX.get(classifier.classify_result(result), UNKNOWN)
    except Exception:
        return SUCCESS


def instrument(
    strategy: Strategy, wrapped: AnyCallable, scope: Scope, *, is_async: bool
) -> AnyCallable:
    """Register ``strategy`` under ``scope.policy``; put the separate policy wrapper
    around ``wrapped``, a closure the strategy already built (``call()`` / ``acall()``)."""
    POLICIES.add(scope.policy, strategy)
    gate = PolicyGate(strategy, scope)
    wrapper: AnyCallable = gate.wrap_async(wrapped) if is_async else gate.wrap_sync(wrapped)
    # The decorated function keeps its policy alive (``@Pipeline(...)`` inline has no
    # other owner), so the registry's weak entry lives exactly as long as the function.
    wrapper.__resilience_policy__ = strategy  # type: ignore[attr-defined]
    return wrapper


def decorate(
    strategy: Strategy, fn: Callable[..., Any], scope: Scope, *, is_async: bool
) -> AnyCallable:
    """Register ``strategy`` under ``scope.policy``; the decorated form of ``fn``.

    The outermost strategy builds its closure with the policy's gate in it
    (:meth:`Strategy._wrap_sync_policy`); by default that is its closure inside the
    separate policy wrapper. ``fn`` itself comes back when the strategy has nothing to
    do (an empty pipeline).
    """
    POLICIES.add(scope.policy, strategy)
    gate = PolicyGate(strategy, scope)
    if is_async:
        wrapper = strategy._wrap_async_policy(fn, scope, gate)
    else:
        wrapper = strategy._wrap_sync_policy(fn, scope, gate)
    if wrapper is fn:
        return fn
    wrapper.__resilience_policy__ = strategy  # type: ignore[attr-defined]
    return wrapper


NEVER: Final = _Telemetry()
"""A switch that is never turned on: what every closure that is not a policy's outermost
one reads, so that one closure body serves both."""


TRACED: Final = tuple(bool(mode & TRACING) for mode in range(ALL_MODES + 1))
"""By mode, whether a closure on the tally contract hands the call to ``observed``:
``TRACED[mode]`` is one tuple index, where ``mode != COUNT_TIME and mode != COUNT``
is two comparisons (:data:`OBSERVED` always sets ``TRACING``)."""


def unobserved(args: Any, kwargs: Any) -> Any:
    """The ``observed`` of a closure built with :data:`NEVER`: never called."""
    raise AssertionError("a closure built with the NEVER switch was observed")


def untimed(t0: float, /) -> None:
    """The ``record`` of a closure built with :data:`NEVER`: never called."""
    raise AssertionError("a closure that does not time calls timed one")


def unfailed(error: BaseException, started: float | None) -> None:
    """The ``failure`` of a closure built with :data:`NEVER`: never called."""
    raise AssertionError("a closure that does not record calls recorded one")


NEVER_STATS: Final = PolicyStats("", "")
"""The ``stats`` of a closure built with :data:`NEVER`: never touched, and in no table."""


class PolicyGate:
    """The telemetry of one decorated function, handed to its outermost strategy.

    A strategy either leaves it to :meth:`wrap_sync` / :meth:`wrap_async` (a separate
    wrapper frame: one flag check per call while telemetry is off), or fuses it into its
    own closure, which reads :attr:`switch` once per call (the same closure built further
    in reads :data:`NEVER`) and serves metrics in its own frame::

        stats, _, failure = gate.tally()
        start, record = gate.timer()
        observed = gate.observe_sync(plain)     # plain: the closure built with NEVER

        def closure(*args, **kwargs):
            mode = switch.mode
            if mode:
                if mode == COUNT_TIME:
                    t0 = start()                # the policy's clock, in seconds
                elif mode == COUNT:
                    t0 = None                   # counting only
                else:                           # tracing, or a result classifier
                    return observed(args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                if mode:
                    failure(exc, t0)
                raise
            if mode:
                if t0 is None:
                    stats.ok_untimed += 1
                else:
                    record(t0)                  # a comparison and two increments
            return result

    While telemetry is off that costs one attribute read and no frame; with metrics on,
    two calls, ``start()`` and ``record(t0)``: C methods with the compiled speedups
    (see :meth:`timer`), else a clock read and a small Python function. A strategy that
    reads the policy's clock anyway may time the call with its own reads
    (:meth:`shares`). Durations use the first injected clock of the policy (a FakeClock
    in tests), else the system's.
    """

    __slots__ = (
        "_stats",
        "by_result",
        "classifier",
        "clock",
        "now",
        "scope",
        "switch",
    )

    def __init__(self, strategy: Strategy, scope: Scope) -> None:
        self.scope = scope
        self._stats: PolicyStats | None = None
        classifier: Classifier = (
            _find(strategy, ("classifier", "_classifier", "options.classifier"), Classifier)
            or DEFAULT_CLASSIFIER
        )
        self.classifier = classifier
        self.by_result = classifier.result is not None
        self.clock: Clock = (
            _find(strategy, ("clock", "_clock"), Clock, SYSTEM_CLOCK) or SYSTEM_CLOCK
        )
        # The builtin time.monotonic itself for the system clock: no Python frame.
        self.now: Callable[[], float] = self.clock.now
        # A result classifier decides outcomes from returned values, which the fused
        # closures do not look at: every call of such a policy goes to ``observed``.
        self.switch = OBSERVED if self.by_result else TELEMETRY

    @property
    def stats(self) -> PolicyStats:
        """The policy's counters (created on first use: a policy that turns out to have
        nothing to wrap, an empty pipeline, gets none)."""
        if self._stats is None:
            self._stats = STATS.get(self.scope.policy, self.scope.strategy)
        return self._stats

    def shares(self, clock: Clock) -> bool:
        """Whether a strategy reading ``clock`` may time the policy's calls with its own
        two reads: both it and the policy's durations are the system clock (an injected
        clock keeps the exact durations of :attr:`now`)."""
        return type(clock) is SystemClock and type(self.clock) is SystemClock

    def tally(
        self,
    ) -> tuple[PolicyStats, Callable[[], float], Callable[[BaseException, float | None], None]]:
        """``(stats, now, failure)``: what a fused closure needs to serve metrics in its
        own frame (see the class docstring)."""
        return self.stats, self.now, self.failure

    def timer(self) -> tuple[Callable[[], float], Callable[[float], None]]:
        """``(start, record)``, what times the policy's successes with metrics on
        (``COUNT_TIME``): ``t0 = start()`` before a call, ``record(t0)`` after it
        succeeded.

        On the system clock, with the compiled speedups, they are the methods of the
        policy's :class:`resilience._speedups.Tally`: ``record`` reads the clock,
        compares and counts in C. Otherwise ``start`` is :attr:`now` and ``record`` does
        the same in Python. A failure is timed by :meth:`failure`, on the same clock
        either way.
        """
        stats = self.stats
        if stats.tally is not None and type(self.clock) is SystemClock:
            return stats.tally.start, stats.tally.record
        now = self.now

        def record(t0: float, /) -> None:
            d = now() - t0
            if d < QUICK:
                stats.ok_quick += 1.0
            else:
                stats.slower(d)
            stats.ok_seconds += d

        return now, record

    def failure(self, error: BaseException, started: float | None) -> None:
        """Record ``error`` ending a call that started at ``started`` on :attr:`now`
        (``None``: counted only, not timed)."""
        if started is None:
            self.stats.count(_classify_error(self.classifier, error))
            return
        seconds = self.now() - started
        self.stats.record_seconds(_classify_error(self.classifier, error), seconds)

    def observe_sync(self, plain: AnyCallable) -> Callable[[Any, Any], Any]:
        """``observed(args, kwargs)``: ``plain(*args, **kwargs)`` under telemetry."""
        return _sync_observer(plain, self)

    def observe_async(self, plain: AsyncCallable) -> Callable[[Any, Any], Any]:
        """The async twin of :meth:`observe_sync` (``await observed(args, kwargs)``)."""
        return _async_observer(plain, self)

    def wrap_sync(self, plain: AnyCallable) -> AnyCallable:
        """The separate policy wrapper around ``plain``."""
        return _sync_wrapper(plain, self)

    def wrap_async(self, plain: AsyncCallable) -> AsyncCallable:
        """The separate policy wrapper around the coroutine function ``plain``."""
        return _async_wrapper(plain, self)


def _sync_observer(inner: AnyCallable, gate: PolicyGate) -> Callable[[Any, Any], Any]:
    switch = TELEMETRY
    scope, stats, classifier, now, failure = (
        gate.scope,
        gate.stats,
        gate.classifier,
        gate.now,
        gate.failure,
    )
    by_result = gate.by_result
    start, record = gate.timer()
    # Without a result classifier, metrics alone (the common case) are served inline.
    timed = -1 if by_result else COUNT_TIME
    counting = -1 if by_result else COUNT

    def observed(args: Any, kwargs: Any) -> Any:
        mode = switch.mode
        if mode == timed:
            # Metrics with durations: a start, and a record of the success.
            t0 = start()
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                failure(exc, t0)
                raise
            record(t0)
            return result
        if mode == counting:
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                failure(exc, None)
                raise
            stats.ok_untimed += 1
            return result
        # Tracing (with or without metrics), or a result classifier.
        observer = switch.observer
        handle = observer.begin(scope) if observer is not None else None
        if handle is None and not mode & COUNT:
            return inner(*args, **kwargs)
        started = now() if mode & TIME else None
        try:
            result = inner(*args, **kwargs)
        except BaseException as exc:
            outcome = _classify_error(classifier, exc)
            _record(stats, mode, outcome, started, now)
            if handle is not None and observer is not None:
                observer.end(handle, CALL_OUTCOMES[outcome], exc)
            raise
        outcome = _classify_result(classifier, result) if by_result else SUCCESS
        _record(stats, mode, outcome, started, now)
        if handle is not None and observer is not None:
            observer.end(handle, CALL_OUTCOMES[outcome], None)
        return result

    return observed


def _sync_wrapper(inner: AnyCallable, gate: PolicyGate) -> AnyCallable:
    switch = TELEMETRY
    observed = _sync_observer(inner, gate)
    stats, _, failure = gate.tally()
    start, record = gate.timer()

    if gate.by_result:

        def policy_classified(*args: Any, **kwargs: Any) -> Any:
            if not switch.mode:
                return inner(*args, **kwargs)
            return observed(args, kwargs)

        return policy_classified

    def policy(*args: Any, **kwargs: Any) -> Any:
        mode = switch.mode
        if not mode:
            return inner(*args, **kwargs)
        if mode == COUNT_TIME:
            # Metrics served here (as in ``observed``): no observer frame.
            t0 = start()
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                failure(exc, t0)
                raise
            record(t0)
            return result
        if mode == COUNT:
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                failure(exc, None)
                raise
            stats.ok_untimed += 1
            return result
        return observed(args, kwargs)

    return policy


def _record(
    stats: PolicyStats, mode: int, outcome: int, t0: float | None, now: Callable[[], float]
) -> None:
    if t0 is not None:
        stats.record_seconds(outcome, now() - t0)
    elif mode & COUNT:
        stats.count(outcome)


def _async_wrapper(inner: AsyncCallable, gate: PolicyGate) -> AsyncCallable:
    switch = TELEMETRY
    observed = _async_observer(inner, gate)

    async def policy(*args: Any, **kwargs: Any) -> Any:
        if not switch.mode:
            return await inner(*args, **kwargs)
        return await observed(args, kwargs)

    return policy


def _async_observer(inner: AsyncCallable, gate: PolicyGate) -> Callable[[Any, Any], Any]:
    switch = TELEMETRY
    scope, stats, classifier, now = gate.scope, gate.stats, gate.classifier, gate.now
    by_result = gate.by_result

    async def observed(args: Any, kwargs: Any) -> Any:
        observer = switch.observer
        handle = observer.begin(scope) if observer is not None else None
        mode = switch.mode
        if handle is None and not mode & COUNT:
            return await inner(*args, **kwargs)
        t0 = now() if mode & TIME else None
        try:
            result = await inner(*args, **kwargs)
        except BaseException as exc:
            outcome = _classify_error(classifier, exc)
            _record(stats, mode, outcome, t0, now)
            if handle is not None and observer is not None:
                observer.end(handle, CALL_OUTCOMES[outcome], exc)
            raise
        outcome = _classify_result(classifier, result) if by_result else SUCCESS
        _record(stats, mode, outcome, t0, now)
        if handle is not None and observer is not None:
            observer.end(handle, CALL_OUTCOMES[outcome], None)
        return result

    return observed
