"""Stores: get/set/remove, missing keys, JSON fidelity, switches, secret cache, atomic create."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.hyp import json_values_for, session, settings_for
from conformance.kit.lifecycle import expect_ready_healthy_cycle
from conformance.kit.marks import check
from conformance.kit.numbers import expect_numbers
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
        @given(key=keys, value=json_values_for(cf_aut).filter(lambda v: v is not None))
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


async def _error(coro: Any) -> PuristaError | None:
    """The runtime error ``coro`` raised, or None if it returned."""
    try:
        await coro
    except PuristaError as exc:
        return exc
    return None


def _names(text: str, word: str) -> bool:
    """Whether ``text`` contains ``word`` as a word of its own (as the API spells it)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", text) is not None


@check("stores.disabled_operations", kinds=STORES)
async def test_disabled_operations(aut: AdapterUnderTest) -> None:
    """A disabled get/set/remove raises 401 and changes nothing, on the versioned operations
    too (get_versioned is a get, create_versioned and replace_if a set, remove_if a remove);
    config and secret stores are get-only by default."""
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
    for op, coro in (
        ("get", closed.get("k")),
        ("set", closed.set("k", "x")),
        ("remove", closed.remove("k")),
        ("set_if_absent", closed.set_if_absent("fresh", "x")),
    ):
        err = await _error(coro)
        assert err is not None and err.status == 401, f"disabled {op}: {err!r}"
        name = "set" if op == "set_if_absent" else op
        assert _names(str(err), name) and _names(str(err), aut.kind), (
            f"the 401 of a disabled {op} does not name the operation {name!r} and the "
            f"store kind {aut.kind!r}: {err}"
        )
    if aut.supports("compare_and_set"):
        version = await writer.create_versioned("fenced", "v")
        assert version is not None, "create_versioned on a free key failed"
        for op, name, coro in (
            ("get_versioned", "get", closed.get_versioned("fenced")),
            ("create_versioned", "set", closed.create_versioned("fresh", "x")),
            ("replace_if", "set", closed.replace_if("fenced", version, "x")),
            ("remove_if", "remove", closed.remove_if("fenced", version)),
        ):
            err = await _error(coro)
            assert err is not None and err.status == 401, f"disabled {op}: {err!r}"
            assert _names(str(err), name) and _names(str(err), aut.kind), (
                f"the 401 of a disabled {op} does not name the operation {name!r} and the "
                f"store kind {aut.kind!r}: {err}"
            )
        got = await writer.get_versioned("fenced")
        assert got is not None and (got.value, got.version) == ("v", version), (
            f"a disabled versioned operation changed the store: {got!r}"
        )
        assert await writer.get("fresh") == {"fresh": None}, "a disabled create_versioned wrote"
    if aut.kind == "state_store":
        default = await aut.new()
        await default.set("d", 1)
        assert await default.get("d") == {"d": 1}
        await default.remove("d")
        assert await default.get("d") == {"d": None}, "state store: remove not enabled by default"
    if aut.kind != "state_store":
        default = await aut.new()
        got = [await _status(default.set("k", "y")), await _status(default.remove("k"))]
        assert got == [401, 401], f"{aut.kind} default set/remove gave {got}, expected 401"
        assert await default.get("k") == {"k": "v"}


BAD_KEYS: tuple[Any, ...] = ("", 7, None, b"k")


@check("stores.bad_keys", kinds=STORES)
async def test_bad_keys(aut: AdapterUnderTest) -> None:
    """A key that is not a non-empty string ("", 7, None, bytes) is a 400 naming it, on get,
    set, remove and set_if_absent alike, and nothing is written."""
    s = await aut.new(**OPEN)
    for key in BAD_KEYS:
        for op, coro in (
            ("get", s.get("ok", key)),
            ("set", s.set(key, 1)),
            ("remove", s.remove(key)),
            ("set_if_absent", s.set_if_absent(key, 1)),
        ):
            err = await _error(coro)
            assert err is not None and err.status == 400, f"{op}({key!r}): {err!r}, expected 400"
            assert repr(key) in str(err), f"{op}({key!r}): the 400 does not name the key: {err}"
    assert await s.get("ok") == {"ok": None}


NOT_JSON: tuple[Any, ...] = (
    math.nan,
    math.inf,
    -math.inf,
    {"deep": [1, math.nan]},
    object(),
    {1, 2},
)


@check("stores.bad_values", kinds=STORES)
async def test_bad_values(aut: AdapterUnderTest) -> None:
    """A value that is not strict JSON (NaN, infinities, objects, sets) is a 400 naming the key
    on set, set_if_absent, create_versioned and replace_if (an extra key of an atomic write
    too, and an extra key that is the record itself), and the key keeps its old value (or
    stays absent)."""
    s = await aut.new(**OPEN)
    await s.set("kept", "old")
    for value in NOT_JSON:
        for op, coro in (
            ("set", s.set("kept", value)),
            ("set_if_absent", s.set_if_absent("never", value)),
        ):
            err = await _error(coro)
            key = "kept" if op == "set" else "never"
            assert err is not None and err.status == 400, f"{op} of {value!r}: {err!r}, not 400"
            assert repr(key) in str(err), f"{op} of {value!r}: the 400 does not name {key!r}: {err}"
    if aut.supports("compare_and_set"):
        got = await s.get_versioned("kept")
        assert got is not None, "get_versioned of a set value gave nothing"
        atomic = aut.supports("atomic_effects")
        for value in NOT_JSON:
            cases = [
                ("create_versioned", "never", s.create_versioned("never", value)),
                ("replace_if", "kept", s.replace_if("kept", got.version, value)),
            ]
            if atomic:
                also = s.replace_if("kept", got.version, "new", also={"extra": value})
                cases.append(("replace_if also=", "extra", also))
            for op, key, coro in cases:
                err = await _error(coro)
                assert err is not None and err.status == 400, f"{op} of {value!r}: {err!r}"
                assert repr(key) in str(err), f"{op} of {value!r}: the 400 does not name {key!r}"
        if atomic:
            err = await _error(s.replace_if("kept", got.version, "new", also={"kept": 1}))
            assert err is not None and err.status == 400, f"also= naming the record: {err!r}"
            assert repr("kept") in str(err), f"also= naming the record: 400 without 'kept': {err}"
        assert await s.get("extra") == {"extra": None}, "a refused atomic write wrote its extra key"
    assert await s.get("kept", "never") == {"kept": "old", "never": None}


@check("stores.initial_values", kinds=STORES)
async def test_initial_values(aut: AdapterUnderTest) -> None:
    """Values given as ``initial`` are readable once the store started, by another instance
    too; an ``initial`` value that is not JSON is a 400 naming its key, at build or start."""
    initial = {"limit": 30, "flags": {"on": True, "tags": ["a"]}, "zero": 0, "empty": ""}
    s = await aut.new(initial=initial)
    assert await s.get(*initial) == initial, "initial values not readable"
    other = await aut.new()
    assert await other.get("limit") == {"limit": 30}, "initial values not seen by another instance"

    async def build_and_start() -> None:
        await aut.new(initial={"bad-initial": math.nan})

    err = await _error(build_and_start())
    assert err is not None and err.status == 400, f"non-JSON initial value: {err!r}, not 400"
    assert repr("bad-initial") in str(err), f"the 400 does not name the key: {err}"


@check("stores.cache_own_writes", kinds=("secret_store",), needs=("cache",))
async def test_cache_own_writes(aut: AdapterUnderTest) -> None:
    """A caching instance reads its own set, remove and set_if_absent at once: a write drops
    the cached value of that key (the ttl applies to other writers only)."""
    s = await aut.new(cache_ttl_s=60, **OPEN)
    await s.set("own", "v1")
    assert await s.get("own") == {"own": "v1"}
    await s.set("own", "v2")
    assert await s.get("own") == {"own": "v2"}, "own set served stale from the cache"
    await s.remove("own")
    assert await s.get("own") == {"own": None}, "own remove served stale from the cache"
    if aut.supports("set_if_absent"):
        assert await s.set_if_absent("own", "v3")
        assert await s.get("own") == {"own": "v3"}, "own set_if_absent served stale"
    if aut.supports("compare_and_set"):
        await s.set("fenced", "v4")
        assert await s.get("fenced") == {"fenced": "v4"}
        got = await s.get_versioned("fenced")
        assert got is not None
        v5 = await s.replace_if("fenced", got.version, "v5")
        assert v5 is not None
        assert await s.get("fenced") == {"fenced": "v5"}, "own replace_if served stale"
        assert await s.remove_if("fenced", v5)
        assert await s.get("fenced") == {"fenced": None}, "own remove_if served stale"
        assert await s.create_versioned("fenced", "v6") is not None
        assert await s.get("fenced") == {"fenced": "v6"}, "own create_versioned served stale"


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


@check("stores.set_if_absent_atomic", kinds=STORES, needs=("set_if_absent",))
async def test_set_if_absent_atomic(aut: AdapterUnderTest) -> None:
    """Twenty concurrent set_if_absent on one key from three instances: exactly one wins."""
    stores = [await aut.new(**OPEN) for _ in range(3)]
    rounds = aut.n(10)
    for r in range(rounds):
        wins = await asyncio.gather(
            *(stores[i % 3].set_if_absent(f"claim-{r}", {"by": i}) for i in range(20))
        )
        assert sum(wins) == 1, f"round {r}: {sum(wins)} winners"
        winner = wins.index(True)
        assert await stores[0].get(f"claim-{r}") == {f"claim-{r}": {"by": winner}}


@check("stores.set_if_absent_ttl", kinds=STORES, needs=("set_if_absent", "ttl"))
async def test_set_if_absent_ttl(aut: AdapterUnderTest) -> None:
    """A claim made with a ttl expires: afterwards the key is free to claim again."""
    s = await aut.new(**OPEN)
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


@check("stores.compare_and_set_fences", kinds=STORES, needs=("compare_and_set", "ttl"))
async def test_compare_and_set_fences(aut: AdapterUnderTest) -> None:
    """A writer holding an old version cannot replace or remove its successor's value, from
    another instance either; an expired value cannot be renewed. Another instance reads what
    create_versioned wrote, with its version, and a created value's ttl_s expires it."""
    a, b = await aut.new(**OPEN), await aut.new(**OPEN)
    v1 = await a.create_versioned("claim", {"owner": "a", "rev": 0}, ttl_s=0.5)
    assert v1 is not None, "create_versioned on a free key failed"
    got = await b.get_versioned("claim")
    assert got is not None and (got.value, got.version) == ({"owner": "a", "rev": 0}, v1), (
        f"another instance read {got!r} after create_versioned, not its value and version"
    )
    assert await a.create_versioned("short", {"owner": "a"}, ttl_s=0.5) is not None
    assert await b.create_versioned("claim", {"owner": "b", "rev": 0}) is None, "created twice"
    v2 = await a.replace_if("claim", v1, {"owner": "a", "rev": 1}, ttl_s=0.5)
    assert v2 is not None and v2 != v1, "renewal with the current version failed"
    assert await b.replace_if("claim", v1, {"owner": "b"}) is None, "stale version replaced"
    assert not await b.remove_if("claim", v1), "stale version removed the value"
    got = await b.get_versioned("claim")
    assert got is not None and got.value == {"owner": "a", "rev": 1} and got.version == v2
    watch = Stopwatch()
    while await a.get_versioned("claim") is not None:
        assert watch.elapsed < 5, "the versioned value never expired"
        await asyncio.sleep(0.05)
    while await b.get_versioned("short") is not None:  # created before claim's renewal
        assert watch.elapsed < 5, "a value created with ttl_s never expired"
        await asyncio.sleep(0.05)
    assert await a.replace_if("claim", v2, {"owner": "a", "rev": 2}) is None, "renewed expired"
    v3 = await b.create_versioned("claim", {"owner": "b", "rev": 0}, ttl_s=5)
    assert v3 is not None, "an expired value could not be taken over"
    assert not await a.remove_if("claim", v2), "the old owner removed its successor's claim"
    assert await b.remove_if("claim", v3)
    assert await a.get_versioned("claim") is None


@check("stores.atomic_effects", kinds=STORES, needs=("compare_and_set", "atomic_effects"))
async def test_atomic_effects(aut: AdapterUnderTest) -> None:
    """replace_if(..., also=...) writes the record and the extra keys together, and with a
    stale version writes none of them."""
    a, b = await aut.new(**OPEN), await aut.new(**OPEN)
    v1 = await a.create_versioned("job", {"state": "pending"}, ttl_s=5)
    assert v1 is not None
    v2 = await a.replace_if("job", v1, {"state": "pending", "rev": 1}, ttl_s=5)
    assert v2 is not None
    stale = await b.replace_if("job", v1, {"state": "done", "by": "b"}, also={"out:b": 1})
    assert stale is None, "a stale version committed"
    assert await a.get("out:b") == {"out:b": None}, "a failed commit wrote its extra key"
    done = await a.replace_if("job", v2, {"state": "done"}, also={"out:a": 1, "total": 7})
    assert done is not None
    assert await b.get("out:a", "total") == {"out:a": 1, "total": 7}
    got = await b.get_versioned("job")
    assert got is not None and got.value == {"state": "done"}


@check("stores.lifecycle.ready_healthy", kinds=STORES)
async def test_ready_healthy(aut: AdapterUnderTest) -> None:
    """Not ready before start, ready and healthy after start, not ready after destroy; both
    answer a bool, as the store protocol declares."""
    await expect_ready_healthy_cycle(aut)


@check("stores.numbers", kinds=STORES)
async def test_numbers(aut: AdapterUnderTest) -> None:
    """Integers beyond 2**53 and doubles at full precision come back unchanged, or are
    refused at set as the store declares (``numbers``)."""
    s = await aut.new(**OPEN)
    mode = aut.spec.capabilities.numbers

    async def round_trip(value: Any) -> Any:
        await s.set("numbers", value)
        return (await s.get("numbers"))["numbers"]

    await expect_numbers(mode, round_trip)
