"""Broken adapters for the checklist's failure tests, importable by the deployment
processes (``EVENT_BRIDGE=broken_adapters:BLIND_HEALTH``,
``QUEUE_BRIDGE=broken_adapters:BLIND_QUEUE`` or ``:ACK_ON_LEASE``: the test directory is
on the children's import path)."""

from __future__ import annotations

from typing import Any

from reference_services.adapters.mqtt.event_bridge import MqttBridge
from reference_services.adapters.mqtt.queue_bridge import MqttQueueBridge
from reference_services.adapters.redis.queue_bridge import RedisQueueBridge
from reference_services.runtime.queue import Job
from reference_services.runtime.spi.descriptor import AdapterDescriptor


class BlindHealthMqttBridge(MqttBridge):
    """Reports ready and healthy whatever its connection: health that ignores the broker."""

    async def is_ready(self) -> bool:
        return self.core.started and self.core.accepting

    async def is_healthy(self) -> bool:
        return self.core.started


BLIND_HEALTH = AdapterDescriptor(
    "mqtt-blind-health",
    "event_bridge",
    "broken_adapters:BlindHealthMqttBridge",
    service="mosquitto",
    url_var="MQTT_URL",
    deployable=True,
    protocol="mqtt",
)


class BlindHealthMqttQueue(MqttQueueBridge):
    """The MQTT queue reporting ready and healthy whatever its connection."""

    async def is_ready(self) -> bool:
        return self.running

    async def is_healthy(self) -> bool:
        return self._state != "destroyed"


BLIND_QUEUE = AdapterDescriptor(
    "mqtt-blind-health",
    "queue_bridge",
    "broken_adapters:BlindHealthMqttQueue",
    service="mosquitto",
    url_var="MQTT_URL",
    deployable=True,
    protocol="mqtt",
)


class AckOnLeaseRedisQueue(RedisQueueBridge):
    """Acks every job as it hands it out (at most once): a cut invocation loses its job."""

    async def lease_next(self, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = await super().lease_next(*args, **kwargs)
        for job in jobs:
            await self.ack(job)
        return jobs


ACK_ON_LEASE = AdapterDescriptor(
    "redis-ack-on-lease",
    "queue_bridge",
    "broken_adapters:AckOnLeaseRedisQueue",
    service="redis",
    url_var="REDIS_URL",
    deployable=True,
)
