"""Fidelity on retries: redelivered copies and the dead letter's original message equal the
first delivery (every envelope field and the payload)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from conformance.kit import FailureHandling, Recorder, event, subscription
from conformance.kit.ledger import Ledger
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from reference_services.runtime.codec import to_wire

EB = ("event_bridge",)
FIELDS = (
    "id",
    "event_name",
    "sender",
    "receiver",
    "principal_id",
    "tenant_id",
    "trace_id",
    "correlation_id",
    "otp",
    "payload",
    "timestamp",
    "content_type",
    "content_encoding",
)
OTP = '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'


def _envelope(i: int) -> dict[str, Any]:
    return {
        "principal_id": f"user-{i}-ü🙂",
        "tenant_id": f"tenant/{i}.中",
        "trace_id": f"{i:032x}",
        "correlation_id": f"corr-{i}",
        "otp": OTP,
    }


def _payload(i: int) -> dict[str, Any]:
    return {"id": f"m-{i}", "n": i, "f": i / 3, "text": "grüße 中文 🙂", "nested": [{"k": [i]}]}


def field_diff(first: Any, other: Any) -> dict[str, tuple[Any, Any]]:
    """Fields of ``other`` that differ from ``first`` (first, other)."""
    return {
        f: (getattr(first, f, None), getattr(other, f, None))
        for f in FIELDS
        if getattr(first, f, None) != getattr(other, f, None)
    }


class Failing:
    """Records every delivery per message and fails the first ``fail_first`` of each."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.copies: dict[str, list[Any]] = defaultdict(list)

    async def __call__(self, msg: Any) -> None:
        key = str(msg.payload["id"])
        self.copies[key].append(msg)
        if len(self.copies[key]) <= self.fail_first:
            raise RuntimeError(f"failing {key} (attempt {len(self.copies[key])})")


async def _emit(aut: AdapterUnderTest, n: int) -> dict[str, Any]:
    producer = await aut.new()
    sent = {}
    for i in range(n):
        msg = event(producer, "work", _payload(i), **_envelope(i))
        await producer.emit_message(msg)
        sent[f"m-{i}"] = msg
    return sent


@check("event_bridge.fidelity.redelivered", kinds=EB, needs=("bounded_retry",))
async def test_redelivered_copies(aut: AdapterUnderTest) -> None:
    """Every retried delivery equals the first one and the sent message: id, sender, event
    name, principal, tenant, trace, correlation, otp, timestamp and payload."""
    handler = Failing(fail_first=2)
    consumer = await aut.new()
    failure = FailureHandling(max_attempts=3, retry_delay_ms=20, backoff=1.0)
    await consumer.register_subscription(
        subscription("refaithful", event_name="work", failure=failure), handler
    )
    n = aut.n(10)
    sent = await _emit(aut, n)
    await wait_for(
        lambda: all(len(handler.copies[k]) >= 3 for k in sent),
        15,
        progress=lambda: sum(map(len, handler.copies.values())),
    )
    bad = []
    for key, msg in sent.items():
        copies = handler.copies.get(key, [])
        if len(copies) < 3:
            bad.append(f"{key}: {len(copies)} deliveries, expected 3")
            continue
        if diff := field_diff(msg, copies[0]):
            bad.append(f"{key} first delivery differs from the sent message: {diff}")
        for attempt, copy in enumerate(copies[1:], start=2):
            if diff := field_diff(copies[0], copy):
                bad.append(f"{key} attempt {attempt} differs from the first delivery: {diff}")
    assert not bad, f"{len(bad)} problem(s): " + "; ".join(bad[:6])


@check(
    "event_bridge.fidelity.dead_letter_original",
    kinds=EB,
    needs=("bounded_retry", "dead_letter"),
)
async def test_dead_letter_original(aut: AdapterUnderTest) -> None:
    """The message inside each dead letter equals the first delivery (wire form: every
    envelope field and the payload), and the dead letter keeps principal, tenant and trace."""
    handler = Failing(fail_first=10**6)
    consumer = await aut.new()
    target = f"{aut.ctx.prefix}.dead"
    failure = FailureHandling(
        max_attempts=2, retry_delay_ms=20, backoff=1.0, dead_letter_target=target
    )
    await consumer.register_subscription(
        subscription("doomed", event_name="work", failure=failure), handler
    )
    dead = Ledger("dead letters")
    watcher = await aut.new()
    rec = Recorder(dead, "dead-letter", key=lambda m: str(m.payload["message"]["payload"]["id"]))
    await watcher.register_subscription(subscription("dlq-watch", event_name=target), rec)
    sent = await _emit(aut, aut.n(10))
    for key in sent:
        dead.sent(key)
    await wait_for(dead.all_arrived, 15, progress=lambda: dead.total_delivered)
    await wait_quiet(lambda: dead.total_delivered, quiet_s=0.2)
    bad = []
    for letter in rec.messages:
        original = letter.payload["message"]
        key = str(original["payload"]["id"])
        first = handler.copies[key][0] if handler.copies.get(key) else sent[key]
        want = to_wire(first)
        diff = {
            k: (want.get(k), original.get(k))
            for k in set(want) | set(original)
            if want.get(k) != original.get(k)
        }
        if diff:
            bad.append(f"{key}: dead letter's message differs from the first delivery: {diff}")
        carried = {
            f: (getattr(first, f), getattr(letter, f))
            for f in ("principal_id", "tenant_id", "trace_id")
            if getattr(first, f) != getattr(letter, f)
        }
        if carried:
            bad.append(f"{key}: dead letter envelope lost {carried}")
    missing = [k for k in sent if dead.count(k) == 0]
    assert not missing, f"no dead letter for {missing}"
    assert not bad, f"{len(bad)} problem(s): " + "; ".join(bad[:6])
