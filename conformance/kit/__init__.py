"""Small builders and recorders the event bridge checks share (faults checks may reuse them)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from conformance.kit.ledger import Ledger
from reference_services.runtime.definitions import (
    AddressFilter,
    CommandConfig,
    FailureHandling,
    Subscription,
)
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandResponse,
    CustomMessage,
    MessageType,
    SenderAddress,
    success_response,
)

__all__ = [
    "AddressFilter",
    "CommandConfig",
    "FailureHandling",
    "Gate",
    "Recorder",
    "addr",
    "command",
    "event",
    "invoke_status",
    "responder",
    "subscription",
]


def addr(service: str, version: str = "1", target: str = "fn") -> Address:
    """An address of a service function."""
    return Address(service_name=service, service_version=version, service_target=target)


def _sender(service: str, instance_id: str) -> SenderAddress:
    return SenderAddress(
        service_name=service, service_version="1", service_target="emit", instance_id=instance_id
    )


def event(
    bridge: Any,
    event_name: str,
    payload: Any = None,
    *,
    service: str = "producer",
    principal_id: str | None = None,
    tenant_id: str | None = None,
    trace_id: str | None = None,
    correlation_id: str | None = None,
    otp: str | None = None,
) -> CustomMessage:
    """A custom message sent from ``bridge``'s instance."""
    return CustomMessage(
        sender=_sender(service, bridge.instance_id),
        event_name=event_name,
        payload=payload,
        principal_id=principal_id,
        tenant_id=tenant_id,
        trace_id=trace_id,
        correlation_id=correlation_id,
        otp=otp,
    )


def command(
    bridge: Any,
    receiver: Address,
    payload: Any = None,
    parameter: Any = None,
    *,
    principal_id: str | None = None,
    tenant_id: str | None = None,
    trace_id: str | None = None,
    otp: str | None = None,
) -> Command:
    """A command from ``bridge``'s instance to ``receiver``."""
    return Command(
        sender=_sender("client", bridge.instance_id),
        receiver=receiver,
        payload={"payload": payload, "parameter": parameter},
        principal_id=principal_id,
        tenant_id=tenant_id,
        trace_id=trace_id,
        otp=otp,
    )


def subscription(
    service: str,
    *,
    event_name: str | None = None,
    shared: bool = True,
    durable: bool = True,
    sender: AddressFilter | None = None,
    principal_id: str | None = None,
    tenant_id: str | None = None,
    emit_event_name: str | None = None,
    failure: FailureHandling | None = None,
) -> Subscription:
    """A custom-message subscription of ``service``."""
    return Subscription(
        subscriber=addr(service, target="on"),
        message_type=MessageType.CUSTOM_MESSAGE,
        event_name=event_name,
        sender=sender,
        principal_id=principal_id,
        tenant_id=tenant_id,
        shared=shared,
        durable=durable,
        emit_event_name=emit_event_name,
        failure=failure or FailureHandling(),
    )


def collect(into: list[Any]) -> Callable[[Any], Awaitable[None]]:
    """A subscription handler that appends every message it gets to ``into``."""

    async def keep(msg: Any) -> None:
        into.append(msg)

    return keep


def responder(
    fn: Callable[[Command], Awaitable[Any]],
) -> Callable[[Command], Awaitable[CommandResponse]]:
    """Turn ``fn(command) -> result`` into a command handler that builds the response."""

    async def handler(cmd: Command) -> CommandResponse:
        return success_response(cmd, await fn(cmd))

    return handler


def built_on_base(aut: Any) -> bool:
    """Whether the event bridge under test is built on EventBridgeBase (it takes
    ``drain_timeout_s`` and keeps its bookkeeping in ``core``)."""
    from reference_services.runtime.spi.bridge_base import EventBridgeBase

    cls = aut.spec.adapter_class
    return cls is not None and issubclass(cls, EventBridgeBase)


async def echo_payload(cmd: Command) -> Any:
    """A command handler body (for :func:`responder`) answering the command's payload."""
    return cmd.payload.payload


#: what the 503 of a draining or destroyed bridge should say
SAYS_SHUTDOWN = re.compile(r"shut|drain|destroy|stop|clos", re.IGNORECASE)


async def invoke_status(bridge: Any, cmd: Command, ttl_s: float) -> tuple[str, Any, float]:
    """Invoke and classify: ``("ok", result, s)`` or ``("error", PuristaError, s)``."""
    start = time.monotonic()
    try:
        result = await bridge.invoke(cmd, ttl_s)
    except PuristaError as exc:
        return "error", exc, time.monotonic() - start
    return "ok", result, time.monotonic() - start


class Recorder:
    """A subscription handler that records deliveries into a ledger, keyed by a payload field."""

    def __init__(self, ledger: Ledger, label: str, key: Callable[[AnyMessage], str] | None = None):
        self.ledger = ledger
        self.label = label
        self.key = key or (
            lambda m: (
                str(m.payload["id"]) if isinstance(m.payload, dict) and "id" in m.payload else m.id
            )
        )
        self.messages: list[AnyMessage] = []

    async def __call__(self, message: AnyMessage) -> None:
        self.messages.append(message)
        self.ledger.delivered(self.key(message), by=self.label)


class Gate:
    """Handlers wait on it; the check opens it. Counts who entered and left."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.entered = 0
        self.left = 0

    def open(self) -> None:
        """Let every waiting handler continue."""
        self._event.set()

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        self.entered += 1
        try:
            yield
        finally:
            self.left += 1

    async def wait(self, timeout_s: float = 30) -> None:
        """Block the calling handler until the gate opens."""
        with self._inside():
            await asyncio.wait_for(self._event.wait(), timeout_s)

    def stalled(self, answer: Any = "too late") -> Callable[[Command], Awaitable[CommandResponse]]:
        """A command handler that waits on the gate, then answers ``answer``."""

        async def stall(cmd: Command) -> Any:
            await self.wait()
            return answer

        return responder(stall)


async def stalled_command(aut: Any, target: str) -> tuple[Any, Gate]:
    """A new client, and the gate on which a new server's ``addr(target)`` handler waits
    (answering "too late" once the check opens it)."""
    gate = Gate()
    server = await aut.new()
    await server.register_command(addr(target), gate.stalled())
    return await aut.new(), gate


def pending_invocations(bridge: Any) -> int:
    """``bridge.pending_invocations``, which the EventBridge protocol requires to be an int.

    Read directly, never through a default: an adapter without it fails the check
    instead of passing it unmeasured.
    """
    try:
        value = bridge.pending_invocations
    except AttributeError:
        raise AssertionError(
            f"{type(bridge).__name__} has no pending_invocations: the EventBridge protocol "
            "requires it (an int: invocations still waiting for a response)"
        ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise AssertionError(f"pending_invocations must be an int, got {value!r}")
    return value
