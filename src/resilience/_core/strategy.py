"""The strategy protocol and the pipeline that composes strategies.

A strategy wraps one call. It is a frozen set of options plus two thin drivers built
once, at decoration time: ``_wrap_sync(fn, scope)`` and ``_wrap_async(fn, scope)``
return a closure specialised for those options, so the hot path pays for nothing that
was not configured. Every decision lives in plain objects shared by both drivers.

A :class:`Pipeline` composes strategies outermost-first by nesting their closures; it
is itself a strategy, so pipelines nest and decorate like any other.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, ParamSpec, TypeVar

from .options import to_name
from .telemetry import PolicyGate, decorate, instrument

__all__ = ["GatedStrategy", "Scope", "Strategy", "Pipeline"]

P = ParamSpec("P")
R = TypeVar("R")

AnyCallable = Callable[..., Any]
AsyncCallable = Callable[..., Coroutine[Any, Any, Any]]


class Scope:
    """Where a strategy runs: the policy it belongs to and its own label inside it."""

    __slots__ = ("policy", "strategy")

    def __init__(self, policy: str, strategy: str) -> None:
        self.policy = policy
        self.strategy = strategy

    def __repr__(self) -> str:
        return f"Scope({self.policy}/{self.strategy})"


def _default_policy(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def _refuse_generators(strategy: Strategy, fn: Callable[..., Any]) -> None:
    import inspect  # decoration time only; keeps ``import resilience`` cheap

    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        kind = "an async generator" if inspect.isasyncgenfunction(fn) else "a generator"
        raise TypeError(
            f"{type(strategy).__name__} cannot decorate {kind} function "
            f"({_default_policy(fn)}): its body runs lazily, after the decorator has returned; "
            "decorate a function that consumes the generator instead"
        )


class Strategy:
    """Base class of every strategy (and of :class:`Pipeline`).

    Use an instance as a decorator on sync functions, coroutine functions and methods,
    or run a callable once through it with :meth:`call` / :meth:`acall`.
    """

    kind: ClassVar[str] = "strategy"
    # __weakref__: the policy registry holds decorated strategies weakly.
    __slots__ = ("__weakref__", "name")

    name: str | None

    def __init__(self, *, name: str | None = None) -> None:
        self.name = to_name("name", name)

    @property
    def label(self) -> str:
        """The strategy's name inside a policy: ``name`` if given, else its kind."""
        return self.name or self.kind

    def snapshot(self) -> dict[str, Any]:
        """A JSON-serialisable view of the strategy's configuration and live state.

        Stateful strategies extend it (a breaker adds ``state`` and its window rates, a
        bulkhead ``in_flight`` and ``queued`` …); :func:`resilience.status` collects them.
        """
        return {"kind": self.kind, "name": self.name}

    # -- the two drivers every strategy provides -------------------------------------------
    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        raise NotImplementedError

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        raise NotImplementedError

    def _check_sync(self, fn: AnyCallable) -> None:
        """Refuse at decoration time what cannot work in a sync call."""

    def _scope_for(self, fn: Callable[..., Any]) -> Scope:
        return Scope(self.name or _default_policy(fn), self.kind)

    def _wrap_sync_policy(self, fn: AnyCallable, scope: Scope, gate: PolicyGate) -> AnyCallable:
        """The closure of a decorated function when this strategy is its outermost one.

        By default the strategy's closure inside the separate policy wrapper. A strategy
        on hot paths overrides it to fuse the gate into its own closure (see
        :class:`~resilience._core.telemetry.PolicyGate`): one frame less per call, and
        one less for an exception to unwind. ``fn`` itself means nothing to wrap.
        """
        plain = self._wrap_sync(fn, scope)
        return plain if plain is fn else gate.wrap_sync(plain)

    def _wrap_async_policy(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate
    ) -> AsyncCallable:
        """The async twin of :meth:`_wrap_sync_policy`."""
        plain = self._wrap_async(fn, scope)
        return plain if plain is fn else gate.wrap_async(plain)

    # -- public use ------------------------------------------------------------------------
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn``; the signature and ``functools.wraps`` metadata are kept."""
        if not callable(fn):
            raise TypeError(f"{type(self).__name__} decorates a callable, got {fn!r}")
        _refuse_generators(self, fn)
        scope = self._scope_for(fn)
        is_async = _is_coroutine_function(fn)
        if not is_async:
            self._check_sync(fn)
        # The outermost closure carries the policy's telemetry gate: one flag check per
        # call while telemetry is off.
        wrapped = decorate(self, fn, scope, is_async=is_async)
        if wrapped is fn:
            return fn
        functools.update_wrapper(wrapped, fn)
        return wrapped

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` once through this strategy (sync).

        Decorating is the fast path; ``call`` builds the wrapper each time.
        """
        if _is_coroutine_function(fn):
            raise TypeError("call() runs sync callables; use `await acall(...)` for coroutines")
        _refuse_generators(self, fn)
        self._check_sync(fn)
        scope = self._scope_for(fn)
        # The separate wrapper: for one call, building one closure beats building two.
        run = instrument(self, self._wrap_sync(fn, scope), scope, is_async=False)
        return run(*args, **kwargs)  # type: ignore[no-any-return]

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``await fn(*args, **kwargs)`` once through this strategy."""
        _refuse_generators(self, fn)

        async def run(*a: Any, **kw: Any) -> Any:
            return await fn(*a, **kw)

        scope = self._scope_for(fn)
        wrapped = instrument(self, self._wrap_async(run, scope), scope, is_async=True)
        return await wrapped(*args, **kwargs)  # type: ignore[no-any-return]


class GatedStrategy(Strategy):
    """A strategy whose two drivers carry the policy's gate themselves.

    ``_sync_driver(fn, scope, gate)`` and ``_async_driver(fn, scope, gate)`` build the
    closure, with the gate fused in when the strategy is a policy's outermost one and
    ``gate=None`` everywhere else; this class routes the four wrapping hooks to them.
    """

    __slots__ = ()

    def _sync_driver(self, fn: AnyCallable, scope: Scope, gate: PolicyGate | None) -> AnyCallable:
        raise NotImplementedError

    def _async_driver(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate | None
    ) -> AsyncCallable:
        raise NotImplementedError

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        return self._sync_driver(fn, scope, None)

    def _wrap_sync_policy(self, fn: AnyCallable, scope: Scope, gate: PolicyGate) -> AnyCallable:
        return self._sync_driver(fn, scope, gate)

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        return self._async_driver(fn, scope, None)

    def _wrap_async_policy(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate
    ) -> AsyncCallable:
        return self._async_driver(fn, scope, gate)


class Pipeline(Strategy):
    """Strategies composed outermost-first into one immutable, named policy.

    ``Pipeline(Timeout(2), Retry(on=OSError), name="payments")`` runs a call inside the
    timeout, and the retry inside it. Events of its strategies carry ``policy="payments"``
    and the strategy's label, so telemetry names each one ``payments/retry``.
    """

    kind: ClassVar[str] = "pipeline"
    __slots__ = ("strategies",)

    strategies: tuple[Strategy, ...]

    def __init__(self, *strategies: Strategy, name: str | None = None) -> None:
        super().__init__(name=name)
        for i, s in enumerate(strategies):
            if not isinstance(s, Strategy):
                raise TypeError(f"strategies[{i}] must be a Strategy, got {s!r}")
        self.strategies = tuple(strategies)

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self.strategies)
        name = f", name={self.name!r}" if self.name else ""
        return f"Pipeline({inner}{name})"

    def __len__(self) -> int:
        return len(self.strategies)

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "strategies": [s.snapshot() for s in self.strategies],
        }

    def _check_sync(self, fn: AnyCallable) -> None:
        for s in self.strategies:
            s._check_sync(fn)

    def _inner_scope(self, s: Strategy, scope: Scope) -> Scope:
        if isinstance(s, Pipeline):
            return Scope(s.name or scope.policy, s.label)
        return Scope(self.name or scope.policy, s.label)

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        for s in reversed(self.strategies):
            fn = s._wrap_sync(fn, self._inner_scope(s, scope))
        return fn

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        for s in reversed(self.strategies):
            fn = s._wrap_async(fn, self._inner_scope(s, scope))
        return fn

    # The outermost strategy of the pipeline carries the gate: each closure is still
    # built once, the first one with the gate fused in where that strategy can.
    def _wrap_sync_policy(self, fn: AnyCallable, scope: Scope, gate: PolicyGate) -> AnyCallable:
        if not self.strategies:
            return fn
        first, *rest = self.strategies
        for s in reversed(rest):
            fn = s._wrap_sync(fn, self._inner_scope(s, scope))
        return first._wrap_sync_policy(fn, self._inner_scope(first, scope), gate)

    def _wrap_async_policy(
        self, fn: AsyncCallable, scope: Scope, gate: PolicyGate
    ) -> AsyncCallable:
        if not self.strategies:
            return fn
        first, *rest = self.strategies
        for s in reversed(rest):
            fn = s._wrap_async(fn, self._inner_scope(s, scope))
        return first._wrap_async_policy(fn, self._inner_scope(first, scope), gate)
