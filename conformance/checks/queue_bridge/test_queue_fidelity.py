"""Queue fidelity: payload, parameter and headers come back unchanged."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conformance.kit.hyp import json_values_for, session, settings_for
from conformance.kit.marks import check
from conformance.kit.numbers import expect_numbers
from conformance.kit.under_test import AdapterUnderTest

headers = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
    st.text(max_size=30),
    max_size=4,
)


def canon(value: Any) -> str:
    """Canonical JSON text (1, 1.0 and true differ)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@check("queue_bridge.fidelity.payload", kinds=("queue_bridge",))
def test_payload(cf_aut: AdapterUnderTest) -> None:
    """Property: any JSON payload and parameter, and string headers, survive enqueue/lease."""
    with session(cf_aut) as runner:
        q = runner.run(cf_aut.new())

        @settings_for(cf_aut, memory=50, broker=20)
        @given(payload=json_values_for(cf_aut), parameter=json_values_for(cf_aut), hdrs=headers)
        def prop(payload: Any, parameter: Any, hdrs: dict[str, str]) -> None:
            job_id = runner.run(q.enqueue("fid", payload, parameter, headers=hdrs))
            jobs = runner.run(q.lease_next("fid", 1))
            assert [j.id for j in jobs] == [job_id], f"leased {jobs}, expected {job_id}"
            job = jobs[0]
            runner.run(q.ack(job))
            assert canon(job.payload) == canon(payload), "payload changed"
            assert canon(job.parameter) == canon(parameter), "parameter changed"
            assert {k: job.headers.get(k) for k in hdrs} == hdrs, f"headers changed: {job.headers}"

        prop()


@check("queue_bridge.fidelity.numbers", kinds=("queue_bridge",))
async def test_numbers(aut: AdapterUnderTest) -> None:
    """Integers beyond 2**53 and doubles at full precision survive enqueue/lease (payload
    and parameter), or are refused at enqueue as the adapter declares (``numbers``)."""
    q = await aut.new()
    mode = aut.spec.capabilities.numbers

    async def round_trip(value: Any) -> Any:
        job_id = await q.enqueue("numbers", value, value)
        jobs = await q.lease_next("numbers", 1)
        assert [j.id for j in jobs] == [job_id], f"leased {jobs}, expected {job_id}"
        await q.ack(jobs[0])
        if canon(jobs[0].parameter) != canon(value):
            raise AssertionError(f"parameter numbers changed: {jobs[0].parameter!r:.300}")
        return jobs[0].payload

    await expect_numbers(mode, round_trip)


@check("queue_bridge.fidelity.dead_letter_redrive", kinds=("queue_bridge",))
async def test_dead_letter_redrive(aut: AdapterUnderTest) -> None:
    """A dead letter keeps the job's queue, payload, parameter, headers and idempotency key,
    with the time it was dead-lettered; peek lists the oldest first, at most ``limit``
    (none for 0); redrive without ids returns every dead letter, and
    the redriven jobs come back unchanged at attempt 1."""
    q = await aut.new()
    jobs = {
        await q.enqueue(
            "dl-fid",
            {"n": i, "text": "ünï", "nested": [i, None]},
            [i, {"p": True}],
            headers={"x-origin": f"test-{i}"},
            idempotency_key=f"dl-fid-{i}" if aut.supports("idempotency_keys") else None,
            max_attempts=1,
        ): i
        for i in range(3)
    }
    before = time.time() * 1000
    order = []
    for _ in jobs:
        leased = await q.lease_next("dl-fid", 1)
        assert leased, "a job vanished before its dead letter"
        assert await q.nack(leased[0], "no") == "dead_letter"
        order.append(leased[0].id)
    after = time.time() * 1000
    for limit in (0, 1, 2, 3):
        got = [d.id for d in await q.peek_dead_letter("dl-fid", limit)]
        assert got == order[:limit], f"peek limit {limit}: {got}, expected oldest first {order}"
    dead = {d.id: d for d in await q.peek_dead_letter("dl-fid")}
    assert set(dead) == set(jobs), f"dead letters {sorted(dead)} != jobs {sorted(jobs)}"
    for job_id, i in jobs.items():
        d = dead[job_id]
        got = (d.queue, canon(d.payload), canon(d.parameter), d.headers.get("x-origin"))
        want = (
            "dl-fid",
            canon({"n": i, "text": "ünï", "nested": [i, None]}),
            canon([i, {"p": True}]),
            f"test-{i}",
        )
        assert got == want, f"dead letter {job_id}: {got} != {want}"
        if aut.supports("idempotency_keys"):
            assert d.idempotency_key == f"dl-fid-{i}", f"idempotency key lost: {d!r}"
        assert before - 5000 <= d.dead_lettered_at_ms <= after + 5000, (
            f"dead_lettered_at_ms {d.dead_lettered_at_ms} not within 5 s of the nacks "
            f"[{before:.0f}, {after:.0f}]"
        )
    assert await q.redrive_dead_letter("dl-fid") == len(jobs), "redrive without ids: not all"
    back = {}
    for _ in jobs:
        leased = await q.lease_next("dl-fid", 1)
        assert leased, f"redriven jobs missing; got {sorted(back)}"
        back[leased[0].id] = leased[0]
        await q.ack(leased[0])
    assert set(back) == set(jobs)
    for job_id, i in jobs.items():
        j = back[job_id]
        assert j.attempt == 1, f"redriven job {job_id} at attempt {j.attempt}"
        assert canon(j.payload) == canon({"n": i, "text": "ünï", "nested": [i, None]})
        assert canon(j.parameter) == canon([i, {"p": True}])
        assert j.headers.get("x-origin") == f"test-{i}", f"headers of a redriven job: {j.headers}"
    assert await q.peek_dead_letter("dl-fid") == []


@check("queue_bridge.fidelity.job_fields", kinds=("queue_bridge",))
async def test_job_fields(aut: AdapterUnderTest) -> None:
    """A leased job carries what it was enqueued with besides its data: queue, max_attempts,
    priority, idempotency key, the time it was enqueued (epoch ms, within 5 s of the enqueue)
    and a lease (id, expiry the lease ttl after the lease, within 1 s); attempt 1."""
    q = await aut.new()
    keyed = aut.supports("idempotency_keys")
    before = time.time() * 1000
    job_id = await q.enqueue(
        "job-fields",
        {"n": 1},
        max_attempts=4,
        priority=3 if aut.supports("priorities") else 0,
        lease_ttl_ms=20_000,
        idempotency_key="job-fields-1" if keyed else None,
    )
    after = time.time() * 1000
    jobs = await q.lease_next("job-fields", 1)
    leased = time.time() * 1000
    assert [j.id for j in jobs] == [job_id], f"leased {jobs}, expected {job_id}"
    job = jobs[0]
    await q.ack(job)
    got = (job.queue, job.attempt, job.max_attempts)
    assert got == ("job-fields", 1, 4), f"(queue, attempt, max_attempts) = {got}"
    if aut.supports("priorities"):
        assert job.priority == 3, f"priority of the leased job: {job.priority!r}"
    if keyed:
        assert job.idempotency_key == "job-fields-1", f"idempotency key: {job.idempotency_key!r}"
    assert isinstance(job.enqueued_at_ms, int) and (
        before - 5000 <= job.enqueued_at_ms <= after + 5000
    ), f"enqueued_at_ms {job.enqueued_at_ms!r} not within 5 s of [{before:.0f}, {after:.0f}]"
    assert job.lease_id, f"a leased job without a lease id: {job!r}"
    assert isinstance(job.lease_expires_at_ms, int) and (
        after + 19_000 <= job.lease_expires_at_ms <= leased + 21_000
    ), f"lease_expires_at_ms {job.lease_expires_at_ms!r}: not 20 s after the lease (within 1 s)"


@check("queue_bridge.fidelity.defaults", kinds=("queue_bridge",))
async def test_defaults(aut: AdapterUnderTest) -> None:
    """A job enqueued without max_attempts, lease ttl or priority gets the bridge's configured
    defaults (``default_max_attempts``, ``default_lease_ttl_ms``, as a deployment sets them)
    and priority 0: its lease runs the default ttl (within 1 s) and a nack at the default's
    last attempt dead-letters it. lease_next without a batch leases one job."""
    q = await aut.new(default_max_attempts=2, default_lease_ttl_ms=25_000)
    ids = [await q.enqueue("defaults", {"n": i}) for i in range(2)]
    before = time.time() * 1000
    jobs = await q.lease_next("defaults")
    after = time.time() * 1000
    assert len(jobs) == 1 and jobs[0].id in ids, f"lease_next without a batch leased {jobs}"
    job = jobs[0]
    assert job.max_attempts == 2, f"max_attempts {job.max_attempts!r}, configured default 2"
    if aut.supports("priorities"):
        assert job.priority == 0, f"priority of a job enqueued without one: {job.priority!r}"
    assert isinstance(job.lease_expires_at_ms, int) and (
        before + 24_000 <= job.lease_expires_at_ms <= after + 26_000
    ), f"lease_expires_at_ms {job.lease_expires_at_ms!r}: not the default 25 s ttl after the lease"
    assert await q.nack(job, "first") == "retry", "nack at attempt 1 of the default 2"
    deadline = time.monotonic() + 5
    while True:
        again = await q.lease_next("defaults", 1)
        if again and again[0].id == job.id:
            break
        for other in again:
            await q.ack(other)
        assert time.monotonic() < deadline, f"the nacked job {job.id} did not come back in 5 s"
        await asyncio.sleep(0.01)
    assert again[0].attempt == 2, f"attempt of the retried job: {again[0].attempt}"
    outcome = await q.nack(again[0], "second")
    assert outcome == "dead_letter", f"nack at attempt 2 of the default 2 gave {outcome!r}"
    for rest in await q.lease_next("defaults", 10):
        await q.ack(rest)
