"""Bad input on the wire is rejected and the bridge keeps serving."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conformance.kit import Recorder, event, subscription
from conformance.kit.ledger import Ledger, expect_exactly_once
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from reference_services.runtime.codec import encode

EB = ("event_bridge",)


def _bad_inputs(valid: dict[str, Any], limit: int | None) -> dict[str, bytes]:
    missing = {k: v for k, v in valid.items() if k != "sender"}
    wrong_type = {**valid, "timestamp": "yesterday"}
    cases = {
        "not json": b"this is not json {",
        "not utf-8": b"\xff\xfe\xfa",
        "json array": b"[1, 2, 3]",
        "unknown messageType": json.dumps({**valid, "messageType": "gossip"}).encode(),
        "missing sender": json.dumps(missing).encode(),
        "wrong field type": json.dumps(wrong_type).encode(),
        "NaN": json.dumps({**valid, "payload": {"x": float("nan")}}).encode(),
        "empty": b"",
    }
    if limit and limit <= 8 * 1024 * 1024:
        cases["oversize"] = json.dumps(
            {**valid, "payload": {"id": "big", "pad": "x" * limit}}
        ).encode()
    return cases


def _message_limit(aut: AdapterUnderTest, bridge: Any) -> int | None:
    """The size limit of ``bridge`` (as tuned at start), else the declared capability."""
    if hasattr(bridge, "max_message_bytes"):
        return bridge.max_message_bytes  # type: ignore[no-any-return]
    caps = aut.spec.capabilities
    if caps is not None and hasattr(caps, "max_message_bytes"):
        return caps.max_message_bytes  # type: ignore[no-any-return]
    return None


@check("event_bridge.wire.malformed_rejected", kinds=EB)
async def test_malformed_rejected(aut: AdapterUnderTest) -> None:
    """Malformed bytes (not JSON, not UTF-8, wrong fields, oversize) are dropped with a logged
    reason; valid raw input and later messages are still delivered."""
    ledger = Ledger("subscriber")
    consumer = await aut.new()
    await consumer.register_subscription(
        subscription("robust", event_name="raw"), Recorder(ledger, "consumer")
    )
    producer = await aut.new()
    probe = event(producer, "raw", {"id": "raw-valid"})
    if not await aut.inject_raw(consumer, encode(probe)):
        pytest.skip("the adapter offers no raw-injection hook (publish_raw) for wire checks")
    ledger.sent("raw-valid")
    assert await wait_for(ledger.all_arrived, 10), "a valid raw message was not delivered"
    valid = json.loads(encode(event(producer, "raw", {"id": "should-not-arrive"})))
    limit = _message_limit(aut, consumer)
    aut.metric("oversize_limit_bytes", limit)  # None: no limit declared, no oversize case
    refused = []
    for name, raw in _bad_inputs(valid, limit).items():
        try:
            await aut.inject_raw(consumer, raw)
        except Exception as exc:  # the transport refusing the bytes is a rejection too
            refused.append(f"{name}: {type(exc).__name__}")
    aut.metric("refused_by_transport", refused)
    for i in range(5):
        msg = event(producer, "raw", {"id": f"after-{i}"})
        await producer.emit_message(msg)
        ledger.sent(f"after-{i}")
    await wait_for(ledger.all_arrived, 10)
    await wait_quiet(lambda: ledger.total_delivered, quiet_s=0.2)
    expect_exactly_once(ledger)
    assert await consumer.is_healthy(), "bridge unhealthy after malformed input"
    for obj in (consumer, getattr(consumer, "hub", None)):
        if obj is not None and hasattr(obj, "rejected_messages"):
            aut.metric("rejected_messages", obj.rejected_messages)
