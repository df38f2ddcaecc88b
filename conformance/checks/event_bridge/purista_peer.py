"""A PURISTA v3 peer played with the raw broker clients (aio-pika, nats-py, paho-mqtt).

Nothing here uses the bridges' own code: every name, header and body is built
from PURISTA's conventions as ``purista_wire.json`` (beside this file) records
them with their sources, so a check can tell whether a bridge talks to a
PURISTA TypeScript service. Each peer can

- ``capture()``: record everything that lands under the prefix (route, headers,
  properties, body);
- ``publish_event(body)``: publish an event exactly as PURISTA does;
- ``serve(address, handler)``: serve a command the PURISTA way (its queue /
  subject filter / shared topic, its reply routing);
- ``invoke(command, ttl)``: send a command the PURISTA way and wait for the
  response where PURISTA waits for it;
- ``serve_subscription(subscriber, event_name, handler, durable=...)``: be a
  member of a shared subscription to ``customMessage`` events named
  ``event_name`` the PURISTA way (its queue / queue group / share group;
  ``durable`` also means manually acknowledged, as PURISTA's defaults go).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "purista_wire.json").read_text("utf-8")
)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
EventHandler = Callable[[dict[str, Any]], Awaitable[None]]


def snake(value: str) -> str:
    """PURISTA's convertToSnakeCase, looked up in the golden table (no project code)."""
    table = VECTORS["snake_case"]
    if value not in table:
        raise KeyError(f"no golden snake-case vector for {value!r}; add one to purista_wire.json")
    return str(table[value])


def new_id() -> str:
    """A PURISTA id: 32 lowercase hex characters."""
    return secrets.token_hex(16)


def now_ms() -> int:
    return int(time.time() * 1000)


def address(service: str, version: str, target: str, instance: str | None = None) -> dict:
    out = {"serviceName": service, "serviceVersion": version, "serviceTarget": target}
    if instance is not None:
        out["instanceId"] = instance
    return out


def purista_event(sender: dict, event_name: str, payload: Any) -> dict[str, Any]:
    """A custom message as PURISTA's ``JSON.stringify`` writes it."""
    return {
        "id": new_id(),
        "timestamp": now_ms(),
        "messageType": "customMessage",
        "contentType": "application/json",
        "contentEncoding": "utf-8",
        "otp": "{}",
        "traceId": new_id(),
        "sender": sender,
        "eventName": event_name,
        "payload": payload,
    }


def purista_command(sender: dict, receiver: dict, payload: Any, parameter: Any) -> dict:
    return {
        "id": new_id(),
        "timestamp": now_ms(),
        "messageType": "command",
        "contentType": "application/json",
        "contentEncoding": "utf-8",
        "otp": "{}",
        "traceId": new_id(),
        "correlationId": new_id(),
        "sender": sender,
        "receiver": receiver,
        "payload": {"payload": payload, "parameter": parameter},
    }


def purista_success(command: dict, instance: str, result: Any) -> dict[str, Any]:
    return {
        "id": command["id"],
        "timestamp": now_ms(),
        "messageType": "commandSuccessResponse",
        "contentType": "application/json",
        "contentEncoding": "utf-8",
        "otp": "{}",
        "traceId": command.get("traceId"),
        "correlationId": command["correlationId"],
        "sender": {**command["receiver"], "instanceId": instance},
        "receiver": command["sender"],
        "payload": result,
    }


def purista_error(command: dict, instance: str, status: int, message: str) -> dict[str, Any]:
    return {
        "id": command["id"],
        "timestamp": now_ms(),
        "messageType": "commandErrorResponse",
        "contentType": "application/json",
        "contentEncoding": "utf-8",
        "otp": "{}",
        "traceId": command.get("traceId"),
        "correlationId": command["correlationId"],
        "isHandledError": True,
        "sender": {**command["receiver"], "instanceId": instance},
        "receiver": command["sender"],
        "payload": {"status": status, "message": message, "traceId": command.get("traceId")},
    }


@dataclass
class Landed:
    """One message as the broker carried it."""

    route: str  # NATS subject / MQTT topic / AMQP "exchange:<name>"
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Peer:
    """Common state: the prefix, this peer's instance id, what was captured."""

    url: str
    prefix: str
    instance_id: str = field(default_factory=new_id)
    landed: list[Landed] = field(default_factory=list)


def _header_value(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def amqp_headers(msg: dict[str, Any], *, reply_to: str | None = None) -> dict[str, Any]:
    """PURISTA's AMQP routing headers of a message (undefined ones left out)."""
    sender, receiver = msg["sender"], msg.get("receiver")
    out: dict[str, Any] = {
        "messageType": msg["messageType"],
        "senderServiceName": sender["serviceName"],
        "senderServiceVersion": sender["serviceVersion"],
        "senderServiceTarget": sender["serviceTarget"],
        "senderInstanceId": sender["instanceId"],
    }
    if receiver is not None:
        out["receiverServiceName"] = receiver["serviceName"]
        out["receiverServiceVersion"] = receiver["serviceVersion"]
        out["receiverServiceTarget"] = receiver["serviceTarget"]
        if receiver.get("instanceId") and msg["messageType"] != "command":
            out["receiverServiceInstanceId"] = receiver["instanceId"]
    for key in ("eventName", "principalId", "tenantId"):
        if msg.get(key):
            out[key] = msg[key]
    if reply_to is not None:
        out["replyTo"] = reply_to
    return out


class AmqpPeer(Peer):
    """PURISTA's AMQP bridge: headers exchange ``<prefix>``, broker-named reply queue
    bound by ``replyTo``, command queues ``<prefix>.cmd.<svc>.<ver>.<target>``."""

    async def start(self) -> None:
        import aio_pika

        self._aio_pika = aio_pika
        self._conn = await aio_pika.connect(self.url)
        self._ch = await self._conn.channel()
        self._own_queues: list[str] = []
        self._ex = await self._ch.declare_exchange(
            self.prefix, aio_pika.ExchangeType.HEADERS, durable=True
        )
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        reply = await self._ch.declare_queue("", exclusive=True, auto_delete=True)
        await reply.bind(self._ex, "", arguments={"x-match": "all", "replyTo": reply.name})
        self.reply_queue = reply.name
        await reply.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, incoming: Any) -> None:
        body = json.loads(incoming.body)
        future = self._pending.pop(body.get("correlationId", ""), None)
        if future is not None and not future.done():
            future.set_result(body)

    async def capture(self) -> None:
        queue = await self._ch.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(self._ex, "", arguments={"x-match": "all"})

        async def on(incoming: Any) -> None:
            props = {
                "message_id": incoming.message_id,
                "correlation_id": incoming.correlation_id,
                "content_type": incoming.content_type,
                "content_encoding": incoming.content_encoding,
                "type": incoming.type,
                "reply_to": incoming.reply_to,
                "expiration": incoming.expiration,
                "delivery_mode": int(incoming.delivery_mode or 0),
                "timestamp_raw": self._raw_timestamp(incoming),
            }
            headers = {k: _header_value(v) for k, v in (incoming.headers or {}).items()}
            self.landed.append(Landed(f"exchange:{self.prefix}", headers, props, incoming.body))

        await queue.consume(on, no_ack=True)

    @staticmethod
    def _raw_timestamp(incoming: Any) -> int | None:
        stamp = incoming.timestamp
        if stamp is None:
            return None
        # The client reads a value above 2**32 as ms and anything else as s; in ms this is
        # the sent value when it was ms, and a whole second when it was s.
        return round(stamp.timestamp() * 1000)

    def _message(self, body: dict[str, Any], **props: Any) -> Any:
        aio_pika = self._aio_pika
        return aio_pika.Message(
            json.dumps(body).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            message_id=body["id"],
            type=body["messageType"],
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **props,
        )

    async def publish_event(self, body: dict[str, Any]) -> None:
        await self._ex.publish(self._message(body, headers=amqp_headers(body)), "")

    async def invoke(self, command: dict[str, Any], ttl_s: float) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        self._pending[command["correlationId"]] = future
        msg = self._message(
            command,
            headers=amqp_headers(command),
            correlation_id=command["correlationId"],
            reply_to=self.reply_queue,
            expiration=ttl_s,
        )
        await self._ex.publish(msg, "")
        return await asyncio.wait_for(future, ttl_s)

    async def serve(self, addr: dict[str, str], handler: Handler) -> None:
        name = (
            f"{self.prefix}.cmd.{addr['serviceName']}.{addr['serviceVersion']}."
            f"{addr['serviceTarget']}"
        )
        queue = await self._ch.declare_queue(name, durable=False, auto_delete=True)
        await queue.bind(
            self._ex,
            "",
            arguments={
                "x-match": "all",
                "messageType": "command",
                "receiverServiceName": addr["serviceName"],
                "receiverServiceVersion": addr["serviceVersion"],
                "receiverServiceTarget": addr["serviceTarget"],
            },
        )

        async def on(incoming: Any) -> None:
            command = json.loads(incoming.body)
            response = await handler(command)
            headers = amqp_headers(response, reply_to=incoming.reply_to)
            await self._ex.publish(
                self._message(response, headers=headers, correlation_id=incoming.correlation_id),
                "",
            )

        await queue.consume(on, no_ack=True)

    async def serve_subscription(
        self,
        subscriber: dict[str, str],
        event_name: str,
        handler: EventHandler,
        *,
        durable: bool = False,
        typed: bool = True,
    ) -> None:
        # PURISTA: assertQueue(<prefix>.sub.<svc>.<ver>.<target>, {durable}) -> amqplib
        # leaves autoDelete false and sends no arguments
        name = (
            f"{self.prefix}.sub.{subscriber['serviceName']}."
            f"{subscriber['serviceVersion']}.{subscriber['serviceTarget']}"
        )
        queue = await self._ch.declare_queue(name, durable=durable, auto_delete=False)
        binding = {"x-match": "all", "eventName": event_name}
        if typed:  # undefined keys are left out of PURISTA's binding
            binding["messageType"] = "customMessage"
        await queue.bind(self._ex, "", arguments=binding)

        async def on(incoming: Any) -> None:
            await handler(json.loads(incoming.body))
            if durable:
                await incoming.ack()

        await queue.consume(on, no_ack=not durable)  # PURISTA: noAck = autoacknowledge
        self._own_queues.append(name)

    async def close(self) -> None:
        for name in self._own_queues:  # PURISTA leaves them; tests clean up
            try:
                await self._ch.queue_delete(name)
            except Exception as exc:
                logging.getLogger("conformance.purista_peer").info(
                    "deleting %s failed: %s", name, exc
                )
        await self._conn.close()


def topic_levels(msg: dict[str, Any], empty: str) -> list[str]:
    """The twelve snake-cased levels PURISTA's NATS subjects and MQTT topics are made of
    (``empty`` for a missing one)."""
    sender, receiver = msg["sender"], msg.get("receiver") or {}
    parts = [
        msg["messageType"],
        msg.get("principalId") or empty,
        msg.get("tenantId") or empty,
        sender["instanceId"],
        sender["serviceName"],
        sender["serviceVersion"],
        sender["serviceTarget"],
        msg.get("eventName") or empty,
        receiver.get("instanceId") or empty,
        receiver.get("serviceName") or empty,
        receiver.get("serviceVersion") or empty,
        receiver.get("serviceTarget") or empty,
    ]
    return [snake(p) for p in parts]


def nats_subject(prefix: str, msg: dict[str, Any], empty: str) -> str:
    return ".".join([prefix, *topic_levels(msg, empty)])


def nats_headers(msg: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in amqp_headers(msg).items() if k != "receiverServiceInstanceId"}


class NatsPeer(Peer):
    """PURISTA's NATS bridge: snake-cased 13-token subjects, ``empty`` markers, core
    request/reply on ``_INBOX``, queue group ``PURISTA_QUEUE_<SVC>_<VER>_<TARGET>``."""

    async def start(self) -> None:
        import nats

        self._nc = await nats.connect(self.url)
        self.deliveries: list[tuple[str, int]] = []  # JetStream: (message id, delivery count)
        self._tasks: set[asyncio.Future[None]] = set()

    async def _fence(self) -> None:
        """Return once the server has processed everything sent so far (a SUB, a PUB).

        nats-py's ``flush()`` writes its PING straight to the socket, ahead of commands
        still queued for its flusher task, so the PONG can answer before the server read
        a SUB sent just before: a publish from another connection then misses the new
        subscription. Measured at load 16-23 with a subscribe + flush on one connection
        and a publish right after on another: 89, 101 and 110 of 3000 publishes missed,
        0 of 3000 with a second flush, whose PING is written after the SUB. With
        ``wire.purista.command_out``'s sequence (capture ``<prefix>.>``, serve, invoke at
        once): 34 of 1000 invocations reached only the capture subscription, which
        answers nothing (a 504 after the ttl; its interest keeps "no responders" away),
        0 of 1000 with the second flush.
        """
        await self._nc.flush()
        await self._nc.flush()

    async def close(self) -> None:
        """Close the connection (idempotent); handlers still running are abandoned."""
        for task in list(self._tasks):
            task.cancel()
        if not self._nc.is_closed:
            await self._nc.close()

    async def capture(self) -> None:
        async def on(msg: Any) -> None:
            self.landed.append(Landed(msg.subject, dict(msg.headers or {}), {}, msg.data))

        await self._nc.subscribe(f"{self.prefix}.>", cb=on)
        await self._fence()

    async def publish_event(self, body: dict[str, Any]) -> None:
        await self._nc.publish(
            nats_subject(self.prefix, body, "__empty__"),
            json.dumps(body).encode(),
            headers=nats_headers(body),
        )
        await self._fence()

    async def invoke(self, command: dict[str, Any], ttl_s: float) -> dict[str, Any]:
        reply = await self._nc.request(
            nats_subject(self.prefix, command, "__empty__"),
            json.dumps(command).encode(),
            timeout=ttl_s,
            headers=nats_headers(command),
        )
        return json.loads(reply.data)  # type: ignore[no-any-return]

    async def serve(self, addr: dict[str, str], handler: Handler) -> None:
        flt = ".".join(
            [
                self.prefix,
                "command",
                *["*"] * 8,
                snake(addr["serviceName"]),
                snake(addr["serviceVersion"]),
                snake(addr["serviceTarget"]),
            ]
        )
        group = (
            f"{self.prefix}_queue_{addr['serviceName']}_{addr['serviceVersion']}_"
            f"{addr['serviceTarget']}"
        ).upper()

        async def on(msg: Any) -> None:
            response = await handler(json.loads(msg.data))
            await msg.respond(json.dumps(response).encode())

        await self._nc.subscribe(flt, queue=group, cb=on)
        await self._fence()

    @staticmethod
    def subscription_filter(prefix: str, event_name: str, typed: bool = True) -> str:
        """PURISTA's filter of a subscription to (customMessage) ``event_name``."""
        kind = snake("customMessage") if typed else "*"
        return ".".join([prefix, kind, *["*"] * 6, snake(event_name), *["*"] * 4])

    async def watch_dead_letters(self, subscription_filter: str) -> list[Landed]:
        """Read PURISTA's dead letters of a subscription the way one reads them from a
        PURISTA fleet: a JetStream consumer on ``<filter>.dead-letter`` (whichever stream
        holds that subject; it keeps them only while a consumer reads: Interest)."""
        got: list[Landed] = []

        async def on(msg: Any) -> None:
            got.append(Landed(msg.subject, dict(msg.headers or {}), {}, msg.data))
            await msg.ack()

        await self._nc.jetstream().subscribe(f"{subscription_filter}.dead-letter", cb=on)
        return got

    async def serve_subscription(
        self,
        subscriber: dict[str, str],
        event_name: str,
        handler: EventHandler,
        *,
        durable: bool = False,
        typed: bool = True,
        ack_wait_s: float = 30.0,
    ) -> None:
        if durable:
            await self._serve_jetstream(subscriber, event_name, handler, typed, ack_wait_s)
            return
        # PURISTA: snake(field ?? '*') per token; a shared core subscription joins the
        # subscriber's queue group (the command group's name, on the raw values)
        flt = self.subscription_filter(self.prefix, event_name, typed)
        group = (
            f"{self.prefix}_queue_{subscriber['serviceName']}_"
            f"{subscriber['serviceVersion']}_{subscriber['serviceTarget']}"
        ).upper()

        async def on(msg: Any) -> None:
            await handler(json.loads(msg.data))

        await self._nc.subscribe(flt, queue=group, cb=on)
        await self._fence()

    # ---- PURISTA's JetStream subscription (durable, manual ack or failure handling)
    JS_API = "$JS.API"

    async def _js_api(self, what: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self._nc.request(
            f"{self.JS_API}.{what}", json.dumps(request or {}).encode(), timeout=5
        )
        return json.loads(reply.data)  # type: ignore[no-any-return]

    async def _find_stream(self, subject: str) -> str | None:
        """nats.js ``streams.find``: the name of the one stream holding ``subject``."""
        names = (await self._js_api("STREAM.NAMES", {"subject": subject})).get("streams") or []
        return names[0] if len(names) == 1 else None

    async def ensure_stream(self, subject: str) -> str:
        """PURISTA's ensureJetStreamStream(subject, 'subscription')."""
        found = await self._find_stream(subject)
        if found is not None:
            return found
        name = purista_sanitize(f"{self.prefix}_subscription_{subject}")
        # creation may fail (raced, overlapping subjects); PURISTA only logs it
        await self._js_api(
            f"STREAM.CREATE.{name}",
            {"name": name, "subjects": [subject], "retention": "interest", "storage": "file"},
        )
        found = await self._find_stream(subject)
        if found is None:
            raise RuntimeError(f"no stream matches subject {subject}")
        return found

    async def consumer_info(self, stream: str, name: str) -> dict[str, Any] | None:
        info = await self._js_api(f"CONSUMER.INFO.{stream}.{name}")
        if "error" in info:
            if info["error"].get("code") == 404:
                return None
            raise RuntimeError(f"consumer info {stream}/{name}: {info['error']}")
        return info

    async def _serve_jetstream(
        self,
        subscriber: dict[str, str],
        event_name: str,
        handler: EventHandler,
        typed: bool,
        ack_wait_s: float,
        max_attempts: int = 5,
        retry_delay_s: float = 1.0,
    ) -> None:
        """registerJetStreamConsumer('subscription', …, shared=true) as nats.js runs it:
        find the stream, look the durable up and attach to it as it is (its filter must
        be ours and its deliver group our queue group), or create the push consumer with
        a new inbox; then a queue subscription on its deliver subject."""
        flt = self.subscription_filter(self.prefix, event_name, typed)
        group = (
            f"{self.prefix}_queue_{subscriber['serviceName']}_"
            f"{subscriber['serviceVersion']}_{subscriber['serviceTarget']}"
        ).upper()
        durable = purista_sanitize(
            f"subscription_{subscriber['serviceName']}_"
            f"{subscriber['serviceVersion']}_{subscriber['serviceTarget']}"
        )
        stream = await self.ensure_stream(flt)
        info = await self.consumer_info(stream, durable)
        create: dict[str, Any] | None = None
        if info is not None:
            config = info["config"]
            if config.get("filter_subject") and config["filter_subject"] != flt:
                raise RuntimeError("subject does not match consumer")
            found_group = config.get("deliver_group") or ""
            if found_group != group:
                raise RuntimeError(
                    f"durable requires queue group '{found_group}'"
                    if found_group
                    else "durable requires no queue group"
                )
            deliver = config.get("deliver_subject")
            if not deliver:
                raise RuntimeError(f"consumer {durable} is a pull consumer")
        else:
            deliver = f"_INBOX.{secrets.token_hex(11)}"
            create = {
                "durable_name": durable,
                "deliver_subject": deliver,
                "deliver_group": group,
                "deliver_policy": "new",
                "ack_policy": "explicit",
                "ack_wait": int(ack_wait_s * 1e9),
                "max_ack_pending": 10,
                "filter_subject": flt,
                "max_deliver": max_attempts + 1,
            }

        async def run(msg: Any) -> None:
            body = json.loads(msg.data)
            count = msg.metadata.num_delivered
            self.deliveries.append((body["id"], count))
            try:
                await handler(body)
            except Exception as exc:  # PURISTA: dead letter at maxAttempts, else nak(delay)
                if count >= max_attempts:
                    await self._nc.publish(
                        f"{flt}.dead-letter",
                        msg.data,
                        headers={
                            "x-purista-dead-letter-reason": str(exc),
                            "x-purista-dead-letter-attempt": str(count),
                            "x-purista-dead-letter-original-subject": flt,
                            "x-purista-dead-letter-subscriber": "/".join(
                                subscriber[k]
                                for k in ("serviceName", "serviceVersion", "serviceTarget")
                            ),
                        },
                    )
                    await msg.term()
                else:
                    await msg.nak(delay=retry_delay_s)
                return
            await msg.ack()

        async def on(msg: Any) -> None:
            # PURISTA's callback starts the handler and returns (no await)
            task = asyncio.ensure_future(run(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        await self._nc.subscribe(deliver, queue=group, cb=on)
        if create is not None:
            answer = await self._js_api(
                f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
                {"stream_name": stream, "config": create},
            )
            if "error" in answer:
                raise RuntimeError(f"creating consumer {durable}: {answer['error']}")
        await self._fence()


def purista_sanitize(name: str) -> str:
    """PURISTA NatsBridge ``sanitizeName``: ``[^a-zA-Z0-9_-]`` to ``_``, 200 characters."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:200]


def mqtt_topic(prefix: str, msg: dict[str, Any]) -> str:
    return "/".join([prefix, *topic_levels(msg, "__none__")])


def _log_failure(done: Any) -> None:
    if not done.cancelled() and done.exception() is not None:
        logging.getLogger("conformance.purista_peer").error(
            "peer handler failed", exc_info=done.exception()
        )


class MqttPeer(Peer):
    """PURISTA's MQTT bridge: snake-cased 13-level topics, ``none`` markers,
    ``$share/sharedpurista/`` command filters, responses on their 13-level topic."""

    async def start(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._mqtt, self._Properties, self._PacketTypes = mqtt, Properties, PacketTypes
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: list[tuple[str, Callable[[Any], Awaitable[None]]]] = []
        parts = urlsplit(self.url)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self.prefix}-{self.instance_id}",
            protocol=mqtt.MQTTv5,
        )
        if parts.username:
            client.username_pw_set(parts.username, parts.password)
        connected = threading.Event()
        client.on_connect = lambda *_a: connected.set()
        client.on_message = self._on_message
        client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, clean_start=True)
        client.loop_start()
        self._client = client
        await asyncio.to_thread(connected.wait, 10)
        response_filter = "/".join([self.prefix, *["+"] * 8, snake(self.instance_id), *["+"] * 3])
        await self._subscribe(response_filter, self._on_response)

    async def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        # one delivery per matching subscription, each naming its subscription identifier
        sids = getattr(msg.properties, "SubscriptionIdentifier", None) or []
        for sid in sids:
            _flt, handler = self._handlers[sid - 1]
            done = asyncio.run_coroutine_threadsafe(handler(msg), self._loop)
            done.add_done_callback(_log_failure)

    async def _subscribe(self, flt: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        done = threading.Event()
        self._handlers.append((flt, handler))
        props = self._Properties(self._PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = len(self._handlers)
        self._client.on_subscribe = lambda *_a: done.set()
        self._client.subscribe(flt, qos=1, properties=props)
        await asyncio.to_thread(done.wait, 10)

    async def _on_response(self, msg: Any) -> None:
        body = json.loads(msg.payload)
        if body.get("messageType") not in ("commandSuccessResponse", "commandErrorResponse"):
            return
        correlation = getattr(msg.properties, "CorrelationData", None)
        key = correlation.decode() if correlation else body.get("correlationId", "")
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(body)

    async def capture(self) -> None:
        async def on(msg: Any) -> None:
            props = {}
            if msg.properties is not None:
                props = {
                    k: getattr(msg.properties, k)
                    for k in (
                        "ContentType",
                        "CorrelationData",
                        "ResponseTopic",
                        "MessageExpiryInterval",
                        "UserProperty",
                    )
                    if hasattr(msg.properties, k)
                }
            self.landed.append(Landed(msg.topic, {}, props, msg.payload))

        await self._subscribe(f"{self.prefix}/#", on)

    def _publish(self, topic: str, body: dict[str, Any], correlation: str | None = None) -> None:
        props = self._Properties(self._PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.UserProperty = list(nats_headers(body).items())
        if correlation is not None:
            props.CorrelationData = correlation.encode()
        self._client.publish(topic, json.dumps(body).encode(), qos=1, properties=props)

    async def publish_event(self, body: dict[str, Any]) -> None:
        self._publish(mqtt_topic(self.prefix, body), body)

    async def invoke(self, command: dict[str, Any], ttl_s: float) -> dict[str, Any]:
        future = self._loop.create_future()
        self._pending[command["correlationId"]] = future
        self._publish(mqtt_topic(self.prefix, command), command, command["correlationId"])
        return await asyncio.wait_for(future, ttl_s)

    async def serve(self, addr: dict[str, str], handler: Handler) -> None:
        flt = "/".join(
            [
                "$share",
                "sharedpurista",
                self.prefix,
                "command",
                *["+"] * 8,
                snake(addr["serviceName"]),
                snake(addr["serviceVersion"]),
                snake(addr["serviceTarget"]),
            ]
        )

        async def on(msg: Any) -> None:
            command = json.loads(msg.payload)
            if command.get("messageType") != "command":
                return
            response = await handler(command)
            self._publish(mqtt_topic(self.prefix, response), response, command["correlationId"])

        await self._subscribe(flt, on)

    async def serve_subscription(
        self,
        _subscriber: dict[str, str],
        event_name: str,
        handler: EventHandler,
        *,
        durable: bool = False,
        typed: bool = True,
    ) -> None:
        # PURISTA: snake(field || '+') per level, `$share/sharedpurista/` for every
        # shared subscription whoever subscribes; it has no durable subscriptions on MQTT
        del durable
        kind = snake("customMessage") if typed else "+"
        flt = "/".join(
            [
                "$share",
                "sharedpurista",
                self.prefix,
                kind,
                *["+"] * 6,
                snake(event_name),
                *["+"] * 4,
            ]
        )

        async def on(msg: Any) -> None:
            body = json.loads(msg.payload)
            if body.get("messageType") != "command":  # PURISTA's subscriptions skip them
                await handler(body)

        await self._subscribe(flt, on)


PEERS: dict[str, type[Peer]] = {"amqp": AmqpPeer, "nats": NatsPeer, "mqtt": MqttPeer}


async def peer_for(transport: str, bridge: Any, instance_id: str | None = None) -> Any:
    """A started PURISTA peer on the broker and prefix of ``bridge``."""
    peer = PEERS[transport](str(bridge.url), str(bridge.prefix), instance_id or new_id())
    await peer.start()  # type: ignore[attr-defined]
    return peer
