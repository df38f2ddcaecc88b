"""Integration tests of the NATS-KV state, config and secret stores against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from adapter_helpers import NATS_FAST as FAST
from adapter_helpers import (
    Adapters,
    adapters_fixture,
    expect_values_survive_a_kill,
)

from reference_services.adapters.nats.connection import NatsTimings, NatsUnavailableError
from reference_services.adapters.nats.kv_stores import (
    NatsKVConfigStore,
    NatsKVSecretStore,
    NatsKVStateStore,
)
from reference_services.adapters.nats.subjects import kv_key
from reference_services.runtime.idempotency import Idempotency
from reference_services.runtime.spi.store_base import StoreOperationDisabled, StoreValueError

Factory = Callable[..., Awaitable[Any]]


# Create started stores on the session broker (same prefix = same buckets).
make = adapters_fixture(NatsKVStateStore, "nats", yields="store", timings=FAST)


async def test_get_set_remove_and_missing_keys(make: Factory) -> None:
    store = await make()
    assert await store.get("nope") == {"nope": None}
    await store.set("a", {"x": 1})
    await store.set("b", [1, "two"])
    assert await store.get("a", "b", "c") == {"a": {"x": 1}, "b": [1, "two"], "c": None}
    await store.set("a", 2)
    assert await store.get("a") == {"a": 2}
    await store.remove("a")
    await store.remove("a")  # removing a missing key is fine
    assert await store.get("a") == {"a": None}
    assert await store.is_ready() and await store.is_healthy()


async def test_json_values_arrive_unchanged(make: Factory) -> None:
    store = await make()
    values = {
        "unicode": "grüße ✓ 日本 🚀",
        "nested": {"a": [1, 2.5, None, True, {"b": {"c": []}}]},
        "large": "x" * 200_000,
        "false": False,
        "zero": 0,
        "null-ish": None,
    }
    for name, value in values.items():
        await store.set(name, value)
    assert await store.get(*values) == values
    with pytest.raises(StoreValueError):
        await store.set("bad", {1, 2})


async def test_any_name_is_a_distinct_key(make: Factory) -> None:
    store = await make()
    names = ["a.b", "a b", "a_b", "_a", "ä/ü", "a*", "a>", ".lead", "trail.", "idem:k1", "x"]
    for i, name in enumerate(names):
        await store.set(name, i)
    got = await store.get(*names)
    assert got == {name: i for i, name in enumerate(names)}
    assert len({kv_key(n) for n in names}) == len(names)


async def test_instances_share_the_bucket_and_prefixes_isolate(make: Factory) -> None:
    a, b = await make(), await make()
    other = await make(prefix="other" + str(time.monotonic_ns()))
    await a.set("k", "from a")
    assert await b.get("k") == {"k": "from a"}
    assert await other.get("k") == {"k": None}


async def test_disabled_operations_raise_401(make: Factory) -> None:
    config = await make(NatsKVConfigStore, initial={"feature": {"on": True}})
    assert await config.get("feature") == {"feature": {"on": True}}
    for operation in (config.set("feature", 1), config.remove("feature")):
        with pytest.raises(StoreOperationDisabled) as info:
            await operation
        assert info.value.status == 401
    state = await make(enable_get=False)
    with pytest.raises(StoreOperationDisabled):
        await state.get("x")


async def test_secret_cache_ttl(make: Factory) -> None:
    writer = await make(NatsKVSecretStore, enable_set=True)
    cached = await make(NatsKVSecretStore, cache_ttl_s=0.5)
    await writer.set("token", "v1")
    assert await cached.get("token") == {"token": "v1"}
    await writer.set("token", "v2")
    assert await cached.get("token") == {"token": "v1"}  # served from the cache
    deadline = time.monotonic() + 5
    while (await cached.get("token"))["token"] != "v2":
        assert time.monotonic() < deadline, "cache never expired"
        await asyncio.sleep(0.05)
    assert NatsKVSecretStore.capabilities.cache.supported


async def test_set_if_absent_is_atomic_across_instances(make: Factory) -> None:
    stores = [await make() for _ in range(4)]
    results = await asyncio.gather(
        *(stores[i % 4].set_if_absent("claim", {"owner": i}) for i in range(12))
    )
    assert results.count(True) == 1
    winner = results.index(True)
    assert await stores[0].get("claim") == {"claim": {"owner": winner}}
    await stores[0].remove("claim")
    assert await stores[1].set_if_absent("claim", "again")


async def test_set_if_absent_ttl_expires_and_one_contender_takes_over(make: Factory) -> None:
    a, b = await make(), await make()
    assert await a.set_if_absent("lock", "first", ttl_s=0.4)
    assert await b.get("lock") == {"lock": "first"}
    assert not await b.set_if_absent("lock", "too early", ttl_s=0.4)
    deadline = time.monotonic() + 5
    while (await b.get("lock"))["lock"] is not None:
        assert time.monotonic() < deadline, "the ttl never expired"
        await asyncio.sleep(0.05)
    contenders = [a, b] * 4
    results = await asyncio.gather(
        *(s.set_if_absent("lock", f"next {i}") for i, s in enumerate(contenders))
    )
    assert results.count(True) == 1
    assert (await a.get("lock"))["lock"] == f"next {results.index(True)}"


async def test_idempotency_helper_runs_an_effect_once(make: Factory) -> None:
    a, b = await make(), await make()
    runs: list[str] = []

    async def effect() -> str:
        runs.append("sent")
        await asyncio.sleep(0.05)
        return "receipt"

    once = [Idempotency(s, claim_ttl_s=5, poll_s=0.02) for s in (a, b, a, b)]
    results = await asyncio.gather(*(i.run_once("mail-1", effect) for i in once))
    assert results == ["receipt"] * 4 and runs == ["sent"]
    assert await once[1].was_done("mail-1")


async def test_a_lost_bucket_is_created_again(make: Factory) -> None:
    store = await make()
    await store.set("k", 1)
    await store._nc.jetstream().delete_stream(f"KV_{store.bucket}")
    assert await store.get("k") == {"k": None}
    await store.set("k", 2)
    assert await store.get("k") == {"k": 2}
    await store.remove("k")
    assert await store.set_if_absent("k", 3)


async def test_values_survive_a_broker_kill(fresh_nats: Any, namespace: str) -> None:
    async with Adapters(NatsKVStateStore, fresh_nats.url, prefix=namespace, timings=FAST) as made:
        store = await made.store()
        await expect_values_survive_a_kill(store, fresh_nats, 50, FAST.op_timeout_s + 1.5)


async def test_start_fails_fast_when_nats_is_unreachable(namespace: str) -> None:
    import port_for

    store = NatsKVStateStore(
        f"nats://127.0.0.1:{port_for.select_random()}",
        prefix=namespace,
        timings=NatsTimings(start_timeout_s=1.0, connect_timeout_s=0.5),
    )
    started = time.monotonic()
    with pytest.raises(NatsUnavailableError):
        await store.start()
    assert time.monotonic() - started < 3
    assert not await store.is_ready()
