"""In-memory stores (switches, JSON, cache TTL) and the idempotency helper."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from reference_services.adapters.memory.stores import (
    DefaultConfigStore,
    DefaultSecretStore,
    DefaultStateStore,
    MemoryKV,
)
from reference_services.runtime.idempotency import Idempotency, IdempotencyConflict, Outcome
from reference_services.runtime.spi.store_base import StoreOperationDisabled, StoreValueError


async def test_state_store_get_set_remove_and_missing_keys() -> None:
    store = DefaultStateStore()
    await store.set("a", {"ü": [1, 2.5, None, True]})
    assert await store.get("a", "missing") == {"a": {"ü": [1, 2.5, None, True]}, "missing": None}
    await store.remove("a")
    await store.remove("a")
    assert await store.get("a") == {"a": None}


@pytest.mark.parametrize("op", ["set", "remove"])
async def test_config_and_secret_stores_are_get_only_by_default(op: str) -> None:
    for store in (DefaultConfigStore(), DefaultSecretStore()):
        with pytest.raises(StoreOperationDisabled) as info:
            await (store.set("k", 1) if op == "set" else store.remove("k"))
        assert info.value.status == 401
        assert op in info.value.message


async def test_disabled_get_raises_401_and_bad_values_400() -> None:
    store = DefaultStateStore(enable_get=False)
    with pytest.raises(StoreOperationDisabled):
        await store.get("k")
    with pytest.raises(StoreValueError) as info:
        await DefaultStateStore().set("k", object())
    assert info.value.status == 400 and "'k'" in info.value.message


async def test_secret_cache_serves_until_ttl_then_refreshes() -> None:
    kv = MemoryKV()
    writer = DefaultSecretStore(kv, enable_set=True)
    reader = DefaultSecretStore(kv, cache_ttl_s=0.2)
    await writer.set("token", "v1")
    assert await reader.get("token") == {"token": "v1"}
    await writer.set("token", "v2")
    assert await reader.get("token") == {"token": "v1"}  # cached
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while (await reader.get("token"))["token"] != "v2":
        assert loop.time() < deadline, "cache never expired"
        await asyncio.sleep(0.02)


async def test_set_if_absent_is_atomic_and_honours_ttl() -> None:
    store = DefaultStateStore()
    results = await asyncio.gather(*(store.set_if_absent("k", n, ttl_s=0.1) for n in range(50)))
    assert results.count(True) == 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while not await store.set_if_absent("k", "again"):
        assert loop.time() < deadline
        await asyncio.sleep(0.02)


async def test_idempotency_runs_an_effect_once_across_concurrent_callers() -> None:
    store = DefaultStateStore()
    helpers = [Idempotency(store, poll_s=0.001) for _ in range(5)]
    effects: list[int] = []

    async def effect() -> str:
        effects.append(1)
        await asyncio.sleep(0.01)
        return "result"

    results = await asyncio.gather(*(h.run_once("key", effect) for h in helpers for _ in range(4)))
    assert effects == [1]
    assert results == ["result"] * 20


async def test_idempotency_releases_the_claim_when_the_effect_fails() -> None:
    helper = Idempotency(DefaultStateStore())
    calls: list[int] = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transient")
        return len(calls)

    with pytest.raises(RuntimeError):
        await helper.run_once("k", flaky)
    assert await helper.run_once("k", flaky) == 2
    assert await helper.run_once("k", flaky) == 2
    assert len(calls) == 2


async def test_idempotency_takes_over_a_claim_whose_owner_died() -> None:
    store = DefaultStateStore()
    crashed = Idempotency(store, claim_ttl_s=0.1)
    await store.set_if_absent("idempotency:k", {"state": "pending", "owner": crashed.owner}, 0.1)
    survivor = Idempotency(store, claim_ttl_s=0.1, poll_s=0.01)

    async def effect() -> str:
        return "done by survivor"

    assert await survivor.run_once("k", effect) == "done by survivor"


async def test_a_slow_effect_keeps_its_claim_by_renewal() -> None:
    """Issue 15: a 0.3 s effect with a 0.1 s claim ran on a second worker (['A', 'B'])."""
    store = DefaultStateStore()
    effects: list[str] = []

    def effect(tag: str) -> Any:
        async def run() -> str:
            effects.append(tag)
            await asyncio.sleep(0.3)
            return tag

        return run

    a = Idempotency(store, claim_ttl_s=0.1, poll_s=0.01)
    b = Idempotency(store, claim_ttl_s=0.1, poll_s=0.01)
    first = asyncio.create_task(a.run_once("k", effect("A")))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(b.run_once("k", effect("B")))
    assert await asyncio.gather(first, second) == ["A", "A"]
    assert effects == ["A"]


async def test_a_stale_owner_cannot_release_its_successors_claim() -> None:
    """A failing effect releases with compare-and-set: a successor's claim survives."""
    store = DefaultStateStore()
    stale = Idempotency(store, claim_ttl_s=0.2, renew_every_s=0.19)
    gate = asyncio.Event()
    effects: list[str] = []

    async def failing() -> str:
        effects.append("stale")
        await gate.wait()
        raise RuntimeError("the stale owner fails late")

    async def healthy() -> str:
        effects.append("successor")
        await asyncio.sleep(0.2)
        return "successor"

    first = asyncio.create_task(stale.run_once("k", failing))
    await asyncio.sleep(0.01)
    store.kv.data["idempotency:k"] = (store.kv.data["idempotency:k"][0], 0.0)  # expire it now
    successor = Idempotency(store, claim_ttl_s=5)
    second = asyncio.create_task(successor.run_once("k", healthy))
    await asyncio.sleep(0.05)
    gate.set()
    with pytest.raises(RuntimeError):
        await first
    current = await store.get_versioned("idempotency:k")
    assert current is not None and current.value["state"] == "pending", "claim was released"
    assert await second == "successor"
    third = Idempotency(store, claim_ttl_s=5)
    assert await third.run_once("k", healthy) == "successor"
    assert effects == ["stale", "successor"]


async def test_a_result_that_cannot_be_stored_does_not_repeat_the_effect() -> None:
    store = DefaultStateStore()
    helper = Idempotency(store, claim_ttl_s=0.1, poll_s=0.01)
    effects: list[int] = []

    async def effect() -> Any:
        effects.append(1)
        return datetime.now(UTC)

    with pytest.raises(StoreValueError, match="not JSON"):
        await helper.run_once("k", effect)
    await asyncio.sleep(0.2)  # past the claim ttl: a pending claim would have expired
    with pytest.raises(StoreValueError, match="could not be stored"):
        await Idempotency(store, claim_ttl_s=0.1).run_once("k", effect)
    assert effects == [1]


async def test_an_atomic_effect_with_an_unstorable_result_commits_nothing() -> None:
    store = DefaultStateStore()
    helper = Idempotency(store, claim_ttl_s=5)

    async def effect(key: str) -> Outcome[Any]:
        return Outcome(datetime.now(UTC), {"balance": 10})

    with pytest.raises(StoreValueError):
        await helper.run_atomic("k", effect)
    assert await store.get("balance", "idempotency:k") == {"balance": None, "idempotency:k": None}


async def test_a_cancelled_effect_keeps_its_claim_until_the_ttl() -> None:
    store = DefaultStateStore()
    effects: list[str] = []

    async def slow() -> str:
        effects.append("cancelled one")
        await asyncio.sleep(10)
        return "never"

    async def quick() -> str:
        effects.append("after the ttl")
        return "ok"

    task = asyncio.create_task(Idempotency(store, claim_ttl_s=0.3).run_once("k", slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.get_versioned("idempotency:k")) is not None, "cancel released the claim"
    impatient = Idempotency(store, claim_ttl_s=0.3, wait_s=0.1, poll_s=0.01)
    with pytest.raises(IdempotencyConflict):
        await impatient.run_once("k", quick)
    patient = Idempotency(store, claim_ttl_s=0.3, wait_s=2, poll_s=0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await patient.run_once("k", quick) == "ok"
    assert loop.time() - started < 1.5
    assert effects == ["cancelled one", "after the ttl"]


async def test_done_records_expire_after_the_retention_ttl() -> None:
    store = DefaultStateStore()
    helper = Idempotency(store, done_ttl_s=0.2)
    effects: list[int] = []

    async def effect() -> int:
        effects.append(1)
        return len(effects)

    assert await helper.run_once("k", effect) == 1
    assert await helper.run_once("k", effect) == 1
    deadline = asyncio.get_running_loop().time() + 3
    while await helper.was_done("k"):
        assert asyncio.get_running_loop().time() < deadline, "the done record never expired"
        await asyncio.sleep(0.02)
    assert await helper.run_once("k", effect) == 2
    assert Idempotency(store).done_ttl_s == 24 * 3600.0


async def test_the_effect_gets_the_key_when_it_takes_one() -> None:
    seen: list[str] = []

    async def effect(key: str) -> str:
        seen.append(key)
        return key

    assert await Idempotency(DefaultStateStore()).run_once("mail-7", effect) == "mail-7"
    assert seen == ["mail-7"]


def test_renewal_interval_must_be_below_the_claim_ttl() -> None:
    with pytest.raises(ValueError, match="renew_every_s"):
        Idempotency(DefaultStateStore(), claim_ttl_s=1, renew_every_s=1)
