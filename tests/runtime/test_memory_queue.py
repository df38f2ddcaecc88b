"""DefaultQueueBridge: the queue contract's reference semantics."""

from __future__ import annotations

import asyncio

import pytest

from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge, MemoryQueueStore
from reference_services.runtime.queue import LeaseExpiredError, QueueInputError


@pytest.fixture
async def queue():
    q = DefaultQueueBridge()
    await q.start()
    yield q
    await q.destroy()


async def test_lease_and_ack_empties_the_metrics(queue) -> None:
    job_id = await queue.enqueue("q", {"a": 1}, {"p": 2}, headers={"h": "v"})
    [job] = await queue.lease_next("q")
    assert (job.id, job.payload, job.parameter, job.headers, job.attempt) == (
        job_id,
        {"a": 1},
        {"p": 2},
        {"h": "v"},
        1,
    )
    assert (await queue.metrics("q")).inflight == 1
    await queue.ack(job)
    m = await queue.metrics("q")
    assert (m.pending, m.inflight, m.dead_letter) == (0, 0, 0)


async def test_delayed_job_is_not_leasable_early(queue) -> None:
    await queue.enqueue("q", 1, delay_ms=300)
    assert await queue.lease_next("q") == []
    loop = asyncio.get_running_loop()
    start = loop.time()
    jobs = await queue.lease_next("q", wait_ms=2000)
    assert len(jobs) == 1 and loop.time() - start >= 0.2


async def test_nack_retries_then_dead_letters_at_max_attempts(queue) -> None:
    await queue.enqueue("q", "x", max_attempts=3)
    outcomes = []
    for attempt in (1, 2, 3):
        [job] = await queue.lease_next("q")
        assert job.attempt == attempt
        outcomes.append(await queue.nack(job, f"fail {attempt}"))
    assert outcomes == ["retry", "retry", "dead_letter"]
    [dead] = await queue.peek_dead_letter("q")
    assert (dead.reason, dead.attempts) == ("fail 3", 3)
    m = await queue.metrics("q")
    assert (m.dead_letter, m.retries) == (1, 2)


async def test_peek_redrive_and_purge(queue) -> None:
    ids = [await queue.enqueue("q", n) for n in range(3)]
    for _ in ids:
        [job] = await queue.lease_next("q")
        await queue.move_to_dead_letter(job, "manual")
    assert [d.id for d in await queue.peek_dead_letter("q")] == ids
    assert await queue.redrive_dead_letter("q", [ids[0]]) == 1
    [job] = await queue.lease_next("q")
    assert (job.id, job.attempt) == (ids[0], 1)
    assert await queue.purge_dead_letter("q") == 2
    assert await queue.peek_dead_letter("q") == []


async def test_expired_lease_is_recovered_with_attempt_incremented(queue) -> None:
    await queue.enqueue("q", "x", lease_ttl_ms=100)
    [first] = await queue.lease_next("q", worker_id="w1")
    [info] = await queue.inspect_leases("q")
    assert (info.job_id, info.worker_id, info.attempt) == (first.id, "w1", 1)
    [again] = await queue.lease_next("q", wait_ms=2000, worker_id="w2")
    assert (again.id, again.attempt) == (first.id, 2)
    with pytest.raises(LeaseExpiredError):
        await queue.ack(first)
    await queue.ack(again)


async def test_idempotency_key_returns_the_original_job_id(queue) -> None:
    a = await queue.enqueue("q", 1, idempotency_key="k")
    b = await queue.enqueue("q", 2, idempotency_key="k")
    assert a == b
    assert (await queue.metrics("q")).pending == 1


async def test_many_workers_never_lease_a_job_twice() -> None:
    store = MemoryQueueStore()
    workers = [DefaultQueueBridge(store) for _ in range(5)]
    for worker in workers:
        await worker.start()
    producer = workers[0]
    ids = {await producer.enqueue("q", n) for n in range(500)}
    leased: list[str] = []

    async def work(w: DefaultQueueBridge) -> None:
        while jobs := await w.lease_next("q", batch=7):
            for job in jobs:
                leased.append(job.id)
                await w.ack(job)

    await asyncio.gather(*(work(w) for w in workers))
    assert len(leased) == 500 and set(leased) == ids


async def test_bad_arguments_name_what_was_wrong(queue) -> None:
    with pytest.raises(QueueInputError, match="delay_ms"):
        await queue.enqueue("q", 1, delay_ms=-1)
    with pytest.raises(QueueInputError, match="payload is not JSON"):
        await queue.enqueue("q", object())
    with pytest.raises(QueueInputError, match="queue must be"):
        await queue.enqueue("", 1)
