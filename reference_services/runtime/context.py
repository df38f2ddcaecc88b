"""What a handler gets: the message, stores, and ways to emit and invoke."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from reference_services.runtime.idempotency import Idempotency
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandPayload,
    CustomMessage,
    SenderAddress,
)
from reference_services.runtime.queue import Job
from reference_services.runtime.spi.protocols import EventBridge, QueueBridge, Store


@dataclass
class Stores:
    """The stores a service instance was given (any may be None)."""

    state: Store | None = None
    config: Store | None = None
    secret: Store | None = None


@dataclass
class Context:
    """Per-message context: carries principal, tenant and trace onward."""

    message: AnyMessage | None
    service: Address
    bridge: EventBridge
    stores: Stores
    logger: logging.Logger
    config: dict[str, Any] = field(default_factory=dict)
    queue: QueueBridge | None = None
    idempotency: Idempotency | None = None
    job: Job | None = None

    @property
    def sender(self) -> SenderAddress:
        """This service, as the sender of what the handler emits or invokes."""
        return SenderAddress(
            service_name=self.service.service_name,
            service_version=self.service.service_version,
            service_target=self.service.service_target,
            instance_id=self.bridge.instance_id,
        )

    def _carry(self) -> dict[str, Any]:
        m = self.message
        if m is None:
            return {}
        return {
            "trace_id": m.trace_id,
            "principal_id": m.principal_id,
            "tenant_id": m.tenant_id,
            "otp": m.otp,
        }

    async def emit(self, event_name: str, payload: Any = None) -> CustomMessage:
        """Emit a custom message from this service, keeping principal, tenant and trace."""
        message = CustomMessage(
            sender=self.sender,
            event_name=event_name,
            payload=payload,
            correlation_id=self.message.correlation_id if self.message else None,
            **self._carry(),
        )
        await self.bridge.emit_message(message)
        return message

    async def invoke(
        self,
        receiver: Address,
        payload: Any = None,
        parameter: Any = None,
        *,
        ttl_s: float | None = None,
    ) -> Any:
        """Invoke another service's command and return its result."""
        command = Command(
            sender=self.sender,
            receiver=receiver,
            payload=CommandPayload(payload=payload, parameter=parameter),
            **self._carry(),
        )
        call = self.bridge.invoke(command, ttl_s)
        del command, payload, parameter  # the bridge drops them once sent: so does this frame
        return await call

    @property
    def command(self) -> Command:
        """The command being handled (command handlers only)."""
        assert isinstance(self.message, Command)
        return self.message
