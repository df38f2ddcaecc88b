"""In-memory stores (switches, JSON, cache TTL) and the idempotency helper."""

from __future__ import annotations

import asyncio

import pytest

from reference_services.adapters.memory.stores import (
    DefaultConfigStore,
    DefaultSecretStore,
    DefaultStateStore,
    MemoryKV,
)
from reference_services.runtime.idempotency import Idempotency
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
