"""Integration tests of RedisQueueBridge against a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from adapter_helpers import Adapters, adapters_fixture, eventually, is_not, nacked_into_dead_letter

from harness.history import History
from reference_services.adapters.redis.queue_bridge import RedisQueueBridge, RedisUnavailableError
from reference_services.runtime import QueueNotRunningError
from reference_services.runtime.queue import Job, LeaseExpiredError, QueueInputError

# --- brokers come from the harness plugin: redis, fresh_service, namespace, proxied, history


make_bridge = adapters_fixture(RedisQueueBridge, "redis", quiet=True)


# --- the queue contract on Redis ----------------------------------------------------------


async def test_round_trip_keeps_payload_and_empties_metrics(make_bridge: Any) -> None:
    bridge = await make_bridge()
    payload = {"text": "grüße ✓ 中文", "nested": {"a": [1, 2.5, None, True]}, "big": "x" * 200_000}
    job_id = await bridge.enqueue("work", payload, {"p": 1}, headers={"h": "v"})
    jobs = await bridge.lease_next("work", worker_id="w1")
    assert [j.id for j in jobs] == [job_id]
    job = jobs[0]
    assert (job.payload, job.parameter, job.headers) == (payload, {"p": 1}, {"h": "v"})
    assert job.attempt == 1
    assert job.lease_id and job.lease_expires_at_ms > job.enqueued_at_ms
    m = await bridge.metrics("work")
    assert (m.pending, m.inflight) == (0, 1)
    await bridge.ack(job)
    m = await bridge.metrics("work")
    assert (m.pending, m.inflight, m.dead_letter, m.retries) == (0, 0, 0, 0)
    assert await bridge.lease_next("work") == []


async def test_bad_arguments_are_rejected(make_bridge: Any) -> None:
    bridge = await make_bridge()
    with pytest.raises(QueueInputError):
        await bridge.enqueue("", 1)
    with pytest.raises(QueueInputError):
        await bridge.enqueue("q", float("nan"))
    with pytest.raises(QueueInputError):
        await bridge.lease_next("q", batch=0)


async def test_priority_order_then_fifo(make_bridge: Any) -> None:
    bridge = await make_bridge()
    low1 = await bridge.enqueue("q", "low1")
    high = await bridge.enqueue("q", "high", priority=10)
    low2 = await bridge.enqueue("q", "low2")
    mid = await bridge.enqueue("q", "mid", priority=5)
    jobs = await bridge.lease_next("q", batch=10)
    assert [j.id for j in jobs] == [high, mid, low1, low2]


async def test_delayed_job_is_not_leasable_early(make_bridge: Any) -> None:
    bridge = await make_bridge()
    job_id = await bridge.enqueue("q", "later", delay_ms=400)
    started = time.monotonic()
    assert await bridge.lease_next("q") == []
    assert (await bridge.metrics("q")).pending == 1
    jobs = await bridge.lease_next("q", wait_ms=3000)
    waited = time.monotonic() - started
    assert [j.id for j in jobs] == [job_id]
    assert 0.35 <= waited < 2.0


async def test_idempotency_key_returns_original_id(make_bridge: Any) -> None:
    bridge = await make_bridge()
    other = await make_bridge()
    first = await bridge.enqueue("q", {"n": 1}, idempotency_key="order-7")
    again = await other.enqueue("q", {"n": 2}, idempotency_key="order-7")
    assert again == first
    jobs = await bridge.lease_next("q", batch=5)
    assert [(j.id, j.payload, j.idempotency_key) for j in jobs] == [(first, {"n": 1}, "order-7")]
    await bridge.ack(jobs[0])
    # like the reference model, the key is remembered after the job is done
    assert await bridge.enqueue("q", {"n": 3}, idempotency_key="order-7") == first


async def test_nack_retries_then_dead_letters_with_reason(make_bridge: Any) -> None:
    bridge = await make_bridge()
    await nacked_into_dead_letter(bridge, "flaky", delay_ms=50)
    m = await bridge.metrics("q")
    assert (m.pending, m.inflight, m.dead_letter, m.retries) == (0, 0, 1, 2)


async def test_explicit_dead_letter_peek_redrive_purge(make_bridge: Any) -> None:
    bridge = await make_bridge()
    ids = [await bridge.enqueue("q", i) for i in range(3)]
    jobs = await bridge.lease_next("q", batch=3)
    for job in jobs:
        await bridge.move_to_dead_letter(job, f"bad {job.payload}")
    dead = await bridge.peek_dead_letter("q")
    assert [(d.id, d.reason) for d in dead] == [(i, f"bad {n}") for n, i in enumerate(ids)]
    assert [d.id for d in await bridge.peek_dead_letter("q", limit=2)] == ids[:2]
    assert await bridge.redrive_dead_letter("q", [ids[1], "unknown"]) == 1
    (again,) = await bridge.lease_next("q")
    assert (again.id, again.attempt) == (ids[1], 1)
    await bridge.ack(again)
    assert await bridge.purge_dead_letter("q") == 2
    assert await bridge.peek_dead_letter("q") == []
    assert (await bridge.metrics("q")).dead_letter == 0


async def test_expired_lease_is_recovered_then_dead_lettered(make_bridge: Any) -> None:
    bridge = await make_bridge()
    job_id = await bridge.enqueue("q", "slow", max_attempts=2, lease_ttl_ms=200)
    (first,) = await bridge.lease_next("q", worker_id="crashed")
    (second,) = await bridge.lease_next("q", wait_ms=3000, worker_id="w2")
    assert (second.id, second.attempt) == (job_id, 2)
    assert second.last_error == "lease expired at attempt 1"
    with pytest.raises(LeaseExpiredError):
        await bridge.ack(first)
    await eventually(
        lambda: _dead_count(bridge, "q", 1), timeout_s=3, what="dead letter after expiry"
    )
    (dead,) = await bridge.peek_dead_letter("q")
    assert (dead.attempts, dead.reason) == (2, "lease expired at attempt 2")
    with pytest.raises(LeaseExpiredError):
        await bridge.ack(second)


async def _dead_count(bridge: RedisQueueBridge, queue: str, n: int) -> bool:
    return (await bridge.metrics(queue)).dead_letter == n


async def test_stale_and_double_settle_raise(make_bridge: Any) -> None:
    bridge = await make_bridge()
    await bridge.enqueue("q", 1)
    (job,) = await bridge.lease_next("q")
    await bridge.ack(job)
    with pytest.raises(LeaseExpiredError):
        await bridge.ack(job)
    with pytest.raises(LeaseExpiredError):
        await bridge.nack(job)
    with pytest.raises(LeaseExpiredError):
        await bridge.extend_lease(job)


async def test_extend_lease_and_inspect(make_bridge: Any) -> None:
    bridge = await make_bridge()
    job_id = await bridge.enqueue("q", 1, lease_ttl_ms=300)
    (job,) = await bridge.lease_next("q", worker_id="w7")
    extended = await bridge.extend_lease(job, 5_000)
    assert extended.lease_expires_at_ms >= job.lease_expires_at_ms + 4_000
    await asyncio.sleep(0.4)  # past the original ttl: the lease must still hold
    (info,) = await bridge.inspect_leases("q")
    assert (info.job_id, info.lease_id, info.attempt, info.worker_id) == (
        job_id,
        job.lease_id,
        1,
        "w7",
    )
    assert info.expires_at_ms == extended.lease_expires_at_ms
    await bridge.ack(extended)
    assert await bridge.inspect_leases("q") == []


async def test_retried_calls_after_lost_reply_are_idempotent(make_bridge: Any) -> None:
    """What the client's automatic retry resends (same ids) must not act twice."""
    bridge = await make_bridge()
    base = bridge._base("q")
    args = ["f" * 32, "0", "", 0, "1", "null", "{}", 3, 0, 30_000, 0, bridge.channel, "q"]
    for _ in range(3):
        assert await bridge._scripts["enqueue"](keys=[base], args=args) == "f" * 32
    assert (await bridge.metrics("q")).pending == 1
    lease_args = [1, "0", "", "r" * 32, "l" * 32]
    first = await bridge._scripts["lease"](keys=[base], args=lease_args)
    assert await bridge._scripts["lease"](keys=[base], args=lease_args) == first
    assert (await bridge.metrics("q")).inflight == 1
    ack_args = ["f" * 32, "l" * 32, "a" * 32]
    assert await bridge._scripts["ack"](keys=[base], args=ack_args) == "ok"
    assert await bridge._scripts["ack"](keys=[base], args=ack_args) == "ok"
    ack_args[2] = "b" * 32  # a new ack call, not a retry: the lease is gone
    assert await bridge._scripts["ack"](keys=[base], args=ack_args) == "stale"


async def test_workers_never_double_lease(make_bridge: Any) -> None:
    workers = [await make_bridge() for _ in range(4)]
    ids = {await workers[0].enqueue("q", n) for n in range(300)}
    leased: Counter[str] = Counter()

    async def work(bridge: RedisQueueBridge, name: str) -> None:
        while True:
            jobs = await bridge.lease_next("q", batch=3, wait_ms=200, worker_id=name)
            if not jobs:
                return
            for job in jobs:
                leased[job.id] += 1
                await bridge.ack(job)

    await asyncio.gather(*(work(b, f"w{i}") for i, b in enumerate(workers)))
    assert set(leased) == ids
    assert max(leased.values()) == 1
    m = await workers[0].metrics("q")
    assert (m.pending, m.inflight, m.retries) == (0, 0, 0)


async def test_blocking_lease_wakes_on_enqueue_from_another_bridge(make_bridge: Any) -> None:
    waiter = await make_bridge(poll_interval_ms=10_000)
    producer = await make_bridge()
    started = time.monotonic()
    assert await waiter.lease_next("q", wait_ms=300) == []
    assert 0.25 <= time.monotonic() - started < 1.5
    task = asyncio.create_task(waiter.lease_next("q", wait_ms=8_000))
    await asyncio.sleep(0.2)
    job_id = await producer.enqueue("q", "wake")
    jobs = await asyncio.wait_for(task, 3)
    assert [j.id for j in jobs] == [job_id]
    assert time.monotonic() - started < 3


async def test_malformed_job_is_dead_lettered_and_next_served(
    make_bridge: Any, harness_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = await make_bridge()
    bad = await bridge.enqueue("q", "will be corrupted")
    good = await bridge.enqueue("q", {"ok": True})
    raw = aioredis.Redis.from_url(harness_redis.url)
    try:
        await raw.hset(f"{bridge._base('q')}:job:{bad}", "payload", b"\xff{not json")
    finally:
        await raw.aclose()
    with caplog.at_level(logging.WARNING):
        jobs = await bridge.lease_next("q", batch=2)
    assert [j.id for j in jobs] == [good]
    (dead,) = await bridge.peek_dead_letter("q")
    assert dead.id == bad and dead.reason.startswith("malformed job data")
    assert any(bad in r.getMessage() for r in caplog.records)
    await bridge.ack(jobs[0])
    assert (await bridge.enqueue("q", 2)) and len(await bridge.lease_next("q")) == 1


async def test_broken_job_records_never_block_the_queue(
    make_bridge: Any, harness_redis: Any
) -> None:
    """Hashes damaged or deleted behind the bridge's back are quarantined in the dead letter
    (an index entry whose hash is gone too, with the entry as its raw record); work goes on."""
    bridge = await make_bridge()
    base = bridge._base("q")
    leased = await bridge.enqueue("q", "leased, loses its attempt count", lease_ttl_ms=200)
    assert [j.id for j in await bridge.lease_next("q")] == [leased]
    no_ttl = await bridge.enqueue("q", "ready, loses its lease ttl")
    gone = await bridge.enqueue("q", "ready, hash deleted")
    delayed = await bridge.enqueue("q", "delayed, loses its priority", delay_ms=300)
    raw = aioredis.Redis.from_url(harness_redis.url)
    try:
        await raw.hdel(f"{base}:job:{leased}", "deliveries")
        await raw.hdel(f"{base}:job:{no_ttl}", "lease_ttl")
        await raw.delete(f"{base}:job:{gone}")
        await raw.hdel(f"{base}:job:{delayed}", "priority")
    finally:
        await raw.aclose()
    good = await bridge.enqueue("q", "fine")
    jobs = await bridge.lease_next("q", batch=5, wait_ms=2000)
    assert [j.id for j in jobs] == [good]
    await bridge.ack(jobs[0])
    assert await bridge.lease_next("q", wait_ms=600) == []  # the delayed one came due: set aside
    await eventually(lambda: _dead_count(bridge, "q", 4), 5, "broken jobs dead-lettered")
    dead = {d.id: d for d in await bridge.peek_dead_letter("q")}
    assert set(dead) == {leased, no_ttl, delayed, gone}
    assert all(d.reason.startswith("malformed job data in redis") for d in dead.values())
    assert "without its job" in dead[gone].reason
    assert str(dead[gone].payload).endswith(gone)  # the index entry, as its raw record
    m = await bridge.metrics("q")
    assert (m.pending, m.inflight) == (0, 0)


async def test_destroy_lets_running_operations_finish(make_bridge: Any) -> None:
    bridge = await make_bridge()
    observer = await make_bridge()
    waiter = asyncio.create_task(bridge.lease_next("idle", wait_ms=10_000))
    await eventually(lambda: _truthy("idle" in bridge._wakers), 5, "waiter parked")
    await asyncio.sleep(0.05)
    writes = [asyncio.create_task(bridge.enqueue("q", n)) for n in range(50)]
    await asyncio.sleep(0)  # every write has started
    started = time.monotonic()
    await bridge.destroy()
    assert time.monotonic() - started < 3
    assert all(t.done() for t in writes)
    ids = {t.result() for t in writes}
    assert len(ids) == 50
    assert await asyncio.wait_for(waiter, 2) == []
    assert (await observer.metrics("q")).pending == 50
    with pytest.raises(QueueNotRunningError) as info:
        await bridge.enqueue("q", "after destroy")
    assert info.value.status == 503


# --- faults: Redis restarts ---------------------------------------------------------------


async def test_health_follows_redis_and_work_resumes_after_restart(
    fresh_redis: Any, namespace: str
) -> None:
    bridge = RedisQueueBridge(
        fresh_redis.url,
        prefix=namespace,
        retry_attempts=2,
        retry_backoff_cap_s=0.2,
        poll_interval_ms=500,
        outage_retry_s=1.0,
    )
    await bridge.start()
    try:
        kept = await bridge.enqueue("q", "survives")
        waiter = asyncio.create_task(_lease_ignoring_outage(bridge, "late", 20_000))
        fresh_redis.kill()
        await eventually(lambda: is_not(bridge.is_healthy()), 5, "unhealthy")
        assert not await bridge.is_ready()
        started = time.monotonic()
        with pytest.raises(RedisUnavailableError) as err:
            await bridge.enqueue("q", "while down")
        assert err.value.status == 503 and time.monotonic() - started < 3
        fresh_redis.start()
        await eventually(bridge.is_healthy, 10, "healthy again")
        assert await bridge.is_ready()
        (job,) = await bridge.lease_next("q", wait_ms=2000)
        assert job.id == kept
        await bridge.ack(job)
        late = await bridge.enqueue("late", "after restart")
        jobs = await asyncio.wait_for(waiter, 10)
        assert [j.id for j in jobs] == [late]
    finally:
        await bridge.destroy()


async def _lease_ignoring_outage(bridge: RedisQueueBridge, queue: str, wait_ms: int) -> list[Job]:
    deadline = time.monotonic() + wait_ms / 1000
    while time.monotonic() < deadline:
        try:
            jobs = await bridge.lease_next(queue, wait_ms=500)
        except RedisUnavailableError:
            await asyncio.sleep(0.1)
            continue
        if jobs:
            return jobs
    return []


@pytest.mark.slow
async def test_sigkill_mid_1000_jobs_loses_none(
    fresh_redis: Any, namespace: str, history: History
) -> None:
    """Kill -9 Redis (AOF, fsync always) while 1,000 jobs flow: every enqueued job is done."""
    total = 1000
    opts: dict[str, Any] = dict(
        prefix=namespace,
        retry_attempts=2,
        retry_backoff_cap_s=0.2,
        poll_interval_ms=200,
        outage_retry_s=1.0,
    )
    producer = RedisQueueBridge(fresh_redis.url, **opts)
    workers = [RedisQueueBridge(fresh_redis.url, **opts) for _ in range(3)]
    for b in (producer, *workers):
        await b.start()
    sent_ok: set[str] = set()
    seen: set[str] = set()
    errors: Counter[str] = Counter()
    at_kill: dict[str, int] = {}
    done = asyncio.Event()

    async def produce() -> None:
        for n in range(total):
            key = f"k{n}"
            while True:  # an enqueue whose outcome is unknown is retried with the same key
                try:
                    await producer.enqueue(
                        "jobs", {"key": key}, idempotency_key=key, lease_ttl_ms=2000
                    )
                except RedisUnavailableError:
                    history.sent(key, "unknown")
                    errors["enqueue"] += 1
                    await asyncio.sleep(0.05)
                    continue
                history.sent(key, "ok")
                sent_ok.add(key)
                await asyncio.sleep(0.003)  # a steady stream, so the kill lands mid-way
                break

    async def work(bridge: RedisQueueBridge, name: str) -> None:
        while not done.is_set():
            try:
                jobs = await bridge.lease_next("jobs", batch=10, wait_ms=200, worker_id=name)
            except RedisUnavailableError:
                errors["lease"] += 1
                await asyncio.sleep(0.05)
                continue
            for job in jobs:
                key = job.payload["key"]
                history.delivered(key, consumer=name, attempt=job.attempt)
                seen.add(key)
                try:
                    await bridge.ack(job)
                    history.acknowledged(key)
                except RedisUnavailableError:
                    errors["ack"] += 1  # the job comes back when its lease expires
                except LeaseExpiredError:
                    errors["stale"] += 1

    async def crash() -> None:
        await eventually(lambda: _truthy(len(seen) >= 300), 30, "300 jobs processed")
        at_kill.update(enqueued=len(sent_ok), processed=len(seen))
        await asyncio.to_thread(fresh_redis.kill)
        await asyncio.sleep(2.0)  # Redis stays down for 2 s
        await asyncio.to_thread(fresh_redis.start)

    async def drained() -> None:
        async def check() -> bool:
            if len(sent_ok) < total or not sent_ok <= seen:
                return False
            m = await producer.metrics("jobs")
            return (m.pending, m.inflight) == (0, 0)

        await eventually(_ignoring_outage(check), 80, "queue drained")
        done.set()

    try:
        await asyncio.wait_for(
            asyncio.gather(
                produce(), crash(), drained(), *(work(b, f"w{i}") for i, b in enumerate(workers))
            ),
            90,
        )
        assert at_kill["enqueued"] < total and at_kill["processed"] < total, at_kill
        assert errors["enqueue"] + errors["lease"] > 0, "the outage was not observed"
        verdict = history.check(allow_duplicates=True)
        assert verdict.published_ok == total
        assert verdict.lost == 0 and verdict.unexpected == 0, verdict.format()
        assert (await producer.metrics("jobs")).dead_letter == 0
        print(
            f"\nredis SIGKILL mid 1000 jobs (killed at {at_kill}): {verdict.to_dict()} "
            f"errors={dict(errors)}"
        )
    finally:
        for b in (producer, *workers):
            await b.destroy()


def _ignoring_outage(check: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        try:
            return await check()
        except RedisUnavailableError:
            return False

    return wrapped


async def _truthy(value: bool) -> bool:
    return value


# --- faults: network (Toxiproxy) ----------------------------------------------------------


BehindProxy = tuple[Any, Callable[..., Awaitable[RedisQueueBridge]]]


@pytest.fixture
async def behind_proxy(
    harness_redis: Any, proxied: Callable[..., Any], namespace: str
) -> AsyncIterator[BehindProxy]:
    """A Toxiproxy in front of the session Redis, and bridges (one retry) through it."""
    proxy = proxied(harness_redis)
    async with Adapters(RedisQueueBridge, proxy.url, prefix=namespace, retry_attempts=1) as made:
        yield proxy, made.bridge


async def test_lost_replies_are_retried_without_acting_twice(
    harness_redis: Any, behind_proxy: BehindProxy
) -> None:
    """Replies swallowed by the network: the retried enqueue/lease/ack acts exactly once."""
    proxy, make_bridge = behind_proxy
    bridge = await make_bridge(socket_timeout_s=0.3, retry_backoff_cap_s=0.1, outage_retry_s=20)
    direct = aioredis.Redis.from_url(harness_redis.url, decode_responses=True)
    base = bridge._base("q")

    async def counts() -> tuple[int, int]:
        return await direct.zcard(f"{base}:ready"), await direct.zcard(f"{base}:leased")

    try:
        await bridge.metrics("q")  # a pooled connection exists before replies start vanishing
        async with proxy.black_hole():  # commands reach Redis, replies never come back
            enqueue = asyncio.create_task(bridge.enqueue("q", "once"))
            await eventually(lambda: _equals(counts(), (1, 0)), 10, "enqueue ran on Redis")
        first = await asyncio.wait_for(enqueue, 15)
        assert await counts() == (1, 0)  # the retry did not enqueue a second job
        second = await bridge.enqueue("q", "other")

        async with proxy.black_hole():
            lease = asyncio.create_task(bridge.lease_next("q", batch=1))
            await eventually(lambda: _equals(counts(), (1, 1)), 10, "lease ran on Redis")
        (job,) = await asyncio.wait_for(lease, 15)
        assert job.id == first and await counts() == (1, 1)  # one lease, not two

        async with proxy.black_hole():
            ack = asyncio.create_task(bridge.ack(job))
            await eventually(lambda: _equals(counts(), (1, 0)), 10, "ack ran on Redis")
        await asyncio.wait_for(ack, 15)  # no LeaseExpiredError for an ack that went through
        (rest,) = await bridge.lease_next("q", batch=5)
        assert rest.id == second
    finally:
        await direct.aclose()


async def test_health_detects_a_partition_within_seconds(behind_proxy: BehindProxy) -> None:
    proxy, make_bridge = behind_proxy
    bridge = await make_bridge(socket_timeout_s=0.5, health_timeout_s=0.5, outage_retry_s=0.5)
    await bridge.enqueue("q", 1)
    async with proxy.black_hole():
        started = time.monotonic()
        await eventually(lambda: is_not(bridge.is_healthy()), 5, "unhealthy")
        assert time.monotonic() - started < 3
        with pytest.raises(RedisUnavailableError):
            await bridge.enqueue("q", 2)
    await eventually(bridge.is_healthy, 10, "healthy again")
    async with proxy.down():
        await eventually(lambda: is_not(bridge.is_ready()), 5, "not ready")
    await eventually(bridge.is_ready, 10, "ready again")
    jobs = await bridge.lease_next("q", batch=5)
    assert len(jobs) in (1, 2)  # the enqueue during the black hole may have reached Redis


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


# --- model check: the same operations on Redis and on the reference model -----------------


@pytest.mark.slow
def test_matches_the_reference_model(harness_redis: Any) -> None:
    """Random operation sequences give the same answers as DefaultQueueBridge.

    Every job gets a distinct priority so that lease order never depends on clocks.
    """
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )

    from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge

    url = harness_redis.url

    class Model(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.runner = asyncio.Runner()
            self.mem = DefaultQueueBridge()
            self.run(self.mem.start())
            self.red = RedisQueueBridge(url, prefix=f"m{uuid.uuid4().hex[:10]}")
            self.run(self.red.start())
            self.ids: dict[str, str] = {}  # memory job id -> redis job id
            self.held: list[tuple[Job, Job]] = []
            self.settled: list[tuple[Job, Job]] = []
            self.n = 0

        def run(self, coro: Awaitable[Any]) -> Any:
            return self.runner.run(coro)  # type: ignore[arg-type]

        def both(self, op: Callable[[Any], Awaitable[Any]]) -> tuple[Any, Any]:
            """Run op on both bridges: (result or exception type) of each."""
            out = []
            for bridge in (self.mem, self.red):
                try:
                    out.append(self.run(op(bridge)))
                except LeaseExpiredError:
                    out.append(LeaseExpiredError)
            return out[0], out[1]

        def teardown(self) -> None:
            self.run(self.red.destroy())
            self.runner.close()

        @rule(
            priority=st.integers(-50, 50),
            max_attempts=st.integers(1, 3),
            key=st.none() | st.sampled_from(["a", "b", "c"]),
        )
        def enqueue(self, priority: int, max_attempts: int, key: str | None) -> None:
            self.n += 1
            kwargs = dict(
                priority=priority * 1000 + self.n, max_attempts=max_attempts, idempotency_key=key
            )
            mem_id = self.run(self.mem.enqueue("q", {"n": self.n}, **kwargs))
            red_id = self.run(self.red.enqueue("q", {"n": self.n}, **kwargs))
            assert self.ids.setdefault(mem_id, red_id) == red_id

        @rule(batch=st.integers(1, 3))
        def lease(self, batch: int) -> None:
            mem_jobs = self.run(self.mem.lease_next("q", batch))
            red_jobs = self.run(self.red.lease_next("q", batch))
            assert [self.ids[j.id] for j in mem_jobs] == [j.id for j in red_jobs]
            for m, r in zip(mem_jobs, red_jobs, strict=True):
                assert (
                    m.payload,
                    m.attempt,
                    m.max_attempts,
                    m.priority,
                    m.last_error,
                    m.idempotency_key,
                ) == (
                    r.payload,
                    r.attempt,
                    r.max_attempts,
                    r.priority,
                    r.last_error,
                    r.idempotency_key,
                )
                self.held.append((m, r))

        def _take(self, index: int, stale: bool) -> tuple[Job, Job]:
            pool = self.settled if stale else self.held
            pair = pool[index % len(pool)]
            if not stale:
                self.held.remove(pair)
                self.settled.append(pair)
            return pair

        @precondition(lambda self: self.held or self.settled)
        @rule(index=st.integers(0, 20), stale=st.booleans())
        def ack(self, index: int, stale: bool) -> None:
            if not (self.settled if stale else self.held):
                stale = not stale
            m, r = self._take(index, stale)
            jobs = iter((m, r))
            a, b = self.both(lambda bridge: bridge.ack(next(jobs)))
            assert a == b

        @precondition(lambda self: self.held or self.settled)
        @rule(
            index=st.integers(0, 20),
            stale=st.booleans(),
            reason=st.none() | st.sampled_from(["", "boom"]),
        )
        def nack(self, index: int, stale: bool, reason: str | None) -> None:
            if not (self.settled if stale else self.held):
                stale = not stale
            m, r = self._take(index, stale)
            jobs = iter((m, r))
            a, b = self.both(lambda bridge: bridge.nack(next(jobs), reason))
            assert a == b

        @precondition(lambda self: self.held)
        @rule(index=st.integers(0, 20))
        def dead_letter(self, index: int) -> None:
            m, r = self._take(index, False)
            jobs = iter((m, r))
            a, b = self.both(lambda bridge: bridge.move_to_dead_letter(next(jobs), "manual"))
            assert a == b

        @rule(everything=st.booleans(), picks=st.lists(st.integers(0, 20), max_size=3))
        def redrive(self, everything: bool, picks: list[int]) -> None:
            dead = self.run(self.mem.peek_dead_letter("q"))
            chosen = (
                None
                if everything
                else sorted({dead[i % len(dead)].id for i in picks} if dead else set())
            )
            a = self.run(self.mem.redrive_dead_letter("q", chosen))
            mapped = None if chosen is None else [self.ids[i] for i in chosen]
            b = self.run(self.red.redrive_dead_letter("q", mapped))
            assert a == b

        @rule()
        def purge(self) -> None:
            assert self.run(self.mem.purge_dead_letter("q")) == self.run(
                self.red.purge_dead_letter("q")
            )

        @invariant()
        def same_state(self) -> None:
            a, b = self.run(self.mem.metrics("q")), self.run(self.red.metrics("q"))
            assert (a.pending, a.inflight, a.dead_letter, a.retries) == (
                b.pending,
                b.inflight,
                b.dead_letter,
                b.retries,
            )
            da, db = (
                self.run(self.mem.peek_dead_letter("q")),
                self.run(self.red.peek_dead_letter("q")),
            )
            assert [(self.ids[d.id], d.attempts, d.reason, d.payload) for d in da] == [
                (d.id, d.attempts, d.reason, d.payload) for d in db
            ]
            la, lb = self.run(self.mem.inspect_leases("q")), self.run(self.red.inspect_leases("q"))
            assert sorted((self.ids[x.job_id], x.attempt) for x in la) == sorted(
                (x.job_id, x.attempt) for x in lb
            )

    run_state_machine_as_test(
        Model,
        settings=settings(
            max_examples=50,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
