"""Corrupted stored records: quarantined to the dead letter at once, with the reason and the
raw record; never dropped, never looped, never in the way of the good jobs."""

from __future__ import annotations

import time

from conformance.checks.robustness.hooks import corruption_hook
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest

QB = ("queue_bridge",)
GOOD = 10
WITHIN_S = 20.0


@check("robustness.queue.corrupted_records_quarantined", kinds=QB)
async def test_corrupted_records_quarantined(aut: AdapterUnderTest) -> None:
    """Each corruption the adapter can make of a stored job (non-integer counters, a record of
    the wrong type, a dangling index entry, an unreadable lease record, a 100k-deep or non-JSON
    body) ends in the dead letter with a reason, once; every good job is leased exactly once and
    no lease call fails."""
    q = await aut.new()
    corrupt, kinds = corruption_hook(q)
    queue = "hostile-records"
    damaged: dict[str, str] = {}
    good: set[str] = set()
    for how in kinds:
        job_id = await q.enqueue(queue, {"case": how})
        record = await corrupt(queue, job_id, how)
        assert record is not None, f"the adapter lists {how!r} but cannot make it"
        damaged[record] = how
        if record != job_id:
            good.add(job_id)  # the damage was put beside the job, which stays good
    for i in range(GOOD):
        good.add(await q.enqueue(queue, {"good": i}))
    leased: dict[str, int] = {}
    errors: list[str] = []
    deadline = time.monotonic() + WITHIN_S
    while time.monotonic() < deadline and not good <= set(leased):
        try:
            jobs = await q.lease_next(queue, 5, 200)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        for job in jobs:
            leased[job.id] = leased.get(job.id, 0) + 1
            await q.ack(job)
    letters = {d.id: d for d in await q.peek_dead_letter(queue, 100)}
    quarantined = {rid: letters[rid].reason for rid in damaged if rid in letters}
    aut.metric("corruptions", kinds)
    aut.metric("jobs_quarantined", len(quarantined))
    aut.metric("lease_errors", len(errors))
    aut.metric("good_leased", len(good & set(leased)))
    aut.metric("reasons", quarantined)
    assert not errors, f"{len(errors)} lease_next call(s) failed, first: {errors[0]}"
    missing = sorted(good - set(leased))
    assert not missing, f"{len(missing)} good job(s) never leased: {missing[:5]}"
    twice = {j: n for j, n in leased.items() if n > 1}
    assert not twice, f"jobs leased more than once: {twice}"
    ran_damaged = sorted(damaged[j] for j in leased if j in damaged)
    assert not ran_damaged, f"damaged records handed to a worker: {ran_damaged}"
    lost = sorted(damaged[r] for r in damaged if r not in letters)
    assert not lost, f"damaged records neither leased nor dead-lettered: {lost}"
    blank = sorted(damaged[r] for r, why in quarantined.items() if not why)
    assert not blank, f"dead letters without a reason: {blank}"
