"""A PURISTA event bridge over Redis Pub/Sub: small, and honest about what it cannot do.

Channels (all under ``prefix``):

- ``<prefix>:events``: every event-like message; each instance filters with
  the subscriptions it holds (``matching_subscriptions``).
- ``<prefix>:cmd:<service>:<version>:<target>``: commands; every instance that
  serves the command listens here, so Pub/Sub cannot load-balance them.
- ``<prefix>:reply:<instance>``: responses to one instance's invocations.

Pub/Sub keeps nothing: a message published while nobody listens is gone, there
are no acknowledgements and no consumer groups. The capabilities say so, and
the conformance suite checks those declarations both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis

from reference_services.runtime.codec import MessageDecodeError, decode
from reference_services.runtime.errors import StatusCode
from reference_services.runtime.messages import AnyMessage, Command, CommandResponse, error_response
from reference_services.runtime.spi.bridge_base import (
    DeliveryOutcome,
    Disposition,
    EventBridgeBase,
    RegisteredCommand,
    RegisteredSubscription,
)
from reference_services.runtime.spi.capabilities import EventBridgeCapabilities, unsupported

NO_STORAGE = "Redis Pub/Sub stores nothing: absent subscribers miss messages"
#: how long registering a command waits for Redis to confirm its subscription
SUBSCRIBE_TIMEOUT_S = 5.0


class RedisPubSubBridge(EventBridgeBase):
    """Event bridge over Redis Pub/Sub (at-most-once, broadcast only)."""

    name = "redis-pubsub"
    capabilities = EventBridgeCapabilities(
        delivery="at_most_once",
        durable_subscriptions=unsupported(NO_STORAGE),
        survives_broker_restart=unsupported(NO_STORAGE),
        durable_commands=unsupported(NO_STORAGE),
        manual_ack=unsupported("Pub/Sub has no acknowledgements"),
        shared_subscriptions=unsupported("Pub/Sub broadcasts; there are no consumer groups"),
        shared_commands=unsupported("every instance serving a command receives it"),
        native_dead_lettering=unsupported("dead letters are only emitted as events"),
        reconnect=unsupported("this example does not re-subscribe after a lost connection"),
        publisher_confirms=unsupported("PUBLISH succeeds even when nobody receives"),
    )

    def __init__(self, url: str, *, prefix: str = "purista", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.prefix = prefix
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        #: command channels subscribed to, waiting for Redis to confirm
        self._confirming: dict[str, asyncio.Event] = {}

    # ---- channels
    @property
    def _events(self) -> str:
        return f"{self.prefix}:events"

    def _command_channel(self, key: tuple[str, str, str]) -> str:
        return f"{self.prefix}:cmd:" + ":".join(key)

    def _reply_channel(self, instance_id: str) -> str:
        return f"{self.prefix}:reply:{instance_id}"

    # ---- transport hooks
    async def _connect(self) -> None:
        self._redis = aioredis.from_url(self.url)
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self._events, self._reply_channel(self.instance_id))
        self._reader = asyncio.create_task(self._read(), name=f"redis-pubsub-{self.instance_id}")

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def _is_connected(self) -> bool:
        if self._redis is None or self._reader is None or self._reader.done():
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), 1.0))
        except Exception:
            return False

    async def _publish(self, message: AnyMessage) -> None:
        assert self._redis is not None
        await self._redis.publish(self._events, self.core.encode(message))

    async def publish_raw(self, raw: bytes) -> None:
        """Put raw bytes on the events channel (used by the suite's wire checks)."""
        assert self._redis is not None
        await self._redis.publish(self._events, raw)

    async def _send_command(self, command: Command) -> None:
        assert self._redis is not None
        receivers = await self._redis.publish(
            self._command_channel(command.receiver.key), self.core.encode(command)
        )
        if receivers == 0:  # nobody serves it: fail fast instead of waiting for the ttl
            self.core.resolve_response(
                error_response(
                    command, StatusCode.NOT_FOUND, f"no instance serves {command.receiver}"
                )
            )

    async def _bind_command(self, reg: RegisteredCommand) -> None:
        # served once Redis confirms the subscription: subscribe() returns once it is sent,
        # and a PUBLISH from another connection right after can reach Redis first and find
        # nobody (event_bridge.commands.unregistered_not_served caught it: a 404 for a
        # command registered again a moment before)
        channel = self._command_channel(reg.address.key)
        confirmed = self._confirming[channel] = asyncio.Event()
        await self._pubsub.subscribe(channel)
        try:
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT_S)
        finally:
            self._confirming.pop(channel, None)

    async def _unbind_command(self, reg: RegisteredCommand) -> None:
        await self._pubsub.unsubscribe(self._command_channel(reg.address.key))

    async def _bind_subscription(self, reg: RegisteredSubscription) -> None:
        return None  # the events channel carries everything; matching happens here

    async def _unbind_subscription(self, reg: RegisteredSubscription) -> None:
        return None

    # ---- receiving
    async def _read(self) -> None:
        while True:
            item = await self._pubsub.get_message(timeout=1.0)
            if item is None:
                continue
            channel = item["channel"].decode()
            if item["type"] == "subscribe":
                confirmed = self._confirming.get(channel)
                if confirmed is not None:
                    confirmed.set()
                continue
            if item["type"] != "message":
                continue  # unsubscribe confirmations
            message = self.core.decode_or_reject(item["data"], channel)
            if message is None:
                if channel == self._events:
                    self._quarantine(item["data"])
                continue
            if channel == self._events:
                for reg in self.core.matching_subscriptions(message):
                    self.core.spawn(self._deliver(reg, message, 1))
            elif channel.startswith(f"{self.prefix}:cmd:") and isinstance(message, Command):
                route = tuple(channel[len(f"{self.prefix}:cmd:") :].split(":", 2))
                self.core.spawn_tracked(self._serve(message, route), name="redis-pubsub-command")
            elif channel == self._reply_channel(self.instance_id):
                self.core.resolve_response(message)  # type: ignore[arg-type]

    def _quarantine(self, raw: bytes) -> None:
        """Undecodable bytes on the events channel could have been for any subscription held
        here (matching needs the decoded message): each of them quarantines them, dead letter
        and infoSubscriptionError, as the SPI asks; they are never dropped silently."""
        try:
            decode(raw, max_bytes=self.max_message_bytes)
            reason = "malformed message"
        except MessageDecodeError as exc:
            reason = f"malformed message: {exc}"
        for reg in self.core.registered_subscriptions:
            self.core.spawn_tracked(
                self.core.quarantine_raw(reg, raw, reason), name="redis-pubsub-quarantine"
            )

    async def _deliver(
        self, reg: RegisteredSubscription, message: AnyMessage, attempt: int
    ) -> None:
        if not self.core.accepting:
            return
        outcome: DeliveryOutcome = await self.core.handle_subscription(reg, message, attempt)
        if outcome.disposition is Disposition.RETRY:  # in-process retry: lost if we crash
            await asyncio.sleep(outcome.delay_s)
            await self._deliver(reg, message, attempt + 1)

    async def _serve(self, command: Command, route: tuple[str, ...]) -> None:
        async def send(response: CommandResponse) -> None:
            assert self._redis is not None
            await self._redis.publish(
                self._reply_channel(command.sender.instance_id), self.core.encode(response)
            )

        await self.core.serve_command(command, send, route=route)  # type: ignore[arg-type]
