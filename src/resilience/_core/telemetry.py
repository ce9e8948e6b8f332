"""Per-call telemetry for decorated policies, and the registry of named policies.

Every decorated function gets one telemetry *gate*, built at decoration time: fused
into the outermost strategy's own closure where that strategy supports it (Retry,
CircuitBreaker, Timeout: see :class:`PolicyGate`), else a separate *policy wrapper*
frame. With telemetry off (the default: importing resilience switches nothing on) it
costs one attribute check per call. Integrations switch it on:

- metrics (:mod:`resilience.prometheus`, :mod:`resilience.otel`) make the gate count
  the call's outcome into plain in-process lists of ints, read at scrape time; with
  durations on (Prometheus' call-duration histogram) it also reads the clock twice and
  buckets the duration. No metrics-library object is touched per call.
- tracing (:mod:`resilience.otel`) installs one :class:`CallObserver` that opens a span
  around the call, or declines at once when no real tracer provider is configured.

Durations are integer nanoseconds from the policy's clock, bucketed by
``int.bit_length()``: slot ``b`` holds durations in ``[2**(b-1), 2**b)`` ns, so a scrape
can expose any power-of-two bucket boundaries exactly.

Policies also register here, weakly, under their policy name, so that
:func:`resilience.status` and the metric gauges can read every policy's ``snapshot()``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from .clock import SYSTEM_CLOCK, Clock, SystemClock, monotonic_ns
from .errors import RejectedError
from .outcome import DEFAULT_CLASSIFIER, Classifier, Outcome

if TYPE_CHECKING:
    from .strategy import AnyCallable, AsyncCallable, Scope, Strategy

__all__ = [
    "CALL_OUTCOMES",
    "CallObserver",
    "NEVER",
    "NEVER_OBSERVED",
    "POLICIES",
    "STATS",
    "TELEMETRY",
    "PolicyGate",
    "PolicyStats",
    "decorate",
    "error_type",
    "instrument",
    "unobserved",
    "unrecorded",
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
"""Histogram slots: ``bit_length()`` of a duration in ns (0..64); then the sum, then the
calls counted while durations were off."""
SUM: Final = 65
UNTIMED: Final = 66

_OUTCOME_INDEX: Final = {Outcome.SUCCESS: SUCCESS, Outcome.KNOWN_FAILURE: KNOWN}


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
    """

    __slots__ = ("_counters", "_lock", "_timers", "mode", "observer")

    def __init__(self) -> None:
        self.mode = 0
        self.observer: CallObserver | None = None
        self._counters = 0
        self._timers = 0
        self._lock = threading.Lock()

    def _update(self) -> None:
        self.mode = (
            (COUNT if self._counters else 0)
            | (TIME if self._timers else 0)
            | (TRACING if self.observer is not None else 0)
        )

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


TELEMETRY: Final = _Telemetry()


class PolicyStats:
    """In-process call counters of one ``(policy, strategy)``: a histogram per outcome.

    ``hist[outcome][b]`` counts calls whose duration in ns has ``bit_length() == b``;
    ``hist[outcome][SUM]`` is the sum of their durations in ns, ``hist[outcome][UNTIMED]``
    counts the calls made while only counting was on. The lists are updated
    without a lock: under the GIL an ``int`` ``+=`` on a list slot runs without a thread
    switch in between (no call, no backward jump), and a lock would cost more than the
    whole update. A scrape copies each list before reading it.
    """

    __slots__ = ("hist", "policy", "strategy")

    def __init__(self, policy: str, strategy: str) -> None:
        self.policy = policy
        self.strategy = strategy
        self.hist: tuple[list[int], ...] = tuple([0] * (UNTIMED + 1) for _ in CALL_OUTCOMES)

    def record(self, outcome: int, duration_ns: int) -> None:
        h = self.hist[outcome]
        h[duration_ns.bit_length()] += 1
        h[SUM] += duration_ns

    def count(self, outcome: int) -> None:
        self.hist[outcome][UNTIMED] += 1

    def calls(self, outcome: int) -> int:
        """Calls that ended with ``outcome``, timed or not."""
        h = list(self.hist[outcome])
        return sum(h[:SUM]) + h[UNTIMED]


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
    pipeline's members, outermost first."""
    for attr in names:
        value = getattr(strategy, attr, None)
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


NEVER_OBSERVED: Final = (False,) * (ALL_MODES + 1)
"""``observe`` of a closure built with :data:`NEVER` (its mode is always 0)."""


def unobserved(args: Any, kwargs: Any) -> Any:
    """The ``observed`` of a closure built with :data:`NEVER`: never called."""
    raise AssertionError("a closure built with the NEVER switch was observed")


def unrecorded(error: BaseException, duration_ns: int) -> None:
    """The ``failed`` of a closure that does not time calls itself: never called."""
    raise AssertionError("a closure that does not record calls recorded one")


class PolicyGate:
    """The telemetry of one decorated function, handed to its outermost strategy.

    A strategy either leaves it to :meth:`wrap_sync` / :meth:`wrap_async` (a separate
    wrapper frame: one flag check per call while telemetry is off), or fuses it into its
    own closure, which then starts with::

        if switch.mode:                 # switch is TELEMETRY here, NEVER further in
            return observed(args, kwargs)

    where ``observed = gate.observe_sync(plain)`` and ``plain`` is the same closure built
    with the :data:`NEVER` switch. While telemetry is off that costs one attribute read
    and no frame; once on, ``observed`` runs ``plain`` counted, timed and traced.

    Durations use the first injected clock of the policy (a FakeClock in tests), else
    the system's. A strategy may also serve metrics in its own frame (:meth:`timed`),
    sharing its own clock reads where it reads the system clock anyway (:meth:`shares`).
    """

    __slots__ = ("_stats", "by_result", "classifier", "clock", "now_ns", "scope", "switch")

    def __init__(self, strategy: Strategy, scope: Scope) -> None:
        self.scope = scope
        self._stats: PolicyStats | None = None
        classifier: Classifier = (
            _find(strategy, ("classifier", "_classifier"), Classifier) or DEFAULT_CLASSIFIER
        )
        self.classifier = classifier
        self.by_result = classifier.result is not None
        self.clock: Clock = (
            _find(strategy, ("clock", "_clock"), Clock, SYSTEM_CLOCK) or SYSTEM_CLOCK
        )
        self.now_ns = monotonic_ns(self.clock)
        self.switch = TELEMETRY

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
        clock keeps the exact durations of :attr:`now_ns`). See :meth:`timed`."""
        return type(clock) is SystemClock and type(self.clock) is SystemClock

    def timed(self) -> tuple[tuple[bool, ...], list[int], Callable[[BaseException, int], None]]:
        """What a strategy needs to time the policy's calls inline, in its own frame.

        Returns ``(observe, succeeded, failed)``. ``observe[mode]`` says whether the
        closure hands the call to ``observed`` (tracing always; every mode with a result
        classifier): a tuple index, cheaper per call than a bit test. Otherwise it serves
        ``COUNT_TIME`` itself: on success ``succeeded[d.bit_length()] += 1`` and
        ``succeeded[SUM] += d`` (``d`` the duration in ns, from :attr:`now_ns` or from
        reads it shares, see :meth:`shares`), on an exception ``failed(error, d)``; and
        ``COUNT`` alone with ``succeeded[UNTIMED] += 1`` / ``failed(error, -1)``.
        """
        return self.observes(), self.stats.hist[SUCCESS], self.failed

    def observes(self, *, inline: bool = True) -> tuple[bool, ...]:
        """``observe[mode]``, by mode: whether a fused closure hands the call to
        ``observed``; every nonzero mode unless the closure serves metrics ``inline``."""
        full = ~0 if self.by_result or not inline else TRACING
        return tuple(bool(mode & full) for mode in range(ALL_MODES + 1))

    def failed(self, error: BaseException, duration_ns: int) -> None:
        """Record ``error`` ending a call that took ``duration_ns`` (``-1``: untimed)."""
        outcome = _classify_error(self.classifier, error)
        if duration_ns < 0:
            self.stats.count(outcome)
        else:
            self.stats.record(outcome, duration_ns)

    def observe_sync(self, plain: AnyCallable) -> Callable[[Any, Any], Any]:
        """``observed(args, kwargs)``: ``plain(*args, **kwargs)`` under telemetry."""
        return _sync_observer(plain, self.scope, self.stats, self.classifier, self.now_ns)

    def observe_async(self, plain: AsyncCallable) -> Callable[[Any, Any], Any]:
        """The async twin of :meth:`observe_sync` (``await observed(args, kwargs)``)."""
        return _async_observer(plain, self.scope, self.stats, self.classifier, self.now_ns)

    def wrap_sync(self, plain: AnyCallable) -> AnyCallable:
        """The separate policy wrapper around ``plain``."""
        return _sync_wrapper(plain, self.scope, self.stats, self.classifier, self.now_ns)

    def wrap_async(self, plain: AsyncCallable) -> AsyncCallable:
        """The separate policy wrapper around the coroutine function ``plain``."""
        return _async_wrapper(plain, self.scope, self.stats, self.classifier, self.now_ns)


def _sync_observer(
    inner: AnyCallable,
    scope: Scope,
    stats: PolicyStats,
    classifier: Classifier,
    now_ns: Callable[[], int],
) -> Callable[[Any, Any], Any]:
    gate = TELEMETRY
    succ = stats.hist[SUCCESS]
    # Without a result classifier, metrics alone (the common case) are served inline.
    plain = COUNT_TIME if classifier.result is None else -1
    counting = COUNT if classifier.result is None else -1
    by_result = classifier.result is not None

    def observed(args: Any, kwargs: Any) -> Any:
        mode = gate.mode
        if mode == plain:
            # Metrics with durations: two clock reads, one bucket, one sum.
            t0 = now_ns()
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                stats.record(_classify_error(classifier, exc), now_ns() - t0)
                raise
            d = now_ns() - t0
            succ[d.bit_length()] += 1
            succ[SUM] += d
            return result
        if mode == counting:
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                stats.count(_classify_error(classifier, exc))
                raise
            succ[UNTIMED] += 1
            return result
        # Tracing (with or without metrics), or a result classifier.
        observer = gate.observer
        handle = observer.begin(scope) if observer is not None else None
        if handle is None and not mode & COUNT:
            return inner(*args, **kwargs)
        t0 = now_ns() if mode & TIME else 0
        try:
            result = inner(*args, **kwargs)
        except BaseException as exc:
            outcome = _classify_error(classifier, exc)
            _record(stats, mode, outcome, t0, now_ns)
            if handle is not None and observer is not None:
                observer.end(handle, CALL_OUTCOMES[outcome], exc)
            raise
        outcome = _classify_result(classifier, result) if by_result else SUCCESS
        _record(stats, mode, outcome, t0, now_ns)
        if handle is not None and observer is not None:
            observer.end(handle, CALL_OUTCOMES[outcome], None)
        return result

    return observed


def _sync_wrapper(
    inner: AnyCallable,
    scope: Scope,
    stats: PolicyStats,
    classifier: Classifier,
    now_ns: Callable[[], int],
) -> AnyCallable:
    gate = TELEMETRY
    observed = _sync_observer(inner, scope, stats, classifier, now_ns)
    succ = stats.hist[SUCCESS]

    if classifier.result is not None:

        def policy_classified(*args: Any, **kwargs: Any) -> Any:
            if not gate.mode:
                return inner(*args, **kwargs)
            return observed(args, kwargs)

        return policy_classified

    def policy(*args: Any, **kwargs: Any) -> Any:
        mode = gate.mode
        if not mode:
            return inner(*args, **kwargs)
        if mode == COUNT_TIME:
            # Metrics with durations, inlined (as in ``observed``): no frame more.
            t0 = now_ns()
            try:
                result = inner(*args, **kwargs)
            except BaseException as exc:
                stats.record(_classify_error(classifier, exc), now_ns() - t0)
                raise
            d = now_ns() - t0
            succ[d.bit_length()] += 1
            succ[SUM] += d
            return result
        return observed(args, kwargs)

    return policy


def _record(
    stats: PolicyStats, mode: int, outcome: int, t0: int, now_ns: Callable[[], int]
) -> None:
    if mode & TIME:
        stats.record(outcome, now_ns() - t0)
    elif mode & COUNT:
        stats.count(outcome)


def _async_wrapper(
    inner: AsyncCallable,
    scope: Scope,
    stats: PolicyStats,
    classifier: Classifier,
    now_ns: Callable[[], int],
) -> AsyncCallable:
    gate = TELEMETRY
    observed = _async_observer(inner, scope, stats, classifier, now_ns)

    async def policy(*args: Any, **kwargs: Any) -> Any:
        if not gate.mode:
            return await inner(*args, **kwargs)
        return await observed(args, kwargs)

    return policy


def _async_observer(
    inner: AsyncCallable,
    scope: Scope,
    stats: PolicyStats,
    classifier: Classifier,
    now_ns: Callable[[], int],
) -> Callable[[Any, Any], Any]:
    gate = TELEMETRY
    by_result = classifier.result is not None

    async def observed(args: Any, kwargs: Any) -> Any:
        observer = gate.observer
        handle = observer.begin(scope) if observer is not None else None
        mode = gate.mode
        if handle is None and not mode & COUNT:
            return await inner(*args, **kwargs)
        t0 = now_ns() if mode & TIME else 0
        try:
            result = await inner(*args, **kwargs)
        except BaseException as exc:
            outcome = _classify_error(classifier, exc)
            _record(stats, mode, outcome, t0, now_ns)
            if handle is not None and observer is not None:
                observer.end(handle, CALL_OUTCOMES[outcome], exc)
            raise
        outcome = _classify_result(classifier, result) if by_result else SUCCESS
        _record(stats, mode, outcome, t0, now_ns)
        if handle is not None and observer is not None:
            observer.end(handle, CALL_OUTCOMES[outcome], None)
        return result

    return observed
