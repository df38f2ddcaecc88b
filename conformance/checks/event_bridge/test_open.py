"""Open behaviours: what the contract leaves open is observed and reported, not judged."""

from __future__ import annotations

import asyncio

from conformance.kit import Recorder, event, subscription
from conformance.kit.ledger import Ledger
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet

EB = ("event_bridge",)


@check("event_bridge.open.ordering", kinds=EB, open_behaviour=True)
async def test_ordering(aut: AdapterUnderTest) -> None:
    """Observes whether per-sender order holds at one subscriber, and how senders interleave."""
    ledger = Ledger("ordering")
    consumer = await aut.new()
    rec = Recorder(ledger, "consumer")
    await consumer.register_subscription(subscription("orderly", event_name="seq"), rec)
    producers = [await aut.new() for _ in range(3)]
    per = aut.n(50)

    async def send(s: int) -> None:
        for i in range(per):
            msg = event(producers[s], "seq", {"id": f"s{s}-{i}", "s": s, "i": i})
            await producers[s].emit_message(msg)
            ledger.sent(f"s{s}-{i}")

    await asyncio.gather(*(send(s) for s in range(3)))
    arrived = await wait_for(ledger.all_arrived, 15, progress=lambda: ledger.total_delivered)
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    switches = 0
    last = None
    for m in rec.messages:
        seen[m.payload["s"]].append(m.payload["i"])
        switches += last is not None and last != m.payload["s"]
        last = m.payload["s"]
    in_order = {s: seq == sorted(seq) for s, seq in seen.items()}
    # order is only shown preserved when every message arrived: an empty or partial
    # stream proves nothing about order
    aut.observe("all_arrived", arrived)
    aut.observe("per_sender_order_preserved", arrived and all(in_order.values()))
    aut.observe("out_of_order_senders", [s for s, ok in in_order.items() if not ok])
    aut.observe("sender_switches", switches)
    aut.observe("delivered", ledger.total_delivered)


@check("event_bridge.open.late_subscriber", kinds=EB, open_behaviour=True)
async def test_late_subscriber(aut: AdapterUnderTest) -> None:
    """Observes whether messages emitted before a (durable, shared) subscription first existed
    reach it once it registers."""
    producer = await aut.new()
    for i in range(10):
        await producer.emit_message(event(producer, "early", {"id": f"early-{i}"}))
    ledger = Ledger("late")
    consumer = await aut.new()
    await consumer.register_subscription(
        subscription("latecomer", event_name="early"), Recorder(ledger, "consumer")
    )
    await producer.emit_message(event(producer, "early", {"id": "after"}))
    ledger.sent("after")
    await wait_for(ledger.all_arrived, 10)
    await wait_quiet(lambda: ledger.total_delivered, quiet_s=0.3)
    aut.observe("old_messages_delivered", ledger.unique_delivered - 1)
    aut.observe("new_message_delivered", ledger.count("after") > 0)
