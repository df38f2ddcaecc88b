"""A test client for services: start one on the in-memory bridge, invoke it, watch what it emits.

::

    from reference_services.testing import TestClient
    from reference_services.services import user_v1

    async def test_sign_up() -> None:
        async with TestClient(user_v1) as client:
            user = await client.invoke("signUp", {"email": "ada@example.org", "name": "Ada"})
            event = await client.wait_for_event("userSignedUp")
            assert event.payload == user

The client talks to the service through the bridge like any other caller (messages
are encoded, routed and validated), from its own bridge on the same in-memory hub.
Pass ``event_bridge=`` (started or not) to test a service over another adapter; the
client then sends through that bridge.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge
from reference_services.adapters.memory.stores import (
    DefaultConfigStore,
    DefaultSecretStore,
    DefaultStateStore,
)
from reference_services.runtime.definitions import AddressFilter, Subscription
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandPayload,
    CustomMessage,
    SenderAddress,
)
from reference_services.runtime.service import ServiceBuilder, ServiceInstance
from reference_services.runtime.spi.protocols import EventBridge, QueueBridge, Store

__all__ = ["TestClient", "wait_until"]


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    within: float = 5.0,
    what: str = "condition",
    *,
    interval_s: float = 0.005,
) -> None:
    """Poll ``condition`` (plain or async) until it holds; AssertionError naming ``what``
    once ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval_s)


class TestClient:
    """Runs ``service`` for a test and calls it as an outside caller would.

    ``emitted`` holds every event the service sent (success events of its
    commands, custom messages, events its subscriptions emitted), in arrival order.
    Stores and the queue bridge default to the in-memory ones and are reachable as
    ``client.state_store`` etc. so a test can seed or inspect them.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        service: ServiceBuilder,
        *,
        event_bridge: EventBridge | None = None,
        state_store: Store | None = None,
        config_store: Store | None = None,
        secret_store: Store | None = None,
        queue_bridge: QueueBridge | None = None,
        config: dict[str, Any] | None = None,
        caller: str = "testClient",
        ttl_s: float = 5.0,
    ) -> None:
        self.service = service
        self.hub: MemoryHub | None = None
        if event_bridge is None:
            self.hub = MemoryHub()
            event_bridge = DefaultEventBridge(self.hub)
        self.event_bridge = event_bridge
        self.state_store = state_store if state_store is not None else DefaultStateStore()
        self.config_store = config_store if config_store is not None else DefaultConfigStore()
        self.secret_store = secret_store if secret_store is not None else DefaultSecretStore()
        self.queue_bridge = queue_bridge
        if queue_bridge is None and service.queue_workers:
            self.queue_bridge = DefaultQueueBridge()
        self.config = config or {}
        self.ttl_s = ttl_s
        self.sender = SenderAddress(
            service_name=caller,
            service_version="1",
            service_target="",
            instance_id=uuid.uuid4().hex,
        )
        self.emitted: list[AnyMessage] = []
        self.instance: ServiceInstance | None = None
        self._caller_bridge: EventBridge | None = None
        self._started: list[Any] = []
        self._arrived = asyncio.Condition()

    # ------------------------------------------------------------ life cycle
    async def start(self) -> TestClient:
        """Start the bridges, the stores and the service (ready when this returns)."""
        for part in (self.event_bridge, self.queue_bridge):
            if part is not None and not await part.is_ready():
                await part.start()
                self._started.append(part)
        self._caller_bridge = self.event_bridge
        if self.hub is not None:
            self._caller_bridge = DefaultEventBridge(self.hub)
            await self._caller_bridge.start()
            self._started.append(self._caller_bridge)
        await self._caller_bridge.register_subscription(
            Subscription(
                subscriber=Address(
                    service_name=self.sender.service_name,
                    service_version="1",
                    service_target=f"record-{uuid.uuid4().hex[:8]}",
                ),
                sender=AddressFilter(service_name=self.service.name),
                durable=False,
                shared=False,
            ),
            self._record,
        )
        self.instance = self.service.get_instance(
            self.event_bridge,
            state_store=self.state_store,
            config_store=self.config_store,
            secret_store=self.secret_store,
            queue_bridge=self.queue_bridge,
            config=self.config,
        )
        await self.instance.start()
        return self

    async def close(self) -> None:
        """Stop the service, then whatever the client started (in reverse order)."""
        if self.instance is not None:
            await self.instance.destroy()
            self.instance = None
        while self._started:
            await self._started.pop().destroy()

    async def __aenter__(self) -> TestClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --------------------------------------------------------------- calling
    async def invoke(
        self,
        command: str,
        payload: Any = None,
        *,
        parameter: Any = None,
        principal_id: str | None = None,
        tenant_id: str | None = None,
        ttl_s: float | None = None,
    ) -> Any:
        """Invoke the service's ``command``; its result, or the error it answered raised."""
        message = Command(
            sender=self.sender,
            receiver=self.service.address(command),
            payload=CommandPayload(payload=payload, parameter=parameter),
            principal_id=principal_id,
            tenant_id=tenant_id,
        )
        return await self._bridge().invoke(message, ttl_s=ttl_s or self.ttl_s)

    async def emit(
        self,
        event_name: str,
        payload: Any = None,
        *,
        principal_id: str | None = None,
        tenant_id: str | None = None,
    ) -> CustomMessage:
        """Send a custom event (as the client) that the service's subscriptions may receive."""
        message = CustomMessage(
            sender=self.sender,
            event_name=event_name,
            payload=payload,
            principal_id=principal_id,
            tenant_id=tenant_id,
        )
        await self._bridge().emit_message(message)
        return message

    # ------------------------------------------------------------- observing
    def events(self, event_name: str | None = None) -> list[AnyMessage]:
        """What the service emitted so far (only ``event_name`` when given)."""
        return [m for m in self.emitted if event_name is None or m.event_name == event_name]

    async def wait_for_event(
        self, event_name: str, count: int = 1, within_s: float = 5.0
    ) -> AnyMessage:
        """The ``count``-th ``event_name`` the service emitted (AssertionError after a wait)."""
        try:
            async with self._arrived:
                await asyncio.wait_for(
                    self._arrived.wait_for(lambda: len(self.events(event_name)) >= count),
                    within_s,
                )
        except TimeoutError:
            seen = sorted({str(m.event_name) for m in self.emitted})
            raise AssertionError(
                f"{self.service.name} emitted {len(self.events(event_name))} {event_name!r} "
                f"within {within_s}s, wanted {count}; it emitted: {', '.join(seen) or 'nothing'}"
            ) from None
        return self.events(event_name)[count - 1]

    async def _record(self, message: AnyMessage) -> None:
        if message.event_name is None:
            return  # info messages and plain responses are not events
        async with self._arrived:
            self.emitted.append(message)
            self._arrived.notify_all()

    def _bridge(self) -> EventBridge:
        if self._caller_bridge is None:
            raise RuntimeError("TestClient is not started: use `async with TestClient(...)`")
        return self._caller_bridge
