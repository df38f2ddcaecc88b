"""Helpers shared by the adapter integration tests: waits with deadlines, test addresses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from reference_services.adapters.nats.connection import NatsTimings
from reference_services.runtime.messages import Address, SenderAddress

CALLER = SenderAddress(
    service_name="caller", service_version="1", service_target="t", instance_id="c" * 32
)
USER = Address(service_name="user", service_version="1.0.0", service_target="get.user")
# NATS queue and KV timings short enough that an outage is noticed in about a second
NATS_FAST = NatsTimings(
    connect_timeout_s=1.0,
    start_timeout_s=5.0,
    ping_interval_s=1.0,
    max_outstanding_pings=2,
    reconnect_wait_s=0.2,
    op_timeout_s=2.0,
)


async def wait_for(condition: Callable[[], bool], within: float = 10.0, what: str = "it") -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_async(
    condition: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "it"
) -> None:
    """Like :func:`wait_for` for an async condition."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """:func:`wait_async` with the ``timeout_s`` keyword the Redis tests use."""
    await wait_async(check, timeout_s, what)


async def is_not(value: Awaitable[bool]) -> bool:
    """Negate an awaitable boolean (for waits on ``not await bridge.is_ready()``)."""
    return not await value
