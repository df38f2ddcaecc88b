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
    """A counter of the bridge's SPI core; None for a bridge not built on EventBridgeBase.
    A bridge built on it must count (an int): a missing or broken counter fails the check
    rather than turning it off."""
    if not isinstance(bridge, EventBridgeBase):
        return None
    return _int_counter(bridge.core, name, f"{type(bridge).__name__}.core")


def bridge_counter(bridge: Any, name: str) -> int | None:
    """A counter of the bridge itself (``rejected_messages``): required, as an int, of a
    bridge built on EventBridgeBase; otherwise read where the bridge has it."""
    if not isinstance(bridge, EventBridgeBase) and not hasattr(bridge, name):
        return None
    return _int_counter(bridge, name, type(bridge).__name__)


def _int_counter(owner: Any, name: str, where: str) -> int:
    if not hasattr(owner, name):
        raise AssertionError(f"{where} has no counter {name!r}")
    value = getattr(owner, name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AssertionError(f"{where}.{name} is {value!r}, not a count")
    return value


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
