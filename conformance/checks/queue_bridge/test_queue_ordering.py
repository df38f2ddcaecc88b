"""FIFO within a priority, for queue adapters that declare ``fifo_within_priority``."""

from __future__ import annotations

import asyncio

from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest

QB = ("queue_bridge",)
PRODUCERS = 3
PRIORITIES = (0, 1, 2)


@check(
    "queue_bridge.ordering.fifo_within_priority",
    kinds=QB,
    needs=("fifo_within_priority", "priorities"),
)
async def test_fifo_within_priority(aut: AdapterUnderTest) -> None:
    """Jobs from three concurrent producers at mixed priorities are leased highest priority
    first and, within a priority, in each producer's enqueue order: one reordering fails."""
    producers = [await aut.new() for _ in range(PRODUCERS)]
    worker = producers[0]
    per = aut.n(60, minimum=30)

    async def produce(p: int) -> None:
        for i in range(per):
            prio = PRIORITIES[i % len(PRIORITIES)]
            await producers[p].enqueue("ordered", {"p": p, "i": i}, priority=prio)

    await asyncio.gather(*(produce(p) for p in range(PRODUCERS)))
    leased: list[tuple[int, int, int]] = []
    while len(leased) < PRODUCERS * per:
        # a batch lease returns its jobs in lease order: ten at a time keeps the round
        # trips down without hiding a reordering
        jobs = await worker.lease_next("ordered", 10)
        if not jobs:
            break
        for job in jobs:
            leased.append((job.priority, job.payload["p"], job.payload["i"]))
        for job in jobs:
            await worker.ack(job)
    assert len(leased) == PRODUCERS * per, f"leased {len(leased)} of {PRODUCERS * per} jobs"
    bad = []
    last: dict[tuple[int, int], int] = {}
    for n, (prio, p, i) in enumerate(leased):
        if n and prio > leased[n - 1][0]:
            bad.append(f"priority {prio} leased after priority {leased[n - 1][0]}")
        if i < last.get((p, prio), -1):
            bad.append(f"producer {p}, priority {prio}: #{i} after #{last[(p, prio)]}")
        last[(p, prio)] = max(i, last.get((p, prio), -1))
    assert not bad, f"{len(bad)} reordering(s) among {len(leased)} jobs: {bad[:5]}"
