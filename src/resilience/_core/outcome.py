"""Outcome classification: success, known failure, unknown failure.

Like HTTP's 2xx / 4xx / 5xx: a *known failure* (bad input, a 4xx-like answer, an
exception type you configured) is the dependency working as designed; it is returned or
raised at once, never retried, and never counts against a circuit breaker. Only an
*unknown failure* says something about the dependency's health.

``BaseException`` that is not ``Exception`` (``CancelledError``, ``KeyboardInterrupt``,
``SystemExit``, ``GeneratorExit``) is never classified: it passes straight through.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

TYPE_CHECKING = False  # ``typing.TYPE_CHECKING``, without importing ``typing``
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Outcome", "Classifier", "DEFAULT_CLASSIFIER"]


class Outcome(enum.Enum):
    """What a call's result or exception means for the dependency's health."""

    SUCCESS = "success"
    KNOWN_FAILURE = "known_failure"
    UNKNOWN_FAILURE = "unknown_failure"


def _check_types(name: str, value: object) -> tuple[type[BaseException], ...]:
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, tuple) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        return value
    raise TypeError(f"{name} must be an exception type or a tuple of them, got {value!r}")


@dataclass(frozen=True, slots=True)
class Classifier:
    """Maps a result or an exception to an :class:`Outcome`.

    Parameters:
        known: exception types that are known failures (e.g. ``ValueError``).
        known_if: predicate on an exception; ``True`` makes it a known failure.
        result: function of a result returning its :class:`Outcome` (default: every
            result is a success). For HTTP, 5xx would be ``UNKNOWN_FAILURE`` and 4xx
            ``KNOWN_FAILURE``.

    Every other ``Exception`` is an unknown failure.
    """

    known: tuple[type[BaseException], ...] = ()
    known_if: Callable[[BaseException], bool] | None = None
    result: Callable[[Any], Outcome] | None = None
    _known_types: tuple[type[BaseException], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_known_types", _check_types("known", self.known))
        if self.known_if is not None and not callable(self.known_if):
            raise TypeError(f"known_if must be a callable or None, got {self.known_if!r}")
        if self.result is not None and not callable(self.result):
            raise TypeError(f"result must be a callable or None, got {self.result!r}")

    def classify_exception(self, exc: BaseException) -> Outcome:
        """``KNOWN_FAILURE`` or ``UNKNOWN_FAILURE`` for an ``Exception``."""
        if self._known_types and isinstance(exc, self._known_types):
            return Outcome.KNOWN_FAILURE
        if self.known_if is not None and self.known_if(exc):
            return Outcome.KNOWN_FAILURE
        return Outcome.UNKNOWN_FAILURE

    def classify_result(self, result: Any) -> Outcome:
        """The outcome of a returned value (``SUCCESS`` unless ``result=`` says otherwise)."""
        if self.result is None:
            return Outcome.SUCCESS
        out = self.result(result)
        if not isinstance(out, Outcome):
            raise TypeError(f"the result classifier must return an Outcome, got {out!r}")
        return out


DEFAULT_CLASSIFIER = Classifier()
