"""The runtime: messages, errors, services, protocols and the machinery bridges share."""

from reference_services.runtime.codec import MessageDecodeError, MessageEncodeError, decode, encode
from reference_services.runtime.context import Context, Stores
from reference_services.runtime.definitions import (
    AddressFilter,
    CommandConfig,
    FailureHandling,
    Subscription,
)
from reference_services.runtime.errors import HandledError, PuristaError, StatusCode, UnhandledError
from reference_services.runtime.health import HealthServer
from reference_services.runtime.idempotency import Idempotency
from reference_services.runtime.ids import new_id
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandErrorResponse,
    CommandPayload,
    CommandSuccessResponse,
    CustomMessage,
    InfoMessage,
    MessageType,
    SenderAddress,
)
from reference_services.runtime.queue import (
    Job,
    LeaseExpiredError,
    QueueInputError,
    QueueMetrics,
    QueueNotRunningError,
)
from reference_services.runtime.retry import RetryPolicy
from reference_services.runtime.service import ServiceBuilder, ServiceInstance
from reference_services.runtime.shutdown import destroy_in_order, graceful_shutdown
from reference_services.runtime.spi.bridge_base import DeliveryOutcome, Disposition, EventBridgeBase
from reference_services.runtime.spi.capabilities import (
    YES,
    EventBridgeCapabilities,
    QueueBridgeCapabilities,
    StoreCapabilities,
    Support,
    unsupported,
)
from reference_services.runtime.spi.pending import PendingInvocations
from reference_services.runtime.spi.protocols import EventBridge, QueueBridge, StateStore, Store
from reference_services.runtime.spi.store_base import StoreBase, StoreOperationDisabled

__all__ = [
    "YES",
    "Address",
    "AddressFilter",
    "Command",
    "CommandConfig",
    "CommandErrorResponse",
    "CommandPayload",
    "CommandSuccessResponse",
    "Context",
    "CustomMessage",
    "DeliveryOutcome",
    "Disposition",
    "EventBridge",
    "EventBridgeBase",
    "EventBridgeCapabilities",
    "FailureHandling",
    "HandledError",
    "HealthServer",
    "Idempotency",
    "InfoMessage",
    "Job",
    "LeaseExpiredError",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessageType",
    "PendingInvocations",
    "PuristaError",
    "QueueBridge",
    "QueueBridgeCapabilities",
    "QueueInputError",
    "QueueMetrics",
    "QueueNotRunningError",
    "RetryPolicy",
    "SenderAddress",
    "ServiceBuilder",
    "ServiceInstance",
    "StateStore",
    "StatusCode",
    "Store",
    "StoreBase",
    "StoreCapabilities",
    "StoreOperationDisabled",
    "Stores",
    "Subscription",
    "Support",
    "UnhandledError",
    "decode",
    "destroy_in_order",
    "encode",
    "graceful_shutdown",
    "new_id",
    "unsupported",
]
