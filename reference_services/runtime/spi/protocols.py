"""The interfaces every adapter implements, each with declared ``capabilities``.

Nothing here imports a broker client. Adapters subclass the bases in
:mod:`bridge_base` / :mod:`store_base` or implement these protocols directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from reference_services.runtime.definitions import (
    CommandConfig,
    CommandHandler,
    Subscription,
    SubscriptionHandler,
)
from reference_services.runtime.messages import Address, AnyMessage, Command
from reference_services.runtime.queue import (
    DeadLetterJob,
    Job,
    LeaseInfo,
    NackOutcome,
    QueueMetrics,
)
from reference_services.runtime.spi.capabilities import (
    EventBridgeCapabilities,
    QueueBridgeCapabilities,
    StoreCapabilities,
)

AdapterKind = Literal["event_bridge", "queue_bridge", "state_store", "config_store", "secret_store"]


@runtime_checkable
class Lifecycle(Protocol):
    """Anything that starts, stops and reports its health."""

    async def start(self) -> None: ...
    async def destroy(self) -> None: ...
    async def is_ready(self) -> bool: ...
    async def is_healthy(self) -> bool: ...


@runtime_checkable
class EventBridge(Lifecycle, Protocol):
    """Commands (request/response) and subscriptions (events) over a transport."""

    kind: Literal["event_bridge"]
    name: str
    instance_id: str
    capabilities: EventBridgeCapabilities

    @property
    def pending_invocations(self) -> int:
        """Invocations waiting for a response; 0 once every invocation has ended."""
        ...

    async def emit_message(self, message: AnyMessage) -> None: ...
    async def invoke(self, command: Command, ttl_s: float | None = None) -> Any: ...
    async def register_command(
        self, address: Address, handler: CommandHandler, config: CommandConfig | None = None
    ) -> None: ...
    async def unregister_command(self, address: Address) -> None: ...
    async def register_subscription(
        self, subscription: Subscription, handler: SubscriptionHandler
    ) -> None: ...
    async def unregister_subscription(self, address: Address) -> None: ...


@runtime_checkable
class QueueBridge(Lifecycle, Protocol):
    """Pull-based work: enqueue, lease, ack/nack, dead letter."""

    kind: Literal["queue_bridge"]
    name: str
    capabilities: QueueBridgeCapabilities

    async def enqueue(
        self,
        queue: str,
        payload: Any,
        parameter: Any = None,
        *,
        delay_ms: int = 0,
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
        lease_ttl_ms: int | None = None,
    ) -> str: ...
    async def lease_next(
        self, queue: str, batch: int = 1, wait_ms: int = 0, *, worker_id: str | None = None
    ) -> list[Job]: ...
    async def extend_lease(self, job: Job, lease_ttl_ms: int | None = None) -> Job: ...
    async def ack(self, job: Job) -> None: ...
    async def nack(
        self, job: Job, reason: str | None = None, delay_ms: int | None = None
    ) -> NackOutcome: ...
    async def move_to_dead_letter(self, job: Job, reason: str) -> None: ...
    async def peek_dead_letter(self, queue: str, limit: int = 100) -> list[DeadLetterJob]: ...
    async def redrive_dead_letter(self, queue: str, job_ids: list[str] | None = None) -> int: ...
    async def purge_dead_letter(self, queue: str) -> int: ...
    async def inspect_leases(self, queue: str) -> list[LeaseInfo]: ...
    async def metrics(self, queue: str) -> QueueMetrics: ...


@runtime_checkable
class Store(Lifecycle, Protocol):
    """Key/value store of JSON values (state, config or secrets)."""

    kind: Literal["state_store", "config_store", "secret_store"]
    name: str
    capabilities: StoreCapabilities

    async def get(self, *names: str) -> dict[str, Any]: ...
    async def set(self, name: str, value: Any) -> None: ...
    async def remove(self, name: str) -> None: ...


@runtime_checkable
class StateStore(Store, Protocol):
    """State store; adds the atomic create and the versioned writes idempotency needs."""

    async def set_if_absent(self, name: str, value: Any, ttl_s: float | None = None) -> bool: ...

    async def get_versioned(self, name: str) -> Any: ...

    async def create_versioned(
        self, name: str, value: Any, ttl_s: float | None = None
    ) -> str | None: ...

    async def replace_if(
        self,
        name: str,
        version: str,
        value: Any,
        ttl_s: float | None = None,
        *,
        also: Mapping[str, Any] | None = None,
    ) -> str | None: ...

    async def remove_if(self, name: str, version: str) -> bool: ...
