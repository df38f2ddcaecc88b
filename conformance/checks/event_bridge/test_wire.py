"""Bad input on the wire is rejected and the bridge keeps serving."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from conformance.checks.robustness.hooks import bridge_counter
from conformance.kit import FailureHandling, Recorder, event, subscription
from conformance.kit.ledger import Ledger, expect_exactly_once
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from reference_services.runtime.codec import encode
from reference_services.runtime.messages import MessageType

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
    reason, each counted once where the adapter counts rejections (``rejected_messages`` of
    the consumer, and of its hub where it has one); valid raw input and later messages are
    still delivered."""
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
    counters = {}
    own = bridge_counter(consumer, "rejected_messages")  # required of the shared base
    if own is not None:
        counters["bridge"] = own
    hub = getattr(consumer, "hub", None)  # the in-memory bridge's hub rejects some first
    if hub is not None and hasattr(hub, "rejected_messages"):
        counters["hub"] = hub.rejected_messages
    aut.metric("rejected_messages", counters)
    if counters:  # the adapter counts what it rejects: each refused input once
        accepted = len(_bad_inputs(valid, limit)) - len(refused)
        assert sum(counters.values()) == accepted, (
            f"{accepted} malformed inputs reached the consumer, rejected_messages counts {counters}"
        )


# the consumer's max_message_bytes: its dead letters (up to 64 KiB of raw bytes) fit under it
QUARANTINE_LIMIT_BYTES = 256 * 1024
# undecodable bytes, each with the word its reason must name (what is wrong with them)
QUARANTINE_CASES = {
    "not json": (b"wire-quarantine-not-json {", "json"),
    "not utf-8": (b"wire-quarantine-\xff\xfe", "utf-8"),
    "json array": (b'["wire-quarantine-array"]', "object"),
    "unknown messageType": (
        b'{"messageType": "gossip", "id": "wire-quarantine-gossip"}',
        "messagetype",
    ),
}


@check("event_bridge.wire.malformed_quarantined", kinds=EB, needs=("dead_letter",))
async def test_malformed_quarantined(aut: AdapterUnderTest) -> None:
    """Each undecodable delivery (bytes that are no message, or a message over the consumer's
    max_message_bytes) to a subscription with a dead letter target is quarantined at
    once, exactly once, and never retried: one dead letter with attempts 0, the raw bytes and
    their size, and a reason naming what is wrong with them; one infoSubscriptionError from
    the consuming instance naming the subscription (attempts 0, not handled, deadLettered);
    nothing reaches the handler; the bridge counts each once (``quarantined_messages``, where
    it is built on the shared base). Valid bytes put on the wire the same way are delivered, not
    quarantined, and the bridge keeps delivering."""
    target = f"{aut.ctx.prefix}.wire-quarantine"
    handled = Ledger("handler")
    consumer = await aut.new(max_message_bytes=QUARANTINE_LIMIT_BYTES)
    sub = subscription(
        "wire-quarantine",
        event_name="wq",
        failure=FailureHandling(max_attempts=3, retry_delay_ms=10, dead_letter_target=target),
    )
    await consumer.register_subscription(sub, Recorder(handled, "handler"))
    watcher = await aut.new()
    letters: list[Any] = []
    infos: list[Any] = []

    async def keep_letter(msg: Any) -> None:
        letters.append(msg)

    async def keep_info(msg: Any) -> None:
        infos.append(msg)

    await watcher.register_subscription(subscription("wq-letters", event_name=target), keep_letter)
    await watcher.register_subscription(
        replace(subscription("wq-infos"), message_type=MessageType.INFO_SUBSCRIPTION_ERROR),
        keep_info,
    )
    # well-formed but over the consumer's limit: it decodes for the broker and the
    # publisher, not for the consumer
    pad = "x" * (QUARANTINE_LIMIT_BYTES + 1024)
    oversize = encode(event(watcher, "wq", {"id": "wq-oversize", "pad": pad}), max_bytes=None)
    cases = {**QUARANTINE_CASES, "oversize": (oversize, "limit")}
    taken = await aut.inject_each(consumer, {name: raw for name, (raw, _) in cases.items()})
    injected = {name: cases[name] for name in taken}
    # a letter carries the raw bytes up to a limit (64 KiB): matched on their first 4 KiB
    by_raw = {raw[:4096].decode("utf-8", "replace"): name for name, (raw, _) in injected.items()}
    mine = lambda: [  # noqa: E731
        m for m in infos if str(sub.subscriber) in str(m.payload.get("subscription"))
    ]
    await wait_for(
        lambda: len(letters) >= len(injected) and len(mine()) >= len(injected),
        10,
        progress=lambda: (len(letters), len(infos)),
    )
    # valid bytes on the same hook are delivered, not quarantined
    await aut.inject_raw(consumer, encode(event(watcher, "wq", {"id": "wq-raw-valid"})))
    handled.sent("wq-raw-valid")
    probe = event(watcher, "wq", {"id": "wq-after"})
    await watcher.emit_message(probe)
    handled.sent("wq-after")
    await wait_for(handled.all_arrived, 10)
    await wait_quiet(lambda: (len(letters), len(infos), handled.total_delivered), quiet_s=0.3)
    aut.metric("injected", sorted(injected))
    expect_exactly_once(handled)
    seen: dict[str, int] = {}
    bad = []
    for letter in letters:
        body = letter.payload if isinstance(letter.payload, dict) else {}
        name = by_raw.get(str(body.get("raw"))[:4096])
        if name is None:
            bad.append(f"a dead letter without the raw bytes of any case: {body!r:.160}")
            continue
        seen[name] = seen.get(name, 0) + 1
        raw, word = injected[name]
        if body.get("rawBytes") != len(raw):
            bad.append(f"{name}: rawBytes {body.get('rawBytes')!r}, sent {len(raw)} bytes")
        if body.get("attempts") != 0:
            bad.append(f"{name}: attempts {body.get('attempts')!r} (quarantine is not a retry)")
        reason = body.get("reason")
        if not isinstance(reason, str) or word not in reason.lower():
            bad.append(f"{name}: reason {reason!r} does not say what is wrong ({word})")
    missing = sorted(set(injected) - set(seen))
    assert not missing, f"undecodable deliveries without a dead letter: {missing}"
    twice = sorted(n for n, k in seen.items() if k > 1)
    assert not twice, f"quarantined more than once: {twice}"
    assert not bad, "quarantine letters wrong: " + "; ".join(bad[:6])
    counted = getattr(getattr(consumer, "core", None), "quarantined_messages", None)
    aut.metric("quarantined_messages", counted)
    if isinstance(counted, int):  # built on the shared base: it counts what it quarantines
        assert counted == len(injected), (
            f"{len(injected)} deliveries quarantined, quarantined_messages counts {counted}"
        )
    reports = mine()
    assert len(reports) == len(injected), (
        f"{len(injected)} undecodable deliveries, {len(reports)} infoSubscriptionError "
        f"naming {sub.subscriber}: {[m.payload for m in reports][:6]}"
    )
    for m in reports:
        assert m.sender.instance_id == consumer.instance_id, (
            f"quarantine reported by instance {m.sender.instance_id}, the consumer is "
            f"{consumer.instance_id}"
        )
        want = {"attempts": 0, "handled": False, "deadLettered": True}
        assert {k: m.payload.get(k) for k in want} == want, f"quarantine info: {m.payload}"
        assert m.payload.get("reason"), f"quarantine info without a reason: {m.payload}"
