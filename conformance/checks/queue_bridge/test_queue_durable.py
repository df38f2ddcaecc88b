"""Durable queues: jobs and dead letters survive a restart of the backing service."""

from __future__ import annotations

from conformance.kit.marks import check
from conformance.kit.restarts import dedicated_instance, restart_all
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for_async

QB = ("queue_bridge",)


@check("queue_bridge.durable_restart", kinds=QB, needs=("durable",))
async def test_durable_restart(aut: AdapterUnderTest) -> None:
    """Pending jobs (at several priorities) and a dead letter are all there, unchanged,
    after the backing service is stopped and started again."""
    q, handles = await dedicated_instance(aut)
    ids = {}
    for i in range(aut.n(10)):
        ids[await q.enqueue("durable", {"i": i, "t": "ü"}, {"p": i}, priority=i % 3)] = i
    dead_id = await q.enqueue("durable-dead", {"dead": True}, max_attempts=1)
    leased = await q.lease_next("durable-dead", 1)
    assert [j.id for j in leased] == [dead_id], f"leased {leased}"
    assert await q.nack(leased[0], "poison before restart") == "dead_letter"
    await aut.destroy(q)
    await restart_all(handles)
    fresh = await aut.new()
    assert await wait_for_async(fresh.is_healthy, 20), "not healthy after the restart"
    got = {}
    for _ in range(len(ids) + 5):
        jobs = await fresh.lease_next("durable", 10, 500)
        for job in jobs:
            got[job.id] = job
            await fresh.ack(job)
        if len(got) >= len(ids):
            break
    missing = sorted(set(ids) - set(got))
    assert not missing, f"{len(missing)} of {len(ids)} jobs lost across the restart"
    changed = [
        k
        for k, i in ids.items()
        if (got[k].payload, got[k].parameter) != ({"i": i, "t": "ü"}, {"p": i})
    ]
    assert not changed, f"jobs changed across the restart: {changed}"
    dead = await fresh.peek_dead_letter("durable-dead")
    assert [(d.id, d.reason) for d in dead] == [(dead_id, "poison before restart")], (
        f"dead letter after the restart: {dead}"
    )
