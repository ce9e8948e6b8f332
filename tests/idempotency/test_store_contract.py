"""The store contract, run against every store through its sync and its async methods."""

from __future__ import annotations

import asyncio

from resilience.idempotency import Claimed, Completed, InFlight

from .conftest import Driver

FP = "f" * 64
OTHER_FP = "0" * 64


async def test_first_claim_wins_and_the_second_sees_it_in_flight(driver: Driver) -> None:
    assert isinstance(await driver.claim("k", FP, "t1", 30), Claimed)
    second = await driver.claim("k", FP, "t2", 30)
    assert isinstance(second, InFlight)
    assert second.fingerprint == FP
    assert 25 < second.expires_in <= 30


async def test_completed_outcome_is_answered_with_its_fingerprint(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 30)
    assert await driver.complete("k", FP, "t1", b"\x00payload\xff", 60)
    got = await driver.claim("k", OTHER_FP, "t2", 30)
    assert got == Completed(FP, b"\x00payload\xff")


async def test_keys_are_independent(driver: Driver) -> None:
    assert isinstance(await driver.claim("a", FP, "t1", 30), Claimed)
    assert isinstance(await driver.claim("b", FP, "t2", 30), Claimed)


async def test_release_frees_the_key_only_for_its_owner(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 30)
    assert not await driver.release("k", "intruder")
    assert isinstance(await driver.claim("k", FP, "t2", 30), InFlight)
    assert await driver.release("k", "t1")
    assert isinstance(await driver.claim("k", FP, "t3", 30), Claimed)


async def test_complete_refuses_when_another_call_took_the_key(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 0.1)
    await driver.pass_time(0.15)
    assert isinstance(await driver.claim("k", FP, "t2", 30), Claimed)
    assert not await driver.complete("k", FP, "t1", b"late", 60)
    assert await driver.complete("k", FP, "t2", b"winner", 60)
    assert await driver.claim("k", FP, "t3", 30) == Completed(FP, b"winner")


async def test_complete_after_own_lease_expired_but_untouched_is_kept(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 0.1)
    await driver.pass_time(0.15)
    assert await driver.complete("k", FP, "t1", b"slow", 60)
    assert await driver.claim("k", FP, "t2", 30) == Completed(FP, b"slow")


async def test_expired_lease_lets_the_next_call_claim(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 0.1)
    assert isinstance(await driver.claim("k", FP, "t2", 30), InFlight)
    await driver.pass_time(0.15)
    assert isinstance(await driver.claim("k", OTHER_FP, "t2", 30), Claimed)
    # The dead claimant can no longer release the new owner's claim.
    assert not await driver.release("k", "t1")


async def test_expired_outcome_is_forgotten(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 30)
    await driver.complete("k", FP, "t1", b"x", 0.1)
    assert isinstance(await driver.claim("k", FP, "t2", 30), Completed)
    await driver.pass_time(0.15)
    assert isinstance(await driver.claim("k", FP, "t3", 30), Claimed)


async def test_renew_extends_only_the_owners_lease(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 0.15)
    assert not await driver.renew("k", "intruder", 30)
    assert await driver.renew("k", "t1", 30)
    await driver.pass_time(0.2)
    got = await driver.claim("k", FP, "t2", 30)
    assert isinstance(got, InFlight)
    assert got.expires_in > 20


async def test_renew_after_completion_is_refused(driver: Driver) -> None:
    await driver.claim("k", FP, "t1", 30)
    await driver.complete("k", FP, "t1", b"x", 60)
    assert not await driver.renew("k", "t1", 30)
    assert not await driver.release("k", "t1")
    assert isinstance(await driver.claim("k", FP, "t2", 30), Completed)


async def test_empty_fingerprint_and_empty_payload_round_trip(driver: Driver) -> None:
    await driver.claim("k", "", "t1", 30)
    assert await driver.complete("k", "", "t1", b"", 60)
    assert await driver.claim("k", "", "t2", 30) == Completed("", b"")


async def test_concurrent_claims_have_exactly_one_winner(driver: Driver) -> None:
    if driver.mode == "sync":
        results = [await driver.claim("race", FP, f"t{i}", 30) for i in range(20)]
    else:
        results = await asyncio.gather(*(driver.claim("race", FP, f"t{i}", 30) for i in range(20)))
    assert sum(isinstance(r, Claimed) for r in results) == 1
    assert sum(isinstance(r, InFlight) for r in results) == 19
