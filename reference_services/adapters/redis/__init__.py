"""Redis adapters: the queue bridge (Lua over sorted sets and hashes) and the stores."""

from __future__ import annotations

from reference_services.runtime.spi.descriptor import AdapterDescriptor, store_descriptors

_PKG = "reference_services.adapters.redis"
_FAST = {"socket_timeout_s": 1.0, "connect_timeout_s": 1.0, "health_timeout_s": 0.5}

DESCRIPTORS: tuple[AdapterDescriptor, ...] = (
    AdapterDescriptor(
        "redis",
        "queue_bridge",
        f"{_PKG}.queue_bridge:RedisQueueBridge",
        service="redis",
        url_var="REDIS_URL",
        deployable=True,
        fault_options=_FAST,
    ),
    *store_descriptors(
        "redis",
        f"{_PKG}.stores:Redis{{kind}}Store",
        service="redis",
        url_var="REDIS_URL",
        deployable=True,
    ),
)
