"""Small helpers for runtime tests: waiting on conditions with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from reference_services.runtime.messages import Address, Command, CommandPayload, SenderAddress


async def wait_for(
    condition: Callable[[], bool], within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_for_async(
    condition: Callable[[], Awaitable[bool]], within: float = 5.0, what: str = "condition"
) -> None:
    """Like :func:`wait_for` for an async condition."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


CALLER = SenderAddress(
    service_name="caller", service_version="1", service_target="t", instance_id="c" * 32
)


def command(
    service: str, target: str, payload: object = None, parameter: object = None, **kw: object
) -> Command:
    """A command from a test caller."""
    return Command(
        sender=CALLER,
        receiver=Address(service_name=service, service_version="1", service_target=target),
        payload=CommandPayload(payload=payload, parameter=parameter),
        **kw,  # type: ignore[arg-type]
    )
