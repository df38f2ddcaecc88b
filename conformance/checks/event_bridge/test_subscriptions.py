"""Subscriptions: filters, shared and every-instance delivery, fan-out, chaining, durability."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from conformance.kit import (
    AddressFilter,
    FailureHandling,
    Recorder,
    addr,
    command,
    event,
    responder,
    subscription,
)
from conformance.kit.ledger import Ledger, expect_exactly_once
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from reference_services.runtime.messages import CustomMessage

EB = ("event_bridge",)
SENDERS = 5
ARRIVAL_TIMEOUT_S = 15.0


async def emit_many(
    producers: list[Any],
    make: Callable[[Any, int, int], tuple[CustomMessage, bool]],
    per_sender: int,
    ledgers: list[Ledger],
    senders: int = SENDERS,
) -> int:
    """``senders`` concurrent tasks emit ``per_sender`` messages each; records expected ones."""
    expected = 0

    async def sender(s: int) -> None:
        nonlocal expected
        producer = producers[s % len(producers)]
        for i in range(per_sender):
            msg, wanted = make(producer, s, i)
            key = str(msg.payload["id"])
            try:
                await producer.emit_message(msg)
                ok = True
            except Exception:
                ok = False
            if wanted:
                expected += 1
                for ledger in ledgers:
                    ledger.sent(key, acknowledged=ok)

    await asyncio.gather(*(sender(s) for s in range(senders)))
    return expected


async def settle(*ledgers: Ledger, quiet_s: float = 0.3) -> None:
    """Wait until every acknowledged message arrived, then for a short quiet period."""
    total = lambda: sum(ledger.total_delivered for ledger in ledgers)  # noqa: E731
    await wait_for(
        lambda: all(ledger.all_arrived() for ledger in ledgers), ARRIVAL_TIMEOUT_S, progress=total
    )
    await wait_quiet(total, quiet_s=quiet_s)


def _payload(s: int, i: int, tag: str = "") -> dict[str, Any]:
    return {"id": f"{tag}s{s}-m{i}", "sender": s, "seq": i}


async def _filter_check(
    aut: AdapterUnderTest,
    sub_kwargs: dict[str, Any],
    vary: Callable[[Any, int, int, bool], CustomMessage],
) -> None:
    ledger = Ledger("subscriber")
    consumer = await aut.new()
    await consumer.register_subscription(
        subscription("filtered", **sub_kwargs), Recorder(ledger, "consumer")
    )
    producers = [await aut.new(), await aut.new()]

    def make(p: Any, s: int, i: int) -> tuple[CustomMessage, bool]:
        wanted = (s + i) % 2 == 0
        return vary(p, s, i, wanted), wanted

    expected = await emit_many(producers, make, aut.n(40), [ledger])
    await settle(ledger)
    expect_exactly_once(ledger)
    aut.metric("matching", expected)
    aut.metric("not_matching", SENDERS * aut.n(40) - expected)


@check("event_bridge.subscriptions.filter.event_name", kinds=EB)
async def test_filter_event_name(aut: AdapterUnderTest) -> None:
    """Only messages with the subscribed event name arrive (others are 'unexpected')."""
    await _filter_check(
        aut,
        {"event_name": "order.placed"},
        lambda p, s, i, w: event(p, "order.placed" if w else "order.cancelled", _payload(s, i)),
    )


@check("event_bridge.subscriptions.filter.sender", kinds=EB)
async def test_filter_sender(aut: AdapterUnderTest) -> None:
    """Only messages from the subscribed sender service arrive."""
    await _filter_check(
        aut,
        {"event_name": "ping", "sender": AddressFilter(service_name="billing")},
        lambda p, s, i, w: event(p, "ping", _payload(s, i), service="billing" if w else "shop"),
    )


async def _id_filter_check(aut: AdapterUnderTest, field: str, wanted: str, other: str) -> None:
    """A subscription on ``field == wanted``: the other value, and none, must not arrive."""
    await _filter_check(
        aut,
        {"event_name": "ping", field: wanted},
        lambda p, s, i, w: event(
            p, "ping", _payload(s, i), **{field: wanted if w else (other if i % 4 else None)}
        ),
    )


@check("event_bridge.subscriptions.filter.principal", kinds=EB)
async def test_filter_principal(aut: AdapterUnderTest) -> None:
    """Only messages of the subscribed principal arrive (other principal or none: not)."""
    await _id_filter_check(aut, "principal_id", "user-1", "user-2")


@check("event_bridge.subscriptions.filter.tenant", kinds=EB)
async def test_filter_tenant(aut: AdapterUnderTest) -> None:
    """Only messages of the subscribed tenant arrive (other tenant or none: not)."""
    await _id_filter_check(aut, "tenant_id", "tenant-a", "tenant-b")


@check("event_bridge.subscriptions.shared_one_per_group", kinds=EB, needs=("shared_subscriptions",))
async def test_shared_one_per_group(aut: AdapterUnderTest) -> None:
    """A shared subscription on three instances: each message reaches exactly one of them."""
    group = Ledger("group")
    for i in range(3):
        b = await aut.new()
        await b.register_subscription(
            subscription("workers", event_name="job"), Recorder(group, f"instance{i}")
        )
    producers = [await aut.new(), await aut.new()]
    await emit_many(
        producers, lambda p, s, i: (event(p, "job", _payload(s, i)), True), aut.n(100), [group]
    )
    await settle(group)
    expect_exactly_once(group)
    aut.metric("per_instance", dict(sorted(group.receivers().items())))


@check("event_bridge.subscriptions.every_instance", kinds=EB)
async def test_every_instance(aut: AdapterUnderTest) -> None:
    """A non-shared subscription on three instances: every instance gets every message once."""
    ledgers = [Ledger(f"instance{i}") for i in range(3)]
    for i, ledger in enumerate(ledgers):
        b = await aut.new()
        await b.register_subscription(
            subscription("cache", event_name="invalidate", shared=False, durable=False),
            Recorder(ledger, f"instance{i}"),
        )
    producer = await aut.new()
    await emit_many(
        [producer],
        lambda p, s, i: (event(p, "invalidate", _payload(s, i)), True),
        aut.n(100),
        ledgers,
    )
    await settle(*ledgers)
    expect_exactly_once(*ledgers)


@check("event_bridge.subscriptions.fan_out", kinds=EB)
async def test_fan_out(aut: AdapterUnderTest) -> None:
    """Three services subscribe to one event: each service gets each message once (two
    instances per service where shared subscriptions are supported)."""
    ledgers = {svc: Ledger(svc) for svc in ("email", "audit", "search")}
    per_service = 2 if aut.supports("shared_subscriptions") else 1
    for svc, ledger in ledgers.items():
        for i in range(per_service):
            b = await aut.new()
            await b.register_subscription(
                subscription(svc, event_name="user.created"), Recorder(ledger, f"{svc}{i}")
            )
    producers = [await aut.new(), await aut.new()]
    await emit_many(
        producers,
        lambda p, s, i: (event(p, "user.created", _payload(s, i)), True),
        aut.n(100),
        list(ledgers.values()),
    )
    await settle(*ledgers.values())
    expect_exactly_once(*ledgers.values())


@check("event_bridge.subscriptions.emit_event_chaining", kinds=EB)
async def test_emit_event_chaining(aut: AdapterUnderTest) -> None:
    """A handler's return value is emitted as ``emitEventName`` (None emits nothing), keeping
    correlation, principal, tenant, trace id and otp."""
    chained = Ledger("chained")
    first = await aut.new()

    async def check_order(msg: Any) -> Any:
        n = msg.payload["seq"]
        return None if n % 3 == 0 else {"id": msg.payload["id"], "checked": n * 2}

    await first.register_subscription(
        subscription("checker", event_name="order.placed", emit_event_name="order.checked"),
        check_order,
    )
    second = await aut.new()
    rec = Recorder(chained, "listener")
    await second.register_subscription(subscription("listener", event_name="order.checked"), rec)
    producer = await aut.new()
    sent: dict[str, CustomMessage] = {}

    def make(p: Any, s: int, i: int) -> tuple[CustomMessage, bool]:
        msg = event(
            p,
            "order.placed",
            _payload(s, i),
            principal_id=f"user-{s}",
            tenant_id="t-1",
            correlation_id=f"corr-s{s}-m{i}",
            trace_id=f"trace-s{s}-m{i}",
            otp=f"00-{s + 1:032x}-{i + 1:016x}-01",
        )
        sent[msg.payload["id"]] = msg
        return msg, i % 3 != 0

    await emit_many([producer], make, aut.n(30), [chained])
    await settle(chained)
    expect_exactly_once(chained)
    wrong = []
    for got in rec.messages:
        src = sent[got.payload["id"]]
        want = (src.correlation_id, src.principal_id, src.tenant_id, src.trace_id, src.otp)
        want += (src.payload["seq"] * 2,)
        have = (got.correlation_id, got.principal_id, got.tenant_id, got.trace_id, got.otp)
        have += (got.payload.get("checked"),)
        if want != have:
            wrong.append(f"{got.payload['id']}: {have} != {want}")
    assert not wrong, "chained events lost fields: " + "; ".join(wrong[:10])


async def _emit_batch(
    aut: AdapterUnderTest, producer: Any, ledger: Ledger, event_name: str, batch: str
) -> None:
    """``aut.n(20)`` ``event_name`` events of ``batch`` from two senders on ``producer``,
    recorded as sent in ``ledger``."""
    await emit_many(
        [producer],
        lambda p, s, i: (event(p, event_name, _payload(s, i, batch)), True),
        aut.n(20),
        [ledger],
        senders=2,
    )


class _FailsFirst:
    """Fails the first attempt of each message, then hands it to ``inner``."""

    def __init__(self, inner: Recorder) -> None:
        self.inner = inner
        self.failed: set[str] = set()

    async def __call__(self, msg: Any) -> None:
        key = str(msg.payload["id"])
        if key not in self.failed:
            self.failed.add(key)
            raise RuntimeError(f"first attempt of {key} fails")
        await self.inner(msg)


@check("event_bridge.subscriptions.durable_restart", kinds=EB, needs=("durable_subscriptions",))
async def test_durable_restart(aut: AdapterUnderTest) -> None:
    """Messages for a durable subscription emitted while its only instance is down reach the
    instance when it restarts (same instance id, as a restarted process would be configured);
    what was emitted meanwhile that its filter does not match is not kept for it. A kept
    message starts its attempts afresh: where retries are supported, the restarted handler
    fails each once (max_attempts 2) and each still arrives on its retry."""
    ledger = Ledger("durable")
    retries = aut.supports("bounded_retry")
    failure = FailureHandling(max_attempts=2, retry_delay_ms=20, backoff=1.0) if retries else None
    sub = subscription("ledger-keeper", event_name="entry", durable=True, failure=failure)
    first = await aut.new()
    await first.register_subscription(sub, Recorder(ledger, "first"))
    producer = await aut.new()
    await _emit_batch(aut, producer, ledger, "entry", "a")
    await settle(ledger, quiet_s=0.1)
    await aut.destroy(first)
    await _emit_batch(aut, producer, ledger, "entry", "b")
    # not recorded as sent: delivered after the restart, they count as unexpected
    await emit_many(
        [producer],
        lambda p, s, i: (event(p, "entry.other", _payload(s, i, "other")), False),
        aut.n(5),
        [],
        senders=2,
    )
    second = await aut.new(instance_id=first.instance_id)
    rec = Recorder(ledger, "second")
    await second.register_subscription(sub, _FailsFirst(rec) if retries else rec)
    await settle(ledger)
    expect_exactly_once(ledger)
    aut.metric("while_down", 2 * aut.n(20))


@check("event_bridge.subscriptions.unregister_stops_delivery", kinds=EB)
async def test_unregister_stops_delivery(aut: AdapterUnderTest) -> None:
    """After unregister_subscription nothing more is delivered to that handler."""
    ledger = Ledger("subscriber")
    consumer = await aut.new()
    sub = subscription("leaver", event_name="tick", durable=False)
    await consumer.register_subscription(sub, Recorder(ledger, "consumer"))
    producer = await aut.new()
    await _emit_batch(aut, producer, ledger, "tick", "a")
    await settle(ledger, quiet_s=0.1)
    await consumer.unregister_subscription(sub.subscriber)
    # the second batch is not recorded as sent: any delivery of it counts as unexpected
    await emit_many(
        [producer],
        lambda p, s, i: (event(p, "tick", _payload(s, i, "b")), False),
        aut.n(20),
        [],
        senders=2,
    )
    await wait_quiet(lambda: ledger.total_delivered, quiet_s=0.3)
    expect_exactly_once(ledger)


@check("event_bridge.subscriptions.unregister_keeps_other_instances", kinds=EB)
async def test_unregister_keeps_other_instances(aut: AdapterUnderTest) -> None:
    """When one instance unregisters a subscription, the others still receive every message
    (shared where supported, otherwise every instance)."""
    shared = aut.supports("shared_subscriptions")
    ledgers = [Ledger("stayer")] if shared else [Ledger("stayer-a"), Ledger("stayer-b")]
    sub = subscription("partial", event_name="tock", shared=shared, durable=False)
    leaver = await aut.new()
    stayers = [await aut.new(), await aut.new()]
    left = Ledger("leaver")
    await leaver.register_subscription(sub, Recorder(left, "leaver"))
    for i, b in enumerate(stayers):
        await b.register_subscription(sub, Recorder(ledgers[i % len(ledgers)], f"stayer{i}"))
    await leaver.unregister_subscription(sub.subscriber)
    producer = await aut.new()
    await emit_many(
        [producer, leaver],
        lambda p, s, i: (event(p, "tock", _payload(s, i)), True),
        aut.n(20),
        ledgers,
        senders=2,
    )
    await settle(*ledgers)
    expect_exactly_once(*ledgers)
    assert left.total_delivered == 0, f"{left.total_delivered} delivered after unregister"


@check("event_bridge.subscriptions.trace_continues", kinds=EB)
async def test_trace_continues(aut: AdapterUnderTest) -> None:
    """A subscription handler's invocations continue the trace of the message it handles:
    the command it invokes carries an ``otp`` with the message's trace id (W3C
    traceparent), with or without a tracer provider."""
    seen: dict[str, str | None] = {}

    async def record(cmd: Any) -> Any:
        seen[cmd.payload.payload] = cmd.otp
        return "noted"

    server = await aut.new()
    await server.register_command(addr("trace-sink"), responder(record))
    consumer = await aut.new()

    async def forward(msg: Any) -> None:
        await consumer.invoke(command(consumer, addr("trace-sink"), msg.payload["id"]), 10)

    await consumer.register_subscription(subscription("tracer", event_name="traced"), forward)
    producer = await aut.new()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    await producer.emit_message(event(producer, "traced", {"id": "with"}, otp=json.dumps(traced)))
    await wait_for(lambda: len(seen) == 1, 10)
    assert set(seen) == {"with"}, f"the handler invoked for {sorted(seen)}"
    carried = json.loads(seen["with"] or "{}").get("traceparent", "")
    assert carried.split("-")[1:2] == [trace_id], (
        f"the invoked command's otp {seen['with']!r} does not continue trace {trace_id}"
    )
