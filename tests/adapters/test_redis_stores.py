"""Integration tests of the Redis state, config and secret stores against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from adapter_helpers import Adapters, adapters_fixture, eventually, expect_values_survive_a_kill

from reference_services.adapters.redis.stores import (
    RedisConfigStore,
    RedisSecretStore,
    RedisStateStore,
)
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.idempotency import Idempotency
from reference_services.runtime.spi.store_base import StoreOperationDisabled, StoreValueError

StoreT = RedisStateStore | RedisConfigStore | RedisSecretStore


# --- brokers come from the harness plugin: redis, fresh_service, namespace


make_store = adapters_fixture(RedisStateStore, "redis", yields="store", quiet=True)


@pytest.fixture
async def raw(harness_redis: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(harness_redis.url)
    yield client
    await client.aclose()


async def test_get_set_remove_and_key_layout(make_store: Any, raw: aioredis.Redis) -> None:
    store = await make_store()
    value = {"text": "grüße ✓ 中文", "list": [1, 2.5, None, True], "deep": {"a": {"b": []}}}
    await store.set("user:1", value)
    await store.set("n", 0)
    assert await store.get("user:1", "n", "missing") == {"user:1": value, "n": 0, "missing": None}
    assert await raw.exists(f"{store.prefix}:state_store:user:1") == 1
    await store.remove("user:1")
    await store.remove("never-there")
    assert await store.get("user:1") == {"user:1": None}
    big = "x" * 1_000_000
    await store.set("big", big)
    assert (await store.get("big"))["big"] == big


async def test_kinds_share_nothing(make_store: Any) -> None:
    state = await make_store(RedisStateStore)
    config = await make_store(RedisConfigStore, enable_set=True)
    await state.set("k", "state")
    await config.set("k", "config")
    assert (await state.get("k"))["k"] == "state"
    assert (await config.get("k"))["k"] == "config"


async def test_default_switches_and_disabled_operations(make_store: Any) -> None:
    config = await make_store(RedisConfigStore, initial={"feature": {"on": True}})
    secret = await make_store(RedisSecretStore, initial={"api": "s3cret"})
    assert await config.get("feature") == {"feature": {"on": True}}
    assert await secret.get("api") == {"api": "s3cret"}
    for store in (config, secret):
        with pytest.raises(StoreOperationDisabled) as err:
            await store.set("x", 1)
        assert err.value.status == 401
        with pytest.raises(StoreOperationDisabled):
            await store.remove("x")
    state = await make_store(RedisStateStore, enable_get=False)
    with pytest.raises(StoreOperationDisabled):
        await state.get("x")
    # initial values do not overwrite what is already there
    again = await make_store(RedisConfigStore, initial={"feature": "other"})
    assert await again.get("feature") == {"feature": {"on": True}}


async def test_bad_values_and_names(make_store: Any, raw: aioredis.Redis) -> None:
    store = await make_store()
    with pytest.raises(StoreValueError):
        await store.set("k", {1, 2})
    with pytest.raises(StoreValueError):
        await store.set("", 1)
    await raw.set(store.key("garbage"), b"\xff not json")
    with pytest.raises(PuristaError) as err:
        await store.get("garbage")
    assert err.value.status == 500
    await store.set("fine", 1)
    assert await store.get("fine") == {"fine": 1}


async def test_set_if_absent_is_atomic_and_expires(make_store: Any) -> None:
    stores = [await make_store() for _ in range(4)]
    results = await asyncio.gather(
        *(s.set_if_absent("claim", {"by": i}, ttl_s=0.5) for i, s in enumerate(stores * 5))
    )
    assert results.count(True) == 1
    winner = results.index(True) % 4
    assert await stores[1].get("claim") == {"claim": {"by": winner}}
    await eventually(lambda: stores[0].set_if_absent("claim", "again", ttl_s=10), 3, "expiry")
    assert await stores[2].get("claim") == {"claim": "again"}
    assert await stores[0].set_if_absent("forever", 1) is True
    assert await stores[0].set_if_absent("forever", 2) is False


async def test_idempotency_helper_runs_once_across_instances(make_store: Any) -> None:
    runs = 0

    async def effect() -> str:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.1)
        return "sent"

    helpers = [Idempotency(await make_store(), poll_s=0.01) for _ in range(3)]
    results = await asyncio.gather(*(h.run_once("mail-42", effect) for h in helpers * 2))
    assert results == ["sent"] * 6 and runs == 1
    assert await helpers[2].was_done("mail-42")


async def test_secret_cache_ttl(make_store: Any, raw: aioredis.Redis) -> None:
    secret = await make_store(RedisSecretStore, initial={"token": "v1"}, cache_ttl_s=0.4)
    assert secret.capabilities.cache.supported
    assert await secret.get("token") == {"token": "v1"}
    await raw.set(secret.key("token"), '"v2"')
    assert await secret.get("token") == {"token": "v1"}  # served from the cache
    started = time.monotonic()
    await eventually(lambda: _equals(secret.get("token"), {"token": "v2"}), 3, "cache expiry")
    assert time.monotonic() - started < 1.0
    uncached = await make_store(RedisSecretStore)
    assert await uncached.get("token") == {"token": "v2"}


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_durability_is_declared_from_server_settings(
    fresh_redis: Any, namespace: str
) -> None:
    store = RedisStateStore(fresh_redis.url, prefix=namespace)
    await store.start()
    assert store.capabilities.durable.supported  # fresh Redis runs with appendfsync always
    client = aioredis.Redis.from_url(fresh_redis.url)
    try:
        await client.config_set("appendfsync", "everysec")
        relaxed = RedisStateStore(fresh_redis.url, prefix=namespace)
        await relaxed.start()
        assert not relaxed.capabilities.durable.supported
        assert "everysec" in relaxed.capabilities.durable.reason
        await relaxed.destroy()
    finally:
        await client.aclose()
        await store.destroy()


async def test_values_survive_sigkill_and_health_follows(fresh_redis: Any, namespace: str) -> None:
    async with Adapters(
        RedisStateStore, fresh_redis.url, prefix=namespace, retry_attempts=1,
        retry_backoff_cap_s=0.1,
    ) as made:
        store = await made.store()
        await expect_values_survive_a_kill(store, fresh_redis, 100, 5, down_s=5)


async def test_set_if_absent_retried_after_lost_reply_still_reports_created(
    harness_redis: Any, proxied: Callable[..., Any], namespace: str, raw: aioredis.Redis
) -> None:
    proxy = proxied(harness_redis)
    store = RedisStateStore(proxy.url, prefix=namespace, socket_timeout_s=0.3,
                            retry_attempts=20, retry_backoff_cap_s=0.2)
    await store.start()
    try:
        await store.get("warm-up")  # a pooled connection exists before replies vanish
        async with proxy.black_hole():  # the command reaches Redis, its reply does not return
            claim = asyncio.create_task(store.set_if_absent("claim", {"owner": "me"}, ttl_s=30))
            await eventually(lambda: _equals(raw.exists(store.key("claim")), 1), 10, "created")
        assert await asyncio.wait_for(claim, 15) is True
        assert await store.set_if_absent("claim", {"owner": "other"}) is False
    finally:
        await store.destroy()


async def test_no_socket_timeout_is_a_setting_too(make_store: Any) -> None:
    """``socket_timeout_s=None`` (wait as long as Redis takes) reaches the client: it was
    dropped for the 5 s default. The store still works with it."""
    store = await make_store(socket_timeout_s=None)
    assert store.settings.socket_timeout_s is None
    pool_kwargs = store._client.connection_pool.connection_kwargs
    assert pool_kwargs["socket_timeout"] is None
    await store.set("k", {"v": 1})
    assert await store.get("k") == {"k": {"v": 1}}
