"""Transport-level definitions of commands and subscriptions.

These are what a service hands to an event bridge; the service-level builder
in :mod:`service` produces them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandResponse,
    MessageType,
)
from reference_services.runtime.retry import RetryPolicy


@dataclass(frozen=True)
class FailureHandling(RetryPolicy):
    """A retry policy plus where exhausted messages go.

    ``dead_letter_target`` is an event name: a dead letter is emitted as a
    custom message with that ``eventName`` whose payload is
    ``{"reason", "attempts", "message"}`` (the original wire message). Bridges
    with native dead lettering also keep it broker-side.
    """

    dead_letter_target: str | None = None


@dataclass(frozen=True)
class AddressFilter:
    """Matches an address; ``None`` parts match anything."""

    service_name: str | None = None
    service_version: str | None = None
    service_target: str | None = None
    instance_id: str | None = None


@dataclass(frozen=True)
class CommandConfig:
    """Delivery hints for a registered command (PURISTA defaults)."""

    durable: bool = False
    shared: bool = True
    autoacknowledge: bool = True
    success_event_name: str | None = None


@dataclass(frozen=True)
class Subscription:
    """A subscription as a bridge sees it: who subscribes, what matches, how to deliver."""

    subscriber: Address
    message_type: MessageType | None = None
    event_name: str | None = None
    sender: AddressFilter | None = None
    receiver: AddressFilter | None = None
    principal_id: str | None = None
    tenant_id: str | None = None
    durable: bool = True
    shared: bool = True
    autoacknowledge: bool = False
    emit_event_name: str | None = None
    failure: FailureHandling = field(default_factory=FailureHandling)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        """The group identity: one shared delivery per key."""
        return self.subscriber.key


CommandHandler = Callable[[Command], Awaitable[CommandResponse]]
"""Runs a command and returns its response message (the service builds it)."""

SubscriptionHandler = Callable[[AnyMessage], Awaitable[Any]]
"""Handles a message; a non-None return is emitted as ``emit_event_name``."""
