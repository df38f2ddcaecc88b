"""Serverless: one function invocation = a fresh in-memory bridge, one service, one trigger.

A trigger is one of

- ``{"service", "command", "payload"?, "parameter"?, "principalId"?, "tenantId"?}``: run a command;
- ``{"service", "message": <wire message>}``: deliver an event to the service's subscriptions;
- ``{"service", "queue": <name>}``: let the service's queue workers drain the jobs due now.

The answer is ``{"status", "body", "emitted"}``: ``emitted`` lists the events the
invocation emitted (wire form) so that the platform can trigger the functions
subscribed to them. Stores and the queue bridge come from the environment: they
must outlive the function.
"""

from __future__ import annotations

import asyncio
from typing import Any

from reference_services.adapters.memory.event_bridge import DefaultEventBridge
from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_queue_bridge, make_stores
from reference_services.deploy.process import Adapters
from reference_services.deploy.run import service_config
from reference_services.runtime.codec import from_wire, to_wire
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.messages import (
    AnyMessage,
    Command,
    CommandPayload,
    CommandSuccessResponse,
    CustomMessage,
    SenderAddress,
)
from reference_services.runtime.service import ServiceBuilder
from reference_services.services import ALL_SERVICES

SETTLE_TIMEOUT_S = 30.0


class _FunctionBridge(DefaultEventBridge):
    """The per-invocation bridge; remembers the events the invocation emitted."""

    def __init__(self) -> None:
        super().__init__()
        self.emitted: list[dict[str, Any]] = []

    async def _publish(self, message: AnyMessage) -> None:
        if isinstance(message, CustomMessage) or (
            isinstance(message, CommandSuccessResponse) and message.event_name
        ):
            self.emitted.append(to_wire(message))
        await super()._publish(message)

    def idle(self) -> bool:
        return self.inflight == 0 and not self.hub._tasks


async def _settle(bridge: _FunctionBridge) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    while loop.time() < deadline:
        if bridge.idle():
            return
        await asyncio.sleep(0.005)


async def _command(bridge: _FunctionBridge, builder: ServiceBuilder, event: dict[str, Any]) -> Any:
    command = Command(
        sender=SenderAddress(
            service_name="serverless",
            service_version="1",
            service_target="handler",
            instance_id=bridge.instance_id,
        ),
        receiver=builder.address(event["command"]),
        payload=CommandPayload(payload=event.get("payload"), parameter=event.get("parameter")),
        principal_id=event.get("principalId"),
        tenant_id=event.get("tenantId"),
    )
    return await bridge.invoke(command, event.get("ttl_s", 30.0))


async def _drain_queue(queue: Any, name: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_TIMEOUT_S
    while loop.time() < deadline:
        metrics = await queue.metrics(name)
        if metrics.inflight == 0 and metrics.pending == 0:
            return
        await asyncio.sleep(0.01)


async def handle(event: dict[str, Any], cfg: DeploymentConfig | None = None) -> dict[str, Any]:
    """Run one trigger (see the module docstring) and return status, body and emitted events."""
    cfg = cfg or DeploymentConfig.from_env()
    builder = ALL_SERVICES[event["service"]]
    bridge = _FunctionBridge()
    stores = make_stores(cfg)
    queue = make_queue_bridge(cfg)
    adapters = Adapters(bridge, queue, stores)
    parts = adapters.parts
    for part in parts:
        await part.start()
    instance = adapters.instance(builder, service_config(cfg))
    await instance.start()
    status, body = 200, None
    try:
        try:
            if "command" in event:
                body = await _command(bridge, builder, event)
            elif "message" in event:
                bridge.receive_raw(bridge.core.encode(from_wire(event["message"])))
            elif "queue" in event:
                await _drain_queue(queue, event["queue"])
            else:
                raise ValueError("trigger needs one of: command, message, queue")
        except PuristaError as exc:
            status, body = exc.status, {"message": exc.message, "data": exc.data}
        await _settle(bridge)
        return {"status": status, "body": body, "emitted": list(bridge.emitted)}
    finally:
        await instance.destroy()
        for part in reversed(parts):
            await part.destroy()
