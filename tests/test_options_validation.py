"""Every option is checked at construction; the error names the parameter, value and range."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from resilience import (
    Backoff,
    Classifier,
    Fallback,
    Jitter,
    Retry,
    RetryBudget,
    Timeout,
    TimeoutMode,
    deadline,
)
from resilience.testing import FakeClock

NAN = math.nan
INF = math.inf


def retry(**kw: Any) -> Retry:
    kw.setdefault("on", OSError)
    return Retry(**kw)


def fallback(**kw: Any) -> Fallback:
    kw.setdefault("on", OSError)
    if "handler" not in kw:
        kw.setdefault("value", 0)
    return Fallback(**kw)


def enter_deadline(seconds: Any, **kw: Any) -> None:
    with deadline(seconds, **kw):
        pass


# (build, error type, message pattern). Every pattern names the parameter; where the
# value is out of range it also gives the range and the value.
INVALID: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # Retry
    ("retry.on-type", lambda: retry(on=5), TypeError, r"^on must be .*got 5"),
    ("retry.on-tuple", lambda: retry(on=(OSError, "x")), TypeError, r"^on must be .*'x'"),
    ("retry.on-instance", lambda: retry(on=OSError()), TypeError, r"^on must be"),
    (
        "retry.attempts-zero",
        lambda: retry(attempts=0),
        ValueError,
        r"^attempts must be >= 1, got 0",
    ),
    ("retry.attempts-float", lambda: retry(attempts=2.0), TypeError, r"^attempts must be an int"),
    ("retry.attempts-bool", lambda: retry(attempts=True), TypeError, r"^attempts must be an int"),
    (
        "retry.attempts-none",
        lambda: retry(attempts=None),
        ValueError,
        r"attempts=None.*total_timeout",
    ),
    (
        "retry.total-zero",
        lambda: retry(total_timeout=0),
        ValueError,
        r"^total_timeout must be > 0 seconds, got 0",
    ),
    (
        "retry.total-negative",
        lambda: retry(total_timeout=timedelta(seconds=-1)),
        ValueError,
        r"^total_timeout must be > 0",
    ),
    (
        "retry.total-nan",
        lambda: retry(total_timeout=NAN),
        ValueError,
        r"^total_timeout must be a finite",
    ),
    (
        "retry.total-inf",
        lambda: retry(total_timeout=INF),
        ValueError,
        r"^total_timeout must be a finite",
    ),
    (
        "retry.total-str",
        lambda: retry(total_timeout="5"),
        TypeError,
        r"^total_timeout must be a number of seconds or a datetime.timedelta, got str '5'",
    ),
    ("retry.backoff", lambda: retry(backoff=0.5), TypeError, r"^backoff must be"),
    (
        "retry.backoff-callable",
        lambda: retry(backoff=lambda n: 1.0),
        TypeError,
        r"^backoff must be",
    ),
    ("retry.on_result", lambda: retry(on_result=True), TypeError, r"^on_result must be"),
    ("retry.retry_after", lambda: retry(retry_after=5), TypeError, r"^retry_after must be"),
    (
        "retry.max_retry_after",
        lambda: retry(max_retry_after=-1),
        ValueError,
        r"^max_retry_after must be >= 0 seconds, got -1",
    ),
    (
        "retry.max_retry_after-type",
        lambda: retry(max_retry_after=None),
        TypeError,
        r"^max_retry_after must be",
    ),
    ("retry.budget", lambda: retry(budget=0.2), TypeError, r"^budget must be a RetryBudget"),
    (
        "retry.classifier",
        lambda: retry(classifier=(ValueError,)),
        TypeError,
        r"^classifier must be a Classifier",
    ),
    ("retry.name-type", lambda: retry(name=3), TypeError, r"^name must be"),
    ("retry.name-empty", lambda: retry(name=""), ValueError, r"^name must be a non-empty"),
    ("retry.clock", lambda: retry(clock=1.0), TypeError, r"^clock must be a Clock"),
    ("retry.rng", lambda: retry(rng=42), TypeError, r"^rng must be a random.Random.*got 42"),
    ("retry.unknown", lambda: retry(tries=3), TypeError, r"tries"),
    ("retry.positional", lambda: Retry(OSError), TypeError, r"positional"),  # type: ignore[misc]
    # Backoff
    (
        "backoff.kind",
        lambda: Backoff("cubic"),
        ValueError,
        r"^kind must be one of 'constant', 'linear', 'exponential', got 'cubic'",
    ),
    ("backoff.kind-type", lambda: Backoff(3), ValueError, r"^kind must be one of"),
    (
        "backoff.jitter",
        lambda: Backoff(jitter="some"),
        ValueError,
        r"^jitter must be one of 'none', 'full', 'equal', 'decorrelated', got 'some'",
    ),
    (
        "backoff.delay-negative",
        lambda: Backoff(delay=-0.1),
        ValueError,
        r"^delay must be >= 0 seconds, got -0.1",
    ),
    (
        "backoff.delay-type",
        lambda: Backoff(delay="1s"),
        TypeError,
        r"^delay must be a number of seconds",
    ),
    ("backoff.delay-nan", lambda: Backoff(delay=NAN), ValueError, r"^delay must be a finite"),
    (
        "backoff.max_delay-below-delay",
        lambda: Backoff(delay=2, max_delay=1),
        ValueError,
        r"^max_delay must be >= delay \(2 s\), got 1",
    ),
    (
        "backoff.max_delay-inf",
        lambda: Backoff(max_delay=INF),
        ValueError,
        r"^max_delay must be a finite",
    ),
    (
        "backoff.multiplier-low",
        lambda: Backoff(multiplier=0.5),
        ValueError,
        r"^multiplier must be a finite number >= 1, got 0.5",
    ),
    (
        "backoff.multiplier-type",
        lambda: Backoff(multiplier="2"),
        TypeError,
        r"^multiplier must be a number",
    ),
    (
        "backoff.multiplier-inf",
        lambda: Backoff(multiplier=INF),
        ValueError,
        r"^multiplier must be a finite",
    ),
    ("backoff.constant", lambda: Backoff.constant(-1), ValueError, r"^delay must be >= 0"),
    (
        "backoff.constant-jitter",
        lambda: Backoff.constant(1, jitter="lots"),
        ValueError,
        r"^jitter must be",
    ),
    (
        "backoff.linear",
        lambda: Backoff.linear(1, max_delay=0.5),
        ValueError,
        r"^max_delay must be >= delay",
    ),
    (
        "backoff.exponential",
        lambda: Backoff.exponential(multiplier=0),
        ValueError,
        r"^multiplier must be",
    ),
    # RetryBudget
    (
        "budget.ratio-negative",
        lambda: RetryBudget(ratio=-0.1),
        ValueError,
        r"^ratio must be a finite number >= 0 and <= 1000, got -0.1",
    ),
    ("budget.ratio-high", lambda: RetryBudget(ratio=1001), ValueError, r"^ratio must be .*<= 1000"),
    ("budget.ratio-type", lambda: RetryBudget(ratio="0.2"), TypeError, r"^ratio must be a number"),
    (
        "budget.min_per_second",
        lambda: RetryBudget(min_per_second=-1),
        ValueError,
        r"^min_per_second must be a finite number >= 0, got -1",
    ),
    (
        "budget.min_per_second-nan",
        lambda: RetryBudget(min_per_second=NAN),
        ValueError,
        r"^min_per_second must be",
    ),
    (
        "budget.window-zero",
        lambda: RetryBudget(window=0),
        ValueError,
        r"^window must be > 0 seconds, got 0",
    ),
    (
        "budget.window-type",
        lambda: RetryBudget(window=[10]),
        TypeError,
        r"^window must be a number of seconds",
    ),
    ("budget.clock", lambda: RetryBudget(clock="now"), TypeError, r"^clock must be a Clock"),
    ("budget.positional", lambda: RetryBudget(0.2), TypeError, r"positional"),  # type: ignore[misc]
    # Timeout
    (
        "timeout.seconds-zero",
        lambda: Timeout(0),
        ValueError,
        r"^seconds must be > 0 seconds, got 0",
    ),
    (
        "timeout.seconds-negative",
        lambda: Timeout(timedelta(seconds=-3)),
        ValueError,
        r"^seconds must be > 0",
    ),
    ("timeout.seconds-nan", lambda: Timeout(NAN), ValueError, r"^seconds must be a finite"),
    ("timeout.seconds-inf", lambda: Timeout(INF), ValueError, r"^seconds must be a finite"),
    (
        "timeout.seconds-type",
        lambda: Timeout("1"),
        TypeError,
        r"^seconds must be a number of seconds",
    ),
    ("timeout.seconds-none", lambda: Timeout(None), TypeError, r"^seconds must be"),
    (
        "timeout.mode",
        lambda: Timeout(1, mode="process"),
        ValueError,
        r"^mode must be 'deadline' or 'thread', got 'process'",
    ),
    (
        "timeout.max_workers-zero",
        lambda: Timeout(1, mode="thread", max_workers=0),
        ValueError,
        r"^max_workers must be between 1 and 10000, got 0",
    ),
    (
        "timeout.max_workers-high",
        lambda: Timeout(1, max_workers=10_001),
        ValueError,
        r"^max_workers must be between 1 and 10000",
    ),
    (
        "timeout.max_workers-type",
        lambda: Timeout(1, max_workers=4.0),
        TypeError,
        r"^max_workers must be an int",
    ),
    ("timeout.name", lambda: Timeout(1, name=b"t"), TypeError, r"^name must be"),
    ("timeout.clock", lambda: Timeout(1, clock=object()), TypeError, r"^clock must be a Clock"),
    # Fallback
    (
        "fallback.neither",
        lambda: Fallback(on=OSError),
        TypeError,
        r"exactly one of value= or handler=",
    ),
    (
        "fallback.both",
        lambda: Fallback(1, on=OSError, handler=lambda e: 2),
        TypeError,
        r"exactly one of value= or handler=",
    ),
    ("fallback.handler", lambda: fallback(handler="x"), TypeError, r"^handler must be callable"),
    ("fallback.on", lambda: fallback(on="OSError"), TypeError, r"^on must be"),
    ("fallback.on-missing", lambda: Fallback(1), TypeError, r"'on'"),  # type: ignore[call-arg]
    ("fallback.on_result", lambda: fallback(on_result=1), TypeError, r"^on_result must be"),
    ("fallback.name", lambda: fallback(name=["f"]), TypeError, r"^name must be"),
    ("fallback.clock", lambda: fallback(clock=0), TypeError, r"^clock must be a Clock"),
    # Classifier
    (
        "classifier.known",
        lambda: Classifier(known=ValueError()),
        TypeError,
        r"^known must be an exception type or a tuple",
    ),
    (
        "classifier.known-tuple",
        lambda: Classifier(known=(ValueError, int)),
        TypeError,
        r"^known must be",
    ),
    ("classifier.known-list", lambda: Classifier(known=[ValueError]), TypeError, r"^known must be"),
    (
        "classifier.known_if",
        lambda: Classifier(known_if=True),
        TypeError,
        r"^known_if must be a callable",
    ),
    (
        "classifier.result",
        lambda: Classifier(result="ok"),
        TypeError,
        r"^result must be a callable",
    ),
    # deadline()
    (
        "deadline.seconds",
        lambda: enter_deadline(-1),
        ValueError,
        r"^seconds must be >= 0 seconds, got -1",
    ),
    (
        "deadline.seconds-type",
        lambda: enter_deadline("soon"),
        TypeError,
        r"^seconds must be a number",
    ),
    (
        "deadline.clock",
        lambda: enter_deadline(1, clock="system"),
        TypeError,
        r"^clock must be a Clock",
    ),
]


@pytest.mark.parametrize(
    ("build", "error", "pattern"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_options_are_refused(
    build: Callable[[], object], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        build()


def test_durations_accept_seconds_and_timedelta(clock: FakeClock) -> None:
    assert Timeout(timedelta(milliseconds=1500)).seconds == 1.5
    assert Timeout(2).seconds == 2.0
    b = Backoff(delay=timedelta(milliseconds=100), max_delay=timedelta(seconds=2))
    assert (b.base, b.max_delay) == (0.1, 2.0)
    assert RetryBudget(window=timedelta(minutes=1), clock=clock).window == 60.0
    Retry(on=OSError, total_timeout=timedelta(seconds=5), max_retry_after=timedelta(0))
    with deadline(timedelta(seconds=3), clock=clock):
        pass


def test_valid_edges_are_accepted(clock: FakeClock) -> None:
    Retry(on=(), attempts=1)
    Retry(on=lambda e: True, attempts=None, total_timeout=0.001)
    Retry(on=OSError, rng=random.Random(1), clock=clock, budget=RetryBudget(clock=clock))
    Backoff(delay=0, max_delay=0)
    Backoff(multiplier=1)
    Backoff("linear", jitter=Jitter.EQUAL)
    RetryBudget(ratio=0, min_per_second=0, window=0.001, clock=clock)
    RetryBudget(ratio=1000, clock=clock)
    Timeout(0.001, mode=TimeoutMode.THREAD, max_workers=10_000)
    Fallback(on=(), on_result=lambda r: True, handler=lambda r: r)
    Classifier(known=())


def test_options_are_read_only() -> None:
    b = Backoff()
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.base = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Retry(on=OSError).extra = 1  # type: ignore[attr-defined]
