"""Forged headers: nothing a publisher puts on the wire decides how many attempts remain."""

from __future__ import annotations

from typing import Any

from conformance.checks.robustness.hooks import raw_headers_hook
from conformance.kit import FailureHandling, event, subscription
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from reference_services.runtime.codec import encode
from reference_services.runtime.spi.bridge_base import RETRY_ATTEMPT_HEADER

EB = ("event_bridge",)
MAX_ATTEMPTS = 3


@check("robustness.retry.forged_attempt_header", kinds=EB, needs=("bounded_retry",))
async def test_forged_attempt_header(aut: AdapterUnderTest) -> None:
    """An event published with a forged ``x-purista-retry-attempt`` (99, 0, -5, 1.5) is still
    tried ``max_attempts`` times by a handler that always fails: the header skips nothing."""
    calls: dict[str, int] = {}

    async def always_fails(msg: Any) -> None:
        key = str(msg.payload["id"])
        calls[key] = calls.get(key, 0) + 1
        raise RuntimeError(f"failure of {key}")

    consumer = await aut.new()
    failure = FailureHandling(max_attempts=MAX_ATTEMPTS, retry_delay_ms=20, backoff=1.0)
    await consumer.register_subscription(
        subscription("forged", event_name="attempts", failure=failure), always_fails
    )
    producer = await aut.new()
    publish = raw_headers_hook(producer)
    forged = {"99": "99", "zero": "0", "negative": "-5", "fraction": "1.5"}
    for name, value in forged.items():
        raw = encode(event(producer, "attempts", {"id": name}))
        await publish(raw, extra_headers={RETRY_ATTEMPT_HEADER: value})
    await wait_for(lambda: all(calls.get(k, 0) >= MAX_ATTEMPTS for k in forged), 15)
    await wait_quiet(lambda: sum(calls.values()), quiet_s=0.5)
    aut.metric("attempts_by_forged_header", {forged[k]: calls.get(k, 0) for k in forged})
    wrong = {forged[k]: calls.get(k, 0) for k in forged if calls.get(k, 0) != MAX_ATTEMPTS}
    assert not wrong, (
        f"expected {MAX_ATTEMPTS} attempts whatever the header says; header value -> "
        f"attempts: {wrong}"
    )
