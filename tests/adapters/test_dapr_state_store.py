"""The Dapr state store against a real daprd sidecar (state.redis on its own redis-server):
record layout, stale versions after a remove and re-create, foreign records, a missing
component, and the idempotency helper on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from adapter_helpers import adapters_fixture

from reference_services.adapters.dapr.state_store import DaprStateStore
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.idempotency import Idempotency

make_store = adapters_fixture(DaprStateStore, "dapr", yields="store", quiet=True)


async def test_record_layout_keeps_numbers_as_text(make_store: Any, harness_dapr: Any,
                                                   namespace: str) -> None:
    store = await make_store()
    await store.set("n", {"big": 2**60 + 1, "f": 0.1})
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{harness_dapr.url}/v1.0/state/statestore/{namespace}:n")
    record = resp.json()
    assert record["v"] == '{"big":1152921504606846977,"f":0.1}' and record["exp"] is None
    assert resp.headers.get("etag")
    assert await store.get("n") == {"n": {"big": 2**60 + 1, "f": 0.1}}


async def test_a_stale_version_is_refused_after_remove_and_re_create(make_store: Any) -> None:
    # Dapr's own etag restarts at 1 when a key is deleted: a version built on it would match
    a, b = await make_store(), await make_store()
    v1 = await a.create_versioned("claim", {"owner": "a"})
    assert v1 is not None and await a.remove_if("claim", v1)
    v2 = await b.create_versioned("claim", {"owner": "b"})
    assert v2 is not None and v2 != v1
    assert await a.replace_if("claim", v1, {"owner": "a", "again": True}) is None
    assert not await a.remove_if("claim", v1)
    got = await b.get_versioned("claim")
    assert got is not None and got.value == {"owner": "b"} and got.version == v2


async def test_a_record_written_around_the_store_is_named(make_store: Any, harness_dapr: Any,
                                                          namespace: str) -> None:
    store = await make_store()
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{harness_dapr.url}/v1.0/state/statestore",
                                 json=[{"key": f"{namespace}:foreign", "value": {"x": 1}}])
        assert resp.status_code == 204
    with pytest.raises(PuristaError, match="'foreign' was not written by this store"):
        await store.get("foreign")


async def test_a_missing_component_is_named(harness_dapr: Any) -> None:
    store = DaprStateStore(harness_dapr.url, store="nosuchstore")
    with pytest.raises(PuristaError, match=r"no state store 'nosuchstore'.*statestore"):
        await store.start()
    await store.destroy()


async def test_idempotency_runs_an_effect_once_across_instances(make_store: Any) -> None:
    stores = [await make_store() for _ in range(3)]
    calls: list[int] = []

    def effect(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            calls.append(i)
            await asyncio.sleep(0.2)
            return i

        return run

    results = await asyncio.gather(*(
        Idempotency(stores[i % 3], claim_ttl_s=5).run_once("mail:1", effect(i))
        for i in range(9)
    ))
    assert len(calls) == 1, f"effect ran {len(calls)} times"
    assert set(results) == {calls[0]}, results
