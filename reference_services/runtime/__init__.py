"""The runtime: messages, errors, services, protocols and the machinery bridges share."""

from .bridge_base import DeliveryOutcome, Disposition, EventBridgeBase
from .capabilities import (
    YES,
    EventBridgeCapabilities,
    QueueBridgeCapabilities,
    StoreCapabilities,
    Support,
    unsupported,
)
from .codec import MessageDecodeError, MessageEncodeError, decode, encode
from .context import Context, Stores
from .definitions import AddressFilter, CommandConfig, FailureHandling, Subscription
from .errors import HandledError, PuristaError, StatusCode, UnhandledError
from .health import HealthServer
from .idempotency import Idempotency
from .ids import new_id
from .messages import (
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
from .pending import PendingInvocations
from .protocols import EventBridge, QueueBridge, StateStore, Store
from .queue import Job, LeaseExpiredError, QueueMetrics
from .retry import RetryPolicy
from .service import ServiceBuilder, ServiceInstance
from .shutdown import destroy_in_order, graceful_shutdown
from .store_base import StoreBase, StoreOperationDisabled

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
    "QueueMetrics",
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
