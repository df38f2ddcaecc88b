"""Deliberately broken adapters: the faults suite must catch each of them.

Each is a ``module:factory`` the conformance CLI accepts as a third-party adapter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reference_services.adapters.nats.event_bridge import NatsBridge
from reference_services.adapters.redis.queue_bridge import RedisQueueBridge
from reference_services.runtime.definitions import FailureHandling, Subscription


class NatsWithoutRetries(NatsBridge):
    """A NATS bridge whose subscriptions never retry: the first failure dead-letters.

    It still declares ``bounded_retry`` and ``delayed_retry`` (inherited), as a
    careless adapter would.
    """

    async def register_subscription(self, subscription: Subscription, handler: Any) -> None:
        """Register with retries switched off (max_attempts forced to 1)."""
        failure = dataclasses.replace(subscription.failure, max_attempts=1)
        assert isinstance(failure, FailureHandling)
        await super().register_subscription(
            dataclasses.replace(subscription, failure=failure), handler
        )


def nats_without_retries(ctx: Any) -> NatsWithoutRetries:
    """Factory of :class:`NatsWithoutRetries`."""
    return NatsWithoutRetries(url=ctx.url("nats"), prefix=ctx.prefix, **ctx.options)


nats_without_retries.kind = "event_bridge"  # type: ignore[attr-defined]
nats_without_retries.capabilities = NatsBridge.capabilities  # type: ignore[attr-defined]
nats_without_retries.services = ("nats",)  # type: ignore[attr-defined]
nats_without_retries.fault_options = {  # type: ignore[attr-defined]
    "ping_interval_s": 1.0,
    "max_outstanding_pings": 2,
    "reconnect_time_wait_s": 0.2,
    "ack_wait_s": 3.0,
}


class RedisQueueIgnoringDelays(RedisQueueBridge):
    """A Redis queue bridge whose ``nack`` ignores the requested delay (retries at once)."""

    async def nack(self, job: Any, reason: str | None = None, delay_ms: int | None = None) -> Any:
        """Reschedule immediately, whatever the retry policy asked for."""
        return await super().nack(job, reason, 0)


def redis_queue_ignoring_delays(ctx: Any) -> RedisQueueIgnoringDelays:
    """Factory of :class:`RedisQueueIgnoringDelays`."""
    return RedisQueueIgnoringDelays(url=ctx.url("redis"), prefix=ctx.prefix, **ctx.options)


redis_queue_ignoring_delays.kind = "queue_bridge"  # type: ignore[attr-defined]
redis_queue_ignoring_delays.capabilities = RedisQueueBridge.capabilities  # type: ignore[attr-defined]
redis_queue_ignoring_delays.services = ("redis",)  # type: ignore[attr-defined]
