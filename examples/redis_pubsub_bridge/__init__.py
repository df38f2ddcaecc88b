"""An out-of-tree event bridge checked by the conformance suite.

Everything the suite and the deployment bootstrap need is in ``DESCRIPTOR``; run it
from the repository root through any suite::

    conformance run --adapter examples.redis_pubsub_bridge:DESCRIPTOR --suite contract
    conformance run --adapter examples.redis_pubsub_bridge:DESCRIPTOR --suite faults
    conformance run --adapter examples.redis_pubsub_bridge:DESCRIPTOR --suite deployment

or install it under the ``purista_conformance.adapters`` entry-point group.
"""

from __future__ import annotations

from reference_services.runtime.spi import AdapterDescriptor

from .bridge import RedisPubSubBridge

__all__ = ["DESCRIPTOR", "RedisPubSubBridge"]

DESCRIPTOR = AdapterDescriptor(
    name="redis-pubsub",
    kind="event_bridge",
    reference="examples.redis_pubsub_bridge.bridge:RedisPubSubBridge",
    service="redis",  # the harness starts (or finds) a Redis and passes url=...
    url_var="REDIS_URL",  # what a deployed process reads its URL from
    deployable=True,  # Redis connects separate processes: run the process patterns too
)
