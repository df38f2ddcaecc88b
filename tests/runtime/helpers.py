"""Small helpers for runtime tests: waiting on conditions with a deadline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from reference_services.runtime.messages import Address, Command, CommandPayload, SenderAddress
from reference_services.testing import wait_until


async def wait_for(
    condition: Callable[[], bool], within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until true; fail with ``what`` after ``within`` seconds."""
    await wait_until(condition, within, what)


async def wait_for_async(
    condition: Callable[[], Awaitable[bool]], within: float = 5.0, what: str = "condition"
) -> None:
    """Like :func:`wait_for` for an async condition."""
    await wait_until(condition, within, what)


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
