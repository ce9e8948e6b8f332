"""Fallback: answer with a substitute when the call fails in a way you named.

``on=`` is required, so programming errors (``TypeError``, ``AttributeError`` …) are
never masked by accident. The substitute is a value, or a function of the exception
(or of the result, for ``on_result``); an async function works for async calls.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ._core.clock import SYSTEM_CLOCK, Clock
from ._core.events import EVENTS, Event
from ._core.options import exception_matcher
from ._core.strategy import AnyCallable, AsyncCallable, Scope, Strategy

__all__ = ["Fallback", "FallbackUsed"]

_MISSING: Any = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """The call failed (``error``, or a result matching ``on_result``) and the fallback answered."""

    error: BaseException | None
    result: Any = None


class Fallback(Strategy):
    """Return a substitute when the call fails in a way you named.

    Parameters:
        value: the substitute value; or give ``handler`` instead.
        on: required: an exception type, a tuple of them, or a predicate on the
            exception. Use ``on=()`` together with ``on_result`` to handle results only.
        handler: function of the exception (or of the rejected result) returning the
            substitute; may be ``async def`` for async calls.
        on_result: predicate on a returned value; ``True`` replaces it.
        name: the policy name when used alone.
    """

    kind: ClassVar[str] = "fallback"
    __slots__ = ("_clock", "_handler", "_is_async", "_matches", "_on_result", "on", "value")

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool],
        handler: Callable[[Any], Any] | None = None,
        on_result: Callable[[Any], bool] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name)
        if (value is _MISSING) == (handler is None):
            raise TypeError("Fallback takes exactly one of value= or handler=")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if on_result is not None and not callable(on_result):
            raise TypeError(f"on_result must be a predicate or None, got {on_result!r}")
        self.on = on
        self._matches = exception_matcher("on", on)
        self.value = value
        self._handler = handler
        self._is_async = handler is not None and inspect.iscoroutinefunction(handler)
        self._on_result = on_result
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must be a Clock, got {clock!r}")
        self._clock = clock or SYSTEM_CLOCK

    def __repr__(self) -> str:
        what = f"handler={self._handler!r}" if self._handler is not None else repr(self.value)
        return f"Fallback({what}, on={self.on!r})"

    def _check_sync(self, fn: AnyCallable) -> None:
        if self._is_async:
            raise TypeError(
                f"Fallback handler {self._handler!r} is async but {fn!r} is sync; "
                "use a sync handler for sync functions"
            )

    def _used(self, scope: Scope, error: BaseException | None, result: Any) -> None:
        if EVENTS.wants(scope.policy):
            EVENTS.publish(
                FallbackUsed(
                    policy=scope.policy,
                    strategy=scope.strategy,
                    time=self._clock.now(),
                    error=error,
                    result=result,
                )
            )

    def _wrap_sync(self, fn: AnyCallable, scope: Scope) -> AnyCallable:
        matches = self._matches
        on_result = self._on_result
        handler = self._handler
        value = self.value

        def fallback(*args: Any, **kwargs: Any) -> Any:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not matches(exc):
                    raise
                self._used(scope, exc, None)
                return value if handler is None else handler(exc)
            if on_result is not None and on_result(result):
                self._used(scope, None, result)
                return value if handler is None else handler(result)
            return result

        return fallback

    def _wrap_async(self, fn: AsyncCallable, scope: Scope) -> AsyncCallable:
        matches = self._matches
        on_result = self._on_result
        handler = self._handler
        value = self.value
        is_async = self._is_async

        async def substitute(subject: Any) -> Any:
            if handler is None:
                return value
            if is_async:
                return await handler(subject)
            return handler(subject)

        async def fallback(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                if not matches(exc):
                    raise
                self._used(scope, exc, None)
                return await substitute(exc)
            if on_result is not None and on_result(result):
                self._used(scope, None, result)
                return await substitute(result)
            return result

        return fallback
