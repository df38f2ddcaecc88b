"""Durable stores: values survive a restart of the backing service."""

from __future__ import annotations

from conformance.kit.marks import check
from conformance.kit.restarts import dedicated_instance, restart_all
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for_async

STORES = ("state_store", "config_store", "secret_store")
OPEN = {"enable_get": True, "enable_set": True, "enable_remove": True}
VALUES = {"a": 1, "b": {"nested": ["ü", 2**60, 0.1]}, "c": "text"}


@check("stores.durable_restart", kinds=STORES, needs=("durable",))
async def test_durable_restart(aut: AdapterUnderTest) -> None:
    """Values written before the backing service is stopped and started again are read back
    unchanged by a fresh instance."""
    store, handles = await dedicated_instance(aut, **OPEN)
    for key, value in VALUES.items():
        await store.set(key, value)
    await aut.destroy(store)
    await restart_all(handles)
    fresh = await aut.new(**OPEN)
    assert await wait_for_async(fresh.is_healthy, 20), "not healthy after the restart"
    got = await fresh.get(*VALUES)
    assert got == VALUES, f"values after the restart: {got} != {VALUES}"
