"""In-memory adapters: a model of a broker inside one process (the suite's reference).

Instances built with one conformance context share a hub, a queue store or a
key-value dict, so they behave as the instances of one deployment.
"""

from __future__ import annotations

from typing import Any

from reference_services.runtime.spi.descriptor import (
    AdapterDescriptor,
    BuildContext,
    store_descriptors,
)

_PKG = "reference_services.adapters.memory"


def _event_bridge(ctx: BuildContext) -> Any:
    from .event_bridge import DefaultEventBridge, MemoryHub

    return DefaultEventBridge(hub=ctx.shared.setdefault("memory_hub", MemoryHub()), **ctx.options)


def _queue_bridge(ctx: BuildContext) -> Any:
    from .queue_bridge import DefaultQueueBridge, MemoryQueueStore

    store = ctx.shared.setdefault("memory_queue_store", MemoryQueueStore())
    return DefaultQueueBridge(store=store, **ctx.options)


def _store(cls_name: str) -> Any:
    def create(ctx: BuildContext) -> Any:
        from . import stores

        kv = ctx.shared.setdefault("memory_kv", stores.MemoryKV())
        return getattr(stores, cls_name)(kv=kv, **ctx.options)

    return create


async def _inject_raw(bridge: Any, raw: bytes) -> None:
    bridge.receive_raw(raw)


DESCRIPTORS: tuple[AdapterDescriptor, ...] = (
    AdapterDescriptor(
        "memory",
        "event_bridge",
        f"{_PKG}.event_bridge:DefaultEventBridge",
        create=_event_bridge,
        inject_raw=_inject_raw,
    ),
    AdapterDescriptor(
        "memory", "queue_bridge", f"{_PKG}.queue_bridge:DefaultQueueBridge", create=_queue_bridge
    ),
    *store_descriptors("memory", f"{_PKG}.stores:Default{{kind}}Store", create=_store),
)
