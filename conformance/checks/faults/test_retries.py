"""Retries under a latency fault: the configured backoff is kept, poison messages are
dead-lettered with a reason after max attempts, handled errors are never retried.

The consumer (event bridge) or the runtime queue worker (queue bridge, a
``ServiceBuilder.queue_worker`` with a ``RetryPolicy``) connects through a
Toxiproxy proxy with 50 ms +- 10 ms latency each way; producers connect
directly. Gaps between attempts are measured and compared with
``RetryPolicy.delay_bounds_ms`` (lower bound - 20 ms; upper bound + a quarter of
it + a fixed margin for broker timers, the latency and scheduling: a fixed 1 s
delay fails). The history records one final outcome per message (success,
dead letter, or the handled error), so the usual lost/duplicated counts apply;
``recovery_s`` is the time from removing the latency until a fresh message is
handled through the faulted link.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from conformance.checks.faults.engine import measure_recovery, record, wait_for_async
from conformance.checks.faults.workload import new_instance
from conformance.kit import FailureHandling, event, subscription
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from harness.history import History
from harness.history import check as check_history
from reference_services.runtime.errors import HandledError
from reference_services.runtime.retry import RetryPolicy

EARLY_TOLERANCE_MS = 20.0
LATE_FRACTION = 0.25  # of the policy's largest delay for the attempt
# a fixed margin on top: two latency toxics (50 +- 10 ms each way) per redelivery round
# trip, broker timers and scheduling; for queues one more round trip (nack, then lease)
LATE_SLACK_MS = 300.0
LATE_SLACK_QUEUE_MS = 400.0
N_EACH = 4
LATENCY_MS, JITTER_MS = 50, 10
POLICY = dict(max_attempts=4, retry_delay_ms=150, backoff=2.0, jitter=0.2)


class Script:
    """A handler whose behaviour depends on the message kind: transient, poison, handled,
    probe (succeeds at once, used to measure recovery)."""

    def __init__(self, transient_failures: int) -> None:
        self.transient_failures = transient_failures
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.successes: Counter[str] = Counter()

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
        if key.startswith("transient") and n <= self.transient_failures:
            raise RuntimeError(f"transient failure of {key} (attempt {n})")
        self.successes[key] += 1

    def gaps_problems(
        self, policy: RetryPolicy, slack_ms: float
    ) -> tuple[dict[str, Any], list[str]]:
        """Measured gaps per attempt, and gaps outside the policy's bounds."""
        gaps: dict[str, list[int]] = {}
        bad = []
        for key, times in self.calls.items():
            if not key.startswith(("transient", "poison")):
                continue
            gaps[key] = [round((b - a) * 1000) for a, b in itertools.pairwise(times)]
            for attempt, gap in enumerate(gaps[key], start=1):
                lo, hi = policy.delay_bounds_ms(attempt)
                late = hi * LATE_FRACTION + slack_ms
                if gap < lo - EARLY_TOLERANCE_MS or gap > hi + late:
                    bad.append(
                        f"{key} after attempt {attempt}: {gap} ms not in "
                        f"[{lo:.0f}, {hi:.0f}] ms (+{late:.0f} ms lateness allowed)"
                    )
        return gaps, bad

    def count_problems(self, max_attempts: int) -> list[str]:
        """Attempt counts that break the promises."""
        bad = []
        for key, times in self.calls.items():
            if key.startswith("probe"):
                continue
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


@contextlib.asynccontextmanager
async def _latency_proxy(aut: AdapterUnderTest, toxiproxy: Any) -> AsyncIterator[tuple[Any, str]]:
    direct = aut.ctx.url(aut.spec.services[0])
    parts = urlsplit(direct)
    proxy = await asyncio.to_thread(
        toxiproxy.create_proxy,
        f"cf-{aut.ctx.prefix}",
        f"{parts.hostname}:{parts.port}",
        url=direct,
    )
    try:
        yield proxy, direct
    finally:
        await aut.close()
        await proxy.adelete()


@contextlib.asynccontextmanager
async def _latency(proxy: Any) -> AsyncIterator[None]:
    async with (
        proxy.latency(LATENCY_MS, jitter=JITTER_MS, stream="downstream"),
        proxy.latency(LATENCY_MS, jitter=JITTER_MS, stream="upstream"),
    ):
        yield


def _probe(script: Script, send: Callable[[str], Awaitable[None]]) -> Callable[[], Any]:
    counter = itertools.count()

    async def probe() -> bool:
        key = f"probe-{next(counter)}"
        try:
            await asyncio.wait_for(send(key), 3.0)
        except Exception:
            return False
        return await wait_for(lambda: script.successes[key] > 0, 2.0)

    return probe


def _judge(
    aut: AdapterUnderTest,
    script: Script,
    policy: RetryPolicy,
    slack_ms: float,
    letters: list[tuple[str, Any, Any]],
    recovery_s: float | None,
    handled_dead: int | None = None,
) -> None:
    ids = _ids()
    history = History()
    for key in ids:
        history.sent(key, "ok")
    for key, n in script.successes.items():
        for _ in range(n if not key.startswith("probe") else 0):
            history.delivered(key, outcome="success")
    for key, _reason, _attempts in letters:
        history.delivered(key, outcome="dead_letter")
    for key in ids:
        if key.startswith("handled"):
            for _ in script.calls.get(key, []):
                history.delivered(key, outcome="handled_error")
    verdict = check_history(history)
    gaps, problems = script.gaps_problems(policy, slack_ms)
    problems += script.count_problems(policy.max_attempts)
    problems += [f"{verdict.lost} message(s) without a final outcome"] if verdict.lost else []
    problems += (
        [f"{verdict.duplicated} message(s) with more than one final outcome"]
        if verdict.duplicated
        else []
    )
    dead = sorted(k for k, _, _ in letters)
    want_dead = sorted(k for k in ids if k.startswith("poison"))
    if dead != want_dead:
        problems.append(f"dead letters {dead} != poison messages {want_dead}")
    for key, reason, attempts in letters:
        if not reason or "poison" not in str(reason):
            problems.append(f"dead letter of {key} lacks the failure reason: {reason!r}")
        if attempts is not None and attempts != policy.max_attempts:
            problems.append(
                f"dead letter of {key} says {attempts} attempts, not {policy.max_attempts}"
            )
    if handled_dead is not None and handled_dead != N_EACH:
        problems.append(f"{handled_dead} handled-error job(s) dead-lettered, expected {N_EACH}")
    if recovery_s is None:
        problems.append("no message was handled through the link after the latency ended")
    bounds = {
        a: [round(x) for x in policy.delay_bounds_ms(a)] for a in range(1, policy.max_attempts)
    }
    record(
        aut,
        "retries_under_latency",
        verdict,
        recovery_s,
        {
            "policy_bounds_ms": bounds,
            "gaps_ms": dict(sorted(gaps.items())[:6]),
            "attempts": sum(len(v) for k, v in script.calls.items() if not k.startswith("probe")),
            "dead_letters": len(letters),
        },
    )
    assert not problems, "; ".join(problems[:12])


@check(
    "faults.retries.event_backoff_dead_letter",
    kinds=("event_bridge",),
    needs=("bounded_retry", "delayed_retry", "dead_letter"),
)
async def test_event_retries(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """With latency on the consumer's link: transient failures are retried with the configured
    exponential backoff, poison messages are dead-lettered with a reason after max_attempts,
    handled errors are delivered once and never retried."""
    if not aut.spec.services:
        pytest.skip("no broker link to put latency on")
    policy = FailureHandling(**POLICY, dead_letter_target=f"{aut.ctx.prefix}.dead")
    script = Script(transient_failures=2)
    letters: list[Any] = []

    async def handler(msg: Any) -> None:
        script.attempt(str(msg.payload["id"]))

    async def on_dead(msg: Any) -> None:
        letters.append(msg)

    async with _latency_proxy(aut, faults_toxiproxy) as (proxy, direct):
        async with _latency(proxy):
            consumer = await new_instance(aut, proxy.url)
            await consumer.register_subscription(
                subscription("fragile", event_name="retry.work", failure=policy), handler
            )
            watcher = await new_instance(aut, direct)
            await watcher.register_subscription(
                subscription("dlq-watch", event_name=policy.dead_letter_target), on_dead
            )
            producer = await new_instance(aut, direct)
            await asyncio.gather(
                *(producer.emit_message(event(producer, "retry.work", {"id": k})) for k in _ids())
            )
            await wait_for(lambda: len(letters) >= N_EACH and len(script.successes) >= N_EACH, 30)
            await wait_quiet(lambda: (script.total(), len(letters)), quiet_s=1.0, timeout_s=10)
        ended = time.monotonic()

        async def send(key: str) -> None:
            await producer.emit_message(event(producer, "retry.work", {"id": key}))

        recovery_s = await measure_recovery(_probe(script, send), ended, 20.0)
    _judge(aut, script, policy, LATE_SLACK_MS, [_letter(m) for m in letters], recovery_s)


def _letter(msg: Any) -> tuple[str, Any, Any]:
    body = msg.payload or {}
    inner = body.get("message") or {}
    payload = inner.get("payload") if isinstance(inner, dict) else None
    key = payload.get("id") if isinstance(payload, dict) else None
    return str(key), body.get("reason"), body.get("attempts")


@check("faults.retries.queue_backoff_dead_letter", kinds=("queue_bridge",))
async def test_queue_retries(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """A runtime queue worker with RetryPolicy(4 attempts, 150 ms x2, jitter 0.2), its queue
    bridge behind latency: transient failures retried with the policy's delays, poison jobs
    dead-lettered with the reason after max attempts, handled errors dead-lettered at once
    and never retried."""
    from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
    from reference_services.runtime.service import ServiceBuilder

    if not aut.spec.services:
        pytest.skip("no broker link to put latency on")
    policy = RetryPolicy(**POLICY)
    script = Script(transient_failures=2)
    queue_name = "retryjobs"
    builder = ServiceBuilder("cfretry", "1", "retry probe")

    @builder.queue_worker(queue_name, retry=policy, wait_ms=50, concurrency=16)
    async def work(ctx: Any, job: Any) -> None:
        script.attempt(str(job.payload["id"]))

    async with _latency_proxy(aut, faults_toxiproxy) as (proxy, _direct):
        bridge = DefaultEventBridge(hub=MemoryHub())
        await bridge.start()
        instance = None
        try:
            async with _latency(proxy):
                queue = await new_instance(aut, proxy.url)
                producer = await new_instance(aut, None)
                instance = builder.get_instance(bridge, queue_bridge=queue)
                await instance.start()
                for k in _ids():
                    await producer.enqueue(queue_name, {"id": k}, max_attempts=policy.max_attempts)
                letters: list[Any] = []

                async def settled() -> bool:
                    nonlocal letters
                    letters = list(await producer.peek_dead_letter(queue_name, 100))
                    return len(letters) >= 2 * N_EACH and len(script.successes) >= N_EACH

                await wait_for_async(settled, 30.0)
                await wait_quiet(script.total, quiet_s=1.0, timeout_s=10)
                letters = list(await producer.peek_dead_letter(queue_name, 100))
            ended = time.monotonic()

            async def send(key: str) -> None:
                await producer.enqueue(queue_name, {"id": key})

            recovery_s = await measure_recovery(_probe(script, send), ended, 20.0)
        finally:
            if instance is not None:
                await instance.destroy()
            await bridge.destroy()
    handled = [d for d in letters if str(d.payload["id"]).startswith("handled")]
    poison = [
        (str(d.payload["id"]), d.reason, d.attempts)
        for d in letters
        if str(d.payload["id"]).startswith("poison")
    ]
    aut.metric("handled_dead_lettered", len(handled))
    _judge(aut, script, policy, LATE_SLACK_QUEUE_MS, poison, recovery_s, len(handled))
