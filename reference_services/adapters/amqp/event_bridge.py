"""AmqpBridge: the PURISTA event bridge over RabbitMQ (AMQP 0-9-1, aio-pika).

Topology (all names under ``prefix``, see :mod:`.amqp_topology`):

- one durable headers exchange ``<prefix>``; persistent messages carrying
  routing headers and W3C trace context; publisher confirms on every publish;
- commands: queue ``<prefix>.cmd.<service>.<version>.<target>`` bound on
  ``messageType=command`` + receiver headers, competing consumers; published
  ``mandatory`` so an unknown command comes back at once (404); responses go,
  as with PURISTA, to the exchange with a ``replyTo`` header naming the
  invoker's exclusive queue ``<prefix>.reply.<instanceId>``, which is bound on
  the exchange by that header (so PURISTA's responses reach it too) and also
  takes commands pinned to that instance; a success response with an event
  name is at the same time the event its subscribers get;
- subscriptions: shared = durable queue ``<prefix>.sub.<service>.<version>.<target>``
  (competing consumers), non-shared = exclusive auto-delete queue per instance;
  filters become headers bindings and the matcher double-checks on receipt;
- retries: a copy with ``x-purista-retry-attempt`` goes to a TTL queue
  ``<source>.retry.<ms>`` that dead-letters it back to the source queue;
- dead letters: the base emits the dead letter event, and a copy with
  ``x-purista-dead-letter-reason`` is kept in ``<prefix>.sub.<...>.dlq``.

Reconnects: aio-pika's robust connection reopens the connection and the
channels (with backoff, see :mod:`.amqp_connection`); the bridge itself then
re-declares the topology and re-registers every command and subscription
(queues are declared ``robust=False`` so nothing is restored twice). A
watchdog also re-establishes a consumer the broker cancelled (its queue was
deleted) or whose channel closed while the connection stayed up.

Guarantees and limits:

- events are at-least-once: persistent, publisher-confirmed, acked after the
  handler; a publish interrupted by an outage is retried until
  ``publish_timeout_s`` (a duplicate is possible when a confirm was lost);
- durable (shared) subscriptions survive subscriber and broker restarts;
  per-instance (non-shared) and non-durable ones do not;
- commands default to auto-ack (at most one execution); with
  ``CommandConfig(durable=True)`` the command queue is durable and not
  auto-deleted, so a command waits (up to its ttl, its per-message expiry) for
  an instance and survives a broker restart, but then an unserved command is
  no longer a fast 404: it times out (504);
- a subscription that explicitly filters ``messageType=command`` makes every
  matching command routable, which also hides the fast 404;
- handlers run concurrently up to ``prefetch`` per consumer: set
  ``prefetch=1`` for strictly ordered processing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    ExchangeType,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, PublishError

from reference_services.adapters.amqp import topology as topo
from reference_services.adapters.amqp.connection import BackoffRobustConnection, wait_connected
from reference_services.runtime.codec import MessageDecodeError, decode
from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.ids import now_ms
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandResponse,
    MessageType,
)
from reference_services.runtime.spi.attempts import RETRY_SIGNATURE_HEADER, AttemptSigner
from reference_services.runtime.spi.bridge_base import (
    DEAD_LETTER_REASON_HEADER,
    RETRY_ATTEMPT_HEADER,
    Disposition,
    EventBridgeBase,
    RegisteredCommand,
    RegisteredSubscription,
)
from reference_services.runtime.spi.capabilities import YES, EventBridgeCapabilities, unsupported
from reference_services.runtime.spi.matcher import is_event

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
_MAX_REASON = 1000


def _attempt_signer(url: str, prefix: str, retry_key: str | None) -> AttemptSigner:
    """Sign retry attempts with ``retry_key`` (or ``AMQP_RETRY_KEY``), else with a key
    derived from the credentials, vhost and prefix every instance shares (not the host:
    instances may reach one cluster through different nodes)."""
    key = retry_key or os.environ.get("AMQP_RETRY_KEY")
    if key:
        return AttemptSigner.derive("key", key)
    parsed = urlsplit(url)
    return AttemptSigner.derive(
        "url", parsed.username or "", parsed.password or "", parsed.path or "/", prefix
    )


class _MsTimestamp(datetime.datetime):
    """An AMQP ``timestamp`` property in epoch milliseconds, as PURISTA writes it.

    The AMQP codec packs ``int(value.timestamp())``; PURISTA (amqplib) puts
    ``Date.now()`` there, so the property holds ms, not the spec's seconds.
    """

    def timestamp(self) -> float:
        return super().timestamp() * 1000

    @classmethod
    def of_ms(cls, ms: int) -> _MsTimestamp:
        return cls.fromtimestamp(ms / 1000, tz=datetime.UTC)


@dataclass(slots=True)
class _Outgoing:
    """A message to publish: what aio-pika's ``Exchange.publish`` reads of one (its body
    and its properties), without ``aio_pika.Message``'s checks on every attribute set
    (two messages per command round trip)."""

    body: bytes
    properties: aiormq.spec.Basic.Properties


class _Unroutable(Exception):
    """The broker returned a mandatory message: no queue is bound for it."""


@dataclass
class _Consumer:
    """One queue this bridge consumes, on its own channel."""

    queue: str
    channel: AbstractRobustChannel | None = None
    tag: str | None = None
    epoch: int = -1


def _alive(consumer: _Consumer) -> bool:
    """Whether the broker still delivers to ``consumer`` on its current channel."""
    channel = consumer.channel
    if channel is None or consumer.tag is None or channel.is_closed:
        return False
    raw = getattr(getattr(channel, "_channel", None), "channel", None)
    consumers = getattr(raw, "consumers", None)
    return consumers is None or consumer.tag in consumers


class AmqpBridge(EventBridgeBase):
    """Event bridge over RabbitMQ following PURISTA's AMQP conventions.

    Several bridges with the same ``url`` and ``prefix`` act as several
    instances of one deployment.
    """

    name = "amqp"
    capabilities = EventBridgeCapabilities(
        delivery="at_least_once",
        durable_subscriptions=YES,
        survives_broker_restart=YES,
        durable_commands=YES,
        manual_ack=YES,
        shared_subscriptions=YES,
        shared_commands=YES,
        bounded_retry=YES,
        delayed_retry=YES,
        dead_letter=YES,
        native_dead_lettering=YES,
        unknown_command_fails_fast=YES,
        unknown_command_status=404,  # the broker returns the mandatory publish: no queue
        graceful_drain=YES,
        reconnect=YES,
        publisher_confirms=YES,
        # one queue per subscription, confirms in publish order on one channel
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
        heartbeat_s: int = 5,
        connect_timeout_s: float = 5.0,
        reconnect_interval_s: float = 0.5,
        max_reconnect_interval_s: float = 5.0,
        publish_timeout_s: float = 10.0,
        prefetch: int = 16,
        native_dead_letter: bool = True,
        retry_queue_idle_s: float = 3600.0,
        consumer_check_interval_s: float = 2.0,
        retry_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(instance_id=instance_id, **kwargs)
        self.url = url or os.environ.get("AMQP_URL") or DEFAULT_URL
        self.prefix = prefix
        self._signer = _attempt_signer(self.url, prefix, retry_key)
        self.heartbeat_s = heartbeat_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_interval_s = reconnect_interval_s
        self.max_reconnect_interval_s = max_reconnect_interval_s
        self.publish_timeout_s = publish_timeout_s
        self.prefetch = prefetch
        self.native_dead_letter = native_dead_letter
        self.retry_queue_idle_s = retry_queue_idle_s
        self.consumer_check_interval_s = consumer_check_interval_s
        self.consumers_recovered = 0
        caps = dataclasses.replace(
            type(self).capabilities, max_message_bytes=self.max_message_bytes
        )
        if not native_dead_letter:
            caps = dataclasses.replace(
                caps, native_dead_lettering=unsupported("disabled by native_dead_letter=False")
            )
        self.capabilities = caps
        self.reply_queue = topo.reply_queue(prefix, self.instance_id)
        self._conn: BackoffRobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._admin: AbstractRobustChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._reply_consumer = _Consumer(self.reply_queue)
        self._cmd_consumers: dict[tuple[str, str, str], _Consumer] = {}
        self._sub_consumers: dict[tuple[str, str, str], _Consumer] = {}
        self._epoch = 0
        self._link_up = asyncio.Event()
        self._lock = asyncio.Lock()
        self._restore_task: asyncio.Task[None] | None = None
        self._declared: dict[str, int] = {}  # retry queue -> connection epoch it was declared in
        self._declaring: dict[str, asyncio.Future[None]] = {}
        self.reconnects = 0

    @classmethod
    def from_env(cls, **overrides: Any) -> AmqpBridge:
        """Build from ``AMQP_URL``, ``AMQP_PREFIX`` and ``AMQP_HEARTBEAT_S``."""
        kwargs: dict[str, Any] = {
            "url": os.environ.get("AMQP_URL"),
            "prefix": os.environ.get("AMQP_PREFIX", "purista"),
        }
        if "AMQP_HEARTBEAT_S" in os.environ:
            kwargs["heartbeat_s"] = int(os.environ["AMQP_HEARTBEAT_S"])
        kwargs.update(overrides)
        return cls(**kwargs)

    # ---------------------------------------------------------------- connect
    async def _connect(self) -> None:
        # What aio_pika.connect_robust does, keeping hold of the connection: a start cancelled
        # mid-connect (a SIGTERM while the broker hangs) must close it, or its reconnect loop
        # keeps the process alive.
        options: dict[str, Any] = {
            "heartbeat": self.heartbeat_s,
            "reconnect_interval": self.reconnect_interval_s,
            "max_reconnect_interval": self.max_reconnect_interval_s,
        }
        conn = BackoffRobustConnection(
            make_url(self.url, **options),
            client_properties={"connection_name": f"purista-{self.instance_id}"},
            **options,
        )
        try:
            await conn.connect(timeout=self.connect_timeout_s)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await conn.close()
            if isinstance(exc, CONNECTION_EXCEPTIONS):
                raise UnhandledError(
                    f"cannot connect to AMQP broker: {type(exc).__name__}: {exc}",
                    StatusCode.SERVICE_UNAVAILABLE,
                ) from exc
            raise
        self._conn = conn
        try:
            self._pub = await conn.channel(publisher_confirms=True, on_return_raises=True)
            self._admin = await conn.channel(publisher_confirms=False)
            await self._setup_link()
        except BaseException:
            await conn.close()
            raise
        conn.close_callbacks.add(self._on_connection_lost)
        conn.reconnect_callbacks.add(self._on_reconnected)
        self._link_up.set()
        self.core.spawn(self._watch_consumers(), name="amqp-consumer-watch")

    async def _setup_link(self) -> None:
        """Declare the exchange and the reply queue, and consume replies."""
        assert self._pub is not None and self._admin is not None
        await self._admin.declare_exchange(
            self.prefix, ExchangeType.HEADERS, durable=True, robust=False
        )
        self._exchange = await self._pub.get_exchange(self.prefix, ensure=False)
        await self._consume(
            self._reply_consumer,
            lambda ch: ch.declare_queue(
                self.reply_queue, exclusive=True, auto_delete=True, robust=False
            ),
            self._on_reply_delivery,
            no_ack=True,
            bindings=[topo.reply_binding(self.reply_queue)],
        )

    def _on_connection_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        if self._conn is None or self._conn.close_called:
            return
        was_up = self._link_up.is_set()
        self._epoch += 1
        self._link_up.clear()
        if self._restore_task is not None:
            self._restore_task.cancel()
        if was_up:
            self.log.warning("AMQP connection lost (%s); reconnecting", exc)

    def _on_reconnected(self, _sender: Any) -> None:
        if self.core.destroyed:
            return
        self.reconnects += 1
        if self._restore_task is not None:
            self._restore_task.cancel()
        self._restore_task = self.core.spawn(self._restore(), name="amqp-restore")

    async def _restore(self) -> None:
        """Re-declare everything and re-register every command and subscription."""
        delay = self.reconnect_interval_s
        while not self.core.destroyed:
            epoch = self._epoch
            try:
                async with self._lock:
                    await self._setup_link()
                    for reg in self.core.registered_commands:
                        await self._bind_command_locked(reg)
                    for sub in self.core.registered_subscriptions:
                        await self._bind_subscription_locked(sub)
            except Exception as exc:
                if self._conn is None or self._conn.down or epoch != self._epoch:
                    return  # the next reconnect starts a new restore
                self.log.warning(
                    "re-registering after reconnect failed (%s); retry in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_interval_s)
                continue
            if epoch == self._epoch:
                self._link_up.set()
                self.log.info(
                    "AMQP reconnected: %d command(s), %d subscription(s) re-registered",
                    len(self.core.registered_commands),
                    len(self.core.registered_subscriptions),
                )
            return

    async def _watch_consumers(self) -> None:
        """Re-establish consumers lost while the connection stayed up: the broker cancels a
        consumer whose queue was deleted, and a channel error closes a channel (aio-pika
        reopens the channel but, by design here, not our consumers)."""
        while True:
            await asyncio.sleep(self.consumer_check_interval_s)
            if not self._link_up.is_set() or self._lock.locked() or not self.core.accepting:
                continue
            try:
                await self._recover_consumers()
            except Exception as exc:
                self.log.warning("recovering lost consumers failed (%s); will retry", exc)

    async def _recover_consumers(self) -> None:
        async with self._lock:
            if not self._link_up.is_set():
                return
            if self._reply_consumer.tag and not _alive(self._reply_consumer):
                self.log.warning("reply consumer lost; re-establishing")
                self._reply_consumer.epoch = -1
                await self._setup_link()
                self.consumers_recovered += 1
            await self._rebind_lost(
                self._cmd_consumers, self.core.command, self._bind_command_locked
            )
            await self._rebind_lost(
                self._sub_consumers, self.core.subscription, self._bind_subscription_locked
            )

    async def _rebind_lost(
        self,
        consumers: dict[tuple[str, str, str], _Consumer],
        registered: Callable[[tuple[str, str, str]], Any],
        bind: Callable[[Any], Awaitable[None]],
    ) -> None:
        """Bind again every consumer the broker lost whose command or subscription still
        stands (under the lock)."""
        for key, consumer in list(consumers.items()):
            definition = registered(key)
            if definition is not None and consumer.tag and not _alive(consumer):
                self.log.warning("consumer of %s lost; re-establishing", consumer.queue)
                consumer.epoch = -1
                await bind(definition)
                self.consumers_recovered += 1

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self._link_up.clear()
        if self._restore_task is not None:
            self._restore_task.cancel()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _is_connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.is_closed and not conn.down and self._link_up.is_set()

    # ------------------------------------------------------------- consuming
    async def _consume(
        self,
        consumer: _Consumer,
        declare: Callable[[AbstractRobustChannel], Awaitable[AbstractQueue]],
        on_message: Callable[[_Consumer, AbstractIncomingMessage], Awaitable[None]],
        *,
        no_ack: bool = False,
        bindings: list[dict[str, Any]] | None = None,
    ) -> None:
        """Declare, bind and consume ``consumer.queue`` on its own channel (idempotent per
        connection epoch)."""
        assert self._conn is not None
        if consumer.epoch == self._epoch and consumer.tag is not None:
            return
        if consumer.channel is None or consumer.channel.is_closed:
            consumer.channel = await self._conn.channel(publisher_confirms=False)
            await consumer.channel.set_qos(prefetch_count=self.prefetch)
        channel = consumer.channel
        queue = await declare(channel)
        for args in bindings or []:
            await queue.bind(self.prefix, routing_key="", arguments=args, robust=False)

        async def callback(message: AbstractIncomingMessage) -> None:
            await on_message(consumer, message)

        consumer.tag = await queue.consume(callback, no_ack=no_ack, robust=False)
        consumer.epoch = self._epoch

    async def _cancel(self, consumer: _Consumer, delete_if_unused: bool = False) -> None:
        """Stop consuming; optionally delete the queue when no one else consumes it."""
        channel, tag = consumer.channel, consumer.tag
        consumer.tag = None
        consumer.channel = None
        if channel is None:
            return
        conn = self._conn
        try:
            if tag is not None and not channel.is_closed and conn is not None and not conn.down:
                underlay = await asyncio.wait_for(channel.get_underlay_channel(), 2)
                await asyncio.wait_for(underlay.basic_cancel(tag), 5)
        except Exception as exc:
            self.log.debug("cancelling consumer on %s failed: %s", consumer.queue, exc)
        if delete_if_unused:
            await self._delete_queue_if_unused(consumer.queue)
        self.core.spawn(self._close_channel_later(channel), name=f"close-{consumer.queue}")

    async def _close_channel_later(self, channel: AbstractRobustChannel) -> None:
        # Let handlers still running on this channel ack first (drain), then close.
        await self.core.wait_idle(self.drain_timeout_s)
        with contextlib.suppress(Exception):
            await channel.close()

    async def _delete_queue_if_unused(self, queue: str) -> None:
        if self._conn is None or self._conn.down:
            return
        try:
            channel = await self._conn.channel(publisher_confirms=False)
        except Exception:
            return
        try:
            await asyncio.wait_for(channel.queue_delete(queue, if_unused=True), 5)
        except Exception as exc:  # in use by another instance: keep it
            self.log.debug("queue %s kept: %s", queue, exc)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    @staticmethod
    async def _settle(message: AbstractIncomingMessage, *, ack: bool, requeue: bool = True) -> None:
        """Ack or nack, ignoring a channel that died meanwhile (the broker redelivers)."""
        try:
            if ack:
                await message.ack()
            else:
                await message.nack(requeue=requeue)
        except Exception:
            logging.getLogger("reference_services.bridge.amqp").debug(
                "could not settle delivery %s (channel gone; the broker redelivers)",
                message.delivery_tag,
            )

    # -------------------------------------------------------------- publishing
    async def _publish_amqp(
        self,
        message: aio_pika.Message | _Outgoing,
        *,
        routing_key: str = "",
        default_exchange: bool = False,
        mandatory: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish with confirms, retrying through an outage until ``timeout_s``.

        Raises :class:`_Unroutable` when the broker returns a mandatory message
        and a 503 :class:`UnhandledError` when the broker stays unreachable.
        """
        deadline = time.monotonic() + (self.publish_timeout_s if timeout_s is None else timeout_s)
        last: BaseException | None = None
        pause = 0.05
        while True:
            remaining = deadline - time.monotonic()
            conn, pub = self._conn, self._pub
            if remaining <= 0 or conn is None or pub is None:
                raise UnhandledError(
                    f"AMQP broker unavailable, message not published: {last or 'timeout'}",
                    StatusCode.SERVICE_UNAVAILABLE,
                )
            if not await wait_connected(conn, remaining):
                continue
            try:
                exchange = pub.default_exchange if default_exchange else self._exchange
                assert exchange is not None
                await exchange.publish(
                    message, routing_key, mandatory=mandatory, timeout=max(remaining, 0.01)
                )
                return
            except PublishError as exc:
                raise _Unroutable(str(exc)) from exc
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled, not the channel closing under us
                last = exc
                await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
                pause = min(pause * 2, 1.0)
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                last = exc
                await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
                pause = min(pause * 2, 1.0)

    def _amqp_message(
        self,
        message: AnyMessage,
        *,
        reply_to: str | None = None,
        expiration_s: float | None = None,
        headers: dict[str, Any] | None = None,
    ) -> _Outgoing:
        # the properties aio_pika.Message(...) would give (persistent, priority 0), built
        # directly: the same frame without its per-attribute checks
        return _Outgoing(
            self.core.encode(message),
            aiormq.spec.Basic.Properties(
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=topo.message_headers(message) if headers is None else headers,
                delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
                priority=0,
                correlation_id=message.correlation_id,
                reply_to=reply_to,
                expiration=None if expiration_s is None else str(int(expiration_s * 1000)),
                message_id=message.id,
                timestamp=_MsTimestamp.of_ms(message.timestamp),
                message_type=str(message.message_type),
            ),
        )

    async def _publish(self, message: AnyMessage) -> None:
        await self._publish_amqp(self._amqp_message(message))

    async def _send_command(self, command: Command) -> None:
        # what is left of the invoker's ttl (invoke stamps the deadline): it also expires
        # the queued command in the broker (PURISTA's per-message expiration)
        ttl = self.default_command_ttl_s
        if command.expires_at is not None:
            ttl = max((command.expires_at - now_ms()) / 1000, 0.001)
        msg = self._amqp_message(command, reply_to=self.reply_queue, expiration_s=ttl)
        pinned = command.receiver.instance_id
        try:
            if pinned:
                await self._publish_amqp(
                    msg,
                    routing_key=topo.reply_queue(self.prefix, pinned),
                    default_exchange=True,
                    mandatory=True,
                    timeout_s=ttl,
                )
            else:
                await self._publish_amqp(msg, mandatory=True, timeout_s=ttl)
        except _Unroutable:
            raise UnhandledError(
                f"no instance serves command {command.receiver}",
                StatusCode.NOT_FOUND,
                trace_id=command.trace_id,
            ) from None

    async def _reply(self, incoming: AbstractIncomingMessage, response: CommandResponse) -> bool:
        if not incoming.reply_to:
            self.log.warning("command %s has no replyTo; response dropped", response.id)
            return True
        message = self._amqp_message(
            response, headers=topo.response_headers(response, incoming.reply_to)
        )
        try:
            await self._publish_amqp(message)
        except Exception as exc:
            self.log.warning("could not send response %s: %s", response.correlation_id, exc)
            return False
        return True

    # ---------------------------------------------------------------- commands
    async def _bind_command(self, reg: RegisteredCommand) -> None:
        if not self._link_up.is_set():
            self.log.info("broker down: command %s binds on reconnect", reg.address)
            return
        async with self._lock:
            await self._bind_command_locked(reg)

    async def _bind_command_locked(self, reg: RegisteredCommand) -> None:
        if not self.core.accepting:  # destroy began (e.g. during a restore): take no new work
            return
        key = reg.address.key
        consumer = self._cmd_consumers.setdefault(
            key, _Consumer(topo.command_queue(self.prefix, reg.address))
        )
        durable = reg.config.durable

        def declare(ch: AbstractRobustChannel) -> Awaitable[AbstractQueue]:
            return ch.declare_queue(
                consumer.queue, durable=durable, auto_delete=not durable, robust=False
            )

        await self._consume(
            consumer,
            declare,
            self._on_command_delivery,
            bindings=[topo.command_binding(reg.address)],
        )

    async def _unbind_command(self, reg: RegisteredCommand) -> None:
        consumer = self._cmd_consumers.pop(reg.address.key, None)
        if consumer is not None:
            await self._cancel(consumer, delete_if_unused=reg.config.durable)

    async def _on_command_delivery(
        self, consumer: _Consumer, incoming: AbstractIncomingMessage
    ) -> None:
        route = next((k for k, c in self._cmd_consumers.items() if c is consumer), None)
        if route is None:  # unregistered meanwhile: another instance may still serve it
            await self._settle(incoming, ack=False, requeue=True)
            return
        self.core.spawn(
            self._serve_command(incoming, route=route, no_ack=False), name=f"cmd-{consumer.queue}"
        )

    async def _serve_command(
        self,
        incoming: AbstractIncomingMessage,
        *,
        route: tuple[str, str, str] | None,
        no_ack: bool,
    ) -> None:
        """Serve a command received on ``route`` (None: this instance's reply queue).

        What the body says never decides what runs nor whether it comes back: a body
        that disagrees with its route is answered 400 and acked (see BridgeCore).
        """
        with self.core.track():
            command = self.core.decode_or_reject(
                incoming.body, f"AMQP delivery {incoming.message_id}"
            )
            if not isinstance(command, Command):
                if command is not None:
                    self.log.warning("non-command %s on a command queue dropped", command.id)
                if not no_ack:
                    await self._settle(incoming, ack=True)
                return
            if not no_ack and not self.core.accepting:
                await self._settle(incoming, ack=False, requeue=True)  # for another instance
                return
            reg = self.core.command(route if route is not None else command.receiver.key)
            acked = no_ack
            if reg is not None and reg.config.autoacknowledge and not acked:
                await self._settle(incoming, ack=True)
                acked = True
            response = await self.core.handle_command(command, route=route)
            if response is None:  # expired: the invoker has its 504, nothing is answered
                if not acked:
                    await self._settle(incoming, ack=True)
                return
            sent = await self._reply(incoming, response)
            if not acked:
                await self._settle(incoming, ack=sent, requeue=True)

    # ------------------------------------------------------------------ replies
    async def _on_reply_delivery(
        self, _consumer: _Consumer, incoming: AbstractIncomingMessage
    ) -> None:
        message = self.core.decode_or_reject(incoming.body, f"reply queue {self.reply_queue}")
        if message is None:
            return
        if isinstance(message, Command):  # pinned to this instance
            self.core.spawn(
                self._serve_command(incoming, route=None, no_ack=True), name="cmd-pinned"
            )
        elif message.message_type in (
            MessageType.COMMAND_SUCCESS_RESPONSE,
            MessageType.COMMAND_ERROR_RESPONSE,
        ):
            if not self.core.resolve_response(message):  # type: ignore[arg-type]
                self.log.debug("late response %s ignored", message.correlation_id)
        else:
            self.log.warning("unexpected %s on the reply queue dropped", message.message_type)

    # ----------------------------------------------------------- subscriptions
    async def _bind_subscription(self, reg: RegisteredSubscription) -> None:
        if not self._link_up.is_set():
            self.log.info(
                "broker down: subscription %s binds on reconnect", reg.subscription.subscriber
            )
            return
        async with self._lock:
            await self._bind_subscription_locked(reg)

    async def _bind_subscription_locked(self, reg: RegisteredSubscription) -> None:
        if not self.core.accepting:
            return
        sub = reg.subscription
        queue = topo.subscription_queue(self.prefix, sub, self.instance_id)
        consumer = self._sub_consumers.get(sub.key)
        if consumer is None or consumer.queue != queue:
            consumer = self._sub_consumers[sub.key] = _Consumer(queue)
        options = topo.subscription_queue_options(sub)

        def declare(ch: AbstractRobustChannel) -> Awaitable[AbstractQueue]:
            return ch.declare_queue(queue, robust=False, **options)

        if self.native_dead_letter and consumer.epoch != self._epoch:
            assert self._admin is not None
            await self._admin.declare_queue(
                topo.dead_letter_queue(self.prefix, sub), durable=True, robust=False
            )
        await self._consume(
            consumer,
            declare,
            self._on_subscription_delivery,
            bindings=topo.subscription_bindings(sub),
        )

    async def _unbind_subscription(self, reg: RegisteredSubscription) -> None:
        consumer = self._sub_consumers.pop(reg.subscription.key, None)
        if consumer is not None:
            await self._cancel(consumer, delete_if_unused=True)

    async def _on_subscription_delivery(
        self, consumer: _Consumer, incoming: AbstractIncomingMessage
    ) -> None:
        self.core.spawn(self._serve_subscription(consumer, incoming), name=f"sub-{consumer.queue}")

    def _subscription_for(self, consumer: _Consumer) -> RegisteredSubscription | None:
        for key, known in self._sub_consumers.items():
            if known is consumer:
                return self.core.subscription(key)
        return None

    async def _serve_subscription(
        self, consumer: _Consumer, incoming: AbstractIncomingMessage
    ) -> None:
        with self.core.track():
            reg = self._subscription_for(consumer)
            if reg is None or not self.core.accepting:
                await self._settle(incoming, ack=False, requeue=True)
                return
            sub = reg.subscription
            message = await self.core.decode_for_subscription(
                reg, incoming.body, f"queue {consumer.queue}"
            )
            if message is None:
                await self._dead_letter_native(reg, incoming, self._malformed_reason(incoming), 1)
                await self._settle(incoming, ack=True)
                return
            commands_ok = sub.message_type is MessageType.COMMAND
            if (
                not reg.matches(message)
                or (message.message_type is MessageType.COMMAND and not commands_ok)
                or (message.message_type is not MessageType.COMMAND and not is_event(message))
            ):
                await self._settle(incoming, ack=True)
                return
            attempt = self._attempt_of(incoming)
            acked = False
            if sub.autoacknowledge:
                await self._settle(incoming, ack=True)
                acked = True
            outcome = await self.core.handle_subscription(reg, message, attempt)
            ok = True
            if outcome.disposition is Disposition.RETRY:
                ok = await self._schedule_retry(
                    reg, consumer.queue, incoming, attempt, outcome.delay_s
                )
            elif outcome.disposition is Disposition.DEAD_LETTER:
                ok = await self._dead_letter_native(reg, incoming, outcome.reason, attempt)
            if not acked:
                await self._settle(incoming, ack=ok, requeue=True)

    def _attempt_of(self, incoming: AbstractIncomingMessage) -> int:
        """The attempt this delivery is: only our own signed retry copies count beyond 1
        (a publisher setting the header cannot skip retries)."""
        headers = incoming.headers or {}
        return self._signer.verified(
            incoming.message_id,
            headers.get(RETRY_ATTEMPT_HEADER),
            headers.get(RETRY_SIGNATURE_HEADER),
        )

    def _attempt_headers(self, incoming: AbstractIncomingMessage, attempt: int) -> dict[str, Any]:
        return {
            RETRY_ATTEMPT_HEADER: attempt,
            RETRY_SIGNATURE_HEADER: self._signer.sign(incoming.message_id or "", attempt),
        }

    def _malformed_reason(self, incoming: AbstractIncomingMessage) -> str:
        try:
            decode(incoming.body, max_bytes=self.max_message_bytes)
        except MessageDecodeError as exc:
            return f"malformed message: {exc}"
        return "malformed message"

    def _copy(self, incoming: AbstractIncomingMessage, **headers: Any) -> aio_pika.Message:
        return aio_pika.Message(
            incoming.body,
            headers=topo.republish_headers(incoming.headers, **headers),
            content_type=incoming.content_type,
            content_encoding=incoming.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=incoming.message_id,
            correlation_id=incoming.correlation_id,
            timestamp=incoming.timestamp,
            type=incoming.type,
        )

    async def _schedule_retry(
        self,
        reg: RegisteredSubscription,
        source: str,
        incoming: AbstractIncomingMessage,
        attempt: int,
        delay_s: float,
    ) -> bool:
        """Send a copy back to ``source`` after ``delay_s``: it waits out a per-message TTL
        in the delay queue of ``attempt``, which dead-letters it back to ``source``."""
        copy = self._copy(incoming, **self._attempt_headers(incoming, attempt + 1))
        delay_ms = max(round(delay_s * 1000), 0)
        try:
            if delay_ms == 0:
                await self._publish_amqp(
                    copy, routing_key=source, default_exchange=True, mandatory=True
                )
                return True
            copy.expiration = delay_ms / 1000  # aio-pika takes seconds
            target = topo.retry_queue(source, attempt)
            for first in (True, False):
                await self._ensure_retry_queue(reg, source, target)
                try:
                    await self._publish_amqp(
                        copy, routing_key=target, default_exchange=True, mandatory=True
                    )
                    return True
                except _Unroutable:
                    self._declared.pop(target, None)  # gone (expired or broker restart)
                    if not first:
                        raise
        except Exception as exc:
            self.log.warning("could not schedule retry on %s (%s); message requeued", source, exc)
        return False

    async def _ensure_retry_queue(
        self, reg: RegisteredSubscription, source: str, name: str
    ) -> None:
        """Declare a delay queue once per connection (concurrent callers share the call)."""
        if self._declared.get(name) == self._epoch:
            return
        pending = self._declaring.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._declare_retry_queue(reg, source, name))
            self._declaring[name] = pending
            pending.add_done_callback(lambda _f: self._declaring.pop(name, None))
        await asyncio.wait_for(asyncio.shield(pending), self.publish_timeout_s)

    async def _declare_retry_queue(
        self, reg: RegisteredSubscription, source: str, name: str
    ) -> None:
        sub = reg.subscription
        epoch = self._epoch
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": source,
        }
        if not sub.shared:  # per-instance: let the broker drop it once the instance is gone
            policy = sub.failure
            longest = policy.max_retry_delay_ms * (1 + policy.jitter)
            arguments["x-expires"] = round(longest + self.retry_queue_idle_s * 1000)
        assert self._admin is not None
        await self._admin.declare_queue(
            name, durable=sub.durable and sub.shared, arguments=arguments, robust=False
        )
        self._declared[name] = epoch

    async def _dead_letter_native(
        self,
        reg: RegisteredSubscription,
        incoming: AbstractIncomingMessage,
        reason: str,
        attempts: int,
    ) -> bool:
        """Keep a copy in the subscription's dead letter queue, with the reason."""
        if not self.native_dead_letter:
            return True
        copy = self._copy(
            incoming,
            **{
                DEAD_LETTER_REASON_HEADER: reason[:_MAX_REASON],
                RETRY_ATTEMPT_HEADER: attempts,
            },
        )
        try:
            await self._publish_amqp(
                copy,
                routing_key=topo.dead_letter_queue(self.prefix, reg.subscription),
                default_exchange=True,
                mandatory=True,
            )
        except Exception as exc:
            self.log.warning("could not keep dead letter for %s: %s", incoming.message_id, exc)
            return False
        return True

    async def dead_letters(self, limit: int = 100) -> list[tuple[dict[str, str], bytes]]:
        """Peek at the native dead letters of this instance's subscriptions: ``(headers,
        data)`` pairs, oldest first per queue; each is handed back to its queue unchanged."""
        assert self._admin is not None
        out: list[tuple[dict[str, str], bytes]] = []
        names = {topo.dead_letter_queue(self.prefix, r.subscription)
                 for r in self.core.registered_subscriptions}
        for name in sorted(names):
            queue = await self._admin.declare_queue(name, passive=True, robust=False)
            taken: list[AbstractIncomingMessage] = []
            try:
                while len(out) < limit:
                    msg = await queue.get(no_ack=False, fail=False)
                    if msg is None:
                        break
                    taken.append(msg)
                    headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
                    out.append((headers, bytes(msg.body)))
            finally:
                for msg in taken:
                    await msg.nack(requeue=True)
        return out

    # ------------------------------------------------------------ raw input
    async def publish_raw(
        self,
        raw: bytes,
        headers: dict[str, Any] | None = None,
        *,
        extra_headers: dict[str, Any] | None = None,
    ) -> None:
        """Put raw bytes on the wire (for tests and tools).

        With ``headers`` (or when ``raw`` decodes, headers derived from it) the
        bytes go through the exchange like any message; otherwise they are put
        straight into this instance's subscription queues, where the consumer
        rejects them (logged, counted and dead-lettered). ``extra_headers`` are
        added as a foreign publisher could (a forged retry attempt, say).
        """
        message_id = None
        if headers is None:
            try:
                decoded = decode(raw, max_bytes=None)
                headers = topo.message_headers(decoded)
                message_id = decoded.id
            except MessageDecodeError:
                headers = None
        routed = headers is not None
        message = aio_pika.Message(
            bytes(raw),
            headers={**(headers or {}), **(extra_headers or {})},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
        )
        if routed:
            await self._publish_amqp(message)
            return
        for consumer in list(self._sub_consumers.values()):
            await self._publish_amqp(message, routing_key=consumer.queue, default_exchange=True)

    async def publish_raw_command(self, raw: bytes, route: Address) -> None:
        """Tests only: put ``raw`` on the queue that serves the command at ``route``, as a
        publisher allowed on that route could, whatever the body says."""
        await self._publish_amqp(
            aio_pika.Message(bytes(raw), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=topo.command_queue(self.prefix, route),
            default_exchange=True,
        )

    # ------------------------------------------------------------------ intake
    async def _stop_intake(self) -> None:
        for consumer in list(self._cmd_consumers.values()):
            await self._cancel(consumer)
        for key, consumer in list(self._sub_consumers.items()):
            reg = self.core.subscription(key)
            gone = reg is not None and topo.deleted_when_unused(reg.subscription)
            await self._cancel(consumer, delete_if_unused=gone)
