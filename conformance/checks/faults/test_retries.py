"""Retries under faults: the configured backoff is kept, poison messages are dead-lettered
with a reason after max attempts, handled errors are never retried.

The event-bridge checks run the consumer behind a Toxiproxy proxy with latency
on its link; the queue-bridge check runs a runtime service's queue worker
(``ServiceBuilder.queue_worker`` with a ``RetryPolicy``) on the queue bridge.
Gaps between attempts are measured and compared with
``RetryPolicy.delay_bounds_ms`` (lower bound - 20 ms; upper bound + the
adapter's scheduling slack).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

import pytest

from conformance.faults_run import wait_for_async
from conformance.faults_workload import new_instance
from conformance.kit import FailureHandling, event, subscription
from conformance.marks import check
from conformance.under_test import AdapterUnderTest
from conformance.waits import wait_for, wait_quiet
from reference_services.runtime.errors import HandledError
from reference_services.runtime.retry import RetryPolicy

EARLY_TOLERANCE_MS = 20.0
LATE_SLACK_MS = 600.0  # broker timers, latency toxic, polling
LATE_SLACK_QUEUE_MS = 1300.0  # queue bridges poll for due delayed jobs (~1 s)
N_EACH = 4


class Script:
    """A handler whose behaviour depends on the message kind: transient, poison, handled."""

    def __init__(self, transient_failures: int) -> None:
        self.transient_failures = transient_failures
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.succeeded: set[str] = set()

    def total(self) -> int:
        """Attempts so far."""
        return sum(len(v) for v in self.calls.values())

    def attempt(self, key: str) -> None:
        """One attempt at ``key``: raise as its kind says."""
        self.calls[key].append(time.monotonic())
        n = len(self.calls[key])
        if key.startswith("handled"):
            raise HandledError(f"rejected {key}", 422)
        if key.startswith("poison"):
            raise RuntimeError(f"poison {key} (attempt {n})")
        if n <= self.transient_failures:
            raise RuntimeError(f"transient failure of {key} (attempt {n})")
        self.succeeded.add(key)

    def gaps_problems(
        self, policy: RetryPolicy, slack_ms: float
    ) -> tuple[dict[str, Any], list[str]]:
        """Measured gaps per attempt, and gaps outside the policy's bounds."""
        gaps: dict[str, list[int]] = {}
        bad = []
        for key, times in self.calls.items():
            if key.startswith("handled"):
                continue
            gaps[key] = [round((b - a) * 1000) for a, b in itertools.pairwise(times)]
            for attempt, gap in enumerate(gaps[key], start=1):
                lo, hi = policy.delay_bounds_ms(attempt)
                if gap < lo - EARLY_TOLERANCE_MS or gap > hi + slack_ms:
                    bad.append(
                        f"{key} after attempt {attempt}: {gap} ms not in "
                        f"[{lo:.0f}, {hi:.0f}] ms (+{slack_ms:.0f} ms slack)"
                    )
        return gaps, bad

    def count_problems(self, max_attempts: int) -> list[str]:
        """Attempt counts that break the promises."""
        bad = []
        for key, times in self.calls.items():
            want = (
                1
                if key.startswith("handled")
                else max_attempts
                if key.startswith("poison")
                else self.transient_failures + 1
            )
            if len(times) != want:
                bad.append(f"{key}: {len(times)} attempt(s), expected {want}")
        return bad


def _ids() -> list[str]:
    return [f"{kind}-{i}" for kind in ("transient", "poison", "handled") for i in range(N_EACH)]


@check(
    "faults.retries.event_backoff_dead_letter",
    kinds=("event_bridge",),
    needs=("bounded_retry", "delayed_retry", "dead_letter"),
)
async def test_event_retries(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """With 100 ms latency on the consumer's link: transient failures are retried with the
    configured exponential backoff, poison messages are dead-lettered with a reason after
    max_attempts, handled errors are delivered once and never retried."""
    if not aut.spec.services:
        pytest.skip("no broker link to put latency on")
    policy = FailureHandling(
        max_attempts=4,
        retry_delay_ms=150,
        backoff=2.0,
        jitter=0.2,
        dead_letter_target=f"{aut.ctx.prefix}.dead",
    )
    direct = aut.ctx.url(aut.spec.services[0])
    parts = urlsplit(direct)
    proxy = await asyncio.to_thread(
        faults_toxiproxy.create_proxy,
        f"cf-{aut.ctx.prefix}",
        f"{parts.hostname}:{parts.port}",
        url=direct,
    )
    try:
        async with (
            proxy.latency(50, jitter=10, stream="downstream"),
            proxy.latency(50, jitter=10, stream="upstream"),
        ):
            await _event_retries(aut, proxy.url, direct, policy)
    finally:
        await aut.close()
        await proxy.adelete()


async def _event_retries(
    aut: AdapterUnderTest, fault_url: str, direct: str, policy: FailureHandling
) -> None:
    script = Script(transient_failures=2)

    async def handler(msg: Any) -> None:
        script.attempt(str(msg.payload["id"]))

    letters: list[Any] = []

    async def on_dead(msg: Any) -> None:
        letters.append(msg)

    consumer = await new_instance(aut, fault_url)
    await consumer.register_subscription(
        subscription("fragile", event_name="retry.work", failure=policy), handler
    )
    watcher = await new_instance(aut, direct)
    await watcher.register_subscription(
        subscription("dlq-watch", event_name=policy.dead_letter_target), on_dead
    )
    producer = await new_instance(aut, direct)
    ids = _ids()
    await asyncio.gather(
        *(producer.emit_message(event(producer, "retry.work", {"id": k})) for k in ids)
    )
    await wait_for(lambda: len(letters) >= N_EACH and len(script.succeeded) >= N_EACH, 30)
    await wait_quiet(lambda: (script.total(), len(letters)), quiet_s=1.0, timeout_s=10)
    _judge(aut, script, policy, LATE_SLACK_MS, ids, [_letter(m) for m in letters])


def _letter(msg: Any) -> tuple[str, Any, Any]:
    body = msg.payload or {}
    inner = body.get("message") or {}
    payload = inner.get("payload") if isinstance(inner, dict) else None
    key = payload.get("id") if isinstance(payload, dict) else None
    return str(key), body.get("reason"), body.get("attempts")


def _judge(
    aut: AdapterUnderTest,
    script: Script,
    policy: RetryPolicy,
    slack_ms: float,
    ids: list[str],
    letters: list[tuple[str, Any, Any]],
) -> None:
    gaps, problems = script.gaps_problems(policy, slack_ms)
    problems += script.count_problems(policy.max_attempts)
    missing = [k for k in ids if k not in script.calls]
    if missing:
        problems.append(f"never delivered: {missing}")
    dead = {k for k, _, _ in letters}
    want_dead = {k for k in ids if k.startswith("poison")}
    if dead != want_dead or len(letters) != len(want_dead):
        problems.append(
            f"dead letters {sorted(k for k, _, _ in letters)} != poison messages "
            f"{sorted(want_dead)}"
        )
    for key, reason, attempts in letters:
        if not reason or "poison" not in str(reason):
            problems.append(f"dead letter of {key} lacks the failure reason: {reason!r}")
        if attempts is not None and attempts != policy.max_attempts:
            problems.append(
                f"dead letter of {key} says {attempts} attempts, not {policy.max_attempts}"
            )
    bounds = {
        a: [round(x) for x in policy.delay_bounds_ms(a)] for a in range(1, policy.max_attempts)
    }
    aut.metric("policy_bounds_ms", bounds)
    aut.metric("gaps_ms", {k: v for k, v in sorted(gaps.items())[:6]})
    aut.metric("attempts", sum(len(v) for v in script.calls.values()))
    aut.metric("dead_letters", len(letters))
    assert not problems, "; ".join(problems[:12])


@check("faults.retries.queue_backoff_dead_letter", kinds=("queue_bridge",))
async def test_queue_retries(aut: AdapterUnderTest) -> None:
    """A runtime queue worker with RetryPolicy(4 attempts, 150 ms x2, jitter 0.2): transient
    failures retried with the policy's delays, poison jobs dead-lettered with the reason after
    max attempts, handled errors dead-lettered at once and never retried."""
    from reference_services.bridges.memory import DefaultEventBridge, MemoryHub
    from reference_services.runtime.service import ServiceBuilder

    policy = RetryPolicy(max_attempts=4, retry_delay_ms=150, backoff=2.0, jitter=0.2)
    script = Script(transient_failures=2)
    queue_name = "retryjobs"
    builder = ServiceBuilder("cfretry", "1", "retry probe")

    @builder.queue_worker(queue_name, retry=policy, wait_ms=50)
    async def work(ctx: Any, job: Any) -> None:
        script.attempt(str(job.payload["id"]))

    queue = await new_instance(aut, None)
    producer = await new_instance(aut, None)
    bridge = DefaultEventBridge(hub=MemoryHub())
    await bridge.start()
    instance = builder.get_instance(bridge, queue_bridge=queue)
    await instance.start()
    try:
        ids = _ids()
        for k in ids:
            await producer.enqueue(queue_name, {"id": k}, max_attempts=policy.max_attempts)

        async def dead() -> list[Any]:
            return list(await producer.peek_dead_letter(queue_name, 100))

        letters: list[Any] = []

        async def settled() -> bool:
            nonlocal letters
            letters = await dead()
            return len(letters) >= 2 * N_EACH and len(script.succeeded) >= N_EACH

        await wait_for_async(settled, 30.0)
        await wait_quiet(script.total, quiet_s=1.0, timeout_s=10)
        letters = await dead()
    finally:
        await instance.destroy()
        await bridge.destroy()
        await aut.close()
    handled = [
        (d.payload["id"], d.reason) for d in letters if str(d.payload["id"]).startswith("handled")
    ]
    poison = [
        (str(d.payload["id"]), d.reason, d.attempts)
        for d in letters
        if str(d.payload["id"]).startswith("poison")
    ]
    problems = (
        []
        if len(handled) == N_EACH
        else [f"{len(handled)} handled-error job(s) dead-lettered, expected {N_EACH}"]
    )
    aut.metric("handled_dead_lettered", len(handled))
    try:
        _judge(aut, script, policy, LATE_SLACK_QUEUE_MS, [k for k in ids], poison)
    except AssertionError as exc:
        problems.append(str(exc))
    assert not problems, "; ".join(problems)
