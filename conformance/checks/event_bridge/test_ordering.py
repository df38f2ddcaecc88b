"""Per-sender order at one subscriber, for adapters that declare ``per_sender_order``."""

from __future__ import annotations

import asyncio
from typing import Any

from conformance.kit import Recorder, event, subscription
from conformance.kit.ledger import Ledger
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for

EB = ("event_bridge",)
SENDERS = 4


def inversions(messages: list[Any]) -> list[str]:
    """Each place where a sender's message arrived after a later one of the same sender."""
    last: dict[int, int] = {}
    bad = []
    for m in messages:
        s, i = m.payload["s"], m.payload["i"]
        if i < last.get(s, -1):
            bad.append(f"sender {s}: #{i} after #{last[s]}")
        last[s] = max(i, last.get(s, -1))
    return bad


@check("event_bridge.ordering.per_sender", kinds=EB, needs=("per_sender_order",))
async def test_per_sender_order(aut: AdapterUnderTest) -> None:
    """Hundreds of events from four concurrent senders reach one subscriber in each sender's
    order: one reordering fails (and so does a lost event)."""
    ledger = Ledger("ordering")
    consumer = await aut.new()
    rec = Recorder(ledger, "consumer")
    await consumer.register_subscription(subscription("ordered", event_name="seq"), rec)
    producers = [await aut.new() for _ in range(SENDERS)]
    per = aut.n(100, minimum=50)

    async def send(s: int) -> None:
        for i in range(per):
            await producers[s].emit_message(
                event(producers[s], "seq", {"id": f"{s}-{i}", "s": s, "i": i})
            )
            ledger.sent(f"{s}-{i}")

    await asyncio.gather(*(send(s) for s in range(SENDERS)))
    await wait_for(
        ledger.all_arrived,
        15,
        failed=lambda: bool(inversions(rec.messages)),
        progress=lambda: len(rec.messages),
    )
    bad = inversions(rec.messages)
    assert not bad, f"{len(bad)} reordering(s) among {len(rec.messages)} events: {bad[:5]}"
    verdict = ledger.verdict()
    assert not verdict.lost, f"events never arrived, order unproven: {verdict.format()}"
    aut.metric("events", len(rec.messages))
