"""Manual acknowledgement under a crash: a message whose handler was running when its
instance died is delivered again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.kit import FailureHandling, Gate, Recorder, event, subscription
from conformance.kit.ledger import Ledger, expect_at_least_once
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for

EB = ("event_bridge",)
REDELIVERY_TIMEOUT_S = 20.0  # brokers redeliver an unacked message when the consumer is gone


@check("event_bridge.failures.crash_mid_handler", kinds=EB, needs=("manual_ack",))
async def test_crash_mid_handler(aut: AdapterUnderTest) -> None:
    """An instance is destroyed without drain while its handlers run (they never finish):
    every message it held is delivered again, to the other instance of the group or to the
    instance restarted under the same identity. A message delivered again keeps its retry
    policy: where retries are supported, the handlers after the crash fail each message once
    (max_attempts 3) and each still arrives on a retry."""
    gate = Gate()
    entered: list[str] = []

    async def stuck(msg: Any) -> None:
        entered.append(str(msg.payload["id"]))
        await gate.wait(REDELIVERY_TIMEOUT_S + 10)

    # the fault options shorten broker timers (a consumer's ack wait) as in the faults suite
    options = dict(aut.spec.fault_options)
    victim = await aut.new(**options)
    if not hasattr(victim, "drain_timeout_s"):
        pytest.skip("the adapter offers no drain_timeout_s to destroy it without drain")
    retries = aut.supports("bounded_retry")
    failure = FailureHandling(max_attempts=3, retry_delay_ms=20, backoff=1.0) if retries else None
    sub = subscription("crashy", event_name="crash", failure=failure)
    failed: set[str] = set()

    def after_crash(rec: Recorder) -> Any:
        async def handle(msg: Any) -> None:
            key = str(msg.payload["id"])
            if retries and key not in failed:
                failed.add(key)
                raise RuntimeError(f"first attempt of {key} after the crash fails")
            await rec(msg)

        return handle

    await victim.register_subscription(sub, stuck)
    producer = await aut.new(**options)
    n = aut.n(10)
    ledger = Ledger("after the crash")
    for i in range(n):
        await producer.emit_message(event(producer, "crash", {"id": f"c{i}"}))
        ledger.sent(f"c{i}")
    assert await wait_for(lambda: bool(entered), 10), "the handler never started"
    survivor = await aut.new(**options)
    await survivor.register_subscription(sub, after_crash(Recorder(ledger, "survivor")))
    held = sorted(set(entered))
    victim.drain_timeout_s = 0.0
    try:
        await asyncio.wait_for(aut.destroy(victim), 15)
    finally:
        gate.open()  # whatever still runs may end now; its ack has nowhere to go
    # the crashed instance comes back under its identity (as a restarted pod would):
    # brokers that keep unacked messages with the consumer's session deliver them now
    replacement = await aut.new(**options, instance_id=victim.instance_id)
    await replacement.register_subscription(sub, after_crash(Recorder(ledger, "replacement")))
    # no quick-mode stall shortcut: a redelivery legitimately waits for the broker's
    # redelivery timer (a consumer's ack wait), longer than the stall window
    await wait_for(ledger.all_arrived, REDELIVERY_TIMEOUT_S)
    lost_held = [k for k in held if ledger.count(k) == 0]
    assert not lost_held, (
        f"{len(lost_held)} of the {len(held)} message(s) whose handler was running at the "
        f"crash were never delivered again: {lost_held[:10]}"
    )
    expect_at_least_once(ledger)
    aut.metric("held_at_crash", len(held))
