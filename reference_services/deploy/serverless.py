"""Serverless: one function invocation = a fresh in-memory bridge, the service, one command."""

from __future__ import annotations

from typing import Any

from ..bridges.memory import DefaultEventBridge
from ..runtime.errors import PuristaError
from ..runtime.ids import new_id
from ..runtime.messages import Command, CommandPayload, SenderAddress
from ..services import ALL_SERVICES
from .config import DeploymentConfig
from .factory import make_queue_bridge, make_stores


async def handle(event: dict[str, Any], cfg: DeploymentConfig | None = None) -> dict[str, Any]:
    """Run ``event = {service, command, payload?, parameter?, principalId?, tenantId?}``.

    Returns ``{"status": 200, "body": result}`` or ``{"status": <error status>, "body": {...}}``.
    Stores (and the queue bridge) come from the environment, as they must outlive the function.
    """
    cfg = cfg or DeploymentConfig.from_env()
    builder = ALL_SERVICES[event["service"]]
    bridge = DefaultEventBridge()
    stores = make_stores(cfg)
    queue = make_queue_bridge(cfg)
    parts = [bridge, queue, stores.state, stores.config, stores.secret]
    for part in parts:
        await part.start()
    instance = builder.get_instance(
        bridge,
        state_store=stores.state,
        config_store=stores.config,
        secret_store=stores.secret,
        queue_bridge=queue,
        config=dict(cfg.service_config),
    )
    await instance.start()
    try:
        command = Command(
            sender=SenderAddress(
                service_name="serverless",
                service_version="1",
                service_target="handler",
                instance_id=new_id(),
            ),
            receiver=builder.address(event["command"]),
            payload=CommandPayload(payload=event.get("payload"), parameter=event.get("parameter")),
            principal_id=event.get("principalId"),
            tenant_id=event.get("tenantId"),
        )
        try:
            result = await bridge.invoke(command, event.get("ttl_s", 30.0))
        except PuristaError as exc:
            return {"status": exc.status, "body": {"message": exc.message, "data": exc.data}}
        return {"status": 200, "body": result}
    finally:
        await instance.destroy()
        for part in reversed(parts):
            await part.destroy()
