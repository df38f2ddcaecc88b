"""Stores: get/set/remove, missing keys, JSON fidelity, switches, secret cache, atomic create."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.hyp import json_values, session, settings_for
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import Stopwatch
from reference_services.runtime.errors import PuristaError

STORES = ("state_store", "config_store", "secret_store")
OPEN = {"enable_get": True, "enable_set": True, "enable_remove": True}
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.:", min_size=1, max_size=30)


def canon(value: Any) -> str:
    """Canonical JSON text (1, 1.0 and true differ)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@check("stores.crud", kinds=STORES)
async def test_crud(aut: AdapterUnderTest) -> None:
    """set then get returns the value, set overwrites, remove deletes; a second instance of
    the same store sees the writes."""
    a = await aut.new(**OPEN)
    b = await aut.new(**OPEN)
    await a.set("user:1", {"name": "Ada", "roles": ["admin"]})
    await a.set("count", 41)
    assert await b.get("user:1", "count") == {
        "user:1": {"name": "Ada", "roles": ["admin"]},
        "count": 41,
    }
    await b.set("count", 42)
    assert await a.get("count") == {"count": 42}, "overwrite not visible"
    await a.remove("user:1")
    assert await b.get("user:1") == {"user:1": None}, "removed key still readable"
    await a.remove("never-existed")


@check("stores.missing_keys", kinds=STORES)
async def test_missing_keys(aut: AdapterUnderTest) -> None:
    """Missing keys map to None; a multi-get mixes found and missing and keeps every name."""
    s = await aut.new(**OPEN)
    await s.set("present", "here")
    got = await s.get("absent", "present", "also-absent")
    assert got == {"absent": None, "present": "here", "also-absent": None}, f"got {got}"
    await s.set("falsy", 0)
    await s.set("empty", "")
    await s.set("null-ish", [])
    got = await s.get("falsy", "empty", "null-ish")
    assert got == {"falsy": 0, "empty": "", "null-ish": []}, f"falsy values lost: {got}"


@check("stores.json_fidelity", kinds=STORES)
def test_json_fidelity(cf_aut: AdapterUnderTest) -> None:
    """Property: any JSON value under any key comes back unchanged."""
    with session(cf_aut) as runner:
        s = runner.run(cf_aut.new(**OPEN))

        @settings_for(cf_aut, memory=60, broker=25)
        @given(key=keys, value=json_values.filter(lambda v: v is not None))
        def prop(key: str, value: Any) -> None:
            runner.run(s.set(key, value))
            got = runner.run(s.get(key))
            assert canon(got[key]) == canon(value), f"{key!r}: {got[key]!r} != {value!r}"

        prop()


async def _status(coro: Any) -> int | None:
    try:
        await coro
    except PuristaError as exc:
        return exc.status
    return None


@check("stores.disabled_operations", kinds=STORES)
async def test_disabled_operations(aut: AdapterUnderTest) -> None:
    """A disabled get/set/remove raises 401 and changes nothing; config and secret stores are
    get-only by default."""
    writer = await aut.new(**OPEN)
    await writer.set("k", "v")
    closed = await aut.new(enable_get=False, enable_set=False, enable_remove=False)
    got = [
        await _status(closed.get("k")),
        await _status(closed.set("k", "x")),
        await _status(closed.remove("k")),
    ]
    assert got == [401, 401, 401], f"disabled get/set/remove gave statuses {got}"
    assert await writer.get("k") == {"k": "v"}, "a disabled operation changed the store"
    if aut.kind != "state_store":
        default = await aut.new()
        got = [await _status(default.set("k", "y")), await _status(default.remove("k"))]
        assert got == [401, 401], f"{aut.kind} default set/remove gave {got}, expected 401"
        assert await default.get("k") == {"k": "v"}


@check("stores.secret_cache_ttl", kinds=("secret_store",), needs=("cache",))
async def test_secret_cache_ttl(aut: AdapterUnderTest) -> None:
    """A cached secret read is served from the cache until cache_ttl_s passes, then refreshed."""
    writer = await aut.new(**OPEN)
    await writer.set("api-key", "v1")
    reader = await aut.new(cache_ttl_s=0.5)
    assert await reader.get("api-key") == {"api-key": "v1"}
    watch = Stopwatch()
    await writer.set("api-key", "v2")
    stale = await reader.get("api-key")
    assert stale == {"api-key": "v1"} or watch.elapsed > 0.4, f"not cached: {stale}"
    fresh = await wait_for_value(reader, "api-key", "v2", 5)
    assert fresh is not None, "cache never refreshed"
    assert fresh >= 0.4, f"refreshed after {fresh:.3f}s, before the 0.5s ttl"
    aut.metric("refreshed_after_s", round(fresh, 3))


async def wait_for_value(store: Any, key: str, value: Any, timeout_s: float) -> float | None:
    """Seconds until ``store.get(key)`` returns ``value`` (polling), or None."""
    watch = Stopwatch()
    while watch.elapsed < timeout_s:
        if (await store.get(key))[key] == value:
            return watch.elapsed
        await asyncio.sleep(0.02)
    return None


@check("stores.set_if_absent_atomic", kinds=("state_store",), needs=("set_if_absent",))
async def test_set_if_absent_atomic(aut: AdapterUnderTest) -> None:
    """Twenty concurrent set_if_absent on one key from three instances: exactly one wins."""
    stores = [await aut.new() for _ in range(3)]
    rounds = aut.n(10)
    for r in range(rounds):
        wins = await asyncio.gather(
            *(stores[i % 3].set_if_absent(f"claim-{r}", {"by": i}) for i in range(20))
        )
        assert sum(wins) == 1, f"round {r}: {sum(wins)} winners"
        winner = wins.index(True)
        assert await stores[0].get(f"claim-{r}") == {f"claim-{r}": {"by": winner}}


@check("stores.set_if_absent_ttl", kinds=("state_store",), needs=("set_if_absent", "ttl"))
async def test_set_if_absent_ttl(aut: AdapterUnderTest) -> None:
    """A claim made with a ttl expires: afterwards the key is free to claim again."""
    s = await aut.new()
    assert await s.set_if_absent("lease", "a", ttl_s=1.0)
    assert not await s.set_if_absent("lease", "b", ttl_s=1.0), "claimed twice within the ttl"
    watch = Stopwatch()
    freed = None
    while watch.elapsed < 5:
        if await s.set_if_absent("lease", "c", ttl_s=5):
            freed = watch.elapsed
            break
        await asyncio.sleep(0.05)
    assert freed is not None, "the claim never expired"
    assert await s.get("lease") == {"lease": "c"}
    aut.metric("expired_after_s", round(freed, 3))


@check("stores.lifecycle.ready_healthy", kinds=STORES)
async def test_ready_healthy(aut: AdapterUnderTest) -> None:
    """Not ready before start, ready and healthy after start, not ready after destroy."""
    s = aut.build()
    assert not await s.is_ready(), "ready before start"
    await s.start()
    assert await s.is_ready() and await s.is_healthy(), "not ready/healthy after start"
    await aut.destroy(s)
    assert not await s.is_ready(), "still ready after destroy"
