"""Validation helpers shared by every options class.

Options are checked once, at construction: a bad value raises ``TypeError`` or
``ValueError`` naming the parameter, the value and the allowed range.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING``, without importing ``typing``
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final

__all__ = ["UNSET", "Unset", "to_seconds", "to_int", "to_float", "exception_matcher"]


class Unset:
    """Sentinel type: "inherit the default", as distinct from ``None`` ("disabled")."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = Unset()


def to_seconds(
    name: str,
    value: object,
    *,
    minimum: float = 0.0,
    maximum: float = math.inf,
    exclusive_minimum: bool = False,
) -> float:
    """A duration given as ``float`` seconds or ``timedelta``, checked against a range."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = float(value)
    else:
        # Imported here: a caller passing a timedelta has loaded datetime already, and
        # ``import resilience`` does not need it.
        from datetime import timedelta

        if not isinstance(value, timedelta):
            raise TypeError(
                f"{name} must be a number of seconds or a datetime.timedelta, "
                f"got {type(value).__name__} {value!r}"
            )
        secs = value.total_seconds()
    low = "> " if exclusive_minimum else ">= "
    rng = f"{low}{minimum:g}" + ("" if math.isinf(maximum) else f" and <= {maximum:g}")
    if math.isnan(secs) or math.isinf(secs):
        raise ValueError(f"{name} must be a finite duration {rng} seconds, got {value!r}")
    if secs < minimum or (exclusive_minimum and secs == minimum) or secs > maximum:
        raise ValueError(f"{name} must be {rng} seconds, got {value!r}")
    return secs


def to_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """An ``int`` (not ``bool``) in ``[minimum, maximum]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        rng = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return value


def to_float(
    name: str,
    value: object,
    *,
    minimum: float,
    maximum: float = math.inf,
    exclusive_minimum: bool = False,
) -> float:
    """A finite real number in range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    low = ">" if exclusive_minimum else ">="
    rng = f"{low} {minimum:g}" + ("" if math.isinf(maximum) else f" and <= {maximum:g}")
    if (
        math.isnan(v)
        or math.isinf(v)
        or v < minimum
        or (exclusive_minimum and v == minimum)
        or v > maximum
    ):
        raise ValueError(f"{name} must be a finite number {rng}, got {value!r}")
    return v


def to_name(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a non-empty str or None, got {value!r}")
    if not value:
        raise ValueError(f"{name} must be a non-empty str or None, got {value!r}")
    return value


def exception_matcher(name: str, on: object) -> Callable[[BaseException], bool]:
    """Turn ``on=`` (an exception type, a tuple of them, or a predicate) into a predicate."""
    if isinstance(on, type) and issubclass(on, BaseException):
        on_type: type[BaseException] = on
        return lambda exc: isinstance(exc, on_type)
    if isinstance(on, tuple):
        for t in on:
            if not (isinstance(t, type) and issubclass(t, BaseException)):
                raise TypeError(
                    f"{name} must be an exception type, a tuple of exception types, or a "
                    f"predicate; the tuple holds {t!r}"
                )
        types: tuple[type[BaseException], ...] = on
        return lambda exc: isinstance(exc, types)
    if callable(on):
        pred: Callable[[BaseException], Any] = on
        return lambda exc: bool(pred(exc))
    raise TypeError(
        f"{name} must be an exception type, a tuple of exception types, or a predicate "
        f"taking the exception; got {on!r}"
    )
