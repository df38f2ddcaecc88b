"""DefaultEventBridge: the in-memory event bridge, and the reference model.

Several bridges may share one :class:`MemoryHub` to act as several instances
of a deployment (the hub plays the broker). Every message crosses the hub
encoded, exactly as it would cross a wire, so handlers never share objects.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
from collections import defaultdict, deque
from typing import Any

from reference_services.runtime.codec import MessageDecodeError, decode, encode
from reference_services.runtime.errors import StatusCode
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandResponse,
    error_response,
)
from reference_services.runtime.spi.bridge_base import (
    DeliveryOutcome,
    Disposition,
    EventBridgeBase,
    RegisteredCommand,
    RegisteredSubscription,
)
from reference_services.runtime.spi.capabilities import YES, EventBridgeCapabilities, unsupported

log = logging.getLogger("reference_services.bridge.memory")

_GroupKey = tuple[str, str, str]


def _malformed_reason(raw: bytes) -> str:
    try:
        decode(raw)
    except MessageDecodeError as exc:
        return f"malformed message: {exc}"
    return "malformed message"


class MemoryHub:
    """The in-process 'broker' shared by bridges that model instances."""

    def __init__(self) -> None:
        self.bridges: dict[str, DefaultEventBridge] = {}
        self._round_robin: dict[Any, itertools.count[int]] = defaultdict(itertools.count)
        # durable shared groups seen so far, and messages waiting for an instance
        self._durable_groups: set[_GroupKey] = set()
        self._backlog: dict[_GroupKey, deque[tuple[bytes, int]]] = defaultdict(deque)
        self._durable_templates: dict[_GroupKey, RegisteredSubscription] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.rejected_messages = 0

    # ---- membership
    def attach(self, bridge: DefaultEventBridge) -> None:
        self.bridges[bridge.instance_id] = bridge

    def detach(self, bridge: DefaultEventBridge) -> None:
        self.bridges.pop(bridge.instance_id, None)

    def _live(self) -> list[DefaultEventBridge]:
        return [b for b in self.bridges.values() if b.core.accepting]

    def _pick(self, key: Any, candidates: list[Any]) -> Any:
        return candidates[next(self._round_robin[key]) % len(candidates)]

    def _spawn(self, coro: Any) -> None:
        # an empty context, as after a real wire: nothing of the sender's task (its current
        # span above all) reaches the receiver except what the message itself carries
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- events
    def publish_raw(self, raw: bytes, source: str = "hub") -> bool:
        """Route wire bytes to matching subscriptions; malformed input is logged and dropped."""
        try:
            message = decode(raw)
        except MessageDecodeError as exc:
            self.rejected_messages += 1
            log.warning("rejected malformed message from %s: %s", source, exc)
            return False
        targets: dict[_GroupKey, list[tuple[DefaultEventBridge, RegisteredSubscription]]] = (
            defaultdict(list)
        )
        every: list[tuple[DefaultEventBridge, RegisteredSubscription]] = []
        for bridge in self._live():
            for reg in bridge.core.matching_subscriptions(message):
                if reg.subscription.shared:
                    targets[reg.subscription.key].append((bridge, reg))
                else:
                    every.append((bridge, reg))
        for group in self._durable_groups:
            if group not in targets and self._matches_durable_group(group, message):
                self._backlog[group].append((raw, 1))
        for key, members in targets.items():
            bridge, reg = self._pick(("sub", key), members)
            self._spawn(bridge.deliver(reg, raw, 1))
        for bridge, reg in every:
            self._spawn(bridge.deliver(reg, raw, 1))
        return True

    def _matches_durable_group(self, group: _GroupKey, message: AnyMessage) -> bool:
        template = self._durable_templates.get(group)
        return template is not None and template.matches(message)

    def remember_durable(self, reg: RegisteredSubscription) -> None:
        """A durable shared group keeps receiving into a backlog while no instance runs."""
        sub = reg.subscription
        if sub.durable and sub.shared:
            self._durable_groups.add(sub.key)
            self._durable_templates[sub.key] = reg
            backlog = self._backlog.pop(sub.key, None)
            while backlog:
                raw, attempt = backlog.popleft()
                self.redeliver(sub.key, raw, attempt)

    def redeliver(self, key: _GroupKey, raw: bytes, attempt: int) -> None:
        """Deliver to one live member of a shared group, or back it up if durable."""
        members = [(b, reg) for b in self._live() if (reg := b.core.subscription(key)) is not None]
        if members:
            bridge, reg = self._pick(("sub", key), members)
            self._spawn(bridge.deliver(reg, raw, attempt))
        elif key in self._durable_groups:
            self._backlog[key].append((raw, attempt))
        else:
            log.warning("no instance left for shared subscription %s; message dropped", key)

    def forget_durable(self, key: _GroupKey) -> None:
        """Drop a durable group and its backlog (an explicit unsubscribe)."""
        self._durable_groups.discard(key)
        self._durable_templates.pop(key, None)
        self._backlog.pop(key, None)

    # ---- commands
    def send_command(self, raw: bytes, route: Address) -> None:
        """Route an encoded command to one serving instance, or answer 404 at once.

        ``route`` is the address the publisher sent it to (a broker's subject or queue): like
        a broker, the hub routes by it, not by the body, and the instance judges a body that
        disagrees."""
        command = decode(raw)
        assert isinstance(command, Command)
        key = route.key
        candidates = [b for b in self._live() if b.core.command(key) is not None]
        pinned = route.instance_id
        if pinned:
            candidates = [b for b in candidates if b.instance_id == pinned]
        if not candidates:
            reply = error_response(
                command,
                StatusCode.NOT_FOUND,
                f"no instance serves command {command.receiver}",
                responder_instance_id="",
            )
            self.route_response(encode(reply))
            return
        bridge = self._pick(("cmd", key), candidates)
        limit = bridge.max_message_bytes
        if limit is not None and len(raw) > limit:  # that instance rejects it, as it decodes
            self._spawn(bridge.serve_raw_command(raw, key))
        else:  # decoded here from the bytes: the instance gets its own object, decoded once
            # (served by the core's coroutine itself: one frame less per waiting handler)
            self._spawn(bridge.core.serve_command(command, bridge._send_response, route=key))

    def route_response(self, raw: bytes) -> None:
        """Deliver an encoded response to the instance that invoked."""
        response = decode(raw)
        target = self.bridges.get(response.receiver.instance_id)  # type: ignore[union-attr]
        if target is None:
            log.debug("response %s for a departed instance dropped", response.id)
            return
        target.core.resolve_response(response)  # type: ignore[arg-type]


class DefaultEventBridge(EventBridgeBase):
    """The in-memory event bridge (monolith, serverless, tests).

    Shared subscriptions and commands reach one instance per group among the
    bridges of a hub; every-instance subscriptions reach all; durable shared
    subscriptions buffer while no instance runs; failed deliveries are retried
    per the subscription's policy, then dead-lettered.
    """
    #: a send hands the bytes to the hub, synchronously
    sends_run_in_caller = True

    name = "memory"
    capabilities = EventBridgeCapabilities(
        delivery="at_least_once",
        survives_broker_restart=unsupported("the hub lives in the process: a restart loses it"),
        durable_commands=unsupported("commands are not persisted in memory"),
        native_dead_lettering=unsupported("dead letters are emitted as events; nothing keeps them"),
        reconnect=unsupported("in-process: there is no connection to lose"),
        per_sender_order=YES,
        duplicate_ids_dropped=YES,
        unknown_command_status=404,
    )

    def __init__(self, hub: MemoryHub | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hub = hub or MemoryHub()
        # deliveries whose handler has not finished: handed back if the instance goes away
        self._unsettled: dict[int, tuple[RegisteredSubscription, bytes, int]] = {}
        self._handed_back: set[int] = set()
        self._tokens = itertools.count()

    # ---- transport hooks
    async def _connect(self) -> None:
        self.hub.attach(self)

    async def _close(self) -> None:
        self.hub.detach(self)
        # as a broker does with the unacked messages of a consumer that is gone
        for token, (reg, raw, attempt) in list(self._unsettled.items()):
            self._handed_back.add(token)
            self._hand_back(reg, raw, attempt)
        self._unsettled.clear()

    async def _is_connected(self) -> bool:
        return self.instance_id in self.hub.bridges

    async def _publish(self, message: AnyMessage) -> None:
        self.hub.publish_raw(self.core.encode(message), source=self.instance_id)

    async def _send_command(self, command: Command) -> None:
        self.hub.send_command(self.core.encode(command), command.receiver)

    async def _bind_command(self, reg: RegisteredCommand) -> None:
        return None

    async def _unbind_command(self, reg: RegisteredCommand) -> None:
        return None

    async def _bind_subscription(self, reg: RegisteredSubscription) -> None:
        self.hub.remember_durable(reg)

    async def _unbind_subscription(self, reg: RegisteredSubscription) -> None:
        if not any(
            b.core.subscription(reg.subscription.key) is not None
            for b in self.hub._live()
            if b is not self
        ):
            self.hub.forget_durable(reg.subscription.key)

    async def _stop_intake(self) -> None:
        # Leave the hub's routing (accepting is already False) but stay attached
        # so responses to our own pending invocations still arrive while draining.
        return None

    # ---- delivery, called by the hub
    def receive_raw(self, raw: bytes) -> bool:
        """Hand wire bytes to this bridge as if they came off the broker: the hub routes
        what decodes; what does not is quarantined by each subscription of this bridge (as
        a broker queue in front of each would deliver it)."""
        if self.hub.publish_raw(raw, source=f"raw input to {self.instance_id}"):
            return True
        for reg in self.core.registered_subscriptions:
            self.core.spawn_tracked(
                self.core.quarantine_raw(reg, raw, _malformed_reason(raw)), "memory-quarantine"
            )
        return False

    async def deliver(self, reg: RegisteredSubscription, raw: bytes, attempt: int) -> None:
        message = await self.core.decode_for_subscription(reg, raw, "hub")
        if message is None:
            return
        if not self.core.accepting or self.core.subscription(reg.subscription.key) is None:
            self._hand_back(reg, raw, attempt)
            return
        token = next(self._tokens)
        self._unsettled[token] = (reg, raw, attempt)
        try:
            outcome: DeliveryOutcome = await self.core.handle_subscription(reg, message, attempt)
        finally:
            self._unsettled.pop(token, None)
        if token in self._handed_back:  # settled by the hand-back at destroy
            self._handed_back.discard(token)
            return
        if outcome.disposition is Disposition.RETRY:
            loop = asyncio.get_running_loop()
            loop.call_later(outcome.delay_s, self._retry, reg, raw, attempt + 1)

    def _retry(self, reg: RegisteredSubscription, raw: bytes, attempt: int) -> None:
        if reg.subscription.shared:
            self.hub.redeliver(reg.subscription.key, raw, attempt)
        elif self.core.accepting and self.core.subscription(reg.subscription.key) is not None:
            self.hub._spawn(self.deliver(reg, raw, attempt))

    def _hand_back(self, reg: RegisteredSubscription, raw: bytes, attempt: int) -> None:
        if reg.subscription.shared:
            self.hub.redeliver(reg.subscription.key, raw, attempt)

    async def publish_raw_command(self, raw: bytes, route: Address) -> None:
        """Tests only: hand ``raw`` to an instance serving the command at ``route``, as a
        publisher allowed on that route could, whatever the body says."""
        candidates = [b for b in self.hub._live() if b.core.command(route.key) is not None]
        if candidates:
            self.hub._spawn(candidates[0].serve_raw_command(raw, route.key))

    async def serve_raw_command(self, raw: bytes, route: tuple[str, str, str]) -> None:
        command = self.core.decode_or_reject(raw, "hub")
        if not isinstance(command, Command):
            return
        await self.core.serve_command(command, self._send_response, route=route)

    async def _send_response(self, response: CommandResponse) -> None:
        self.hub.route_response(self.core.encode(response))
