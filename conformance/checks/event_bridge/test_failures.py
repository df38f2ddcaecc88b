"""Handler failures: bounded redelivery, dead letters with a reason, handled errors not retried."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import pytest

from conformance.kit import FailureHandling, Recorder, collect, event, subscription
from conformance.kit.ledger import Ledger, expect_exactly_once
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_for_async, wait_quiet
from reference_services.runtime.errors import HandledError
from reference_services.runtime.messages import MessageType
from reference_services.runtime.spi.bridge_base import DEAD_LETTER_REASON_HEADER

EB = ("event_bridge",)
RETRY_LATE_FRACTION = 0.25
RETRY_LATE_MARGIN_MS = 250.0


class Attempts:
    """Counts handler attempts per message id and fails them as told."""

    def __init__(self, fail_first: int, handled: bool = False) -> None:
        self.fail_first = fail_first
        self.handled = handled
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.succeeded = Ledger("succeeded")

    def total(self) -> int:
        return sum(len(v) for v in self.calls.values())

    async def __call__(self, msg: Any) -> None:
        key = str(msg.payload["id"])
        self.calls[key].append(time.monotonic())
        if len(self.calls[key]) <= self.fail_first:
            if self.handled:
                raise HandledError(f"rejected {key}", 422)
            raise RuntimeError(f"transient failure of {key} (attempt {len(self.calls[key])})")
        self.succeeded.delivered(key)


async def _setup(
    aut: AdapterUnderTest, handler: Attempts, failure: FailureHandling, dead: Ledger | None = None
) -> tuple[Any, list[Any]]:
    consumer = await aut.new()
    await consumer.register_subscription(
        subscription("fragile", event_name="work", failure=failure), handler
    )
    letters: list[Any] = []
    if dead is not None and failure.dead_letter_target:
        watcher = await aut.new()
        rec = Recorder(
            dead, "dead-letter", key=lambda m: str(m.payload["message"]["payload"]["id"])
        )
        await watcher.register_subscription(
            subscription("dlq-watch", event_name=failure.dead_letter_target), rec
        )
        letters = rec.messages
    return await aut.new(), letters


async def _emit(producer: Any, n: int, *ledgers: Ledger) -> list[str]:
    ids = []
    for i in range(n):
        msg = event(producer, "work", {"id": f"job-{i}", "n": i})
        await producer.emit_message(msg)
        ids.append(f"job-{i}")
        for ledger in ledgers:
            ledger.sent(f"job-{i}")
    return ids


def _wrong_counts(handler: Attempts, ids: list[str], want: int) -> list[str]:
    return [
        f"{k}: {len(handler.calls.get(k, []))}"
        for k in ids
        if len(handler.calls.get(k, [])) != want
    ]


@check("event_bridge.failures.retry_transient", kinds=EB, needs=("bounded_retry",))
async def test_retry_transient(aut: AdapterUnderTest) -> None:
    """A handler failing twice then succeeding runs exactly three times; nothing dead-letters."""
    handler = Attempts(fail_first=2)
    dead = Ledger("dead letters")
    failure = FailureHandling(
        max_attempts=3, retry_delay_ms=20, backoff=1.0, dead_letter_target=f"{aut.ctx.prefix}.dead"
    )
    producer, _ = await _setup(aut, handler, failure, dead)
    ids = await _emit(producer, aut.n(20), handler.succeeded)
    await wait_for(handler.succeeded.all_arrived, 15, progress=handler.total)
    await wait_quiet(handler.total, quiet_s=0.3)
    expect_exactly_once(handler.succeeded)
    wrong = _wrong_counts(handler, ids, 3)
    assert not wrong, f"expected exactly 3 attempts per message, got {wrong[:10]}"
    assert dead.total_delivered == 0, (
        f"{dead.total_delivered} dead letter(s) for recovered messages"
    )


@check("event_bridge.failures.retry_every_instance", kinds=EB, needs=("bounded_retry",))
async def test_retry_every_instance(aut: AdapterUnderTest) -> None:
    """On a subscription that is not shared (each instance gets every message), a handler
    failing twice then succeeding runs exactly three times on each instance: a retry goes
    back to the instance whose handler failed, not to the group."""
    failure = FailureHandling(max_attempts=3, retry_delay_ms=20, backoff=1.0)
    handlers = [Attempts(fail_first=2), Attempts(fail_first=2)]
    for handler in handlers:
        consumer = await aut.new()
        await consumer.register_subscription(
            subscription("fragile", event_name="work", shared=False, failure=failure), handler
        )
    producer = await aut.new()
    ids = await _emit(producer, aut.n(10), *(h.succeeded for h in handlers))
    for handler in handlers:
        await wait_for(handler.succeeded.all_arrived, 15, progress=handler.total)
    await wait_quiet(lambda: sum(h.total() for h in handlers), quiet_s=0.3)
    for n, handler in enumerate(handlers):
        expect_exactly_once(handler.succeeded)
        wrong = _wrong_counts(handler, ids, 3)
        assert not wrong, f"instance {n}: expected exactly 3 attempts per message, got {wrong[:10]}"


@check("event_bridge.failures.dead_letter", kinds=EB, needs=("bounded_retry", "dead_letter"))
async def test_dead_letter(aut: AdapterUnderTest) -> None:
    """A handler that always fails is tried max_attempts times, then one dead letter per message
    arrives at the dead letter target with the reason, the attempt count and the message, its
    correlation id the message's id."""
    handler = Attempts(fail_first=10**6)
    dead = Ledger("dead letters")
    failure = FailureHandling(
        max_attempts=3, retry_delay_ms=20, backoff=1.0, dead_letter_target=f"{aut.ctx.prefix}.dead"
    )
    producer, letters = await _setup(aut, handler, failure, dead)
    ids = await _emit(producer, aut.n(10), dead)
    both = lambda: (handler.total(), dead.total_delivered)  # noqa: E731
    await wait_for(dead.all_arrived, 15, progress=both)
    await wait_quiet(both, quiet_s=0.3)
    wrong = _wrong_counts(handler, ids, 3)
    assert not wrong, f"expected exactly 3 attempts per message, got {wrong[:10]}"
    expect_exactly_once(dead)
    bad = []
    for letter in letters:
        body = letter.payload
        mid = body["message"]["payload"]["id"]
        if body.get("attempts") != 3 or "transient failure of " + mid not in str(
            body.get("reason")
        ):
            bad.append(f"{mid}: attempts={body.get('attempts')} reason={body.get('reason')!r}")
        if body["message"].get("eventName") != "work":
            bad.append(f"{mid}: original message not carried: {body['message']!r}")
        if letter.correlation_id != body["message"].get("id"):
            bad.append(f"{mid}: correlation id {letter.correlation_id!r} is not the message id")
    assert not bad, "dead letters incomplete: " + "; ".join(bad[:10])


@check(
    "event_bridge.failures.native_dead_letter_kept",
    kinds=EB,
    needs=("native_dead_lettering", "bounded_retry", "dead_letter"),
)
async def test_native_dead_letter_kept(aut: AdapterUnderTest) -> None:
    """A message dead-lettered after max_attempts is also kept by the broker itself (its
    native dead-letter store, read through the adapter's ``dead_letters()`` hook): once per
    message, the message unchanged, with the reason."""
    handler = Attempts(fail_first=10**6)
    failure = FailureHandling(
        max_attempts=2, retry_delay_ms=20, backoff=1.0, dead_letter_target=f"{aut.ctx.prefix}.dead"
    )
    consumer = await aut.new()
    peek = getattr(consumer, "dead_letters", None)
    if not callable(peek):
        pytest.skip(
            f"{type(consumer).__name__} offers no dead_letters() hook: the broker's own "
            "dead-letter store cannot be read"
        )
    await consumer.register_subscription(
        subscription("fragile", event_name="work", failure=failure), handler
    )
    producer = await aut.new()
    sent = {}
    for i in range(aut.n(5)):
        msg = event(producer, "work", {"id": f"job-{i}", "n": i})
        await producer.emit_message(msg)
        sent[f"job-{i}"] = msg
    await wait_for(lambda: all(len(handler.calls.get(k, [])) >= 2 for k in sent), 15)
    kept: list[tuple[dict[str, str], bytes]] = []

    async def all_kept() -> bool:
        nonlocal kept
        kept = list(await peek())
        return len(kept) >= len(sent)

    await wait_for_async(all_kept, 10, interval_s=0.1)
    aut.metric("kept", len(kept))
    seen: dict[str, int] = defaultdict(int)
    bad = []
    for headers, data in kept:
        try:
            body = json.loads(data)
            key = str(body["payload"]["id"])
        except (ValueError, KeyError, TypeError):
            bad.append(f"not the message: {data[:80]!r}")
            continue
        seen[key] += 1
        original = sent.get(key)
        if original is None or body.get("id") != original.id:
            bad.append(f"{key}: not the message sent")
        if "transient failure of " + key not in headers.get(DEAD_LETTER_REASON_HEADER, ""):
            bad.append(f"{key}: reason {headers.get(DEAD_LETTER_REASON_HEADER)!r}")
    missing = sorted(set(sent) - set(seen))
    assert not missing, f"the broker kept no dead letter for {missing} (kept {len(kept)})"
    twice = sorted(k for k, n in seen.items() if n > 1)
    assert not twice, f"kept more than once: {twice}"
    assert not bad, "native dead letters wrong: " + "; ".join(bad[:6])


@check("event_bridge.failures.info_subscription_error", kinds=EB, needs=("bounded_retry",))
async def test_info_subscription_error(aut: AdapterUnderTest) -> None:
    """Each failed delivery is reported once as an infoSubscriptionError from the consuming
    instance's bridge (sender service eventBridge): a message dead-lettered after its
    attempts with its id, the subscription, the reason, the attempt count, handled false and
    deadLettered true; a handled error with its id, status and message and handled true."""
    handler = Attempts(fail_first=10**6)
    refusing = Attempts(fail_first=10**6, handled=True)
    infos: list[Any] = []
    watcher = await aut.new()
    await watcher.register_subscription(
        replace(subscription("info-watch"), message_type=MessageType.INFO_SUBSCRIPTION_ERROR),
        collect(infos),
    )
    consumer = await aut.new()
    failure = FailureHandling(max_attempts=2, retry_delay_ms=20, backoff=1.0)
    await consumer.register_subscription(
        subscription("info-fragile", event_name="info-work", failure=failure), handler
    )
    await consumer.register_subscription(
        subscription("info-refusing", event_name="info-refused"), refusing
    )
    producer = await aut.new()
    failing = event(producer, "info-work", {"id": "info-failing"})
    refused = event(producer, "info-refused", {"id": "info-refused"})
    await producer.emit_message(failing)
    await producer.emit_message(refused)
    mine = lambda: [m for m in infos if m.payload.get("messageId") in (failing.id, refused.id)]  # noqa: E731
    await wait_for(lambda: len(mine()) >= 2, 15, progress=lambda: len(infos))
    await wait_quiet(lambda: len(infos), quiet_s=0.3)
    got = {m.payload["messageId"]: m for m in mine()}
    assert len(mine()) == 2 and set(got) == {failing.id, refused.id}, (
        f"expected one infoSubscriptionError for each failed message, got "
        f"{[m.payload for m in mine()]}"
    )
    for m in got.values():
        assert m.sender.service_name == "eventBridge", f"info sender: {m.sender!r}"
        assert m.sender.instance_id == consumer.instance_id, (
            f"info from instance {m.sender.instance_id}, the consumer is {consumer.instance_id}"
        )
    dead = got[failing.id].payload
    want_dead = {"attempts": 2, "handled": False, "deadLettered": True}
    assert {k: dead.get(k) for k in want_dead} == want_dead, f"dead-letter info: {dead}"
    assert "info-fragile" in str(dead.get("subscription")), f"subscription not named: {dead}"
    assert "transient failure of info-failing" in str(dead.get("reason")), (
        f"reason not carried: {dead}"
    )
    handled = got[refused.id].payload
    want_handled = {"status": 422, "message": "rejected info-refused", "handled": True}
    assert {k: handled.get(k) for k in want_handled} == want_handled, (
        f"handled-error info: {handled}"
    )
    assert "info-refusing" in str(handled.get("subscription")), f"not named: {handled}"


@check("event_bridge.failures.info_every_failure", kinds=EB)
async def test_info_every_failure(aut: AdapterUnderTest) -> None:
    """A bridge reports every failure of its life, not only its first few dozen: 100 handled
    errors, ten at a time (each ten reported before the next), give one
    infoSubscriptionError each."""
    infos: list[Any] = []
    watcher = await aut.new()
    await watcher.register_subscription(
        replace(subscription("info-all-watch"), message_type=MessageType.INFO_SUBSCRIPTION_ERROR),
        collect(infos),
    )
    consumer = await aut.new()
    refusing = Attempts(fail_first=10**6, handled=True)
    await consumer.register_subscription(
        subscription("info-all-refusing", event_name="info-all"), refusing
    )
    producer = await aut.new()
    sent: set[str] = set()
    mine = lambda: {m.payload.get("messageId") for m in infos} & sent  # noqa: E731
    for batch in range(10):
        for i in range(10):
            msg = event(producer, "info-all", {"id": f"info-all-{batch}-{i}"})
            sent.add(msg.id)
            await producer.emit_message(msg)
        await wait_for(lambda: len(mine()) == len(sent), 10)
        assert len(mine()) == len(sent), (
            f"{len(sent) - len(mine())} of the failures {batch * 10 + 1}-{len(sent)} were not "
            f"reported ({len(mine())} of {len(sent)} so far)"
        )
    await wait_quiet(lambda: len(infos), quiet_s=0.3)
    reported = [m for m in infos if m.payload.get("messageId") in sent]
    assert len(reported) == len(sent), f"{len(reported)} reports of {len(sent)} failures"


@check("event_bridge.failures.handled_error_not_redelivered", kinds=EB)
async def test_handled_error_not_redelivered(aut: AdapterUnderTest) -> None:
    """A handled error acks the message: one attempt each, no dead letter."""
    handler = Attempts(fail_first=10**6, handled=True)
    dead = Ledger("dead letters")
    failure = FailureHandling(
        max_attempts=3, retry_delay_ms=20, dead_letter_target=f"{aut.ctx.prefix}.dead"
    )
    producer, _ = await _setup(aut, handler, failure, dead)
    ids = await _emit(producer, aut.n(20))
    await wait_for(lambda: all(k in handler.calls for k in ids), 15, progress=handler.total)
    await wait_quiet(handler.total, quiet_s=0.4)
    wrong = _wrong_counts(handler, ids, 1)
    assert not wrong, f"handled errors were redelivered (attempts): {wrong[:10]}"
    assert dead.total_delivered == 0, f"{dead.total_delivered} dead letter(s) after handled errors"


@check("event_bridge.failures.delayed_retry", kinds=EB, needs=("bounded_retry", "delayed_retry"))
async def test_delayed_retry(aut: AdapterUnderTest) -> None:
    """The next attempt comes no sooner than retry_delay_ms after a failure, and not much later
    (a quarter of the delay plus 250 ms for scheduling and broker timers)."""
    handler = Attempts(fail_first=1)
    delay_ms = 250
    failure = FailureHandling(max_attempts=3, retry_delay_ms=delay_ms, backoff=1.0)
    producer, _ = await _setup(aut, handler, failure)
    ids = await _emit(producer, 5, handler.succeeded)
    await wait_for(handler.succeeded.all_arrived, 15, progress=handler.total)
    gaps = {k: round((v[1] - v[0]) * 1000) for k, v in handler.calls.items() if len(v) >= 2}
    aut.metric("gaps_ms", gaps)
    early = {k: g for k, g in gaps.items() if g < delay_ms * 0.9}
    late_ms = delay_ms * (1 + RETRY_LATE_FRACTION) + RETRY_LATE_MARGIN_MS
    late = {k: g for k, g in gaps.items() if g > late_ms}
    assert len(gaps) == len(ids), f"not every message was retried: {sorted(gaps)}"
    assert not early, f"retried sooner than {delay_ms} ms: {early}"
    assert not late, f"retried later than {late_ms:.0f} ms after a {delay_ms} ms delay: {late}"


CHAINED_LIMIT_BYTES = 64 * 1024


@check(
    "event_bridge.failures.chained_emit_dead_letter",
    kinds=EB,
    needs=("bounded_retry", "dead_letter"),
)
async def test_chained_emit_dead_letter(aut: AdapterUnderTest) -> None:
    """A handler whose result cannot be emitted as its emitEventName event (larger than the
    consuming instance's max_message_bytes) runs once: its side effects happened, so only
    the emit is retried, after the failure policy's delays (backoff included), and then the
    message is dead-lettered once, with max_attempts as its attempts and a reason naming
    the chained event. The oversize event reaches nobody; a result within the limit on the
    same subscription is still emitted."""
    delays_ms = (100, 200)  # retry_delay_ms 100, backoff 2: before attempts 2 and 3
    failure = FailureHandling(
        max_attempts=3,
        retry_delay_ms=delays_ms[0],
        backoff=2.0,
        dead_letter_target=f"{aut.ctx.prefix}.dead",
    )
    runs: dict[str, list[float]] = defaultdict(list)

    async def enrich(msg: Any) -> Any:
        key = msg.payload["id"]
        runs[key].append(time.monotonic())
        pad = "x" * (CHAINED_LIMIT_BYTES + 1024) if msg.payload["big"] else "small"
        return {"id": key, "pad": pad}

    consumer = await aut.new(max_message_bytes=CHAINED_LIMIT_BYTES)
    await consumer.register_subscription(
        subscription("enricher", event_name="raw", emit_event_name="enriched", failure=failure),
        enrich,
    )
    watcher = await aut.new()
    chained, dead = Ledger("chained"), Ledger("dead letters")
    events = Recorder(chained, "listener")
    await watcher.register_subscription(subscription("listener", event_name="enriched"), events)
    letters = Recorder(dead, "dead-letter", key=lambda m: m.payload["message"]["payload"]["id"])
    await watcher.register_subscription(
        subscription("dlq-watch", event_name=failure.dead_letter_target), letters
    )
    producer = await aut.new()
    big = event(producer, "raw", {"id": "big", "big": True})
    small = event(producer, "raw", {"id": "small", "big": False})
    chained.sent("small")
    dead.sent("big")
    await producer.emit_message(big)
    await producer.emit_message(small)
    arrived = lambda: (chained.total_delivered, dead.total_delivered)  # noqa: E731
    await wait_for(lambda: chained.all_arrived() and dead.all_arrived(), 15)
    got_at = time.monotonic()
    await wait_quiet(lambda: (arrived(), sum(len(v) for v in runs.values())), quiet_s=0.3)
    assert {k: len(v) for k, v in runs.items()} == {"big": 1, "small": 1}, (
        f"handler runs {dict((k, len(v)) for k, v in runs.items())}: each message must run "
        "once (a failed emit is retried without running the handler again)"
    )
    expect_exactly_once(chained, dead)
    assert [m.payload["id"] for m in events.messages] == ["small"], (
        "the oversize chained event was delivered"
    )
    body = letters.messages[0].payload
    assert body.get("attempts") == failure.max_attempts, (
        f"dead letter attempts {body.get('attempts')}, the policy allows {failure.max_attempts}"
    )
    assert "'enriched'" in str(body.get("reason")), (
        f"the reason does not name the chained event: {body.get('reason')!r}"
    )
    assert body["message"].get("id") == big.id, f"not the original message: {body['message']!r}"
    took_ms = (got_at - runs["big"][0]) * 1000
    aut.metric("emit_retry_to_dead_letter_ms", round(took_ms))
    assert took_ms >= 0.9 * sum(delays_ms), (
        f"dead-lettered {took_ms:.0f} ms after the handler ran: the two emit retries wait "
        f"{' + '.join(map(str, delays_ms))} ms"
    )
