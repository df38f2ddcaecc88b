"""Undecodable deliveries: quarantined to the dead letter with the reason and the raw bytes,
on every event bridge, never dropped silently."""

from __future__ import annotations

from typing import Any

from conformance.checks.robustness.hooks import core_counter
from conformance.kit import FailureHandling, Recorder, subscription
from conformance.kit.ledger import Ledger
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet

EB = ("event_bridge",)
CASES = {
    "not-json": b"quarantine-not-json {",
    "not-utf8": b"quarantine-\xff\xfe",
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "array": b'["quarantine-array"]',
}


def _case_of(letter: Any) -> str:
    raw = str(letter.payload.get("raw", "")) if isinstance(letter.payload, dict) else ""
    for name, data in CASES.items():
        if raw and raw[:40] == data[:40].decode("utf-8", "replace"):
            return name
    return f"unknown: {raw[:40]!r}"


@check("robustness.wire.malformed_dead_lettered", kinds=EB, needs=("dead_letter",))
async def test_malformed_dead_lettered(aut: AdapterUnderTest) -> None:
    """Each undecodable delivery to a subscription with a dead letter target (not JSON, not
    UTF-8, 100k-deep nesting, a JSON array) arrives there once, with a reason and the raw
    bytes; nothing reaches the handler."""
    target = f"{aut.ctx.prefix}.quarantine"
    handled = Ledger("handler")
    consumer = await aut.new()
    await consumer.register_subscription(
        subscription(
            "quarantine",
            event_name="q",
            failure=FailureHandling(max_attempts=2, retry_delay_ms=10, dead_letter_target=target),
        ),
        Recorder(handled, "handler"),
    )
    dead = Ledger("dead letters")
    watcher = await aut.new()
    rec = Recorder(dead, "dead-letter", key=_case_of)
    await watcher.register_subscription(subscription("quarantine-watch", event_name=target), rec)
    injected = await aut.inject_each(consumer, CASES)
    for name in injected:
        dead.sent(name)
    await wait_for(dead.all_arrived, 10)
    await wait_quiet(lambda: dead.total_delivered, quiet_s=0.3)
    got = sorted(_case_of(m) for m in rec.messages)
    aut.metric("injected", injected)
    aut.metric("dead_letters", got)
    aut.metric("jobs_quarantined", len(rec.messages))
    missing = sorted(set(injected) - set(got))
    assert not missing, f"undecodable deliveries without a dead letter: {missing}"
    extra = [g for g in got if got.count(g) > 1 or g.startswith("unknown")]
    assert not extra, f"unexpected or repeated dead letters: {sorted(set(extra))}"
    reasons = [m.payload.get("reason") for m in rec.messages]
    assert all(reasons), f"dead letters without a reason: {reasons}"
    assert handled.total_delivered == 0, "an undecodable delivery reached the handler"


@check("robustness.wire.duplicate_ids", kinds=EB, needs=("duplicate_ids_dropped",))
async def test_duplicate_ids(aut: AdapterUnderTest) -> None:
    """The same message (one id) emitted three times reaches a subscription once, also when
    the copies arrive while its handler still runs; messages with other ids still arrive,
    each once. A bridge built on the shared base counts the
    copies it dropped in ``duplicates_dropped``, each at most once (the broker may drop
    some before they reach it)."""
    from conformance.kit import Gate, event

    ledger = Ledger("subscriber")
    record = Recorder(ledger, "consumer")
    gate = Gate()

    async def handler(msg: Any) -> None:
        await gate.wait(10)  # still running when the copies arrive
        await record(msg)

    consumer = await aut.new()
    await consumer.register_subscription(subscription("dedupe", event_name="dup"), handler)
    producer = await aut.new()
    n = aut.n(10)
    try:
        for i in range(n):
            msg = event(producer, "dup", {"id": f"dup-{i}"})
            ledger.sent(f"dup-{i}")
            for _ in range(3):
                await producer.emit_message(msg)
    finally:
        gate.open()
    await wait_for(ledger.all_arrived, 15)
    await wait_quiet(lambda: ledger.total_delivered, quiet_s=0.5)
    aut.metric("emitted", 3 * n)
    aut.metric("delivered", ledger.total_delivered)
    assert ledger.all_arrived(), "a message never arrived"
    assert ledger.total_delivered == n, (
        f"{n} distinct ids emitted three times each: {ledger.total_delivered} deliveries "
        f"(expected {n})"
    )
    dropped = core_counter(consumer, "duplicates_dropped")
    aut.metric("duplicates_dropped", dropped)
    if dropped is not None:  # built on the shared base: what it dropped, each once
        assert 0 <= dropped <= 2 * n, (
            f"duplicates_dropped {dropped} for {2 * n} copies (a broker may drop some first)"
        )


@check("robustness.wire.settled_ids_not_rerun", kinds=EB, needs=("duplicate_ids_dropped",))
async def test_settled_ids_not_rerun(aut: AdapterUnderTest) -> None:
    """A message whose handling ended (acked after a handled error, or dead-lettered after
    its last attempt) that arrives again with the same id (a publisher's retry) is not
    handled again and not dead-lettered twice; a message with a new id still is."""
    from conformance.kit import event
    from reference_services.runtime.errors import HandledError

    runs: dict[str, int] = {}
    letters: list[Any] = []

    async def refuse(msg: Any) -> None:
        runs[msg.payload["id"]] = runs.get(msg.payload["id"], 0) + 1
        raise HandledError("refused for good")

    async def crash(msg: Any) -> None:
        runs[msg.payload["id"]] = runs.get(msg.payload["id"], 0) + 1
        raise RuntimeError("always fails")

    dead = f"{aut.ctx.prefix}.settled-dead"
    once = FailureHandling(max_attempts=1, retry_delay_ms=20, backoff=1.0, dead_letter_target=dead)
    consumer = await aut.new()
    await consumer.register_subscription(
        subscription("settle-handled", event_name="settle-h"), refuse
    )
    await consumer.register_subscription(
        subscription("settle-dead", event_name="settle-d", failure=once), crash
    )
    watcher = await aut.new()

    async def keep(msg: Any) -> None:
        letters.append(msg)

    await watcher.register_subscription(subscription("settle-dl", event_name=dead), keep)
    producer = await aut.new()
    handled = event(producer, "settle-h", {"id": "h"})
    crashed = event(producer, "settle-d", {"id": "d"})
    await producer.emit_message(handled)
    await producer.emit_message(crashed)
    assert await wait_for(lambda: runs.get("h") == 1 and len(letters) == 1, 10), (
        f"first deliveries: runs {runs}, {len(letters)} dead letter(s)"
    )
    await producer.emit_message(handled)
    await producer.emit_message(crashed)
    await producer.emit_message(event(producer, "settle-h", {"id": "h-new"}))
    await producer.emit_message(event(producer, "settle-d", {"id": "d-new"}))
    assert await wait_for(lambda: runs.get("h-new") == 1 and len(letters) == 2, 10), (
        f"new ids after the copies: runs {runs}, {len(letters)} dead letter(s)"
    )
    await wait_quiet(lambda: (sum(runs.values()), len(letters)), quiet_s=0.3)
    aut.metric("runs", dict(runs))
    assert runs == {"h": 1, "d": 1, "h-new": 1, "d-new": 1}, (
        f"handler runs per id: {runs} (a settled id arrived again and ran again)"
    )
    lettered = sorted(m.payload.get("message", {}).get("id", "?") for m in letters)
    assert len(letters) == 2, f"dead letters: {len(letters)} for 2 dead ids ({lettered})"
