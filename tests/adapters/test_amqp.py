"""Integration tests of AmqpBridge against a real RabbitMQ.

Broker fixtures come from the harness plugin (``rabbitmq``, ``namespace``,
``harness_services``); when the plugin is not installed, a local RabbitMQ is
started on free ports by the fallback fixtures at the end of this module.
Tests that kill the broker use a broker of their own (``own_rabbitmq``).
What is asserted is what the broker did: deliveries, counts, queue contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest
from adapter_helpers import (
    CALLER,
    USER,
    adapters_fixture,
    collect,
    command,
    echo_handler,
    echo_servers,
    event,
    is_not,
    subscription,
    wait_async,
    wait_for,
)
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from harness.history import History
from reference_services.adapters.amqp import topology as topo
from reference_services.adapters.amqp.event_bridge import AmqpBridge
from reference_services.runtime.definitions import (
    AddressFilter,
    CommandConfig,
    FailureHandling,
)
from reference_services.runtime.errors import HandledError, PuristaError
from reference_services.runtime.messages import (
    AnyMessage,
    Command,
    CustomMessage,
    MessageType,
    success_response,
)
from reference_services.runtime.spi.bridge_base import (
    DEAD_LETTER_REASON_HEADER,
    RETRY_ATTEMPT_HEADER,
)

pytestmark = pytest.mark.skipif(
    not os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server")
    and shutil.which("rabbitmq-server") is None and not os.environ.get("AMQP_URL"),
    reason="needs rabbitmq-server or AMQP_URL",
)

FAST: dict[str, Any] = {
    "heartbeat_s": 1,
    "reconnect_interval_s": 0.2,
    "max_reconnect_interval_s": 1.0,
    "publish_timeout_s": 5.0,
    "drain_timeout_s": 5.0,
}


# ------------------------------------------------------------------ helpers
class Raw:
    """A plain aio-pika connection to look at what the broker holds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> Raw:
        self.conn = await aio_pika.connect(self.url)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.conn is not None
        await self.conn.close()

    async def count(self, queue: str) -> int:
        """Messages ready in ``queue`` (passive declare)."""
        assert self.conn is not None
        async with self.conn.channel() as ch:
            q = await ch.declare_queue(queue, passive=True)
            return q.declaration_result.message_count or 0

    async def take_all(self, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Get and ack every ready message of ``queue``."""
        assert self.conn is not None
        out = []
        async with self.conn.channel() as ch:
            q = await ch.declare_queue(queue, passive=True)
            while (msg := await q.get(fail=False)) is not None:
                await msg.ack()
                out.append(msg)
        return out

    async def publish(self, exchange: str, body: bytes, headers: dict[str, Any]) -> None:
        assert self.conn is not None
        async with self.conn.channel() as ch:
            ex = await ch.get_exchange(exchange)
            await ex.publish(aio_pika.Message(body, headers=headers), "", mandatory=False)

    async def tap(self, exchange: str, args: dict[str, Any]) -> aio_pika.abc.AbstractQueue:
        """An exclusive queue bound to ``exchange`` with headers ``args``."""
        assert self.conn is not None
        ch = await self.conn.channel()
        q = await ch.declare_queue(exclusive=True)
        await q.bind(exchange, "", arguments=args)
        return q


# Start bridges on a broker under this test's prefix; destroyed after.
make_bridge = adapters_fixture(AmqpBridge, "rabbitmq", **FAST)


@pytest.fixture
async def raw(harness_rabbitmq: Any) -> AsyncIterator[Raw]:
    async with Raw(harness_rabbitmq.url) as r:
        yield r


# ---------------------------------------------------------------- topology
def test_names_and_bindings_follow_purista_conventions() -> None:
    sub = subscription("audit", "user.created", sender=AddressFilter(service_name="user"),
                       principal_id="p1", tenant_id="t1")
    assert topo.command_queue("pfx", USER) == "pfx.cmd.user.1.0.0.get.user"
    assert topo.subscription_queue("pfx", sub, "i1") == "pfx.sub.audit.1.on"
    non_shared = subscription("audit", shared=False)
    assert topo.subscription_queue("pfx", non_shared, "i1") == "pfx.sub.audit.1.on.i1"
    assert topo.dead_letter_queue("pfx", sub) == "pfx.sub.audit.1.on.dlq"
    assert topo.command_binding(USER) == {
        "x-match": "all", "messageType": "command", "receiverServiceName": "user",
        "receiverServiceVersion": "1.0.0", "receiverServiceTarget": "get.user",
    }
    bindings = topo.subscription_bindings(sub)  # one per event-like message type
    assert {"x-match": "all", "eventName": "user.created", "principalId": "p1",
            "tenantId": "t1", "senderServiceName": "user",
            "messageType": "customMessage"} in bindings
    typed = subscription("audit", message_type=MessageType.CUSTOM_MESSAGE)
    assert topo.subscription_bindings(typed) == [{"x-match": "all",
                                                  "messageType": "customMessage"}]
    catch_all = {b["messageType"] for b in topo.subscription_bindings(subscription("all"))}
    assert "command" not in catch_all and "customMessage" in catch_all
    assert topo.attempt_of({RETRY_ATTEMPT_HEADER: 3}, RETRY_ATTEMPT_HEADER) == 3
    assert topo.attempt_of({RETRY_ATTEMPT_HEADER: "x"}, RETRY_ATTEMPT_HEADER) == 1


async def test_reconnect_wait_backs_off_and_resets() -> None:
    from yarl import URL

    from reference_services.adapters.amqp.connection import BackoffRobustConnection

    conn = BackoffRobustConnection(URL("amqp://127.0.0.1:1/"), reconnect_interval=0.25,
                                   max_reconnect_interval=1.0)
    assert [conn.reconnect_interval for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    conn.connected.set()  # connected: no growth
    conn._current_interval = conn._base_interval
    assert [conn.reconnect_interval for _ in range(2)] == [0.25, 0.25]


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://u:p@127.0.0.1:5999/vh")
    monkeypatch.setenv("AMQP_PREFIX", "shop")
    monkeypatch.setenv("AMQP_HEARTBEAT_S", "3")
    bridge = AmqpBridge.from_env(prefetch=4)
    assert (bridge.url, bridge.prefix, bridge.heartbeat_s, bridge.prefetch) == (
        "amqp://u:p@127.0.0.1:5999/vh", "shop", 3, 4)
    assert AmqpBridge().url == "amqp://u:p@127.0.0.1:5999/vh"  # url falls back to AMQP_URL
    assert bridge.reply_queue == f"shop.reply.{bridge.instance_id}"
    caps = AmqpBridge(native_dead_letter=False).capabilities
    assert not caps.native_dead_lettering and caps.native_dead_lettering.reason
    assert caps.max_message_bytes == bridge.max_message_bytes


# ---------------------------------------------------------------- commands
async def test_command_round_trip_keeps_every_field(make_bridge: Any) -> None:
    client, server = await make_bridge(), await make_bridge()
    served: list[tuple[str, Command]] = []
    await server.register_command(USER, echo_handler(served, server))
    payload = {"name": "Zoë ✓ 名前", "nested": {"list": [1, 2.5, None, True]}, "big": "x" * 50_000}
    sent = command(payload=payload, principal_id="p1", tenant_id="t1", trace_id="a" * 32)
    result = await client.invoke(sent, ttl_s=5)
    assert result == {"echo": payload}
    [(_, seen)] = served
    assert (seen.id, seen.correlation_id, seen.principal_id, seen.tenant_id, seen.trace_id) == (
        sent.id, sent.correlation_id, "p1", "t1", "a" * 32)
    assert seen.sender.instance_id == client.instance_id
    assert client.pending_invocations == 0


async def test_unknown_command_fails_fast_with_404(make_bridge: Any) -> None:
    client = await make_bridge()
    await client.register_subscription(subscription("catch-all"), _noop)  # no filters at all
    started = time.monotonic()
    with pytest.raises(PuristaError) as caught:
        await client.invoke(command(), ttl_s=10)
    assert caught.value.status == 404
    assert time.monotonic() - started < 1.0


async def _noop(message: AnyMessage) -> None:
    return None


async def test_handled_error_keeps_its_status(make_bridge: Any) -> None:
    client, server = await make_bridge(), await make_bridge()

    async def handler(cmd: Command) -> Any:
        raise HandledError("no such user", 404, data={"id": 7})

    await server.register_command(USER, handler)
    with pytest.raises(HandledError) as caught:
        await client.invoke(command(), ttl_s=5)
    assert (caught.value.status, caught.value.message, caught.value.data) == (
        404, "no such user", {"id": 7})


async def test_shared_command_runs_on_exactly_one_instance(make_bridge: Any) -> None:
    client = await make_bridge()
    _, served = await echo_servers(make_bridge, 3)
    sent = [command(payload=i) for i in range(30)]
    await asyncio.gather(*(client.invoke(c, ttl_s=5) for c in sent))
    counts = Counter(c.id for _, c in served)
    assert counts == Counter(c.id for c in sent)  # each exactly once
    assert len({instance for instance, _ in served}) >= 2  # competing consumers


async def test_pinned_command_reaches_that_instance(make_bridge: Any) -> None:
    client = await make_bridge()
    servers, served = await echo_servers(make_bridge, 2)
    target = servers[1].instance_id
    pinned = USER.model_copy(update={"instance_id": target})
    for i in range(5):
        await client.invoke(command(pinned, payload=i), ttl_s=5)
    assert {instance for instance, _ in served} == {target}
    gone = USER.model_copy(update={"instance_id": "f" * 32})
    with pytest.raises(PuristaError) as caught:
        await client.invoke(command(gone), ttl_s=5)
    assert caught.value.status == 404


async def test_unregistered_command_fails_fast(make_bridge: Any) -> None:
    client, server = await make_bridge(), await make_bridge()
    await server.register_command(USER, echo_handler([], server))
    await client.invoke(command(), ttl_s=5)
    await server.unregister_command(USER)
    await wait_async(lambda: _unknown(client), 5, "404 after unregister")


async def _unknown(client: AmqpBridge) -> bool:
    try:
        await client.invoke(command(), ttl_s=2)
    except PuristaError as exc:
        return exc.status == 404
    return False


async def test_success_event_reaches_subscribers(make_bridge: Any) -> None:
    client, server = await make_bridge(), await make_bridge()

    async def with_event(cmd: Command) -> Any:
        return success_response(cmd, {"id": 1}, event_name="user.fetched")

    await server.register_command(USER, with_event)
    seen: list[AnyMessage] = []

    async def on_event(message: AnyMessage) -> None:
        seen.append(message)

    await client.register_subscription(subscription("audit", "user.fetched"), on_event)
    await client.invoke(command(), ttl_s=5)
    await wait_for(lambda: len(seen) == 1, 5, "success event")
    assert seen[0].message_type is MessageType.COMMAND_SUCCESS_RESPONSE
    assert seen[0].payload == {"id": 1}


# ----------------------------------------------------------- subscriptions
async def test_shared_and_every_instance_subscriptions(make_bridge: Any) -> None:
    producer = await make_bridge()
    bridges = [await make_bridge() for _ in range(3)]
    shared: list[tuple[str, str]] = []
    every: list[tuple[str, str]] = []
    for bridge in bridges:
        def record(into: list[tuple[str, str]], b: AmqpBridge = bridge) -> Any:
            async def handler(message: AnyMessage) -> None:
                into.append((b.instance_id, message.id))
            return handler

        await bridge.register_subscription(subscription("billing", "order"), record(shared))
        await bridge.register_subscription(
            subscription("cache", "order", shared=False, durable=False), record(every))
    sent = [event("order", i) for i in range(12)]
    for message in sent:
        await producer.emit_message(message)
    await wait_for(lambda: len(shared) == 12 and len(every) == 36, 10, "all deliveries")
    await asyncio.sleep(0.3)  # nothing more may arrive
    assert Counter(m for _, m in shared) == Counter(m.id for m in sent)
    assert Counter(every) == Counter((b.instance_id, m.id) for b in bridges for m in sent)


async def test_filters_on_sender_principal_and_tenant(make_bridge: Any) -> None:
    producer, consumer = await make_bridge(), await make_bridge()
    got: list[Any] = []
    handler = collect(got)
    await consumer.register_subscription(
        subscription("audit", "evt", sender=AddressFilter(service_name="caller"),
                     principal_id="alice", tenant_id="acme"), handler)
    other = CALLER.model_copy(update={"service_name": "other"})
    await producer.emit_message(event("evt", "no-principal", tenant_id="acme"))
    await producer.emit_message(event("evt", "wrong-tenant", principal_id="alice", tenant_id="x"))
    await producer.emit_message(CustomMessage(sender=other, event_name="evt", payload="sender",
                                              principal_id="alice", tenant_id="acme"))
    await producer.emit_message(event("evt", "match", principal_id="alice", tenant_id="acme"))
    await wait_for(lambda: got == ["match"], 5, "the matching event")
    await asyncio.sleep(0.3)
    assert got == ["match"]


async def test_durable_subscription_survives_subscriber_restart(make_bridge: Any) -> None:
    producer = await make_bridge()
    first = await make_bridge()
    await first.register_subscription(subscription("ledger", "entry"), _noop)
    await first.destroy()
    sent = [event("entry", i) for i in range(5)]
    for message in sent:
        await producer.emit_message(message)
    got: list[str] = []

    async def handler(message: AnyMessage) -> None:
        got.append(message.id)

    second = await make_bridge()
    await second.register_subscription(subscription("ledger", "entry"), handler)
    await wait_for(lambda: len(got) == 5, 10, "backlog delivered")
    assert sorted(got) == sorted(m.id for m in sent)  # handlers run concurrently (prefetch)


async def test_start_fails_fast_when_the_broker_is_unreachable() -> None:
    import port_for

    bridge = AmqpBridge(f"amqp://guest:guest@127.0.0.1:{port_for.select_random()}/", **FAST)
    started = time.monotonic()
    with pytest.raises(PuristaError) as caught:
        await bridge.start()
    assert caught.value.status == 503 and time.monotonic() - started < 5
    assert not await bridge.is_ready()


async def test_emit_event_name_chains(make_bridge: Any) -> None:
    bridge = await make_bridge()

    async def double(message: AnyMessage) -> Any:
        return message.payload * 2

    got: list[Any] = []
    sink = collect(got)
    await bridge.register_subscription(subscription("doubler", "n", emit_event_name="n2"), double)
    await bridge.register_subscription(subscription("sink", "n2"), sink)
    await bridge.emit_message(event("n", 21))
    await wait_for(lambda: got == [42], 5, "chained event")


async def test_retries_then_dead_letter_with_reason(make_bridge: Any, raw: Raw,
                                                    namespace: str) -> None:
    bridge = await make_bridge()
    attempts: list[float] = []

    async def failing(message: AnyMessage) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("database down")

    letters: list[Any] = []
    on_letter = collect(letters)
    sub = subscription("mailer", "send", failure=FailureHandling(
        max_attempts=3, retry_delay_ms=200, backoff=2.0, dead_letter_target="mailer.dead"))
    await bridge.register_subscription(sub, failing)
    await bridge.register_subscription(subscription("ops", "mailer.dead"), on_letter)
    sent = event("send", {"to": "x@y"})
    await bridge.emit_message(sent)
    await wait_for(lambda: len(letters) == 1, 10, "dead letter event")
    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # 200 ms then 400 ms: the floors judge the delays and the backoff; the ceilings only
    # catch a delay gone wrong by far (0.7 s failed at load 6 on 2 cores)
    assert 0.19 <= gaps[0] < 1.5 and 0.39 <= gaps[1] < 2.0, gaps
    assert letters[0]["reason"] == "RuntimeError: database down"
    assert letters[0]["attempts"] == 3 and letters[0]["message"]["id"] == sent.id
    [kept] = await raw.take_all(topo.dead_letter_queue(namespace, sub))
    assert kept.headers[DEAD_LETTER_REASON_HEADER] == "RuntimeError: database down"
    assert kept.headers[RETRY_ATTEMPT_HEADER] == 3
    assert kept.message_id == sent.id
    source = topo.subscription_queue(namespace, sub, bridge.instance_id)
    assert await raw.count(source) == 0
    for attempt in (1, 2):  # the delay queues the retries went through, empty again
        assert await raw.count(topo.retry_queue(source, attempt)) == 0
    await asyncio.sleep(0.5)
    assert len(attempts) == 3  # nothing redelivered after dead lettering


async def test_handled_error_is_not_redelivered(make_bridge: Any) -> None:
    bridge = await make_bridge()
    calls: list[str] = []

    async def handler(message: AnyMessage) -> None:
        calls.append(message.id)
        raise HandledError("invalid address", 400)

    await bridge.register_subscription(subscription("mailer", "send"), handler)
    await bridge.emit_message(event("send"))
    await wait_for(lambda: len(calls) == 1, 5, "first delivery")
    await asyncio.sleep(0.5)
    assert len(calls) == 1


async def test_malformed_messages_are_dead_lettered_and_the_next_is_served(
    make_bridge: Any, raw: Raw, namespace: str
) -> None:
    bridge = await make_bridge()
    got: list[Any] = []
    handler = collect(got)
    sub = subscription("audit", "evt")
    await bridge.register_subscription(sub, handler)
    headers = {"messageType": "customMessage", "eventName": "evt"}
    await raw.publish(namespace, b"\xff not json", headers)
    await raw.publish(namespace, b'{"messageType": "customMessage"}', headers)
    await bridge.publish_raw(b"")  # the test hook: straight into this instance's queues
    await bridge.emit_message(event("evt", "valid"))
    await wait_for(lambda: got == ["valid"], 5, "the valid message")
    await wait_for(lambda: bridge.rejected_messages == 3, 5, "three rejections")
    kept = await raw.take_all(topo.dead_letter_queue(namespace, sub))
    reasons = sorted(str(m.headers[DEAD_LETTER_REASON_HEADER]) for m in kept)
    assert len(reasons) == 3 and all(r.startswith("malformed message") for r in reasons)
    assert await bridge.is_ready()


async def test_queue_deleted_under_the_bridge_is_recreated(
    make_bridge: Any, raw: Raw, namespace: str
) -> None:
    bridge = await make_bridge(consumer_check_interval_s=0.2)
    got: list[Any] = []
    handler = collect(got)
    sub = subscription("audit", "evt")
    await bridge.register_subscription(sub, handler)
    await bridge.register_command(USER, echo_handler([], bridge))
    assert raw.conn is not None
    async with raw.conn.channel() as ch:  # an operator deletes both queues
        await ch.queue_delete(topo.subscription_queue(namespace, sub, bridge.instance_id))
        await ch.queue_delete(topo.command_queue(namespace, USER))
    await wait_for(lambda: bridge.consumers_recovered >= 2, 10, "consumers re-established")
    await bridge.emit_message(event("evt", "after"))
    await wait_for(lambda: got == ["after"], 5, "delivery after re-creation")
    assert await bridge.invoke(command(payload=1), ttl_s=5) == {"echo": 1}


async def test_trace_context_and_routing_headers_on_the_wire(
    make_bridge: Any, raw: Raw, namespace: str
) -> None:
    bridge = await make_bridge()
    tap = await raw.tap(namespace, {"x-match": "all", "eventName": "traced"})
    ctx = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=False,
                      trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(ctx)):
        await bridge.emit_message(event("traced", 1, principal_id="p", tenant_id="t"))
    msg = await _get(tap)
    assert str(msg.headers["traceparent"]).startswith(f"00-{0x1234:032x}-{0x5678:016x}-")
    assert msg.headers["messageType"] == "customMessage"
    assert msg.headers["senderServiceName"] == "caller"
    assert (msg.headers["principalId"], msg.headers["tenantId"]) == ("p", "t")
    assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def _get(queue: aio_pika.abc.AbstractQueue, within: float = 5) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        msg = await queue.get(fail=False)
        if msg is not None:
            await msg.ack()
            return msg
        await asyncio.sleep(0.05)
    raise AssertionError("nothing arrived on the tap")


async def test_destroy_drains_in_flight_handlers(make_bridge: Any, raw: Raw,
                                                 namespace: str) -> None:
    client, server = await make_bridge(), await make_bridge()
    started, command_started, finished = asyncio.Event(), asyncio.Event(), []

    async def slow(message: AnyMessage) -> None:
        started.set()
        await asyncio.sleep(0.8)
        finished.append(message.id)

    async def slow_command(cmd: Command) -> Any:
        command_started.set()
        await asyncio.sleep(0.8)
        return success_response(cmd, "done")

    sub = subscription("slow", "work")
    await server.register_subscription(sub, slow)
    await server.register_command(USER, slow_command)
    await client.emit_message(event("work"))
    await started.wait()
    invocation = asyncio.create_task(client.invoke(command(), ttl_s=5))
    await asyncio.wait_for(command_started.wait(), 5)
    assert server.inflight >= 2
    await server.destroy()
    assert len(finished) == 1 and not server.drain_timed_out
    assert await invocation == "done"  # the response went out during the drain
    # acked, not requeued: the durable queue is empty
    assert await raw.count(topo.subscription_queue(namespace, sub, server.instance_id)) == 0


async def test_destroy_rejects_pending_invocations_with_503(make_bridge: Any) -> None:
    client, server = await make_bridge(), await make_bridge()
    await server.register_command(USER, echo_handler([], server), CommandConfig(durable=True))
    await server.destroy()  # the durable queue keeps the command; nobody answers
    invocation = asyncio.create_task(client.invoke(command(), ttl_s=10))
    await wait_for(lambda: client.pending_invocations == 1, 5, "pending")
    await client.destroy()
    with pytest.raises(PuristaError) as caught:
        await invocation
    assert caught.value.status == 503


async def test_durable_command_waits_for_an_instance(make_bridge: Any) -> None:
    client, first = await make_bridge(), await make_bridge()
    await first.register_command(USER, echo_handler([], first), CommandConfig(durable=True))
    await first.destroy()
    invocation = asyncio.create_task(client.invoke(command(payload="later"), ttl_s=10))
    await asyncio.sleep(0.3)
    served: list[tuple[str, Command]] = []
    second = await make_bridge()
    await second.register_command(USER, echo_handler(served, second), CommandConfig(durable=True))
    assert await invocation == {"echo": "later"}
    assert [i for i, _ in served] == [second.instance_id]


# ------------------------------------------------------- broker faults
async def test_reconnect_reregisters_everything_after_broker_restart(
    own_rabbitmq: Any, make_bridge: Any
) -> None:
    client = await make_bridge(own_rabbitmq.url)
    server = await make_bridge(own_rabbitmq.url)
    served: list[tuple[str, Command]] = []
    await server.register_command(USER, echo_handler(served, server))
    shared: list[str] = []
    every: list[str] = []

    async def on_shared(message: AnyMessage) -> None:
        shared.append(message.id)

    async def on_every(message: AnyMessage) -> None:
        every.append(message.id)

    await server.register_subscription(subscription("ledger", "entry"), on_shared)
    await server.register_subscription(
        subscription("cache", "entry", shared=False, durable=False), on_every)
    await asyncio.to_thread(own_rabbitmq.kill)
    await wait_async(lambda: is_not(server.is_ready()), 10, "not ready while down")
    assert not await server.is_healthy() and not await client.is_ready()
    await asyncio.to_thread(own_rabbitmq.start)
    await wait_async(server.is_ready, 60, "ready after restart")
    await wait_async(client.is_ready, 60, "client ready after restart")
    assert server.reconnects >= 1
    assert await client.invoke(command(payload="again"), ttl_s=5) == {"echo": "again"}
    sent = event("entry", "after restart")
    await client.emit_message(sent)
    await wait_for(lambda: shared == [sent.id] and every == [sent.id], 10, "both subscriptions")


async def test_invoke_while_broker_down_fails_within_ttl(
    own_rabbitmq: Any, make_bridge: Any
) -> None:
    client = await make_bridge(own_rabbitmq.url)
    other = await make_bridge(own_rabbitmq.url)
    for i in range(5):
        await other.register_subscription(subscription(f"s{i}", "e"), _noop)
    await other.register_command(USER, echo_handler([], other))
    await asyncio.to_thread(own_rabbitmq.kill)
    try:
        await wait_async(lambda: is_not(client.is_ready()), 10, "not ready")
        started = time.monotonic()
        await other.destroy()  # nothing to wait for while the broker is gone
        assert time.monotonic() - started < 2
        started = time.monotonic()
        with pytest.raises(PuristaError) as caught:
            await client.invoke(command(), ttl_s=1.5)
        elapsed = time.monotonic() - started
        assert caught.value.status in (503, 504)
        assert elapsed < 1.5 + 0.5, elapsed
        assert client.pending_invocations == 0
        with pytest.raises(PuristaError) as emitted:
            await client.emit_message(event("x"))  # publish_timeout_s bounds emits
        assert emitted.value.status == 503
    finally:
        await asyncio.to_thread(own_rabbitmq.start)
    await wait_async(client.is_ready, 60, "ready after restart")


async def test_dead_connection_detected_by_heartbeat(own_rabbitmq: Any, make_bridge: Any) -> None:
    client = await make_bridge(own_rabbitmq.url)
    await asyncio.to_thread(own_rabbitmq.pause)
    try:
        started = time.monotonic()
        await wait_async(lambda: is_not(client.is_ready()), 15, "heartbeat timeout")
        assert time.monotonic() - started < (1 + 1) * 3 + 2  # (heartbeat+1)*3 s
    finally:
        await asyncio.to_thread(own_rabbitmq.resume)
    await wait_async(client.is_ready, 30, "ready after resume")


@pytest.mark.slow
async def test_broker_kill_mid_stream_loses_no_durable_events(
    own_rabbitmq: Any, make_bridge: Any
) -> None:
    history = History()
    producer = await make_bridge(own_rabbitmq.url, publish_timeout_s=60.0)
    consumers = [await make_bridge(own_rabbitmq.url) for _ in range(2)]
    for bridge in consumers:
        def record(b: AmqpBridge = bridge) -> Any:
            async def handler(message: AnyMessage) -> None:
                history.delivered(message.id, consumer=b.instance_id)
            return handler

        await bridge.register_subscription(subscription("ledger", "entry"), record())
    total, kill_at = 1000, 400
    fault: asyncio.Task[None] | None = None

    async def crash() -> None:
        await asyncio.to_thread(own_rabbitmq.kill)
        await asyncio.to_thread(own_rabbitmq.start)

    started = time.monotonic()
    for i in range(total):
        if i == kill_at:
            fault = asyncio.create_task(crash())
        message = event("entry", i)
        try:
            await producer.emit_message(message)
            history.sent(message.id, "ok")
        except PuristaError:
            history.sent(message.id, "unknown")  # the broker may or may not have it
    assert fault is not None
    await fault
    sent_ok = [e.msg_id for e in history.events if e.kind == "sent" and e.outcome == "ok"]
    delivered = lambda: {e.msg_id for e in history.events if e.kind == "delivered"}  # noqa: E731
    await wait_for(lambda: delivered() >= set(sent_ok), 90, f"{total} confirmed events delivered")
    await asyncio.sleep(0.5)  # let stragglers (redeliveries) in before judging
    verdict = history.check(allow_duplicates=True)  # at-least-once: duplicates allowed
    print(f"\nbroker SIGKILL+restart at event {kill_at} of {total} "
          f"({time.monotonic() - started:.1f}s): {verdict.to_dict()}")
    assert verdict.ok, verdict.format()
    assert verdict.lost == 0 and verdict.unexpected == 0
    assert verdict.published_ok == total


@pytest.mark.slow
async def test_queued_durable_command_survives_broker_restart(
    own_rabbitmq: Any, make_bridge: Any
) -> None:
    client = await make_bridge(own_rabbitmq.url)
    first = await make_bridge(own_rabbitmq.url)
    await first.register_command(USER, echo_handler([], first), CommandConfig(durable=True))
    await first.destroy()
    invocation = asyncio.create_task(client.invoke(command(payload="kept"), ttl_s=60))
    await wait_for(lambda: client.pending_invocations == 1, 5, "command queued")
    await asyncio.to_thread(own_rabbitmq.kill)
    await asyncio.to_thread(own_rabbitmq.start)
    await wait_async(client.is_ready, 60, "client back")
    second = await make_bridge(own_rabbitmq.url)
    await second.register_command(USER, echo_handler([], second), CommandConfig(durable=True))
    assert await invocation == {"echo": "kept"}


async def test_black_holed_network_detected_and_recovered(
    harness_rabbitmq: Any, make_bridge: Any, request: pytest.FixtureRequest
) -> None:
    if not HAVE_HARNESS:
        pytest.skip("needs the harness plugin's proxied() fixture")
    proxy = request.getfixturevalue("proxied")(harness_rabbitmq)
    client = await make_bridge(proxy.url)
    server = await make_bridge(proxy.url)
    await server.register_command(USER, echo_handler([], server))
    got: list[str] = []

    async def handler(message: AnyMessage) -> None:
        got.append(message.id)

    await server.register_subscription(
        subscription("cache", "entry", shared=False, durable=False), handler)
    async with proxy.black_hole("downstream"), proxy.black_hole("upstream"):
        started = time.monotonic()
        await wait_async(lambda: is_not(server.is_ready()), 15, "dead link detected")
        assert time.monotonic() - started < (1 + 1) * 3 + 2
    await wait_async(server.is_ready, 30, "ready after the network heals")
    await wait_async(client.is_ready, 30, "client ready after the network heals")
    assert await client.invoke(command(payload="healed"), ttl_s=5) == {"echo": "healed"}
    sent = event("entry")
    await client.emit_message(sent)
    await wait_for(lambda: got == [sent.id], 10, "every-instance subscription re-registered")


# ------------------------------------------- fallback broker (no harness plugin)
class LocalRabbit:
    """A RabbitMQ node on fixed free ports, restartable on the same data dir."""

    def __init__(self, workdir: Any) -> None:
        import port_for

        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port_for.select_random()
        self.dist_port = port_for.select_random()
        self.epmd_port = port_for.select_random()
        self.url = f"amqp://guest:guest@{self.host}:{self.port}/"
        self.proc: Any = None
        self.epmd: Any = None
        self.pid: int | None = None

    def _env(self) -> dict[str, str]:
        w = self.workdir
        (w / "enabled_plugins").write_text("[].\n")
        for name in ("rabbitmq.conf", "rabbitmq-env.conf"):
            (w / name).touch()
        return {
            **os.environ, "HOME": str(w), "RABBITMQ_NODENAME": f"amqptest{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": self.host, "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"), "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(w / "feature_flags"),
            "RABBITMQ_PID_FILE": str(w / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
        }

    def start(self) -> None:
        import socket
        import subprocess

        env = self._env()
        if self.epmd is None:
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port)], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = open(self.workdir / "rabbit.out", "ab")
        self.proc = subprocess.Popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((self.host, self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"rabbitmq did not start; see {self.workdir}") from None
                time.sleep(0.1)
        self.pid = int((self.workdir / "rabbit.pid").read_text().strip())

    def _signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        import signal

        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.pid = None

    def stop(self) -> None:
        import signal

        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except Exception:
                self.kill()
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait()

    def pause(self) -> None:
        import signal

        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self._signal(signal.SIGCONT)

    def is_running(self) -> bool:
        return self.pid is not None


try:  # the harness plugin provides rabbitmq / namespace / fresh services
    import harness.pytest_plugin  # noqa: F401

    HAVE_HARNESS = True
except ImportError:
    HAVE_HARNESS = False

if HAVE_HARNESS:

    @pytest.fixture(scope="module")
    def _module_rabbit(harness_services: Any) -> Iterator[Any]:
        """One dedicated RabbitMQ for this module's fault tests (they run one at a time)."""
        from harness.errors import ServiceUnavailable

        if not harness_services.provider.supports_lifecycle_faults:
            pytest.skip(f"provider {harness_services.provider.name!r} cannot kill brokers")
        try:
            handle = harness_services.fresh("rabbitmq")
        except ServiceUnavailable as exc:
            pytest.skip(str(exc))
        yield handle
        harness_services.release(handle)

else:

    @pytest.fixture(scope="session")
    def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbit]:
        url = os.environ.get("AMQP_URL")
        if url:
            external = LocalRabbit.__new__(LocalRabbit)
            external.url = url
            yield external
            return
        server = LocalRabbit(tmp_path_factory.mktemp("rabbitmq"))
        server.start()
        yield server
        server.stop()

    @pytest.fixture
    def namespace() -> str:
        import uuid

        return "t" + uuid.uuid4().hex[:12]

    @pytest.fixture(scope="module")
    def _module_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbit]:
        server = LocalRabbit(tmp_path_factory.mktemp("rabbitmq-own"))
        server.start()
        yield server
        server.stop()


class _Crashable:
    """A broker handle whose kill() returns once the port is closed and whose start()
    retries a start that raced the dying process."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @property
    def url(self) -> str:
        return str(self.handle.url)

    def kill(self) -> None:
        import socket
        from urllib.parse import urlparse

        self.handle.kill()
        where = urlparse(self.url)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection((where.hostname, where.port), 0.2).close()
            except OSError:
                return
            time.sleep(0.05)

    def start(self) -> None:
        for attempt in range(3):
            try:
                self.handle.start()
                return
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(1)

    def pause(self) -> None:
        self.handle.pause()

    def resume(self) -> None:
        self.handle.resume()

    def is_running(self) -> bool:
        return bool(self.handle.is_running())


@pytest.fixture
def own_rabbitmq(_module_rabbit: Any) -> Iterator[_Crashable]:
    """A broker this test may kill or pause, running again after the test."""
    broker = _Crashable(_module_rabbit)
    yield broker
    broker.resume()
    if not broker.is_running():
        broker.start()


async def test_non_durable_shared_queue_is_declared_as_purista_and_deleted_with_its_last_member(
    make_bridge: Any, raw: Raw, namespace: str
) -> None:
    """PURISTA declares a shared subscription queue without auto-delete; ours does too (a
    redeclaration with auto-delete fails with PRECONDITION_FAILED), and the bridge deletes
    the non-durable queue itself when its last member leaves."""
    first, second = await make_bridge(), await make_bridge()
    sub = subscription("cache", "flush", durable=False)
    await first.register_subscription(sub, _noop)
    await second.register_subscription(sub, _noop)
    name = topo.subscription_queue(namespace, sub, first.instance_id)
    assert raw.conn is not None
    async with raw.conn.channel() as ch:  # PURISTA's declaration is equivalent: no error
        await ch.declare_queue(name, durable=False, auto_delete=False)
    await first.destroy()
    assert await raw.count(name) == 0  # still there for the other member
    await second.destroy()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await raw.count(name)
