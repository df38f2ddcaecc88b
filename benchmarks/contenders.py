"""What `make bench` races: our adapters, the raw client libraries and FastStream.

Every contender offers the same small surface (``call`` one command round trip,
``emit`` one event to the ``e1``/``e4`` names, counters of deliveries), so the
runner can measure them alike and interleave them in rounds. FastStream is a
benchmark dependency only (the ``[bench]`` extra); the product never imports it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from reference_services.adapters.registry import resolve
from reference_services.runtime.definitions import Subscription
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandPayload,
    CustomMessage,
    MessageType,
    SenderAddress,
    success_response,
)

PAYLOAD = {"user": {"id": "u" * 32, "name": "Ada Lovelace", "tags": ["a", "b"]}, "n": 1.5}
SENDER = SenderAddress(service_name="bench", service_version="1", service_target="client",
                       instance_id="bench-client")
TARGET = Address(service_name="bench", service_version="1", service_target="echo")
#: event names: ``e1`` has one subscriber, ``e4`` four
EVENT_FANOUT = {"e1": 1, "e4": 4}


class Ctx:
    """A :class:`BuildContext` for the bench: broker URLs, a unique prefix, a shared dict."""

    def __init__(self, urls: dict[str, str], prefix: str, shared: dict[str, Any] | None = None,
                 **options: Any) -> None:
        self._urls = urls
        self.prefix = prefix
        self.shared = shared if shared is not None else {}
        self.options = options

    def url(self, service: str) -> str:
        return self._urls[service]


def prefix(tag: str) -> str:
    return f"b{tag}{uuid.uuid4().hex[:8]}"


class Contender:
    """One implementation of the command and event paths."""

    label = "?"

    def __init__(self) -> None:
        self.received: dict[str, int] = {name: 0 for name in EVENT_FANOUT}
        self._targets: dict[str, tuple[int, asyncio.Event]] = {}

    async def setup(self) -> None: ...

    async def close(self) -> None: ...

    async def call(self) -> None:
        raise NotImplementedError

    async def emit(self, event: str) -> None:
        raise NotImplementedError

    def on_event(self, event: str) -> Callable[[Any], Awaitable[None]]:
        """A subscriber callback counting deliveries of ``event``."""

        async def handler(_body: Any) -> None:
            self.delivered(event)

        return handler

    def delivered(self, event: str) -> None:
        self.received[event] += 1
        target = self._targets.get(event)
        if target is not None and self.received[event] >= target[0]:
            target[1].set()

    async def wait_received(self, event: str, count: int, timeout_s: float) -> bool:
        done = asyncio.Event()
        self._targets[event] = (count, done)
        if self.received[event] >= count:
            return True
        try:
            await asyncio.wait_for(done.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._targets.pop(event, None)


# ------------------------------------------------------------------------ ours
class Ours(Contender):
    """Two instances of one of our event bridges: a server with the echo command and the
    subscribers, a client that invokes and emits."""

    label = "ours"

    def __init__(
        self,
        adapter: str,
        urls: dict[str, str],
        *,
        durable: bool = True,
        typed: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.adapter = adapter
        self.durable = durable  # the subscriptions' (a durable one outlives its instance)
        #: the subscriptions name the message type (customMessage), not only the event
        self.message_type = MessageType.CUSTOM_MESSAGE if typed else None
        desc = resolve("event_bridge", adapter)
        ctx = Ctx(urls, prefix(adapter), **options)
        self.server = desc.build(ctx)
        self.client = desc.build(ctx)
        # as a service's context builds its commands: the sender names the invoking instance
        self.sender = SENDER.model_copy(update={"instance_id": self.client.instance_id})

    async def setup(self) -> None:
        await self.server.start()
        await self.client.start()

        # as a service answers (the responder names itself); an older runtime (the "before"
        # of a comparison) lacks the keyword and gets its sender rewritten by the bridge
        named = "responder_instance_id" in inspect.signature(success_response).parameters
        me = {"responder_instance_id": self.server.instance_id} if named else {}

        async def echo(cmd: Command) -> Any:
            return success_response(cmd, cmd.payload.payload, **me)

        await self.server.register_command(TARGET, echo)
        for event, subscribers in EVENT_FANOUT.items():
            for i in range(subscribers):
                async def on_event(_msg: Any, event: str = event) -> None:
                    self.delivered(event)

                await self.server.register_subscription(
                    Subscription(
                        subscriber=Address(service_name="bench", service_version="1",
                                           service_target=f"sub{event}x{i}"),
                        event_name=event,
                        message_type=self.message_type,
                        durable=self.durable,
                    ),
                    on_event,
                )
        # a first round trip: every binding is in place before anything is timed
        await self.call()

    async def close(self) -> None:
        await self.client.destroy()
        await self.server.destroy()

    async def call(self) -> None:
        await self.client.invoke(
            Command(sender=self.sender, receiver=TARGET, payload=CommandPayload(payload=PAYLOAD)),
            ttl_s=30,
        )

    async def emit(self, event: str) -> None:
        await self.client.emit_message(
            CustomMessage(sender=self.sender, event_name=event, payload=PAYLOAD)
        )


def _body() -> bytes:
    return json.dumps(PAYLOAD, separators=(",", ":")).encode()


# ------------------------------------------------------------------------ AMQP
class RawAmqp(Contender):
    """aio-pika with its defaults (publisher confirms): RPC over a queue and a reply queue,
    events on a fanout exchange per event name with one queue per subscriber.

    ``durable``: the subscribers' queues are durable and the events persistent (as our
    durable subscriptions are: the broker confirms an event once it is on disk); else
    auto-delete queues, where the broker keeps nothing on disk."""

    label = "raw"

    def __init__(self, url: str, *, durable: bool = True) -> None:
        super().__init__()
        self.url = url
        self.durable = durable
        self.p = prefix("amqp")
        self._pending: dict[str, asyncio.Future[Any]] = {}

    async def setup(self) -> None:
        import aio_pika

        self.server = await aio_pika.connect(self.url)
        self.conn = await aio_pika.connect(self.url)
        sch = await self.server.channel()
        self.ch = await self.conn.channel()
        self.exchange = self.ch.default_exchange
        queue = await sch.declare_queue(f"{self.p}.rpc", auto_delete=True)

        async def serve(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            await sch.default_exchange.publish(
                aio_pika.Message(msg.body, correlation_id=msg.correlation_id),
                routing_key=msg.reply_to or "",
            )
            await msg.ack()

        await queue.consume(serve)
        self.reply = await self.ch.declare_queue(exclusive=True)
        await self.reply.consume(self._on_reply, no_ack=True)
        self.fanouts: dict[str, Any] = {}
        for event, subscribers in EVENT_FANOUT.items():
            self.fanouts[event] = await self.ch.declare_exchange(
                f"{self.p}.{event}", aio_pika.ExchangeType.FANOUT, auto_delete=True
            )
            sx = await sch.get_exchange(f"{self.p}.{event}")
            for i in range(subscribers):
                q = await sch.declare_queue(
                    f"{self.p}.{event}.{i}", durable=self.durable, auto_delete=not self.durable
                )
                await q.bind(sx)

                async def on_event(msg: Any, event: str = event) -> None:
                    await msg.ack()
                    self.delivered(event)

                await q.consume(on_event)

    async def _on_reply(self, msg: Any) -> None:
        fut = self._pending.pop(msg.correlation_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(msg.body)

    async def close(self) -> None:
        if self.durable:
            await _delete_event_queues(self.url, self.p)
        await self.conn.close()
        await self.server.close()

    async def call(self) -> None:
        import aio_pika

        cid = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        await self.exchange.publish(
            aio_pika.Message(_body(), correlation_id=cid, reply_to=self.reply.name),
            routing_key=f"{self.p}.rpc",
        )
        await fut

    async def emit(self, event: str) -> None:
        import aio_pika

        await self.fanouts[event].publish(
            aio_pika.Message(
                _body(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                if self.durable
                else aio_pika.DeliveryMode.NOT_PERSISTENT,
            ),
            routing_key="",
        )


class RawAmqpPuristaWire(RawAmqp):
    """aio-pika doing a command round trip as PURISTA's wire has it (the events are
    :class:`RawAmqp`'s): the command goes to a headers exchange with PURISTA's routing
    header table, persistent, mandatory, with a message id, timestamp, type and
    expiration; the command queue is bound by messageType and receiver, the reply queue by
    ``replyTo``, and the response goes back through the exchange with its own header
    table. No runtime, no codec (the bodies are ready-made bytes of an envelope's size):
    what a PURISTA-speaking client cannot avoid, to set against the plain RPC above."""

    async def setup(self) -> None:
        import aio_pika

        await super().setup()
        sch = await self.server.channel(on_return_raises=True)
        self.wire_ch = await self.conn.channel(on_return_raises=True)
        self.wire_x = await self.wire_ch.declare_exchange(
            f"{self.p}.purista", aio_pika.ExchangeType.HEADERS, auto_delete=True
        )
        sx = await sch.get_exchange(f"{self.p}.purista")
        queue = await sch.declare_queue(f"{self.p}.wire-rpc", auto_delete=True)
        await queue.bind(sx, arguments={"x-match": "all", **_COMMAND_ROUTE})
        response_body = json.dumps(
            _envelope("commandSuccessResponse"), separators=(",", ":")
        ).encode()

        async def serve(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            headers = {**_RESPONSE_HEADERS, "replyTo": msg.reply_to or ""}
            await sx.publish(
                aio_pika.Message(
                    response_body, headers=headers, correlation_id=msg.correlation_id,
                    content_type="application/json", content_encoding="utf-8",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=uuid.uuid4().hex, timestamp=time.time(),
                    type="commandSuccessResponse",
                ),
                routing_key="",
                mandatory=False,
            )
            await msg.ack()

        await queue.consume(serve)
        self.wire_reply = await self.wire_ch.declare_queue(exclusive=True)
        await self.wire_reply.bind(
            self.wire_x, arguments={"x-match": "all", "replyTo": self.wire_reply.name}
        )
        await self.wire_reply.consume(self._on_reply, no_ack=True)
        self.command_body = json.dumps(_envelope("command"), separators=(",", ":")).encode()

    async def call(self) -> None:
        import aio_pika

        cid = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        await self.wire_x.publish(
            aio_pika.Message(
                self.command_body, headers=_COMMAND_HEADERS, correlation_id=cid,
                reply_to=self.wire_reply.name, content_type="application/json",
                content_encoding="utf-8", delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=uuid.uuid4().hex, timestamp=time.time(), type="command",
                expiration=30,
            ),
            routing_key="",
            mandatory=True,
        )
        await fut


_COMMAND_ROUTE = {
    "messageType": "command", "receiverServiceName": "bench",
    "receiverServiceVersion": "1", "receiverServiceTarget": "echo",
}
_COMMAND_HEADERS = {
    **_COMMAND_ROUTE, "senderServiceName": "bench", "senderServiceVersion": "1",
    "senderServiceTarget": "client", "senderInstanceId": "c" * 32,
}
_RESPONSE_HEADERS = {
    "messageType": "commandSuccessResponse", "senderServiceName": "bench",
    "senderServiceVersion": "1", "senderServiceTarget": "echo", "senderInstanceId": "s" * 32,
    "receiverServiceName": "bench", "receiverServiceVersion": "1",
    "receiverServiceTarget": "client", "receiverInstanceId": "c" * 32,
    "receiverServiceInstanceId": "c" * 32,
}


def _envelope(message_type: str) -> dict[str, Any]:
    """A PURISTA envelope of the bench's payload (ids and times fixed: the bytes' size is
    what matters here)."""
    return {
        "id": "i" * 32, "timestamp": 1_700_000_000_000, "contentType": "application/json",
        "contentEncoding": "utf-8", "correlationId": "k" * 32, "messageType": message_type,
        "sender": {"serviceName": "bench", "serviceVersion": "1", "serviceTarget": "client",
                   "instanceId": "c" * 32},
        "receiver": {"serviceName": "bench", "serviceVersion": "1", "serviceTarget": "echo"},
        "payload": {"payload": PAYLOAD} if message_type == "command" else PAYLOAD,
        "expiresAt": 1_700_000_030_000,
    }


async def _delete_event_queues(url: str, p: str) -> None:
    """Delete the ``<p>.<event>.<i>`` queues (durable ones outlive their connection)."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        for event, subscribers in EVENT_FANOUT.items():
            for i in range(subscribers):
                await ch.queue_delete(f"{p}.{event}.{i}")
    finally:
        await conn.close()


class _FastStream(Contender):
    """What the FastStream contenders share: the broker's life cycle, and ``call`` as
    ``broker.request`` to the ``<prefix>.rpc`` subscriber that returns its input."""

    label = "faststream"
    #: the keyword of ``broker.request`` that names the subscriber (``queue``, ``subject``)
    rpc_keyword = "queue"
    broker: Any
    p: str

    async def setup(self) -> None:
        await self.broker.start()

    async def close(self) -> None:
        await self.broker.stop()

    async def call(self) -> None:
        target = {self.rpc_keyword: f"{self.p}.rpc"}
        response = await self.broker.request(PAYLOAD, timeout=30, **target)
        await response.decode()


class FastStreamAmqp(_FastStream):
    """FastStream's RabbitBroker: ``broker.request`` to a subscriber that returns its
    input; events published to a fanout exchange consumed by N subscribers (``durable``:
    durable queues and persistent events, as :class:`RawAmqp`)."""

    def __init__(self, url: str, *, durable: bool = True) -> None:
        super().__init__()
        self.url, self.durable = url, durable
        from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

        self.p = prefix("fsamqp")
        self.broker = RabbitBroker(self.url_or(url), logger=None)
        self.exchanges = {
            event: RabbitExchange(f"{self.p}.{event}", type=ExchangeType.FANOUT, auto_delete=True)
            for event in EVENT_FANOUT
        }

        @self.broker.subscriber(RabbitQueue(f"{self.p}.rpc", auto_delete=True))
        async def echo(body: dict[str, Any]) -> dict[str, Any]:
            return body

        for event, subscribers in EVENT_FANOUT.items():
            for i in range(subscribers):
                self.broker.subscriber(
                    RabbitQueue(
                        f"{self.p}.{event}.{i}", durable=durable, auto_delete=not durable
                    ),
                    self.exchanges[event],
                )(self.on_event(event))

    @staticmethod
    def url_or(url: str) -> str:
        return url

    async def close(self) -> None:
        await super().close()
        if self.durable:
            await _delete_event_queues(self.url, self.p)

    async def emit(self, event: str) -> None:
        await self.broker.publish(PAYLOAD, exchange=self.exchanges[event], persist=self.durable)


# ------------------------------------------------------------------------ NATS
class RawNats(Contender):
    """nats-py: core request/reply, and JetStream publish + push consumers for events."""

    label = "raw"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.p = prefix("nats")

    async def setup(self) -> None:
        import nats

        self.server = await nats.connect(self.url)
        self.nc = await nats.connect(self.url)
        self.js = self.nc.jetstream()

        async def serve(msg: Any) -> None:
            await msg.respond(msg.data)

        await self.server.subscribe(f"{self.p}.rpc", cb=serve)
        await self.server.flush()
        await self.js.add_stream(name=self.p, subjects=[f"{self.p}.ev.>"])
        sjs = self.server.jetstream()
        for event, subscribers in EVENT_FANOUT.items():
            for i in range(subscribers):
                async def on_event(msg: Any, event: str = event) -> None:
                    await msg.ack()
                    self.delivered(event)

                await sjs.subscribe(f"{self.p}.ev.{event}", durable=f"{event}x{i}", cb=on_event,
                                    manual_ack=True, stream=self.p)

    async def close(self) -> None:
        await self.js.delete_stream(self.p)
        await self.nc.close()
        await self.server.close()

    async def call(self) -> None:
        await self.nc.request(f"{self.p}.rpc", _body(), timeout=30)

    async def emit(self, event: str) -> None:
        await self.js.publish(f"{self.p}.ev.{event}", _body(), stream=self.p)


class FastStreamNats(_FastStream):
    """FastStream's NatsBroker: core request/reply, JetStream subscribers for events."""

    rpc_keyword = "subject"

    def __init__(self, url: str) -> None:
        super().__init__()
        from faststream.nats import JStream, NatsBroker, PullSub  # noqa: F401

        self.p = prefix("fsnats")
        self.broker = NatsBroker(url, logger=None)
        self.stream = JStream(self.p, subjects=[f"{self.p}.ev.>"])

        @self.broker.subscriber(f"{self.p}.rpc")
        async def echo(body: dict[str, Any]) -> dict[str, Any]:
            return body

        for event, subscribers in EVENT_FANOUT.items():
            for i in range(subscribers):
                self.broker.subscriber(
                    f"{self.p}.ev.{event}", stream=self.stream, durable=f"{event}x{i}"
                )(self.on_event(event))

    async def emit(self, event: str) -> None:
        await self.broker.publish(PAYLOAD, f"{self.p}.ev.{event}", stream=self.p)


# ------------------------------------------------------------------------ MQTT
class RawMqtt(Contender):
    """paho-mqtt 2 (its own network thread, as our bridge uses it), MQTT 5, QoS 1:
    request/response over two topics; events on one topic per name, N subscriber clients."""

    label = "raw"

    def __init__(self, url: str) -> None:
        super().__init__()
        host_port = url.split("://", 1)[1].rsplit("@", 1)[-1]
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.p = prefix("mqtt")
        self._pending: dict[bytes, asyncio.Future[Any]] = {}
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._clients: list[Any] = []

    def _client(self, on_message: Callable[[Any, Any, Any], None]) -> Any:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_message = on_message
        up = threading.Event()
        c.on_connect = lambda *_a: up.set()
        c.connect(self.host, self.port)
        c.loop_start()
        if not up.wait(10):
            raise RuntimeError("raw MQTT client did not connect")
        self._clients.append(c)
        return c

    async def setup(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop

        def serve(client: Any, _u: Any, msg: Any) -> None:
            corr, _, body = msg.payload.partition(b"|")
            client.publish(f"{self.p}/rsp", corr + b"|" + body, qos=1)

        server = await asyncio.to_thread(self._client, serve)
        server.subscribe(f"{self.p}/req", qos=1)

        def on_response(_c: Any, _u: Any, msg: Any) -> None:
            corr = msg.payload.partition(b"|")[0]
            loop.call_soon_threadsafe(self._resolve, corr)

        self.c = await asyncio.to_thread(self._client, on_response)
        self.c.subscribe(f"{self.p}/rsp", qos=1)

        def on_publish(_c: Any, _u: Any, mid: int, *_a: Any) -> None:
            loop.call_soon_threadsafe(self._acked, mid)

        self.c.on_publish = on_publish
        for event, subscribers in EVENT_FANOUT.items():
            for _ in range(subscribers):
                def on_event(_c: Any, _u: Any, _m: Any, event: str = event) -> None:
                    loop.call_soon_threadsafe(self.delivered, event)

                sub = await asyncio.to_thread(self._client, on_event)
                sub.subscribe(f"{self.p}/ev/{event}", qos=1)
        await asyncio.sleep(0.5)  # SUBACKs (paho's subscribe does not wait for them)

    def _resolve(self, corr: bytes) -> None:
        fut = self._pending.pop(corr, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _acked(self, mid: int) -> None:
        fut = self._acks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def close(self) -> None:
        for c in self._clients:
            c.disconnect()
            await asyncio.to_thread(c.loop_stop)

    async def call(self) -> None:
        corr = uuid.uuid4().hex.encode()
        fut = self.loop.create_future()
        self._pending[corr] = fut
        self.c.publish(f"{self.p}/req", corr + b"|" + _body(), qos=1)
        await fut

    async def emit(self, event: str) -> None:
        fut = self.loop.create_future()
        info = self.c.publish(f"{self.p}/ev/{event}", _body(), qos=1)
        self._acks[info.mid] = fut
        if info.is_published():
            self._acked(info.mid)
        await fut
