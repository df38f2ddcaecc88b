"""The ready/healthy life cycle that every kind of adapter with ``start`` answers alike."""

from __future__ import annotations

from typing import Any

from conformance.kit.under_test import AdapterUnderTest


async def expect_ready_healthy_cycle(aut: AdapterUnderTest) -> Any:
    """Build, start and destroy an adapter: not ready before start, ready and healthy (both a
    bool) after start, not ready after destroy. Returns the destroyed adapter for the checks
    a kind adds (a queue bridge must also answer not healthy)."""
    adapter = aut.build()
    assert await adapter.is_ready() is False, "ready before start (is_ready must be False, a bool)"
    await adapter.start()
    assert await adapter.is_ready() is True, "not ready after start (is_ready must be True)"
    assert await adapter.is_healthy() is True, "not healthy after start (is_healthy must be True)"
    await aut.destroy(adapter)
    assert await adapter.is_ready() is False, "still ready after destroy (is_ready must be False)"
    return adapter
