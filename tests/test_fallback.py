"""Fallback: a value or a handler's answer when the call fails in a way that was named."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from resilience import Fallback, FallbackUsed, Pipeline, Retry
from resilience.testing import CapturingListener, FakeClock

MODES = ["sync", "async"]


async def drive(strategy: Fallback | Pipeline, body: Any, mode: str) -> Any:
    if mode == "sync":

        def sync_fn() -> Any:
            return body()

        return strategy(sync_fn)()

    async def async_fn() -> Any:
        await asyncio.sleep(0)
        return body()

    return await strategy(async_fn)()


def raising(err: BaseException) -> Any:
    def body() -> Any:
        raise err

    return body


@pytest.mark.parametrize("mode", MODES)
async def test_a_value_replaces_a_matching_error(mode: str) -> None:
    assert await drive(Fallback([], on=LookupError), raising(KeyError("k")), mode) == []


@pytest.mark.parametrize("mode", MODES)
async def test_none_is_a_valid_fallback_value(mode: str) -> None:
    assert await drive(Fallback(None, on=KeyError), raising(KeyError()), mode) is None


@pytest.mark.parametrize("mode", MODES)
async def test_a_successful_call_is_returned_unchanged(mode: str) -> None:
    result = object()
    assert await drive(Fallback("x", on=Exception), lambda: result, mode) is result


@pytest.mark.parametrize("mode", MODES)
async def test_a_handler_receives_the_error(mode: str) -> None:
    err = ConnectionError("down")
    seen: list[BaseException] = []

    def handler(exc: BaseException) -> str:
        seen.append(exc)
        return f"cached after {exc}"

    assert await drive(Fallback(on=OSError, handler=handler), raising(err), mode) == (
        "cached after down"
    )
    assert seen == [err]
    assert seen[0] is err


@pytest.mark.parametrize("mode", MODES)
async def test_a_handler_of_results(mode: str) -> None:
    seen: list[Any] = []

    def handler(result: Any) -> dict[str, str]:
        seen.append(result)
        return {"status": "default"}

    fallback = Fallback(on=(), on_result=lambda r: r["status"] == "error", handler=handler)
    answer = await drive(fallback, lambda: {"status": "error"}, mode)
    assert answer == {"status": "default"}
    assert seen == [{"status": "error"}]
    ok = await drive(fallback, lambda: {"status": "ok"}, mode)
    assert ok == {"status": "ok"}
    assert len(seen) == 1
    # on=() handles results only: errors pass through.
    with pytest.raises(ValueError):
        await drive(fallback, raising(ValueError()), mode)


async def test_an_async_handler_for_async_calls() -> None:
    async def handler(exc: BaseException) -> str:
        await asyncio.sleep(0)
        return type(exc).__name__

    @Fallback(on=TimeoutError, handler=handler)
    async def fetch() -> str:
        raise TimeoutError

    assert await fetch() == "TimeoutError"

    @Fallback(on=(), on_result=lambda r: r < 0, handler=handler)
    async def compute() -> int:
        return -1

    assert await compute() == "int"


def test_a_sync_function_with_an_async_handler_is_refused_at_decoration() -> None:
    async def handler(exc: BaseException) -> str:
        return "x"

    fallback = Fallback(on=OSError, handler=handler)

    def sync_fn() -> str:
        return "ok"

    with pytest.raises(TypeError, match="async"):
        fallback(sync_fn)
    with pytest.raises(TypeError, match="async"):
        Pipeline(Retry(on=OSError), fallback)(sync_fn)
    with pytest.raises(TypeError, match="async"):
        Pipeline(Pipeline(fallback))(sync_fn)


def test_on_is_required() -> None:
    with pytest.raises(TypeError, match="'on'"):
        Fallback("x")  # type: ignore[call-arg]


@pytest.mark.parametrize("mode", MODES)
async def test_unmatched_errors_pass_through(mode: str) -> None:
    err = TypeError("a bug, not an outage")
    with pytest.raises(TypeError) as info:
        await drive(Fallback("x", on=(OSError, LookupError)), raising(err), mode)
    assert info.value is err
    assert not hasattr(err, "__notes__")


@pytest.mark.parametrize("mode", MODES)
async def test_a_predicate_chooses_the_errors(mode: str) -> None:
    fallback = Fallback("x", on=lambda e: isinstance(e, OSError) and e.errno == 111)
    assert await drive(fallback, raising(OSError(111, "refused")), mode) == "x"
    with pytest.raises(OSError):
        await drive(fallback, raising(OSError(2, "missing")), mode)


@pytest.mark.parametrize("mode", MODES)
async def test_an_error_in_the_handler_propagates(mode: str) -> None:
    handler_error = RuntimeError("handler broke")

    def handler(exc: BaseException) -> Any:
        raise handler_error

    with pytest.raises(RuntimeError) as info:
        await drive(Fallback(on=KeyError, handler=handler), raising(KeyError()), mode)
    assert info.value is handler_error


@pytest.mark.parametrize("mode", MODES)
async def test_fallback_publishes_fallback_used(
    clock: FakeClock, events: CapturingListener, mode: str
) -> None:
    err = KeyError("k")
    await drive(Fallback(0, on=KeyError, name="cache", clock=clock), raising(err), mode)
    assert events.events == [
        FallbackUsed(policy="cache", strategy="fallback", time=0.0, error=err, result=None)
    ]


def test_repr() -> None:
    def handler(exc: BaseException) -> int:
        return 0

    assert repr(Fallback(0, on=KeyError)) == "Fallback(0, on=<class 'KeyError'>)"
    assert repr(Fallback(on=KeyError, handler=handler)).startswith("Fallback(handler=<function")
