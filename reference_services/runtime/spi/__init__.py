"""The adapter author's side: base classes, capabilities, protocols and descriptors.

Service authors use :mod:`reference_services.runtime`; adapter authors subclass
:class:`EventBridgeBase`, :class:`QueueBridgeBase` or :class:`StoreBase`, declare
capabilities, and describe each adapter with an :class:`AdapterDescriptor`.
"""

from reference_services.runtime.spi.bridge_base import (
    BridgeCore,
    DeliveryOutcome,
    Disposition,
    EventBridgeBase,
    RegisteredCommand,
    RegisteredSubscription,
)
from reference_services.runtime.spi.capabilities import (
    YES,
    EventBridgeCapabilities,
    QueueBridgeCapabilities,
    StoreCapabilities,
    Support,
    unsupported,
)
from reference_services.runtime.spi.descriptor import (
    KINDS,
    AdapterDescriptor,
    AdapterKind,
    BuildContext,
)
from reference_services.runtime.spi.protocols import EventBridge, QueueBridge, StateStore, Store
from reference_services.runtime.spi.queue_base import EnqueueRequest, QueueBridgeBase
from reference_services.runtime.spi.store_base import StoreBase, StoreOperationDisabled

__all__ = [
    "KINDS",
    "YES",
    "AdapterDescriptor",
    "AdapterKind",
    "BridgeCore",
    "BuildContext",
    "DeliveryOutcome",
    "Disposition",
    "EnqueueRequest",
    "EventBridge",
    "EventBridgeBase",
    "EventBridgeCapabilities",
    "QueueBridge",
    "QueueBridgeBase",
    "QueueBridgeCapabilities",
    "RegisteredCommand",
    "RegisteredSubscription",
    "StateStore",
    "Store",
    "StoreBase",
    "StoreCapabilities",
    "StoreOperationDisabled",
    "Support",
    "unsupported",
]
