"""The optional hostile-input hooks an adapter may offer, and skips when it offers none."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from reference_services.runtime.codec import encode
from reference_services.runtime.messages import Address, Command, CommandResponse
from reference_services.runtime.spi.bridge_base import EventBridgeBase


def raw_command_hook(bridge: Any) -> Callable[[bytes, Address], Awaitable[None]]:
    """``bridge.publish_raw_command(raw, route)``: raw bytes on the route of a command."""
    hook = getattr(bridge, "publish_raw_command", None)
    if not callable(hook):
        pytest.skip(
            f"{type(bridge).__name__} offers no publish_raw_command(raw, route) hook: "
            "forged route/body cases need raw bytes on a command's route"
        )
    return hook  # type: ignore[no-any-return]


async def invoke_forged(
    bridge: Any, forged: Command, route: Address, ttl_s: float
) -> CommandResponse:
    """Send the bytes of ``forged`` on the route of ``route`` as ``bridge``'s own invocation
    (with its reply address) and return the response the server sent back: a peer that
    misroutes a command and reads the answer. Only for bridges built on EventBridgeBase
    (the bytes ride on the transport's own ``_send_command``); 504 after ``ttl_s``."""
    if not isinstance(bridge, EventBridgeBase):
        pytest.skip(
            f"{type(bridge).__name__} is not built on EventBridgeBase: a forged command's "
            "answer is read through its pending invocations"
        )
    raw = encode(forged)
    carrier = forged.model_copy(update={"receiver": route})
    core = bridge.core
    plain = core.encode
    # the transport encodes the carrier (its route, its reply properties) as the forged bytes
    core.encode = lambda message: raw if message is carrier else plain(message)  # type: ignore[method-assign]
    future = core.pending.add(forged.correlation_id, ttl_s, route, forged.trace_id)
    try:
        await bridge._send_command(carrier)
        return await future
    finally:
        del core.encode
        core.pending.discard(forged.correlation_id, future)


def raw_headers_hook(bridge: Any) -> Callable[..., Awaitable[None]]:
    """``bridge.publish_raw(raw, extra_headers=...)``: raw bytes with forged headers."""
    hook = getattr(bridge, "publish_raw", None)
    if not callable(hook) or "extra_headers" not in inspect.signature(hook).parameters:
        pytest.skip(
            f"{type(bridge).__name__} offers no publish_raw(raw, extra_headers=...) hook: "
            "forged header cases need raw bytes with headers of the publisher's choosing"
        )
    return hook  # type: ignore[no-any-return]


def core_counter(bridge: Any, name: str) -> int | None:
    """A counter of the bridge's SPI core, when it is built on the shared base."""
    value = getattr(getattr(bridge, "core", None), name, None)
    return value if isinstance(value, int) else None


def corruption_hook(queue_bridge: Any) -> tuple[Callable[..., Awaitable[str | None]], list[str]]:
    """``queue_bridge.corrupt_record(queue, job_id, how)`` and the ``CORRUPTIONS`` it makes."""
    hook = getattr(queue_bridge, "corrupt_record", None)
    kinds = list(getattr(queue_bridge, "CORRUPTIONS", ()) or ())
    if not callable(hook) or not kinds:
        pytest.skip(
            f"{type(queue_bridge).__name__} offers no corrupt_record(queue, job_id, how) hook "
            "with CORRUPTIONS: corrupted-record cases need access to the stored records"
        )
    return hook, kinds
