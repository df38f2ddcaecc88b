"""Restarting an adapter's backing service (a dedicated one) inside a contract check."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.adapters import ServiceUnavailable
from conformance.kit.skips import not_tested
from conformance.kit.under_test import AdapterUnderTest


async def dedicated_instance(aut: AdapterUnderTest, **options: Any) -> tuple[Any, dict[str, Any]]:
    """A started instance on dedicated brokers (so a restart disturbs no other check)."""
    if not aut.spec.services:
        pytest.skip("in-process adapter: there is no backing service to restart")
    try:
        handles = aut.isolate()
        obj = await aut.new(**options)
    except ServiceUnavailable as exc:
        not_tested(f"no dedicated broker: {exc}")
    if not handles:
        pytest.skip("the adapter uses no harness service, nothing to restart")
    return obj, handles


async def restart_all(handles: dict[str, Any]) -> None:
    """Stop every dedicated service gracefully and start it again (same port, same data)."""
    for handle in handles.values():
        await asyncio.to_thread(handle.restart, False)
