"""The PURISTA queue contract plus idempotency keys and concurrent workers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conformance.kit.ledger import Ledger, expect_exactly_once
from conformance.kit.lifecycle import expect_ready_healthy_cycle
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_for_async
from reference_services.runtime.errors import PuristaError

QB = ("queue_bridge",)


async def _lease_one(q: Any, queue: str, timeout_s: float = 5.0, **kw: Any) -> Any:
    """Poll lease_next (no blocking assumed) until one job comes, or None."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = await q.lease_next(queue, 1, **kw)
        if jobs:
            return jobs[0]
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.01)


async def _metrics(q: Any, queue: str) -> dict[str, int]:
    m = await q.metrics(queue)
    return {"pending": m.pending, "inflight": m.inflight, "dead_letter": m.dead_letter}


async def _produce(
    producers: list[Any], queue: str, senders: int, per: int, ledger: Ledger, **kw: Any
) -> None:
    async def produce(s: int) -> None:
        q = producers[s % len(producers)]
        for i in range(per):
            job_id = await q.enqueue(queue, {"s": s, "i": i, "text": "ünï"}, {"p": i}, **kw)
            ledger.sent(job_id)

    await asyncio.gather(*(produce(s) for s in range(senders)))


async def _work(workers: list[Any], queue: str, ledger: Ledger, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s

    async def work(w: int) -> None:
        q = workers[w]
        while not ledger.all_arrived() and time.monotonic() < deadline:
            jobs = await q.lease_next(queue, 5, worker_id=f"w{w}")
            if not jobs:
                await asyncio.sleep(0.005)
            for job in jobs:
                ledger.delivered(job.id, by=f"w{w}")
            await asyncio.sleep(0.002)  # the work itself: other workers lease meanwhile
            for job in jobs:
                await q.ack(job)

    await asyncio.gather(*(work(w) for w in range(len(workers))))


@check("queue_bridge.lease_ack_empties", kinds=QB)
async def test_lease_ack_empties(aut: AdapterUnderTest) -> None:
    """Jobs from five concurrent producers are each leased once; after acks the metrics are 0."""
    q = await aut.new()
    ledger = Ledger("leases")
    await _produce([q], "jobs", 5, aut.n(40), ledger)
    m = await _metrics(q, "jobs")
    assert m["pending"] == 5 * aut.n(40), f"pending after enqueue: {m}"
    await _work([q], "jobs", ledger, 30)
    expect_exactly_once(ledger)
    m = await _metrics(q, "jobs")
    assert m == {"pending": 0, "inflight": 0, "dead_letter": 0}, f"metrics after acks: {m}"


@check("queue_bridge.concurrent_workers", kinds=QB)
async def test_concurrent_workers(aut: AdapterUnderTest) -> None:
    """Four workers leasing while five producers enqueue: no job is leased twice or lost."""
    workers = [await aut.new() for _ in range(4)]
    ledger = Ledger("leases")
    producing = asyncio.ensure_future(_produce(workers[:2], "work", 5, aut.n(60), ledger))
    await wait_for(lambda: bool(ledger.sent_ids()), 5)
    await _work(workers, "work", ledger, 30)
    await producing
    await _work(workers, "work", ledger, 30)
    expect_exactly_once(ledger)
    aut.metric("per_worker", dict(sorted(ledger.receivers().items())))
    m = await _metrics(workers[0], "work")
    assert m == {"pending": 0, "inflight": 0, "dead_letter": 0}, f"metrics after acks: {m}"


@check("queue_bridge.delayed_job", kinds=QB, needs=("delayed_jobs",))
async def test_delayed_job(aut: AdapterUnderTest) -> None:
    """A job enqueued with delay_ms is not leasable before the delay, and is after it."""
    q = await aut.new()
    start = time.monotonic()
    delayed = await q.enqueue("later", {"when": "later"}, delay_ms=400)
    now = await q.enqueue("later", {"when": "now"})
    first = await _lease_one(q, "later", 2)
    assert first is not None and first.id == now, f"expected the undelayed job, got {first}"
    job = await _lease_one(q, "later", 5)
    waited = time.monotonic() - start
    assert job is not None and job.id == delayed, "the delayed job never became leasable"
    assert waited >= 0.38, f"delayed job leased after {waited:.3f}s (< 0.4s)"
    aut.metric("leased_after_s", round(waited, 3))


@check("queue_bridge.nack_retry_dead_letter", kinds=QB)
async def test_nack_retry_dead_letter(aut: AdapterUnderTest) -> None:
    """nack retries with attempt+1 until max_attempts, then the job is dead-lettered with the
    reason; the dead letter holds the payload."""
    q = await aut.new()
    ids = [await q.enqueue("flaky", {"n": i}, max_attempts=3) for i in range(aut.n(5))]
    outcomes: dict[str, list[tuple[int, str]]] = {i: [] for i in ids}
    for _ in range(3 * len(ids)):
        job = await _lease_one(q, "flaky", 5)
        assert job is not None, f"a job vanished; outcomes so far {outcomes}"
        outcomes[job.id].append((job.attempt, await q.nack(job, f"fail {job.attempt}")))
    want = [(1, "retry"), (2, "retry"), (3, "dead_letter")]
    wrong = {k: v for k, v in outcomes.items() if v != want}
    assert not wrong, f"expected {want} per job, got {wrong}"
    dead = {d.id: d for d in await q.peek_dead_letter("flaky")}
    missing = [i for i in ids if i not in dead]
    assert not missing, f"not in the dead letter: {missing}"
    bad = [
        (i, dead[i].attempts, dead[i].reason)
        for i in ids
        if dead[i].attempts != 3 or "fail 3" not in dead[i].reason
    ]
    assert not bad, f"dead letters lack attempts/reason: {bad}"
    assert all(dead[i].payload == {"n": n} for n, i in enumerate(ids)), "payload changed"
    m = await _metrics(q, "flaky")
    assert m == {"pending": 0, "inflight": 0, "dead_letter": len(ids)}, f"metrics: {m}"


@check("queue_bridge.explicit_dead_letter", kinds=QB)
async def test_explicit_dead_letter(aut: AdapterUnderTest) -> None:
    """move_to_dead_letter at the first attempt dead-letters the job with the given reason,
    stamped with the time it was moved (epoch ms, within 5 s), as a nacked one is."""
    q = await aut.new()
    job_id = await q.enqueue("poison", {"bad": True}, max_attempts=5)
    job = await _lease_one(q, "poison")
    assert job is not None and job.id == job_id
    before = time.time() * 1000
    await q.move_to_dead_letter(job, "poison message: schema v0")
    after = time.time() * 1000
    assert await _lease_one(q, "poison", 0.3) is None, "a dead-lettered job was leased"
    dead = await q.peek_dead_letter("poison")
    assert [(d.id, d.reason, d.attempts) for d in dead] == [
        (job_id, "poison message: schema v0", 1)
    ], f"dead letter: {dead}"
    at = dead[0].dead_lettered_at_ms
    assert isinstance(at, int) and before - 5000 <= at <= after + 5000, (
        f"dead_lettered_at_ms {at!r} not within 5 s of move_to_dead_letter "
        f"[{before:.0f}, {after:.0f}]"
    )


@check("queue_bridge.dead_letter_admin", kinds=QB)
async def test_dead_letter_admin(aut: AdapterUnderTest) -> None:
    """peek lists dead letters, redrive returns chosen ones with fresh attempts, purge empties."""
    q = await aut.new()
    ids = [await q.enqueue("admin", {"n": i}, max_attempts=1) for i in range(3)]
    for _ in ids:
        job = await _lease_one(q, "admin")
        assert job is not None
        assert await q.nack(job, "no") == "dead_letter"
    assert {d.id for d in await q.peek_dead_letter("admin")} == set(ids)
    assert await q.redrive_dead_letter("admin", [ids[0]]) == 1
    job = await _lease_one(q, "admin")
    assert job is not None and job.id == ids[0] and job.attempt == 1, f"redriven job: {job}"
    await q.ack(job)
    assert await q.purge_dead_letter("admin") == 2
    assert await q.peek_dead_letter("admin") == [], "dead letters left after purge"
    m = await _metrics(q, "admin")
    assert m == {"pending": 0, "inflight": 0, "dead_letter": 0}, f"metrics: {m}"


@check("queue_bridge.dead_letter_default_limit", kinds=QB)
async def test_dead_letter_default_limit(aut: AdapterUnderTest) -> None:
    """peek_dead_letter without a limit lists the 100 oldest dead letters, no more."""
    q = await aut.new()
    ids = [await q.enqueue("dl-limit", {"n": i}, max_attempts=1) for i in range(101)]
    dead: list[str] = []
    deadline = time.monotonic() + 30
    while len(dead) < len(ids) and time.monotonic() < deadline:
        for job in await q.lease_next("dl-limit", 20):
            await q.move_to_dead_letter(job, "limit")
            dead.append(job.id)
    assert sorted(dead) == sorted(ids), f"{len(dead)} of {len(ids)} jobs dead-lettered in 30 s"
    got = [d.id for d in await q.peek_dead_letter("dl-limit")]
    assert got == dead[:100], (
        f"peek without a limit: {len(got)} dead letters, expected the 100 oldest of {len(dead)}"
    )


async def _expect_back_at_attempt_2(
    worker: Any,
    queue: str,
    job_id: str,
    since: float,
    not_before_s: float,
    wait_s: float,
    lease: str,
    ran_out: str,
) -> float:
    """After ``lease`` (held from ``since``) runs out, ``worker`` leases the job again at
    attempt 2 within ``wait_s`` but not before ``not_before_s``; acks it; the seconds it took."""
    again = await _lease_one(worker, queue, wait_s)
    took = time.monotonic() - since
    assert again is not None and again.id == job_id, f"{lease} never ran out (job not back)"
    assert again.attempt == 2, f"attempt after {lease} ran out: {again.attempt}"
    assert took >= not_before_s, f"back after {took:.3f}s, before {ran_out}"
    await worker.ack(again)
    return took


@check("queue_bridge.lease_expiry", kinds=QB, needs=("lease_recovery",))
async def test_lease_expiry(aut: AdapterUnderTest) -> None:
    """A lease that expires (worker died) makes the job leasable again with attempt + 1."""
    crashed, worker = await aut.new(), await aut.new()
    job_id = await crashed.enqueue("recover", {"x": 1}, lease_ttl_ms=300)
    start = time.monotonic()
    first = await _lease_one(crashed, "recover")
    assert first is not None and first.attempt == 1
    assert await _lease_one(worker, "recover", 0.1) is None, "leased twice while the lease held"
    took = await _expect_back_at_attempt_2(
        worker, "recover", job_id, start, 0.28, 5, "the expired lease", "the 0.3s lease expired"
    )
    aut.metric("recovered_after_s", round(took, 3))


async def _ack_refused_with_409(q: Any, job: Any, case: str, the_ack: str, lease: str) -> None:
    """``ack(job)`` must fail with a 409 that names the job."""
    try:
        await q.ack(job)
    except PuristaError as exc:
        assert exc.status == 409, f"{case}: expected 409, got {exc.status}"
        assert job.id in str(exc), f"the 409 of {the_ack} does not name job {job.id}: {exc}"
    else:
        raise AssertionError(f"ack with {lease} {job.lease_id} was accepted")


@check("queue_bridge.stale_lease_rejected", kinds=QB, needs=("lease_recovery",))
async def test_stale_lease_rejected(aut: AdapterUnderTest) -> None:
    """Acking with an expired lease fails with 409 naming the job, whether the job was
    re-leased meanwhile (the new holder's ack works) or not yet (it comes back, attempt 2)."""
    q = await aut.new()
    await q.enqueue("stale", {"x": 1}, lease_ttl_ms=200)
    old = await _lease_one(q, "stale")
    new = await _lease_one(q, "stale", 5)
    assert old is not None and new is not None and new.id == old.id
    await _ack_refused_with_409(q, old, "stale ack", "a stale ack", "stale lease")
    await q.ack(new)
    m = await _metrics(q, "stale")
    assert m == {"pending": 0, "inflight": 0, "dead_letter": 0}, f"metrics: {m}"
    # expired but not re-leased yet: still a 409 naming the job, and the job comes back
    await q.enqueue("stale-expired", {"x": 2}, lease_ttl_ms=200)
    held = await _lease_one(q, "stale-expired")
    assert held is not None
    await asyncio.sleep(max(held.lease_expires_at_ms / 1000 - time.time(), 0) + 0.3)
    await _ack_refused_with_409(
        q, held, "ack after the lease expired", "an expired ack", "expired lease"
    )
    back = await _lease_one(q, "stale-expired", 5)
    assert back is not None and back.id == held.id, "the job of the refused ack never came back"
    assert back.attempt == 2, f"attempt after the expired lease: {back.attempt}"
    await q.ack(back)


@check("queue_bridge.inspect_leases", kinds=QB)
async def test_inspect_leases(aut: AdapterUnderTest) -> None:
    """inspect_leases lists each active lease with job, lease id, worker and attempt, when it
    was taken (epoch ms, within 5 s of the lease call) and when it expires (the job's lease
    ttl after it was taken, within 1 s)."""
    ttl_ms = 20_000
    w1, w2 = await aut.new(), await aut.new()
    for i in range(3):
        await w1.enqueue("inspect", {"n": i}, lease_ttl_ms=ttl_ms)
    before = time.time() * 1000
    jobs = [
        await _lease_one(w1, "inspect", worker_id="w1"),
        await _lease_one(w2, "inspect", worker_id="w2"),
        await _lease_one(w2, "inspect", worker_id="w2"),
    ]
    after = time.time() * 1000
    leases = {x.job_id: x for x in await w1.inspect_leases("inspect")}
    want = {j.id: (j.lease_id, w, 1) for j, w in zip(jobs, ["w1", "w2", "w2"], strict=True)}
    got = {k: (x.lease_id, x.worker_id, x.attempt) for k, x in leases.items()}
    assert got == want, f"leases: {got} != {want}"
    for x in leases.values():
        assert isinstance(x.leased_at_ms, int) and isinstance(x.expires_at_ms, int), (
            f"lease times are not int epoch ms: {x!r}"
        )
        assert before - 5000 <= x.leased_at_ms <= after + 5000, (
            f"leased_at_ms {x.leased_at_ms} not within 5 s of the lease calls "
            f"[{before:.0f}, {after:.0f}]"
        )
        assert abs(x.expires_at_ms - x.leased_at_ms - ttl_ms) <= 1000, (
            f"expires_at_ms {x.expires_at_ms} is not leased_at_ms {x.leased_at_ms} + the "
            f"lease ttl {ttl_ms} (within 1 s)"
        )
    for job in jobs:
        await w1.ack(job)
    assert await w1.inspect_leases("inspect") == [], "leases left after ack"


@check("queue_bridge.idempotency_key", kinds=QB, needs=("idempotency_keys",))
async def test_idempotency_key(aut: AdapterUnderTest) -> None:
    """Concurrent enqueues with one idempotency key return one job id; one job is leased."""
    a, b = await aut.new(), await aut.new()
    ids = await asyncio.gather(
        *(
            (a if i % 2 else b).enqueue("idem", {"i": i}, idempotency_key="order-42")
            for i in range(10)
        )
    )
    other = await a.enqueue("idem", {"i": "other"}, idempotency_key="order-43")
    assert len(set(ids)) == 1, f"one key gave {len(set(ids))} job ids"
    assert other != ids[0], "a different key returned the same job"
    ledger = Ledger("idem")
    ledger.sent(ids[0])
    ledger.sent(other)
    await _work([a, b], "idem", ledger, 5)
    extra = await a.lease_next("idem", 10)
    for job in extra:
        ledger.delivered(job.id)
    expect_exactly_once(ledger)


@check("queue_bridge.priorities", kinds=QB, needs=("priorities",))
async def test_priorities(aut: AdapterUnderTest) -> None:
    """Higher priority jobs are leased first."""
    q = await aut.new()
    for p in (0, 5, 1, 9, 3):
        await q.enqueue("prio", {"p": p}, priority=p)
    order = []
    for _ in range(5):
        job = await _lease_one(q, "prio")
        order.append(job.payload["p"])
        await q.ack(job)
    assert order == [9, 5, 3, 1, 0], f"lease order {order}"


@check("queue_bridge.blocking_lease", kinds=QB, needs=("blocking_lease",))
async def test_blocking_lease(aut: AdapterUnderTest) -> None:
    """lease_next(wait_ms=...) on an empty queue returns soon after another worker enqueues."""
    waiter, producer = await aut.new(), await aut.new()
    leasing = asyncio.ensure_future(waiter.lease_next("block", 1, 5000))
    await asyncio.wait({leasing}, timeout=0.2)
    assert not leasing.done(), f"lease_next returned {leasing.result()} on an empty queue"
    start = time.monotonic()
    job_id = await producer.enqueue("block", {"x": 1})
    jobs = await asyncio.wait_for(leasing, 6)
    took = time.monotonic() - start
    assert [j.id for j in jobs] == [job_id], f"got {jobs}"
    assert took < 1.0, f"blocking lease returned {took:.3f}s after the enqueue"
    aut.metric("wakeup_ms", round(took * 1000, 1))


@check("queue_bridge.blocking_lease_wakes", kinds=QB, needs=("blocking_lease", "delayed_jobs"))
async def test_blocking_lease_wakes(aut: AdapterUnderTest) -> None:
    """A blocking lease_next returns a delayed job soon after its delay ends (within 0.5 s of
    it), without another enqueue to wake it, not at the end of its wait (5 s); on a queue
    that stays empty it returns nothing after its wait (0.3 s), not much later."""
    q = await aut.new()
    start = time.monotonic()
    empty = await asyncio.wait_for(q.lease_next("block-empty", 1, 300), 10)
    took = time.monotonic() - start
    assert empty == [], f"lease_next on an empty queue returned {empty}"
    assert 0.25 <= took < 1.5, f"a 0.3 s blocking lease on an empty queue took {took:.3f}s"
    job_id = await q.enqueue("block-delayed", {"x": 1}, delay_ms=300)
    start = time.monotonic()
    jobs = await asyncio.wait_for(q.lease_next("block-delayed", 1, 5000), 7)
    took = time.monotonic() - start
    assert [j.id for j in jobs] == [job_id], f"got {jobs}"
    late = 0.3 + 0.5
    assert 0.25 <= took < late, (
        f"the 0.3 s delayed job came to a blocking lease after {took:.3f}s (max {late:.3f}s)"
    )
    await q.ack(jobs[0])
    aut.metric("delayed_wakeup_s", round(took, 3))


@check("queue_bridge.lease_expiry_dead_letter", kinds=QB, needs=("lease_recovery",))
async def test_lease_expiry_dead_letter(aut: AdapterUnderTest) -> None:
    """A lease that expires on the job's last attempt dead-letters it (never leased again), with
    a reason, its attempt count and the time (within 5 s of the expiry)."""
    q = await aut.new()
    job_id = await q.enqueue("expiry-dl", {"x": 1}, max_attempts=2, lease_ttl_ms=200)
    first = await _lease_one(q, "expiry-dl")
    assert first is not None and first.attempt == 1
    second = await _lease_one(q, "expiry-dl", 5)
    assert second is not None and second.id == job_id and second.attempt == 2, f"{second}"
    expiry = second.lease_expires_at_ms
    assert await _lease_one(q, "expiry-dl", 1.5) is None, "leased again after its last attempt"
    dead: list[Any] = []

    async def dead_lettered() -> bool:
        dead[:] = await q.peek_dead_letter("expiry-dl")
        return bool(dead)

    await wait_for_async(dead_lettered, 5, interval_s=0.05)
    assert [(d.id, d.attempts) for d in dead] == [(job_id, 2)], f"dead letters: {dead}"
    assert isinstance(dead[0].reason, str) and dead[0].reason, f"no reason: {dead[0]!r}"
    at = dead[0].dead_lettered_at_ms
    assert isinstance(at, int) and abs(at - expiry) <= 5000, (
        f"dead_lettered_at_ms {at!r} not within 5 s of the lease expiry {expiry}"
    )


@check("queue_bridge.metrics.lease_expiry_retries", kinds=QB, needs=("lease_recovery",))
async def test_lease_expiry_retries(aut: AdapterUnderTest) -> None:
    """A lease that runs out short of max_attempts counts as one retry in metrics, as a
    retrying nack does: a retrying nack, then a lease that expires, then the job back at
    attempt 3 make retries 2."""
    q = await aut.new()
    job_id = await q.enqueue("expiry-retries", {"x": 1}, max_attempts=5, lease_ttl_ms=200)
    first = await _lease_one(q, "expiry-retries")
    assert first is not None and first.id == job_id
    assert await q.nack(first, "again") == "retry"
    second = await _lease_one(q, "expiry-retries", 5)
    assert second is not None and second.id == job_id and second.attempt == 2, f"{second}"
    third = await _lease_one(q, "expiry-retries", 5)  # once the 0.2 s lease ran out
    assert third is not None and third.id == job_id and third.attempt == 3, f"{third}"
    retries: list[int] = []

    async def counted() -> bool:
        retries[:] = [(await q.metrics("expiry-retries")).retries]
        return retries[0] >= 2

    await wait_for_async(counted, 5, interval_s=0.05)
    assert retries == [2], (
        f"retries after a retrying nack and an expired lease: {retries}, expected 2"
    )
    await q.ack(third)


@check("queue_bridge.redrive_live_queue", kinds=QB)
async def test_redrive_live_queue(aut: AdapterUnderTest) -> None:
    """Redrives interleaved with fresh enqueues on one queue (five rounds: a dead letter
    redriven, then two jobs enqueued at once): every job, redriven or fresh, is leased once
    in its round, at attempt 1."""
    q = await aut.new()
    queue = "redrive-live"
    for r in range(5):
        dead_id = await q.enqueue(queue, {"r": r, "dead": True}, max_attempts=1)
        job = await _lease_one(q, queue)
        assert job is not None and job.id == dead_id, f"round {r}: leased {job}"
        assert await q.nack(job, "poison") == "dead_letter"
        assert await q.redrive_dead_letter(queue, [dead_id]) == 1
        want = {dead_id, *[await q.enqueue(queue, {"r": r, "i": i}) for i in range(2)]}
        got: list[tuple[str, int]] = []
        deadline = time.monotonic() + 5
        while len(got) < len(want) and time.monotonic() < deadline:
            jobs = await q.lease_next(queue, 3)
            for j in jobs:
                got.append((j.id, j.attempt))
                await q.ack(j)
            if not jobs:
                await asyncio.sleep(0.01)
        assert sorted(got) == sorted((i, 1) for i in want), (
            f"round {r}: leased (id, attempt) {got}, expected each of {sorted(want)} once at 1"
        )


@check("queue_bridge.extend_lease", kinds=QB, needs=("lease_recovery",))
async def test_extend_lease(aut: AdapterUnderTest) -> None:
    """An extended lease is not recovered at the original expiry, and still expires after the
    extension (the job comes back at attempt 2); the holder can ack while it holds. The job
    extend_lease returns carries the new expiry (epoch ms: the extension after the call,
    within 1 s)."""
    q, other = await aut.new(), await aut.new()
    await q.enqueue("extend", {"x": 1}, lease_ttl_ms=300)
    job = await _lease_one(q, "extend")
    before = time.time() * 1000
    job = await q.extend_lease(job, 3000)
    after = time.time() * 1000
    expires = job.lease_expires_at_ms
    assert isinstance(expires, int) and before + 2000 <= expires <= after + 4000, (
        f"the extended job's lease_expires_at_ms {expires!r} is not 3 s after the extension "
        f"[{before:.0f}, {after:.0f}] (within 1 s)"
    )
    assert await _lease_one(other, "extend", 0.6) is None, "extended lease was recovered"
    await q.ack(job)
    job_id = await q.enqueue("extend-expires", {"x": 2}, lease_ttl_ms=300)
    job = await _lease_one(q, "extend-expires")
    assert job is not None
    watch = time.monotonic()
    await q.extend_lease(job, 900)
    assert await _lease_one(other, "extend-expires", 0.5) is None, "extended lease recovered"
    await _expect_back_at_attempt_2(
        other,
        "extend-expires",
        job_id,
        watch,
        0.85,
        10,
        "the extended lease",
        "the 0.9s extension ran out",
    )


@check("queue_bridge.lifecycle.ready_healthy", kinds=QB)
async def test_ready_healthy(aut: AdapterUnderTest) -> None:
    """Not ready before start, ready and healthy after start, neither ready nor healthy after
    destroy; both answer a bool."""
    q = await expect_ready_healthy_cycle(aut)
    assert await q.is_healthy() is False, "still healthy after destroy"


@check("queue_bridge.open.fifo", kinds=QB, open_behaviour=True)
async def test_fifo(aut: AdapterUnderTest) -> None:
    """Observes whether jobs of equal priority are leased in enqueue order."""
    q = await aut.new()
    ids = [await q.enqueue("fifo", {"n": i}) for i in range(aut.n(30))]
    got = []
    while len(got) < len(ids):
        jobs = await q.lease_next("fifo", 7)
        if not jobs:
            break
        got += [j.id for j in jobs]
        for j in jobs:
            await q.ack(j)
    aut.observe("fifo", got == ids)
    aut.observe("leased", len(got))


@check("queue_bridge.metrics", kinds=QB)
async def test_metrics(aut: AdapterUnderTest) -> None:
    """metrics counts pending, in-flight and dead-lettered jobs, the retries (each nack that
    retries counts once) and the age of the oldest pending job (not before it was enqueued,
    not from another epoch); a retried job carries its nack reason as last_error."""
    q = await aut.new()
    await q.enqueue("metrics", {"n": 1})
    await q.enqueue("metrics", {"n": 2})
    await asyncio.sleep(0.3)
    m = await q.metrics("metrics")
    got = (m.pending, m.inflight, m.dead_letter, m.retries)
    assert got == (2, 0, 0, 0), f"(pending, inflight, dead_letter, retries) = {got}"
    assert 250 <= m.oldest_age_ms < 30_000, f"oldest_age_ms {m.oldest_age_ms} for a 0.3 s old job"
    job = await _lease_one(q, "metrics")
    assert job is not None
    assert (await q.metrics("metrics")).inflight == 1
    assert await q.nack(job, "again") == "retry"
    m = await q.metrics("metrics")
    got = (m.pending, m.inflight, m.retries)
    assert got == (2, 0, 1), f"after one retrying nack (pending, inflight, retries) = {got}"
    again = [await _lease_one(q, "metrics") for _ in range(2)]
    retried = [j for j in again if j is not None and j.id == job.id]
    assert retried, f"the nacked job did not come back: {again}"
    assert retried[0].last_error == "again", f"last_error of a retry: {retried[0].last_error!r}"
    assert await q.nack(retried[0], "once more") == "retry"
    m = await q.metrics("metrics")
    assert m.retries == 2, f"retries after two retrying nacks: {m.retries}"
