"""A deployment whose services or health server fail to start destroys what had started."""

from __future__ import annotations

import logging
import socket

import pytest

from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_event_bridge, make_queue_bridge, make_stores
from reference_services.deploy.process import Adapters, start_parts
from reference_services.runtime.health import HealthServer
from reference_services.runtime.shutdown import ShutdownSignals
from reference_services.services import ALL_SERVICES


async def test_a_health_port_in_use_destroys_the_started_services_and_adapters() -> None:
    cfg = DeploymentConfig.from_env({})
    bridge = make_event_bridge(cfg)
    adapters = Adapters(bridge, make_queue_bridge(cfg), make_stores(cfg))
    builder = ALL_SERVICES["user"]
    instance = adapters.instance(builder, {})
    keys = [builder.address(name).key for name in builder.commands]
    assert keys
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    health = HealthServer([bridge, instance], host="127.0.0.1", port=taken.getsockname()[1])
    try:
        async with ShutdownSignals() as signals:
            with pytest.raises(OSError):
                await start_parts(
                    [*adapters.parts, instance, health], signals, 5.0, logging.getLogger("t")
                )
    finally:
        taken.close()
    # the user service had registered its commands; destroying it removed them, and the
    # bridge and the queue bridge were destroyed after it
    assert [key for key in keys if bridge.core.command(key)] == []
    assert bridge.core.destroyed
    assert adapters.queue.state == "destroyed"
