"""The drain probe sends SIGTERM only while the job still has most of its work ahead.

A reply that arrives late (a loaded machine, a slow broker) shows the probe a lease the
worker took long ago: stopping then would let a shutdown that drains nothing pass (the
CI's failure of 2026-12-03: ``drain`` ok with ``SHUTDOWN_TIMEOUT_S`` 0.05). A worker here
leases the invoice job at once and issues it after the gateway's latency; the command's
reply is held back as a late broker would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conformance.checks.deployment.checklist import FAILED, OK, Checklist, judge_drain
from conformance.checks.deployment.scenario import (
    DRAIN_INVOICE,
    DRAIN_TRIES,
    FRESH_LEASE_MS,
    SERVICE_ENV,
    drain_probe,
)
from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge
from reference_services.adapters.memory.stores import DefaultStateStore
from reference_services.services.billing import INVOICE_QUEUE

LATENCY_S = int(SERVICE_ENV["SERVICE_CONFIG_GATEWAY_LATENCY_MS"]) / 1000


class SlowBilling:
    """requestInvoice: enqueue, lease at once, issue after the latency; the reply waits
    ``reply_late_s[n]`` for the n-th request (a late broker)."""

    def __init__(self, queue: Any, state: Any, reply_late_s: list[float]) -> None:
        self.queue, self.state, self.reply_late_s = queue, state, reply_late_s
        self.requests: list[str] = []
        self.work: list[asyncio.Task[None]] = []

    async def invoke(self, service: str, name: str, payload: Any, parameter: Any) -> Any:
        self.requests.append(payload["invoice_id"])
        job_id = await self.queue.enqueue(INVOICE_QUEUE, payload)
        (job,) = await self.queue.lease_next(INVOICE_QUEUE)
        self.work.append(asyncio.create_task(self._issue(job)))
        await asyncio.sleep(self.reply_late_s[len(self.requests) - 1])
        return 200, {"job_id": job_id}

    async def _issue(self, job: Any) -> None:
        await asyncio.sleep(LATENCY_S)
        await self.state.set(f"invoice:{job.payload['invoice_id']}", {"status": "issued"})
        await self.queue.ack(job)


async def _probe(reply_late_s: list[float]) -> tuple[Any, SlowBilling, list[int]]:
    queue, state = DefaultQueueBridge(), DefaultStateStore()
    await queue.start()
    await state.start()
    billing = SlowBilling(queue, state, reply_late_s)
    stopped_at_ms: list[int] = []

    async def stop() -> None:  # SHUTDOWN_TIMEOUT_S 0.05: the running job is cut after it
        stopped_at_ms.append(int(time.time() * 1000))
        await asyncio.wait(billing.work, timeout=0.05)
        for task in billing.work:
            task.cancel()

    try:
        probe = await drain_probe(billing.invoke, queue, state, stop)
    finally:
        for task in billing.work:
            task.cancel()
        await queue.destroy()
        await state.destroy()
    return probe, billing, stopped_at_ms


async def test_a_late_reply_is_not_taken_for_a_running_job() -> None:
    # the reply comes when 0.05 s of the job is left: a SIGTERM then, with a 0.05 s drain,
    # would see the job issued and call it drained
    probe, billing, stopped = await _probe([LATENCY_S - 0.05, 0.0])
    assert billing.requests == [DRAIN_INVOICE, f"{DRAIN_INVOICE}-2"], billing.requests
    assert (probe.invoice, probe.finished, probe.inconclusive) == (f"{DRAIN_INVOICE}-2", False, "")
    assert len(stopped) == 1
    checklist = Checklist("microservices")
    judge_drain(checklist, {"billing": 0}, probe)
    assert checklist.items["drain"][0] == FAILED, checklist.metric()
    assert "drain-probe-2 running at SIGTERM did not finish" in checklist.items["drain"][1]


async def test_only_late_replies_make_the_item_fail_naming_why() -> None:
    # late past the whole job: it is done (no lease left) when the reply comes
    probe, billing, stopped = await _probe([LATENCY_S + 0.3] * DRAIN_TRIES)
    assert len(billing.requests) == DRAIN_TRIES and len(stopped) == 1
    assert probe.inconclusive.startswith("the job's lease was already ["), probe.inconclusive
    assert f"within {FRESH_LEASE_MS} ms" in probe.inconclusive
    checklist = Checklist("microservices")
    judge_drain(checklist, {"billing": 0}, probe)
    assert checklist.items["drain"][0] == FAILED
    assert checklist.items["drain"][1].startswith("no drain shown: "), checklist.metric()


async def test_a_drain_that_waits_passes() -> None:
    queue, state = DefaultQueueBridge(), DefaultStateStore()
    await queue.start()
    await state.start()
    billing = SlowBilling(queue, state, [0.0])

    async def stop() -> None:  # drains: waits for the running job
        await asyncio.gather(*billing.work)

    try:
        probe = await drain_probe(billing.invoke, queue, state, stop)
    finally:
        await queue.destroy()
        await state.destroy()
    checklist = Checklist("microservices")
    judge_drain(checklist, {"billing": 0}, probe)
    assert checklist.items["drain"][0] == OK, checklist.metric()
    assert billing.requests == [DRAIN_INVOICE]
