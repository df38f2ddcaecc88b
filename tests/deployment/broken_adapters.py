"""Broken adapters for the checklist's failure tests, importable by the deployment
processes (``EVENT_BRIDGE=broken_adapters:BLIND_HEALTH``,
``QUEUE_BRIDGE=broken_adapters:BLIND_QUEUE`` or ``:ACK_ON_LEASE``: the test directory is
on the children's import path)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reference_services.adapters import mqtt, redis
from reference_services.adapters.mqtt.event_bridge import MqttBridge
from reference_services.adapters.mqtt.queue_bridge import MqttQueueBridge
from reference_services.adapters.redis.queue_bridge import RedisQueueBridge
from reference_services.runtime.queue import Job
from reference_services.runtime.spi.descriptor import AdapterDescriptor


def _broken(
    builtins: tuple[AdapterDescriptor, ...], kind: str, name: str, cls: str
) -> AdapterDescriptor:
    """The built-in ``kind`` descriptor of a broker package (its service, URL variable and
    protocol) naming the broken subclass ``cls`` of this module instead, untuned."""
    (builtin,) = (d for d in builtins if d.kind == kind)
    return replace(builtin, name=name, reference=f"broken_adapters:{cls}", fault_options={})


class BlindHealthMqttBridge(MqttBridge):
    """Reports ready and healthy whatever its connection: health that ignores the broker."""

    async def is_ready(self) -> bool:
        return self.core.started and self.core.accepting

    async def is_healthy(self) -> bool:
        return self.core.started


BLIND_HEALTH = _broken(
    mqtt.DESCRIPTORS, "event_bridge", "mqtt-blind-health", "BlindHealthMqttBridge"
)


class BlindHealthMqttQueue(MqttQueueBridge):
    """The MQTT queue reporting ready and healthy whatever its connection."""

    async def is_ready(self) -> bool:
        return self.running

    async def is_healthy(self) -> bool:
        return self._state != "destroyed"


BLIND_QUEUE = _broken(mqtt.DESCRIPTORS, "queue_bridge", "mqtt-blind-health", "BlindHealthMqttQueue")


class AckOnLeaseRedisQueue(RedisQueueBridge):
    """Acks every job as it hands it out (at most once): a cut invocation loses its job."""

    async def lease_next(self, *args: Any, **kwargs: Any) -> list[Job]:
        jobs = await super().lease_next(*args, **kwargs)
        for job in jobs:
            await self.ack(job)
        return jobs


ACK_ON_LEASE = _broken(
    redis.DESCRIPTORS, "queue_bridge", "redis-ack-on-lease", "AckOnLeaseRedisQueue"
)
