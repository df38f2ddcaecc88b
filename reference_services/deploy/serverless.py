"""Serverless: one function invocation = a fresh in-memory bridge, one service, one trigger.

A trigger is one of

- ``{"service", "command", "payload"?, "parameter"?, "principalId"?, "tenantId"?}``: run a command;
- ``{"service", "message": <wire message>}``: deliver an event to the service's subscriptions;
- ``{"service", "queue": <name>}``: let the service's queue workers drain the jobs due now;
- ``{"service", "health": "live"|"ready"}``: the platform's health probe of the function:
  it starts the function's adapters and asks each (as ``/healthz`` and ``/readyz`` ask a
  process), 200 when all are ok, else 503 with each component's answer.

The answer is ``{"status", "body", "emitted"}``: ``emitted`` lists the events the
invocation emitted (wire form) so that the platform can trigger the functions
subscribed to them. Stores and the queue bridge come from the environment: they
must outlive the function.

``python -m reference_services.deploy.serverless '<trigger JSON>'`` runs one invocation
in a process of its own (the configuration from the environment) and prints the answer
as JSON: what a platform's function sandbox does, and what it may kill at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from reference_services.adapters.memory.event_bridge import DefaultEventBridge
from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_queue_bridge, make_stores
from reference_services.deploy.process import Adapters
from reference_services.deploy.run import service_config
from reference_services.runtime.codec import from_wire, to_wire
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.health import probe
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


HEALTH_KINDS = ("live", "ready")


async def handle(event: dict[str, Any], cfg: DeploymentConfig | None = None) -> dict[str, Any]:
    """Run one trigger (see the module docstring) and return status, body and emitted events."""
    cfg = cfg or DeploymentConfig.from_env()
    builder = ALL_SERVICES[event["service"]]
    bridge = _FunctionBridge()
    stores = make_stores(cfg)
    queue = make_queue_bridge(cfg)
    adapters = Adapters(bridge, queue, stores)
    parts = adapters.parts
    if "health" in event:
        return await _probe_function(event["health"], builder, parts)
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


async def _probe_function(kind: str, builder: ServiceBuilder, parts: list[Any]) -> dict[str, Any]:
    """Start the function's adapters as an invocation would, ask each, stop them: 200 when
    all are ok, 503 (with each answer, or the part that could not start) otherwise."""
    if kind not in HEALTH_KINDS:
        raise ValueError(f"health must be one of {HEALTH_KINDS}, got {kind!r}")
    started: list[Any] = []
    try:
        for part in parts:
            try:
                await asyncio.wait_for(part.start(), 10)
            except Exception as exc:  # an unreachable broker: not ready, never a crash
                name = getattr(part, "name", type(part).__name__)
                body = {"ok": False, "not_started": f"{name}: {type(exc).__name__}"}
                return {"status": 503, "body": body, "emitted": []}
            started.append(part)
        ok, details = await probe(parts, kind == "ready")
        body = {"ok": ok, "service": builder.name, "components": details}
        return {"status": 200 if ok else 503, "body": body, "emitted": []}
    finally:
        for part in reversed(started):
            with contextlib.suppress(Exception):  # the answer is already decided
                await asyncio.wait_for(part.destroy(), 10)


def main(argv: list[str] | None = None) -> int:
    """One invocation in this process: the trigger JSON from argv, the answer on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m reference_services.deploy.serverless '<trigger JSON>'",
              file=sys.stderr)
        return 2
    try:
        event = json.loads(args[0])
    except ValueError as exc:
        print(f"the trigger is not JSON: {exc}", file=sys.stderr)
        return 2
    import os

    from reference_services.deploy.telemetry_file import configure

    stop = configure(os.environ)
    try:
        answer = asyncio.run(handle(event))
    finally:
        if stop is not None:
            stop()
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
