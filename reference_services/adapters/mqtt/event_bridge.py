"""MqttBridge: the PURISTA event bridge over MQTT 5 (paho-mqtt 2, QoS 1).

Two connections per bridge instance:

- the *event session* (client id ``<prefix>-<instance>``, ``clean_start=False``
  and a session expiry): durable subscriptions live here, so QoS 1 messages
  for them queue in the broker while this instance is offline and arrive when
  a bridge with the same client id connects again;
- the *rpc session* (``<prefix>-<instance>-rpc``, clean, no expiry): commands,
  responses and non-durable subscriptions. An instance that goes away leaves
  its shared command groups at once, so no command waits in a dead session.

Topics follow PURISTA's 13-level layout (see :mod:`.topics`); commands use
PURISTA's ``$share/sharedpurista/<filter>``, shared subscriptions
``$share/<group>/<filter>``; a response travels, as with PURISTA, on its own
13-level topic whose receiver-instance level is the invoker's, with the
command's ``correlationData``; each instance listens on those topics. Every subscription carries a
stable subscription identifier so that a delivery reaches exactly the
subscription it was made for, even when queued before a restart.

Subscriptions never see commands (a subscription that does not filter on the
message type subscribes once per non-command type), so a command nobody serves
matches no subscription at all and the broker's PUBACK says so (reason 0x10,
"no matching subscribers"): the invocation fails at once, with 503 by default,
since MQTT cannot tell an unknown command from one whose every instance is cut
off right now (``no_subscribers_status=404`` to choose 404). A foreign
client subscribed to command topics (e.g. ``<prefix>/#``) hides that signal;
the invocation then times out with 504 at its ttl.

Acknowledgement is manual: the PUBACK goes out only once a message reached its
final outcome (handled, handled error, or dead-lettered). MQTT has no nack, so
retries are redelivered in-process after ``outcome.delay_s`` while the PUBACK
is held: if the process dies mid-retry the broker redelivers the message to
the same session when it reconnects (the attempt count then restarts at 1).

Durability is per session: a durable subscription's messages wait for *this*
client id, so a restarted instance gets them only if it reuses the instance id
(or ``client_id``). Mosquitto keeps giving a shared group's offline members
their round-robin share (queued in their sessions until they return or the
session expires); a bridge destroyed with ``keep_session_on_destroy=False``
leaves its groups and ends its session instead. Configure mosquitto with
``max_queued_messages 0`` (its default of 1000 silently drops QoS 1 messages
for a slow or offline session) and ``autosave_on_changes true`` +
``autosave_interval 1`` for the smallest loss window on a broker crash.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt

from reference_services.adapters.mqtt import topics
from reference_services.adapters.mqtt.connection import (
    MqttConnection,
    MqttSettings,
    MqttUnavailableError,
    resolve_url,
)
from reference_services.adapters.mqtt.properties import PublishProperties
from reference_services.runtime.codec import MessageDecodeError, decode
from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.ids import now_ms
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandErrorResponse,
    CommandResponse,
    CommandSuccessResponse,
    CustomMessage,
    SenderAddress,
)
from reference_services.runtime.purista_names import routing_headers
from reference_services.runtime.spi.bridge_base import (
    DEAD_LETTER_REASON_HEADER,
    Disposition,
    EventBridgeBase,
    RegisteredCommand,
    RegisteredSubscription,
)
from reference_services.runtime.spi.capabilities import YES, EventBridgeCapabilities, unsupported
from reference_services.runtime.spi.matcher import is_event

NO_MATCHING_SUBSCRIBERS = 0x10
_dead_letter_reason: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mqtt_dead_letter_reason", default=None
)

RouteKind = Literal["sub", "cmd", "reply"]


@dataclass
class _Route:
    """One MQTT subscription (a topic filter) and what it feeds."""

    topic_filter: str
    sid: int
    kind: RouteKind
    durable: bool
    subs: dict[tuple[str, str, str], RegisteredSubscription] = field(default_factory=dict)
    commands: set[tuple[str, str, str]] = field(default_factory=set)


@dataclass
class _Delivery:
    """A message being processed; a broker resend updates where to ack it."""

    mid: int
    generation: int


def _malformed_reason(raw: bytes, max_bytes: int | None) -> str:
    try:
        decode(raw, max_bytes=max_bytes)
    except MessageDecodeError as exc:
        return f"malformed message: {exc}"
    return "malformed message"


class MqttBridge(EventBridgeBase):
    """PURISTA event bridge over MQTT 5; see the module docstring."""
    #: the PUBACK wait is ``wait_for`` on a future, which on 3.11 binds to no task
    sends_run_in_caller = True

    name = "mqtt"
    snake_cased_wire = True
    capabilities = EventBridgeCapabilities(
        delivery="at_least_once",
        durable_subscriptions=YES,
        survives_broker_restart=unsupported(
            "measured on mosquitto 2.0.11: the broker sends PUBACK before it persists a "
            "message and saves its database only at autosave points, so a SIGKILL loses "
            "events confirmed just before it (0-16 of 1,000 in our runs, with autosave on "
            "every change). It also does not restore $share subscriptions from persistence: "
            "an event that then reaches nobody is published again after a reconnect "
            "(resubscribe_grace_s), but one that also matched another subscriber is lost "
            "for the shared group. A graceful broker restart lost nothing."
        ),
        durable_commands=unsupported(
            "commands use a clean session so that an offline instance does not hold commands "
            "for its group: a command no connected instance serves fails (503), it is not kept"
        ),
        manual_ack=YES,
        shared_subscriptions=YES,
        shared_commands=YES,
        bounded_retry=YES,
        delayed_retry=YES,
        dead_letter=YES,
        native_dead_lettering=unsupported(
            "MQTT brokers keep no dead letters: the dead letter is emitted as the "
            "dead_letter_target event (with the x-purista-dead-letter-reason user property)"
        ),
        unknown_command_fails_fast=YES,
        unknown_command_status=503,  # no connected consumer: unknown, or every one cut off
        graceful_drain=YES,
        reconnect=YES,
        publisher_confirms=YES,
        # QoS 1 keeps the order of one publishing client towards one subscriber
        per_sender_order=YES,
        duplicate_ids_dropped=YES,
        purista_wire=YES,
        purista_durable_wire=YES,
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        instance_id: str | None = None,
        client_id: str | None = None,
        keepalive_s: int = 10,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        op_timeout_s: float = 10.0,
        publish_timeout_s: float = 10.0,
        session_expiry_s: int = 3600,
        keep_session_on_destroy: bool = True,
        receive_maximum: int = 100,
        dedupe_window: int = 10_000,
        park_grace_s: float = 30.0,
        no_subscribers_status: int = StatusCode.SERVICE_UNAVAILABLE,
        resubscribe_grace_s: float = 5.0,
        purista_share_groups: bool = False,
        **kwargs: Any,
    ) -> None:
        """Args:
        url: ``mqtt://[user:pass@]host:port``; default ``$MQTT_URL`` or localhost:1883.
        prefix: the root topic level(s); every topic and share group lives under it.
        client_id: base of the two MQTT client ids (default ``<prefix>-<instance_id>``);
            a restarted instance must reuse it to get its durable messages.
        keepalive_s: MQTT keepalive; a dead broker is noticed within ~1.5x this.
        reconnect_min_s / reconnect_max_s: reconnect backoff bounds.
        session_expiry_s: how long the broker keeps the event session while offline.
        keep_session_on_destroy: keep durable subscriptions in the session on destroy
            (False: leave every group and end the session, for instances that never return).
        receive_maximum: unacknowledged deliveries the broker may have outstanding.
        dedupe_window: how many finished (subscription, message id) pairs are remembered
            so that a redelivery of a finished message is acked without running it again.
        no_subscribers_status: the status of a command no instance serves right now
            (503 by default; 404 if a transient outage of every server is not a concern).
        resubscribe_grace_s: for this long after a reconnect, an event that reached no
            subscriber at all (PUBACK 0x10) is published again every 0.1 s, waiting for
            subscribers that are still re-subscribing (0: never).
        purista_share_groups: shared subscriptions join PURISTA's ``sharedpurista`` group
            (a PURISTA instance of the same subscriber and this one then share each
            message) instead of one group per subscriber; with it, *different*
            subscribers with the same filter compete, as among PURISTA services.
        park_grace_s: messages the event session brings for a subscription not registered
            (yet) wait this long after arriving for it; then they are acked and dropped.
        """
        super().__init__(instance_id=instance_id, **kwargs)
        self.url = resolve_url(url)
        self.prefix = topics.validate_prefix(prefix)
        self.client_id = client_id or f"{prefix}-{self.instance_id}"
        self.settings = MqttSettings.from_url(
            self.url,
            keepalive_s=keepalive_s,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            receive_maximum=receive_maximum,
        )
        self.connect_timeout_s = connect_timeout_s
        self.op_timeout_s = op_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.session_expiry_s = session_expiry_s
        self.keep_session_on_destroy = keep_session_on_destroy
        self.reply_filters = topics.response_filters(self.prefix, self.instance_id)
        self._events = self._make_connection(self.client_id, session_expiry_s)
        self._rpc = self._make_connection(f"{self.client_id}-rpc", 0)
        self._routes: dict[tuple[str, bool], _Route] = {}
        self._by_sid: dict[int, _Route] = {}
        self._restored: dict[int, int] = {}
        self._active: dict[tuple[int, str], _Delivery] = {}
        self._recent: OrderedDict[tuple[int, str], None] = OrderedDict()
        self.dedupe_window = dedupe_window
        self._parked: dict[int, list[tuple[mqtt.MQTTMessage, int]]] = {}
        self._parked_count = 0
        self.parked_limit = 10_000
        self.park_grace_s = park_grace_s
        self.no_subscribers_status = int(no_subscribers_status)
        self.resubscribe_grace_s = resubscribe_grace_s
        self.purista_share_groups = bool(purista_share_groups)
        self._reconnected_at = float("-inf")
        self.republished_after_reconnect = 0
        self._stale_sids: set[int] = set()
        self.stale_dropped = 0
        self.redelivered_duplicates = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_env(cls, **kwargs: Any) -> MqttBridge:
        """Build from ``MQTT_URL`` and ``MQTT_PREFIX`` or ``PURISTA_PREFIX`` (arguments win)."""
        kwargs.setdefault("url", os.environ.get("MQTT_URL"))
        kwargs.setdefault(
            "prefix", os.environ.get("MQTT_PREFIX") or os.environ.get("PURISTA_PREFIX", "purista")
        )
        return cls(**kwargs)

    def _make_connection(self, client_id: str, expiry: int) -> MqttConnection:
        holder: list[MqttConnection] = []

        def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
            self._on_message(holder[0], message, generation)

        def on_up(generation: int, session_present: bool) -> None:
            self._on_up(holder[0], generation, session_present)

        conn = MqttConnection(
            self.settings,
            client_id,
            session_expiry_s=expiry,
            on_message=on_message,
            on_up=on_up,
            on_down=lambda: None,
            log=self.log,
        )
        holder.append(conn)
        return conn

    # ------------------------------------------------------- transport hooks
    async def _connect(self) -> None:
        try:
            await self._rpc.start(self.connect_timeout_s)
            await self._events.start(self.connect_timeout_s)
            await self._wait_restored(self.connect_timeout_s)
        except BaseException:
            await asyncio.gather(self._rpc.close(), self._events.close())
            raise

    async def _close(self) -> None:
        for task in list(self._tasks):
            task.cancel()  # deliveries waiting for a retry stay unacked: redelivered later
        expiry = self.session_expiry_s if self.keep_session_on_destroy else 0
        await asyncio.gather(self._rpc.close(), self._events.close(session_expiry_s=expiry))

    async def _is_connected(self) -> bool:
        return all(
            conn.connected and self._restored.get(id(conn)) == conn.generation
            for conn in (self._rpc, self._events)
        )

    async def _publish(self, message: AnyMessage) -> None:
        props = PublishProperties()
        props.ContentType = message.content_type
        user = list(routing_headers(message).items())
        reason = _dead_letter_reason.get()
        if reason is not None:
            user.append((DEAD_LETTER_REASON_HEADER, reason[:1024]))
        props.UserProperty = user
        props.MessageExpiryInterval = topics.message_expiry_s(message, self.default_command_ttl_s)
        topic, raw = topics.message_topic(self.prefix, message), self.core.encode(message)
        code = await self._rpc.publish(topic, raw, props, self.publish_timeout_s)
        loop = asyncio.get_running_loop()
        deadline = self._reconnected_at + self.resubscribe_grace_s
        while code == NO_MATCHING_SUBSCRIBERS and loop.time() < deadline:
            # Right after a reconnect (a broker restart), mosquitto has not restored the
            # $share subscriptions yet: the event reached nobody, so sending it again
            # once subscribers are back is no duplicate.
            self.republished_after_reconnect += 1
            await asyncio.sleep(0.1)
            code = await self._rpc.publish(topic, raw, props, self.publish_timeout_s)

    async def _send_command(self, command: Command) -> None:
        props = PublishProperties()
        props.ContentType = command.content_type
        props.CorrelationData = command.correlation_id.encode("utf-8")
        props.UserProperty = list(routing_headers(command).items())
        props.MessageExpiryInterval = topics.message_expiry_s(command, self._ttl_left(command))
        code = await self._rpc.publish(
            topics.command_topic(self.prefix, command),
            self.core.encode(command),
            props,
            self.publish_timeout_s,
        )
        if code == NO_MATCHING_SUBSCRIBERS:
            raise UnhandledError(
                f"no instance serves command {command.receiver} right now "
                "(unknown, or every instance is cut off)",
                self.no_subscribers_status,
                trace_id=command.trace_id,
            )

    def _ttl_left(self, command: Command) -> float:
        if command.expires_at is None:
            return self.default_command_ttl_s
        return (command.expires_at - now_ms()) / 1000

    async def _bind_command(self, reg: RegisteredCommand) -> None:
        key = reg.address.key
        base = topics.command_filter(self.prefix, reg.address, None)
        if reg.config.shared:
            base = topics.shared(topics.SHARE_GROUP, base)
        direct = topics.command_filter(self.prefix, reg.address, self.instance_id)
        for flt in (base, direct):
            route = self._route(flt, "cmd", durable=False)
            route.commands.add(key)
            await self._ensure_subscribed(route)

    async def _unbind_command(self, reg: RegisteredCommand) -> None:
        for route in [r for r in self._routes.values() if reg.address.key in r.commands]:
            route.commands.discard(reg.address.key)
            await self._drop_route_if_empty(route)

    async def _bind_subscription(self, reg: RegisteredSubscription) -> None:
        sub = reg.subscription
        routes = []
        for flt in topics.subscription_filters(self.prefix, sub, self.purista_share_groups):
            if sub.shared:
                group = topics.subscription_group(self.prefix, sub, self.purista_share_groups)
                flt = topics.shared(group, flt)
            routes.append(self._route(flt, "sub", durable=sub.durable))
        for old in [r for r in self._routes.values() if r not in routes and sub.key in r.subs]:
            del old.subs[sub.key]  # registered again with other filters or hints
            await self._drop_route_if_empty(old)
        for route in routes:
            route.subs[sub.key] = reg
            self._unpark(route)  # before any await: keeps the broker's order
        await asyncio.gather(*(self._ensure_subscribed(route) for route in routes))

    async def _unbind_subscription(self, reg: RegisteredSubscription) -> None:
        key = reg.subscription.key
        for route in [r for r in self._routes.values() if key in r.subs]:
            del route.subs[key]
            await self._drop_route_if_empty(route)

    async def _stop_intake(self) -> None:
        """Leave command groups and non-durable subscriptions; durable ones stay in
        the session unless ``keep_session_on_destroy`` is False. The reply route stays."""
        for route in list(self._routes.values()):
            if route.kind == "reply":
                continue
            if self._kept_on_destroy(route):
                continue
            try:
                await self._unsubscribe(route)
            except MqttUnavailableError as exc:
                self.log.info("unsubscribe %s during destroy failed: %s", route.topic_filter, exc)

    def _kept_on_destroy(self, route: _Route) -> bool:
        return route.kind == "sub" and route.durable and self.keep_session_on_destroy

    async def publish_raw(
        self, raw: bytes, *, extra_headers: dict[str, str] | None = None
    ) -> None:
        """Tests only: put ``raw`` on the wire as a foreign publisher would, on the topic of
        the message it encodes or, when it does not decode, on a topic each of this
        bridge's subscriptions matches (so malformed input reaches its consumers).

        ``extra_headers`` go out as MQTT 5 user properties, as a foreign publisher could
        send them (a forged retry attempt, say)."""
        self.core.require_running()
        try:
            targets = [topics.message_topic(self.prefix, decode(raw, max_bytes=None))]
        except MessageDecodeError:
            targets = sorted(
                {topics.concrete(r.topic_filter) for r in self._routes.values() if r.kind == "sub"}
            )
        props = None
        if extra_headers:
            props = PublishProperties()
            props.UserProperty = [(str(k), str(v)) for k, v in extra_headers.items()]
        for topic in targets:
            await self._rpc.publish(topic, bytes(raw), props, self.publish_timeout_s)

    async def publish_raw_command(self, raw: bytes, route: Address) -> None:
        """Tests only: put ``raw`` on the topic of the command at ``route``, as a publisher
        allowed on that topic could, whatever the body says."""
        self.core.require_running()
        probe = Command(
            sender=SenderAddress(
                service_name="probe", service_version="1", service_target="raw", instance_id="x"
            ),
            receiver=route,
        )
        topic = topics.message_topic(self.prefix, probe)
        await self._rpc.publish(topic, bytes(raw), None, self.publish_timeout_s)

    # ---------------------------------------------------- dead-letter header
    async def _publish_dead_letter(self, letter: CustomMessage, reason: str) -> None:
        """Publish the dead letter with the ``x-purista-dead-letter-reason`` user property."""
        token = _dead_letter_reason.set(reason)
        try:
            await self._publish(letter)
        finally:
            _dead_letter_reason.reset(token)

    # ------------------------------------------------------------- routing
    def _conn_for(self, route: _Route) -> MqttConnection:
        return self._events if route.kind == "sub" and route.durable else self._rpc

    def _route(self, topic_filter: str, kind: RouteKind, durable: bool) -> _Route:
        route = self._routes.get((topic_filter, durable))
        if route is not None:
            return route
        sid = topics.subscription_id(("durable:" if durable else "") + topic_filter)
        while sid in self._by_sid:
            sid = sid % topics.MAX_SUBSCRIPTION_ID + 1
        route = _Route(topic_filter, sid, kind, durable)
        self._routes[(topic_filter, durable)] = route
        self._stale_sids.discard(sid)
        self._by_sid[sid] = route
        return route

    async def _ensure_subscribed(self, route: _Route) -> None:
        conn = self._conn_for(route)
        if not conn.connected:
            self.log.info("not connected: %s is subscribed on reconnect", route.topic_filter)
            return
        await conn.subscribe(route.topic_filter, route.sid, self.op_timeout_s)

    async def _unsubscribe(self, route: _Route) -> None:
        conn = self._conn_for(route)
        if conn.connected:
            await conn.unsubscribe(route.topic_filter, self.op_timeout_s)

    async def _drop_route_if_empty(self, route: _Route) -> None:
        if route.subs or route.commands or route.kind == "reply":
            return
        self._routes.pop((route.topic_filter, route.durable), None)
        self._by_sid.pop(route.sid, None)
        await self._unsubscribe(route)

    # -------------------------------------------------------- (re)connecting
    def _on_up(self, conn: MqttConnection, generation: int, session_present: bool) -> None:
        self.log.info(
            "%s connected (generation %d, session present: %s)",
            conn.client_id,
            generation,
            session_present,
        )
        if conn is self._rpc and generation > 1:
            self._reconnected_at = asyncio.get_running_loop().time()
        self.core.spawn(self._restore(conn, generation), name=f"mqtt-restore-{conn.client_id}")

    async def _restore(self, conn: MqttConnection, generation: int) -> None:
        """Subscribe everything this connection carries, then declare it ready."""
        delay = self.settings.reconnect_min_s
        while conn.generation == generation and conn.connected and not self.core.destroyed:
            try:
                if conn is self._rpc:
                    for reply_filter in self.reply_filters:
                        reply = self._route(reply_filter, "reply", durable=False)
                        await conn.subscribe(reply.topic_filter, reply.sid, self.op_timeout_s)
                wanted = [
                    route
                    for route in list(self._routes.values())
                    if route.kind != "reply"
                    and self._conn_for(route) is conn
                    and (self.core.accepting or self._kept_on_destroy(route))
                ]
                await asyncio.gather(
                    *(
                        conn.subscribe(route.topic_filter, route.sid, self.op_timeout_s)
                        for route in wanted
                    )
                )
                self._restored[id(conn)] = generation
                return
            except MqttUnavailableError as exc:
                self.log.warning("re-subscribing on %s failed: %s", conn.client_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _wait_restored(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await self._is_connected():
            if loop.time() > deadline:
                raise MqttUnavailableError(f"MQTT subscriptions not restored within {timeout_s}s")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ delivery
    def _on_message(self, conn: MqttConnection, msg: mqtt.MQTTMessage, generation: int) -> None:
        props = msg.properties
        sids = list(getattr(props, "SubscriptionIdentifier", []) or []) if props else []
        routes = [self._by_sid[s] for s in sids if s in self._by_sid]
        if not routes:
            if self.core.destroyed:
                return  # left unacked: the broker keeps it for this session
            if conn is self._events and sids and sids[0] not in self._stale_sids:
                # queued for a subscription of this session that is not registered yet
                if sids[0] not in self._parked:
                    asyncio.get_running_loop().call_later(
                        self.park_grace_s, self._expire_parked, sids[0]
                    )
                if self._parked_count < self.parked_limit:
                    self._parked.setdefault(sids[0], []).append((msg, generation))
                    self._parked_count += 1
                return
            self.log.warning("message on %s matches no subscription: dropped", msg.topic)
            self.stale_dropped += 1
            conn.ack(msg.mid, generation)
            return
        if any(route.kind == "reply" for route in routes):
            routes = [route for route in routes if route.kind != "reply"]
            self._on_reply(conn, msg, generation, ack=not routes)
            if not routes:
                return
        task = asyncio.get_running_loop().create_task(self._process(conn, msg, generation, routes))
        self._tasks.add(task)
        task.add_done_callback(self._delivery_done)

    def _expire_parked(self, sid: int) -> None:
        """A session subscription nobody registered again: drop what it brings."""
        if self.core.destroyed or sid in self._by_sid:
            return
        parked = self._parked.pop(sid, [])
        self._parked_count -= len(parked)
        self._stale_sids.add(sid)
        self.stale_dropped += len(parked)
        self.log.warning(
            "subscription id %d of session %s was not registered again within %.0fs: "
            "%d message(s) dropped (unregister_subscription removes a durable one for good)",
            sid,
            self.client_id,
            self.park_grace_s,
            len(parked),
        )
        for msg, generation in parked:
            self._events.ack(msg.mid, generation)

    def _delivery_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("delivery failed", exc_info=task.exception())

    def _unpark(self, route: _Route) -> None:
        parked = self._parked.pop(route.sid, [])
        self._parked_count -= len(parked)
        for msg, generation in parked:
            self._on_message(self._events, msg, generation)

    def _on_reply(
        self, conn: MqttConnection, msg: mqtt.MQTTMessage, generation: int, *, ack: bool = True
    ) -> None:
        response = self.core.decode_or_reject(msg.payload, msg.topic)
        if isinstance(response, CommandSuccessResponse | CommandErrorResponse):
            if response.receiver.instance_id == self.instance_id:
                self.core.resolve_response(response)
        elif response is not None:
            self.log.warning("a %s arrived on the response topic: dropped", response.message_type)
        if ack:
            conn.ack(msg.mid, generation)

    async def _process(
        self, conn: MqttConnection, msg: mqtt.MQTTMessage, generation: int, routes: list[_Route]
    ) -> None:
        message = self.core.decode_or_reject(msg.payload, msg.topic)
        if message is None:
            reason = _malformed_reason(msg.payload, self.max_message_bytes)
            for route in routes:
                for reg in list(route.subs.values()) if route.kind == "sub" else []:
                    await self.core.quarantine_raw(reg, msg.payload, reason)
            conn.ack(msg.mid, generation)
            return
        acks = []
        for route in routes:
            if route.kind == "cmd":
                acks.append(await self._serve_command(conn, msg, message, route))
            else:
                acks.append(await self._serve_subscription(conn, msg, generation, route, message))
        if all(acks):
            conn.ack(msg.mid, generation)

    async def _serve_command(
        self, conn: MqttConnection, msg: mqtt.MQTTMessage, message: AnyMessage, route: _Route
    ) -> bool:
        if not isinstance(message, Command):
            self.log.warning("a %s arrived on a command topic: dropped", message.message_type)
            return True

        async def send(response: CommandResponse) -> None:
            props = PublishProperties()
            props.ContentType = response.content_type
            props.CorrelationData = message.correlation_id.encode("utf-8")
            props.UserProperty = list(routing_headers(response).items())
            props.MessageExpiryInterval = topics.message_expiry_s(
                response, self._ttl_left(message))
            try:
                await self._rpc.publish(
                    topics.message_topic(self.prefix, response),
                    self.core.encode(response),
                    props,
                    self.publish_timeout_s,
                )
            except MqttUnavailableError as exc:
                self.log.warning("response to %s not confirmed: %s", message.correlation_id, exc)

        # the topic decides what runs, never the body (a topic filter carries one command)
        key = (
            message.receiver.key
            if message.receiver.key in route.commands
            else next(iter(sorted(route.commands)), ("", "", ""))
        )
        # As with PURISTA, the response on its 13-level topic is also the success event
        # subscribers see, so it is not broadcast a second time (no after_response).
        with self.core.track():
            response = await self.core.handle_command(message, route=key)
            if response is not None:
                await send(response)
        return True

    async def _serve_subscription(
        self,
        conn: MqttConnection,
        msg: mqtt.MQTTMessage,
        generation: int,
        route: _Route,
        message: AnyMessage,
    ) -> bool:
        """Run every subscription of ``route``; True when the message may be acked."""
        key = (route.sid, message.id)
        active = self._active.get(key)
        if active is not None:
            # the broker resent a message we are still working on: ack the resend later
            active.mid, active.generation = msg.mid, generation
            self.redelivered_duplicates += 1
            return False
        if key in self._recent:
            # finished here already (its ack was lost in an outage, or it was published
            # twice with the same id): ack without running the handler again
            self.redelivered_duplicates += 1
            return True
        delivery = _Delivery(msg.mid, generation)
        self._active[key] = delivery
        try:
            regs = [r for r in route.subs.values() if r.matches(message)]
            if isinstance(message, Command) or not is_event(message):
                regs = []  # e.g. a plain response on its 13-level topic
            # one after the other, and no await between the last outcome and the ack:
            # destroy cannot close the connection in between
            results = [await self._run(reg, message) for reg in regs]
        finally:
            self._active.pop(key, None)
        if not all(results):
            return False
        self._remember(key)
        if (delivery.mid, delivery.generation) != (msg.mid, generation):
            # a resend arrived meanwhile: ack that one instead
            conn.ack(delivery.mid, delivery.generation)
            return False
        return True

    def _remember(self, key: tuple[int, str]) -> None:
        if self.dedupe_window <= 0:
            return
        self._recent[key] = None
        while len(self._recent) > self.dedupe_window:
            self._recent.popitem(last=False)

    async def _run(self, reg: RegisteredSubscription, message: AnyMessage) -> bool:
        """Deliver to one subscription with in-process retries; False if left unacked."""
        attempt = 1
        while True:
            if not self.core.accepting:
                return False  # destroying: the broker redelivers it to this session later
            if self.core.subscription(reg.subscription.key) is None:
                return True  # unsubscribed meanwhile: nobody here wants it
            outcome = await self.core.handle_subscription(reg, message, attempt)
            if outcome.disposition is not Disposition.RETRY:
                return True
            await asyncio.sleep(outcome.delay_s)
            attempt += 1
