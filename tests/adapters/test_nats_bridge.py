"""Integration tests of NatsBridge against a real nats-server with JetStream.

Broker fixtures come from the harness plugin: ``nats`` (the session's server),
``namespace`` (a unique prefix per test), ``fresh_service("nats")`` (a dedicated
server for the tests that kill or pause it) and ``history`` (recorder + checker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import nats as nats_client
import pytest
from adapter_helpers import (
    CALLER,
    USER,
    adapters_fixture,
    collect,
    echo_handler,
    echo_servers,
    event,
    is_not,
    subscription,
    wait_async,
    wait_for,
)

from harness.history import History
from reference_services.adapters.nats import subjects
from reference_services.adapters.nats.event_bridge import NatsBridge
from reference_services.runtime.definitions import (
    AddressFilter,
    CommandConfig,
    FailureHandling,
    Subscription,
)
from reference_services.runtime.errors import HandledError, PuristaError
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandPayload,
    MessageType,
    success_response,
)
from reference_services.runtime.spi.bridge_base import DEAD_LETTER_REASON_HEADER

FAST = {
    "ping_interval_s": 1.0,
    "max_outstanding_pings": 2,
    "reconnect_time_wait_s": 0.2,
    "fetch_timeout_s": 1.0,
    "ack_wait_s": 5.0,
    "publish_timeout_s": 1.0,
    "publish_deadline_s": 20.0,
    "command_connect_wait_s": 0.5,
    "drain_timeout_s": 10.0,
}



# Start bridges on the session broker under this test's prefix; destroyed after.
make_bridge = adapters_fixture(NatsBridge, "nats", **FAST)


# ------------------------------------------------------------------ subjects
def test_subject_layout_is_purista_snake_case() -> None:
    msg = event("user.created", principal_id="p 1", tenant_id="t*>", receiver=USER)
    subject = subjects.message_subject("pre", msg)
    tokens = subject.split(".")
    assert len(tokens) == 13
    assert tokens[:4] == ["pre", "custom_message", "p_1", "t"]
    assert tokens[8] == "user_created"
    assert tokens[9:] == ["empty", "user", "1_0_0", "get_user"]
    sub = subscription("s", "user.created", sender=AddressFilter(service_name="caller"))
    flt = subjects.subscription_filter("pre", sub).split(".")
    assert flt == ["pre", "*", "*", "*", "*", "caller", "*", "*", "user_created",
                   "*", "*", "*", "*"]
    # no word PURISTA would keep: escaped so the layout holds (PURISTA breaks it)
    assert subjects.token("ü") == "%C3%BC"
    assert subjects.token("*>") == "%2A%3E"
    long = subjects.token("x" * 5000)
    assert long.startswith("~") and len(long) == 33 and long == subjects.token("x" * 5000)
    assert subjects.token("") == subjects.token(None) == "empty"


def test_reconnect_backoff_is_exponential_capped_and_jittered() -> None:
    from nats.aio.client import Server

    bridge = NatsBridge("nats://127.0.0.1:1", reconnect_time_wait_s=0.2, max_reconnect_wait_s=2.0)
    assert "reconnect_to_server_handler" in bridge._backoff_option()

    def delay(attempts: int) -> float:
        server = Server(uri=None, reconnects=attempts)  # type: ignore[arg-type]
        chosen, wait = bridge._reconnect_delay([server], {})
        assert chosen is server
        return wait

    assert 0.16 <= delay(0) <= 0.24
    assert 0.64 <= delay(2) <= 0.96
    assert 1.6 <= delay(30) <= 2.4


async def test_start_fails_fast_when_the_broker_is_unreachable() -> None:
    import port_for

    bridge = NatsBridge(f"nats://127.0.0.1:{port_for.select_random()}", connect_attempts=2,
                        connect_timeout_s=0.5, reconnect_time_wait_s=0.1)
    started = time.monotonic()
    with pytest.raises(PuristaError) as info:
        await bridge.start()
    assert info.value.status == 503
    assert time.monotonic() - started < 3
    assert not await bridge.is_ready()


# ------------------------------------------------------------------ commands
async def test_command_round_trip_keeps_every_field(make_bridge: Any) -> None:
    caller, server = await make_bridge(), await make_bridge()
    served: list[tuple[str, Command]] = []
    await server.register_command(USER, echo_handler(served, server))
    payload = {"name": "Zoë ✓", "nested": {"list": [1, 2.5, None, True]}, "big": "x" * 200_000}
    command = Command(
        sender=CALLER, receiver=USER, payload=CommandPayload(payload=payload, parameter={"a": 1}),
        principal_id="principal.1", tenant_id="tenant 7", trace_id="f" * 32, otp='{"t":1}',
    )
    result = await caller.invoke(command, 5)
    assert result == {"echo": payload}
    assert len(served) == 1
    got = served[0][1]
    assert got.payload.parameter == {"a": 1}
    assert (got.principal_id, got.tenant_id, got.trace_id, got.otp) == (
        "principal.1", "tenant 7", "f" * 32, '{"t":1}')
    assert got.sender.instance_id == caller.instance_id


async def test_the_connection_parses_headers_with_the_fast_parser(make_bridge: Any) -> None:
    from reference_services.adapters.nats.headers import parse_header_lines

    bridge = await make_bridge()
    assert bridge._client()._parse_header_lines is parse_header_lines


async def test_unknown_command_fails_fast_with_no_responders(make_bridge: Any) -> None:
    caller = await make_bridge()
    strict = await make_bridge(no_responders_status=404)
    for bridge, status in ((caller, 503), (strict, 404)):
        started = time.monotonic()
        with pytest.raises(PuristaError) as info:
            await bridge.invoke(Command(sender=CALLER, receiver=USER), 10)
        assert info.value.status == status
        assert "no responders" in info.value.message
        assert time.monotonic() - started < 1.0
    assert caller.pending_invocations == 0 and caller._sent == {}


async def test_settled_invokes_keep_no_record(make_bridge: Any) -> None:
    """Once every invoke settled (answered, timed out, no responders) the caller keeps no
    per-command record: a burst's expiry entries stayed until the next send (1 MB kept
    after 10,000 invokes in robustness.burst.paused_broker)."""
    caller, server = await make_bridge(), await make_bridge()
    slow = Address(service_name="user", service_version="1", service_target="slow")
    nobody = Address(service_name="user", service_version="1", service_target="nobody")
    await server.register_command(USER, echo_handler([], server))

    async def never(command: Command) -> Any:
        await asyncio.sleep(5)

    await server.register_command(slow, never)
    results = await asyncio.gather(
        *(caller.invoke(Command(sender=CALLER, receiver=USER), 5) for _ in range(200)),
        *(caller.invoke(Command(sender=CALLER, receiver=slow), 0.3) for _ in range(20)),
        *(caller.invoke(Command(sender=CALLER, receiver=nobody), 5) for _ in range(20)),
        return_exceptions=True,
    )
    statuses = Counter(getattr(r, "status", "ok") for r in results)
    assert statuses == {"ok": 200, 504: 20, 503: 20}
    assert caller.pending_invocations == 0
    assert (len(caller._sent), len(caller._sent_expiry)) == (0, 0)


async def test_a_waiting_invocation_keeps_no_copy_of_its_command(make_bridge: Any) -> None:
    """While the handler works, the process holds one copy of the command: the handler's
    (the invoker, the NATS bridge's own invoke included, dropped the one it sent)."""
    import gc

    caller, server = await make_bridge(), await make_bridge()
    started: list[str] = []
    release = asyncio.Event()

    async def wait(command: Command) -> Any:
        started.append(command.correlation_id or "")
        await release.wait()
        return success_response(command, "done")

    await server.register_command(USER, wait)
    call = asyncio.ensure_future(caller.invoke(Command(sender=CALLER, receiver=USER), 10))
    await wait_for(lambda: bool(started))
    gc.collect()
    copies = [o for o in gc.get_objects()
              if isinstance(o, Command) and o.correlation_id == started[0]]
    assert len(copies) == 1, f"{len(copies)} copies of the command held while its handler runs"
    release.set()
    assert await asyncio.wait_for(call, 5) == "done"


async def test_handled_error_keeps_its_status(make_bridge: Any) -> None:
    caller, server = await make_bridge(), await make_bridge()

    async def handler(command: Command) -> Any:
        raise HandledError("no such user", 404, data={"id": 7})

    await server.register_command(USER, handler)
    with pytest.raises(HandledError) as info:
        await caller.invoke(Command(sender=CALLER, receiver=USER), 5)
    assert (info.value.status, info.value.message, info.value.data) == (404, "no such user",
                                                                       {"id": 7})


async def test_shared_command_runs_on_exactly_one_instance(make_bridge: Any) -> None:
    caller = await make_bridge()
    _, served = await echo_servers(make_bridge, 3)
    commands = [Command(sender=CALLER, receiver=USER, payload=CommandPayload(payload=i))
                for i in range(60)]
    results = await asyncio.gather(*(caller.invoke(c, 5) for c in commands))
    assert results == [{"echo": i} for i in range(60)]
    per_command = Counter(cmd.id for _, cmd in served)
    assert len(per_command) == 60 and set(per_command.values()) == {1}
    assert len({instance for instance, _ in served}) > 1, "the queue group balances"


async def test_pinned_command_reaches_that_instance(make_bridge: Any) -> None:
    caller = await make_bridge()
    servers, served = await echo_servers(make_bridge, 3)
    target = servers[1].instance_id
    pinned = USER.model_copy(update={"instance_id": target})
    for i in range(10):
        await caller.invoke(Command(sender=CALLER, receiver=pinned, payload=CommandPayload(
            payload=i)), 5)
    assert {instance for instance, _ in served} == {target}
    gone = USER.model_copy(update={"instance_id": "0" * 32})
    with pytest.raises(PuristaError) as info:
        await caller.invoke(Command(sender=CALLER, receiver=gone), 5)
    assert info.value.status == 503


async def test_unregistered_command_is_not_served(make_bridge: Any) -> None:
    caller, server = await make_bridge(), await make_bridge()
    await server.register_command(USER, echo_handler([], server))
    await caller.invoke(Command(sender=CALLER, receiver=USER), 5)
    await server.unregister_command(USER)
    with pytest.raises(PuristaError) as info:
        await caller.invoke(Command(sender=CALLER, receiver=USER), 5)
    assert info.value.status == 503


async def test_success_event_reaches_subscribers(make_bridge: Any) -> None:
    caller, server, listener = await make_bridge(), await make_bridge(), await make_bridge()
    await server.register_command(USER, echo_handler([], server),
                                  CommandConfig(success_event_name="userFetched"))

    async def with_event(command: Command) -> Any:
        return success_response(command, "ok", event_name="userFetched")

    await server.register_command(USER, with_event)
    seen: list[AnyMessage] = []

    async def on_event(message: AnyMessage) -> None:
        seen.append(message)

    await listener.register_subscription(subscription("audit", "userFetched"), on_event)
    assert await caller.invoke(Command(sender=CALLER, receiver=USER), 5) == "ok"
    await wait_for(lambda: len(seen) == 1, what="the success event")
    assert seen[0].message_type is MessageType.COMMAND_SUCCESS_RESPONSE


# ------------------------------------------------------------- subscriptions
async def test_shared_and_every_instance_subscriptions(make_bridge: Any) -> None:
    producer = await make_bridge()
    instances = [await make_bridge() for _ in range(2)]
    shared: list[tuple[str, str]] = []
    every: list[tuple[str, str]] = []
    for bridge in instances:
        def record(into: list[tuple[str, str]], b: NatsBridge = bridge) -> Any:
            async def handler(message: AnyMessage) -> None:
                into.append((b.instance_id, message.id))
            return handler
        await bridge.register_subscription(subscription("mail", "signup"), record(shared))
        await bridge.register_subscription(subscription("cache", "signup", shared=False),
                                           record(every))
    ids = []
    for i in range(40):
        message = event("signup", i)
        ids.append(message.id)
        await producer.emit_message(message)
    await producer.emit_message(event("other", "ignored"))
    await wait_for(lambda: len(shared) >= 40 and len(every) >= 80, what="all deliveries")
    await asyncio.sleep(0.3)
    assert sorted(mid for _, mid in shared) == sorted(ids), "each event once per shared group"
    for bridge in instances:
        assert sorted(m for i, m in every if i == bridge.instance_id) == sorted(ids)


async def test_huge_ids_do_not_break_the_subject(make_bridge: Any) -> None:
    producer, consumer = await make_bridge(), await make_bridge()
    seen: list[Any] = []

    async def handler(message: AnyMessage) -> None:
        seen.append(message.tenant_id)

    tenant = "tenant-" + "ü" * 3000
    await consumer.register_subscription(subscription("f", "ev", tenant_id=tenant), handler)
    await producer.emit_message(event("ev", tenant_id="other"))
    await producer.emit_message(event("ev", tenant_id=tenant))
    await wait_for(lambda: seen == [tenant], what="the event of the huge tenant")
    assert await producer.is_ready() and await consumer.is_ready()


async def test_filters_on_sender_principal_and_tenant(make_bridge: Any) -> None:
    producer, consumer = await make_bridge(), await make_bridge()
    seen: list[Any] = []
    handler = collect(seen)
    await consumer.register_subscription(
        subscription("f", "ev", sender=AddressFilter(service_name="caller"),
                     principal_id="alice", tenant_id="acme.eu"),
        handler,
    )
    await producer.emit_message(event("ev", "bob", principal_id="bob", tenant_id="acme.eu"))
    await producer.emit_message(event("ev", "other-tenant", principal_id="alice", tenant_id="x"))
    await producer.emit_message(event("ev", "match", principal_id="alice", tenant_id="acme.eu"))
    await wait_for(lambda: "match" in seen, what="the matching event")
    await asyncio.sleep(0.3)
    assert seen == ["match"]


async def test_subscription_without_message_type_filter_sees_every_type(make_bridge: Any) -> None:
    producer, consumer = await make_bridge(), await make_bridge()
    seen: list[str] = []

    async def handler(message: AnyMessage) -> None:
        seen.append(str(message.message_type))

    await consumer.register_subscription(
        Subscription(subscriber=Address(service_name="all", service_version="1",
                                        service_target="t"),
                     sender=AddressFilter(service_name="caller")),
        handler,
    )
    await producer.emit_message(event("a"))
    await wait_for(lambda: seen == ["customMessage"], what="the event")


async def test_non_durable_auto_ack_subscription_uses_core_nats(make_bridge: Any) -> None:
    producer, consumer = await make_bridge(), await make_bridge()
    seen: list[Any] = []
    handler = collect(seen)
    sub = subscription("live", "tick", durable=False, autoacknowledge=True)
    await consumer.register_subscription(sub, handler)
    for i in range(5):
        await producer.emit_message(event("tick", i))
    try:
        await wait_for(lambda: len(seen) == 5, what="5 ticks")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; got {seen}") from None
    assert sorted(seen) == list(range(5))
    assert consumer._consumers == {} and len(consumer._core_subs) == 1


async def test_durable_subscription_survives_subscriber_restart(make_bridge: Any) -> None:
    producer = await make_bridge()
    first = await make_bridge()
    seen: list[Any] = []
    handler = collect(seen)
    sub = subscription("mail", "signup")
    await first.register_subscription(sub, handler)
    await first.destroy()
    for i in range(10):
        await producer.emit_message(event("signup", i))
    second = await make_bridge()  # another instance id: same shared durable consumer
    await second.register_subscription(sub, handler)
    await wait_for(lambda: len(seen) == 10, what="the backlog")
    assert sorted(seen) == list(range(10))


async def test_unregister_on_one_instance_keeps_the_shared_consumer(make_bridge: Any) -> None:
    producer, leaver, stayer = await make_bridge(), await make_bridge(), await make_bridge()
    seen: list[Any] = []
    handler = collect(seen)
    for durable in (True, False):
        sub = subscription(f"partial{durable}", "tock", durable=durable)
        await leaver.register_subscription(sub, handler)
        await stayer.register_subscription(sub, handler)
        await leaver.unregister_subscription(sub.subscriber)
    for i in range(10):
        await producer.emit_message(event("tock", i))
    await wait_for(lambda: len(seen) == 20, what="both groups served by the stayer")
    assert sorted(seen) == sorted(list(range(10)) * 2)


async def test_a_lost_consumer_is_recreated(
    make_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reference_services.adapters.nats import consumers as nats_consumers

    monkeypatch.setattr(nats_consumers, "HEAL_INTERVAL_S", 0.2)
    producer, consumer = await make_bridge(), await make_bridge()
    seen: list[Any] = []
    handler = collect(seen)
    await consumer.register_subscription(subscription("s", "e"), handler)
    (name,) = [c.name for c in consumer._consumers.values()]
    await consumer._jsc().delete_consumer(consumer.stream, name)  # e.g. an operator mistake
    await wait_async(lambda: _consumer_exists(consumer, name), 10, "the consumer re-created")
    await producer.emit_message(event("e", "after"))
    await wait_for(lambda: seen == ["after"], what="delivery through the re-created consumer")


async def _consumer_exists(bridge: NatsBridge, name: str) -> bool:
    try:
        await bridge._jsc().consumer_info(bridge.stream, name)
    except nats_client.js.errors.NotFoundError:
        return False
    return True


async def test_emit_event_name_chains(make_bridge: Any) -> None:
    producer, worker, listener = await make_bridge(), await make_bridge(), await make_bridge()

    async def double(message: AnyMessage) -> Any:
        return {"doubled": message.payload * 2}

    seen: list[Any] = []
    sink = collect(seen)
    await worker.register_subscription(subscription("w", "in", emit_event_name="out"), double)
    await listener.register_subscription(subscription("l", "out"), sink)
    await producer.emit_message(event("in", 21))
    await wait_for(lambda: seen == [{"doubled": 42}], what="the chained event")


async def test_retries_then_dead_letter_with_reason(make_bridge: Any) -> None:
    producer, consumer, watcher = await make_bridge(), await make_bridge(), await make_bridge()
    attempts: list[float] = []

    async def failing(message: AnyMessage) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError("database unreachable")

    letters: list[Any] = []
    on_letter = collect(letters)
    failure = FailureHandling(max_attempts=3, retry_delay_ms=200, backoff=2.0,
                              dead_letter_target="mailDeadLetter")
    await watcher.register_subscription(subscription("ops", "mailDeadLetter"), on_letter)
    await consumer.register_subscription(subscription("mail", "signup", failure=failure), failing)
    original = event("signup", {"user": 1})
    await producer.emit_message(original)
    await wait_for(lambda: len(letters) == 1, what="the dead letter")
    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38, gaps
    letter = letters[0]
    assert letter["attempts"] == 3 and "database unreachable" in letter["reason"]
    assert letter["message"]["id"] == original.id
    await wait_for(lambda: consumer.native_dead_letters == 1, what="the native dead letter")
    kept = await consumer.dead_letters()
    assert len(kept) == 1
    headers, data = kept[0]
    assert "database unreachable" in headers[DEAD_LETTER_REASON_HEADER]
    assert json.loads(data)["id"] == original.id
    await asyncio.sleep(0.5)
    assert len(attempts) == 3, "terminated: no further redelivery"


async def test_handled_error_is_not_redelivered(make_bridge: Any) -> None:
    producer, consumer = await make_bridge(), await make_bridge()
    calls: list[Any] = []

    async def handler(message: AnyMessage) -> None:
        calls.append(message.payload)
        raise HandledError("bad input")

    await consumer.register_subscription(
        subscription("s", "e", failure=FailureHandling(max_attempts=3, retry_delay_ms=50)), handler)
    await producer.emit_message(event("e", 1))
    await wait_for(lambda: calls == [1], what="one call")
    await asyncio.sleep(0.6)
    assert calls == [1]


async def test_malformed_messages_are_dropped_and_the_next_is_served(
    make_bridge: Any, harness_nats: Any, namespace: str
) -> None:
    consumer = await make_bridge()
    seen: list[Any] = []
    handler = collect(seen)
    served: list[tuple[str, Command]] = []
    await consumer.register_subscription(subscription("s", "e"), handler)
    await consumer.register_command(USER, echo_handler(served, consumer))
    valid = event("e", "valid")
    subject = subjects.message_subject(namespace, valid)
    raw = await nats_client.connect(harness_nats.url)
    try:
        js = raw.jetstream()
        await js.publish(subject, b"\xff not json")
        await js.publish(subject, b'{"messageType":"customMessage"}')
        await raw.publish(subjects.message_subject(namespace, Command(sender=CALLER,
                                                                      receiver=USER)), b"[1,2")
        await raw.flush()
        await js.publish(subject, consumer.core.encode(valid))
    finally:
        await raw.close()
    await wait_for(lambda: seen == ["valid"], what="the valid event")
    await wait_for(lambda: consumer.rejected_messages >= 3, what="three rejections")
    await wait_for(lambda: consumer.native_dead_letters == 2, what="two native dead letters")
    kept = await consumer.dead_letters()
    assert [h[DEAD_LETTER_REASON_HEADER] for h, _ in kept] == ["malformed message"] * 2
    caller = await make_bridge()
    assert await caller.invoke(Command(sender=CALLER, receiver=USER, payload=CommandPayload(
        payload=1)), 5) == {"echo": 1}
    await consumer.publish_raw(b'{"not": "a message"}')  # onto the subscription's subject
    await wait_for(lambda: consumer.rejected_messages >= 4, what="the fourth rejection")
    await caller.emit_message(event("e", "still served"))
    await wait_for(lambda: seen == ["valid", "still served"], what="the next valid event")


async def test_a_drain_cut_short_by_the_shutdown_deadline_still_closes(make_bridge: Any) -> None:
    """The shared shutdown deadline cancels a bridge's destroy while a hung handler keeps its
    drain waiting: the bridge still rejects its pending invocations and closes its
    connection (it was left open, with its callers waiting for their ttl)."""
    from reference_services.runtime.shutdown import destroy_all

    bridge = await make_bridge()
    started = asyncio.Event()

    async def hangs(command: Command) -> Any:
        started.set()
        await asyncio.Event().wait()

    await bridge.register_command(USER, hangs)
    invocation = asyncio.create_task(bridge.invoke(Command(sender=CALLER, receiver=USER), 30))
    await asyncio.wait_for(started.wait(), 5)
    loop = asyncio.get_running_loop()
    begun = loop.time()
    result = await destroy_all([bridge], timeout_s=1.0)
    took = loop.time() - begun
    assert result.timed_out == [f"NatsBridge({bridge.name})"], result
    assert took < 1.0 + 2.5, f"the close after the cut drain took {took:.2f}s"
    assert bridge._nc is not None and bridge._nc.is_closed, "the connection was left open"
    with pytest.raises(PuristaError) as err:
        await asyncio.wait_for(invocation, 1)
    assert err.value.status == 503, err.value


async def test_destroy_drains_in_flight_handlers(make_bridge: Any) -> None:
    producer, consumer, caller = await make_bridge(), await make_bridge(), await make_bridge()
    started, finished = asyncio.Event(), []

    async def slow(message: AnyMessage) -> None:
        started.set()
        await asyncio.sleep(1.0)
        finished.append(message.id)

    async def slow_command(command: Command) -> Any:
        await asyncio.sleep(1.0)
        return success_response(command, "done")

    await consumer.register_subscription(subscription("slow", "job"), slow)
    await consumer.register_command(USER, slow_command)
    message = event("job", 1)
    await producer.emit_message(message)
    await asyncio.wait_for(started.wait(), 5)
    invocation = asyncio.create_task(caller.invoke(Command(sender=CALLER, receiver=USER), 5))
    await wait_for(lambda: consumer.inflight == 2, what="two handlers in flight")
    await consumer.destroy()
    assert finished == [message.id]
    assert not consumer.drain_timed_out
    assert await invocation == "done"
    # acked before the connection closed: a new instance of the group gets nothing
    again: list[Any] = []

    async def record(m: AnyMessage) -> None:
        again.append(m.id)

    successor = await make_bridge()
    await successor.register_subscription(subscription("slow", "job"), record)
    await producer.emit_message(event("job", 2))
    await wait_for(lambda: len(again) == 1, what="the next event")
    assert message.id not in again


async def test_oversized_message_is_refused_before_sending(make_bridge: Any) -> None:
    producer = await make_bridge()
    assert producer.max_message_bytes is not None
    with pytest.raises(HandledError) as info:
        await producer.emit_message(event("e", "x" * (producer.max_message_bytes + 1)))
    assert info.value.status == 400


# ------------------------------------------------------------ broker faults
@pytest.fixture
def own_nats(fresh_service: Callable[[str], Any]) -> Any:
    """A dedicated nats-server this test may kill, restart and pause."""
    return fresh_service("nats")


async def _echo_and_two_subscriptions(
    server: Any, subscriber: Any, durable: Subscription, volatile: Subscription
) -> list[Any]:
    """``server`` answers ``USER`` with an echo; ``subscriber`` has a durable and a core-NATS
    subscription collecting payloads into the returned list (for the outage tests)."""
    await server.register_command(USER, echo_handler([], server))
    seen: list[Any] = []
    handler = collect(seen)
    await subscriber.register_subscription(durable, handler)
    await subscriber.register_subscription(volatile, handler)
    return seen


async def test_reconnect_reregisters_everything_after_broker_restart(
    make_bridge: Any, own_nats: Any
) -> None:
    caller = await make_bridge(own_nats.url)
    server = await make_bridge(own_nats.url)
    consumer = await make_bridge(own_nats.url)
    seen = await _echo_and_two_subscriptions(
        server, consumer, subscription("s", "e"),
        subscription("core", "e", durable=False, autoacknowledge=True))
    assert await caller.invoke(Command(sender=CALLER, receiver=USER), 5) == {"echo": None}

    await asyncio.to_thread(own_nats.kill)
    await wait_async(lambda: is_not(consumer.is_ready()), 10, "is_ready false while down")
    assert not await consumer.is_healthy()
    await asyncio.to_thread(own_nats.start)
    for bridge in (caller, server, consumer):
        await wait_async(bridge.is_ready, 20, "is_ready true after the restart")
    assert consumer.reconnects >= 1
    assert await caller.invoke(Command(sender=CALLER, receiver=USER, payload=CommandPayload(
        payload=2)), 5) == {"echo": 2}
    await caller.emit_message(event("e", "after"))
    await wait_for(lambda: seen.count("after") == 2, what="both subscriptions served")


async def test_invoke_while_broker_down_fails_within_ttl(make_bridge: Any, own_nats: Any) -> None:
    caller = await make_bridge(own_nats.url, publish_deadline_s=1.0)
    await asyncio.to_thread(own_nats.kill)
    await wait_async(lambda: is_not(caller.is_ready()), 10, "disconnected")
    for ttl in (0.3, 2.0):
        started = time.monotonic()
        with pytest.raises(PuristaError) as info:
            await caller.invoke(Command(sender=CALLER, receiver=USER), ttl)
        assert info.value.status in (503, 504)
        assert time.monotonic() - started <= ttl + 0.25
    started = time.monotonic()
    with pytest.raises(PuristaError) as emitted:
        await caller.emit_message(event("e"))
    assert emitted.value.status == 503, "no publisher confirm: the emit fails"
    assert time.monotonic() - started <= 1.5
    await asyncio.to_thread(own_nats.start)
    await wait_async(caller.is_ready, 20, "reconnected")
    await caller.emit_message(event("e"))


async def test_stale_connection_detected_by_pings(make_bridge: Any, own_nats: Any) -> None:
    bridge = await make_bridge(own_nats.url)
    await asyncio.to_thread(own_nats.pause)
    try:
        started = time.monotonic()
        await wait_async(lambda: is_not(bridge.is_ready()), 15, "stale connection detected")
        assert time.monotonic() - started < 8
    finally:
        await asyncio.to_thread(own_nats.resume)
    await wait_async(bridge.is_ready, 20, "ready after resume")


async def test_black_holed_network_detected_and_recovered(
    harness_nats: Any, make_bridge: Any, proxied: Callable[..., Any]
) -> None:
    proxy = await asyncio.to_thread(proxied, harness_nats)
    caller = await make_bridge()  # direct connection
    server = await make_bridge(proxy.url)
    got = await _echo_and_two_subscriptions(
        server, server, subscription("mail", "entry"),
        subscription("cache", "entry", shared=False, durable=False, autoacknowledge=True))
    async with proxy.black_hole("downstream"), proxy.black_hole("upstream"):
        started = time.monotonic()
        await wait_async(lambda: is_not(server.is_ready()), 15, "dead link detected by pings")
        assert time.monotonic() - started < 1.0 * (2 + 1) + 2
        await caller.emit_message(event("entry", "during"))  # kept by the stream
        with pytest.raises(PuristaError) as info:
            await caller.invoke(Command(sender=CALLER, receiver=USER), 1.0)
        assert info.value.status in (503, 504)
    await wait_async(server.is_ready, 30, "ready after the network heals")
    assert server.reconnects >= 1
    assert await caller.invoke(Command(sender=CALLER, receiver=USER, payload=CommandPayload(
        payload="healed")), 5) == {"echo": "healed"}
    await caller.emit_message(event("entry", "after"))
    await wait_for(lambda: got.count("during") == 1 and got.count("after") == 2, 15,
                   "durable backlog and both subscriptions after the heal")


@pytest.mark.slow
async def test_broker_kill_mid_stream_loses_no_durable_events(
    make_bridge: Any, own_nats: Any, history: History
) -> None:
    """SIGKILL + restart of the broker while 1,000 events flow: every confirmed event
    reaches the durable shared subscription (duplicates allowed, none lost)."""
    producer = await make_bridge(own_nats.url)
    consumers = [await make_bridge(own_nats.url) for _ in range(2)]
    delivered: set[str] = set()

    def handler_of(bridge: NatsBridge) -> Any:
        async def handler(message: AnyMessage) -> None:
            history.delivered(message.id, consumer=bridge.instance_id)
            await asyncio.sleep(0.002)  # keep deliveries in flight when the broker dies
            delivered.add(message.id)
        return handler

    for bridge in consumers:
        await bridge.register_subscription(subscription("ledger", "entry"), handler_of(bridge))
    total = 1000
    confirmed: list[str] = []
    gate = asyncio.Semaphore(16)

    async def emit(i: int) -> None:
        async with gate:
            message = event("entry", i)
            try:
                await producer.emit_message(message)
            except PuristaError:
                history.sent(message.id, "unknown")
            else:
                history.sent(message.id, "ok")
                confirmed.append(message.id)

    async def chaos() -> float:
        await wait_for(lambda: len(delivered) >= 300, 30, "300 deliveries before the kill")
        await asyncio.to_thread(own_nats.kill)
        killed = time.monotonic()
        await wait_async(lambda: is_not(consumers[0].is_ready()), 10, "consumers see the outage")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_nats.start)
        return time.monotonic() - killed

    chaos_task = asyncio.create_task(chaos())
    await asyncio.gather(*(emit(i) for i in range(total)))
    downtime = await chaos_task
    await wait_for(lambda: delivered.issuperset(confirmed), 60, "every confirmed event delivered")
    verdict = history.check(allow_duplicates=True)
    print(f"downtime={downtime:.2f}s reconnects={[b.reconnects for b in (producer, *consumers)]}")
    print(verdict.format())
    assert verdict.ok, verdict.format()
    assert verdict.lost == 0 and verdict.unexpected == 0
    assert verdict.published_ok == total, "emits retry until the restarted broker confirms"
    # every bridge lived through the outage (its reconnect callback may run a little later)
    await wait_for(lambda: all(b.reconnects >= 1 for b in (producer, *consumers)), 15,
                   "every bridge to report its reconnect")


def test_reply_tokens_keep_plain_ids_and_never_mix_them_with_escaped_ones() -> None:
    """A command's reply subject ends in its correlation id when that is a plain token (no
    snake-casing per send); any other id is escaped and marked, so no two ids share one."""
    from reference_services.adapters.nats.event_bridge import _reply_token

    assert _reply_token("V1StGXR8_Z5jdHi6B-myT") == "V1StGXR8_Z5jdHi6B-myT"
    assert _reply_token("ab_c") == "ab_c"
    assert _reply_token("AbC") == "AbC"  # snake-cased it was ab_c: two ids, one subject
    for odd in ("Ab C", "a.b", "*", "ü", "x" * 65):
        tok = _reply_token(odd)
        assert tok.startswith("%") and "." not in tok and " " not in tok, (odd, tok)
    assert _reply_token("Ab C") != _reply_token("ab_c")


def _typed(service: str, event_name: str, **kw: Any) -> Subscription:
    return subscription(service, event_name, message_type=MessageType.CUSTOM_MESSAGE, **kw)


async def test_the_consumer_is_purista_s(make_bridge: Any) -> None:
    """A shared durable subscription reads through PURISTA's push consumer (name, deliver
    group, filter, acks, limits), whichever instance created it."""
    bridge = await make_bridge()
    sub = _typed("mail.Svc", "signUp", failure=FailureHandling(max_attempts=4))
    await bridge.register_subscription(sub, lambda _m: asyncio.sleep(0))
    info = await bridge._jsc().consumer_info(bridge.stream, "subscription_mail_Svc_1_on")
    cfg = info.config
    assert cfg.deliver_group == f"{bridge.prefix}_QUEUE_MAIL.SVC_1_ON".upper()
    assert cfg.filter_subject == subjects.subscription_filter(bridge.prefix, sub)
    assert cfg.deliver_subject and cfg.deliver_subject.startswith("_INBOX.")
    assert (cfg.ack_policy, cfg.deliver_policy) == ("explicit", "new")
    assert (cfg.max_deliver, cfg.max_ack_pending, cfg.idle_heartbeat) == (5, 10, None)
    assert not cfg.flow_control


async def test_a_consumer_of_another_shape_is_refused(make_bridge: Any) -> None:
    """A consumer of the same name with another deliver group (or filter) is not joined:
    registration fails naming the consumer and what differs, as PURISTA's does."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from reference_services.adapters.nats.consumers import ConsumerMismatchError

    bridge = await make_bridge()
    await bridge._jsc().add_consumer(bridge.stream, ConsumerConfig(
        durable_name="subscription_m_1_on", deliver_subject="_INBOX.elsewhere",
        deliver_group="OTHER", ack_policy=AckPolicy.EXPLICIT))
    with pytest.raises(ConsumerMismatchError, match=r"subscription_m_1_on.*'OTHER'") as err:
        await bridge.register_subscription(_typed("m", "e"), lambda _m: asyncio.sleep(0))
    assert err.value.status == 409


async def test_a_consumer_re_created_elsewhere_is_followed(
    make_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PURISTA re-creates the consumer with a new inbox as deliver subject: the bridge
    follows it (checked while idle) and gets the events again."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from reference_services.adapters.nats import consumers as nats_consumers

    monkeypatch.setattr(nats_consumers, "HEAL_INTERVAL_S", 0.2)
    producer, consumer = await make_bridge(), await make_bridge()
    seen: list[Any] = []
    handler = collect(seen)
    sub = _typed("f", "e")
    await consumer.register_subscription(sub, handler)
    (old,) = consumer._consumers.values()
    js = consumer._jsc()
    cfg = (await js.consumer_info(consumer.stream, old.name)).config
    await js.delete_consumer(consumer.stream, old.name)
    await js.add_consumer(consumer.stream, ConsumerConfig(
        durable_name=old.name, deliver_subject="_INBOX.purista1", deliver_group=cfg.deliver_group,
        filter_subject=cfg.filter_subject, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10))
    await wait_for(lambda: old.bound_to == "_INBOX.purista1", what="following the new inbox")
    await producer.emit_message(event("e", "after"))
    await wait_for(lambda: seen == ["after"], what="delivery through the re-created consumer")


async def test_a_flood_of_malformed_commands_is_counted_but_not_logged_line_by_line(
    make_bridge: Any, harness_nats: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = await make_bridge()
    served: list[tuple[str, Command]] = []
    await consumer.register_command(USER, echo_handler(served, consumer))
    caplog.set_level(logging.INFO, logger=consumer.log.name)
    flood = 500
    started = time.monotonic()
    raw = await nats_client.connect(harness_nats.url)
    try:
        command_subject = subjects.message_subject(namespace, Command(sender=CALLER, receiver=USER))
        for i in range(flood):
            await raw.publish(command_subject, b"[%d," % i)
        await raw.flush()
    finally:
        await raw.close()
    await wait_for(lambda: consumer.rejected_messages == flood, what="every rejection counted")
    elapsed = time.monotonic() - started
    lines = [r for r in caplog.records if "rejected malformed" in r.getMessage()]
    # one line at once, then at most one per throttle interval (5 s)
    assert 1 <= len(lines) <= 2 + int(elapsed / 5), [r.getMessage() for r in lines]
    caller = await make_bridge()
    assert await caller.invoke(Command(sender=CALLER, receiver=USER, payload=CommandPayload(
        payload=2)), 5) == {"echo": 2}


async def test_an_event_no_stream_captures_is_still_published_when_another_stream_keeps_ours_out(
    make_bridge: Any, harness_nats: Any, namespace: str
) -> None:
    # a PURISTA service that started first made a per-filter stream inside our prefix's
    # subjects, so ours cannot be created (overlapping subjects); PURISTA publishes events
    # on core NATS, and an event no stream captures must still reach its subscribers
    captured, uncaptured = event("e", "captured"), event("other", "uncaptured")
    raw = await nats_client.connect(harness_nats.url)
    js = raw.jetstream()
    name = f"{namespace.replace('.', '_')}_purista_first"
    await js.add_stream(name=name, subjects=[subjects.message_subject(namespace, captured)])
    try:
        producer, consumer = await make_bridge(), await make_bridge()
        seen: list[Any] = []
        typed = {"message_type": MessageType.CUSTOM_MESSAGE}
        await consumer.register_subscription(subscription("s", "other", **typed), collect(seen))
        await consumer.register_subscription(subscription("s2", "e", **typed), collect(seen))
        started = time.monotonic()
        await producer.emit_message(uncaptured)
        assert time.monotonic() - started < producer.publish_deadline_s / 2
        await producer.emit_message(captured)  # confirmed by the other runtime's stream
        started = time.monotonic()
        await producer.emit_message(event("nobody", "held by no stream"))  # not a 503
        assert time.monotonic() - started < producer.publish_deadline_s / 2
        await wait_for(lambda: sorted(seen) == ["captured", "uncaptured"], what="both events")
        assert (await js.stream_info(name)).state.messages == 1
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await raw.close()
