"""DefaultQueueBridge: the in-memory queue bridge and reference model of the queue contract."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from reference_services.runtime.ids import new_id, now_ms
from reference_services.runtime.queue import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_MAX_ATTEMPTS,
    DeadLetterJob,
    Job,
    LeaseExpiredError,
    LeaseInfo,
    NackOutcome,
    QueueMetrics,
)
from reference_services.runtime.spi.capabilities import (
    YES,
    QueueBridgeCapabilities,
    unsupported,
)
from reference_services.runtime.spi.queue_base import EnqueueRequest, QueueBridgeBase, json_copy


def _kept(request: EnqueueRequest) -> dict[str, Any]:
    """The request's fields a record keeps as they are (all but ``delay_ms``, which
    becomes ``available_at_ms``)."""
    return {f.name: getattr(request, f.name) for f in fields(request) if f.name != "delay_ms"}


@dataclass
class _Record:
    id: str
    queue: str
    payload: Any
    parameter: Any
    headers: dict[str, str]
    max_attempts: int
    priority: int
    lease_ttl_ms: int
    enqueued_at_ms: int
    available_at_ms: int
    seq: int
    idempotency_key: str | None = None
    deliveries: int = 0
    lease_id: str | None = None
    worker_id: str | None = None
    leased_at_ms: int = 0
    lease_expires_at_ms: int = 0
    last_error: str | None = None


@dataclass
class _Queue:
    jobs: dict[str, _Record] = field(default_factory=dict)
    dead: dict[str, tuple[_Record, str, int]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    retries: int = 0


class MemoryQueueStore:
    """Queue state shared by the in-memory queue bridges that model workers."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = defaultdict(_Queue)
        self.seq = itertools.count()
        self.changed = asyncio.Condition()


class DefaultQueueBridge(QueueBridgeBase):
    """In-memory queue bridge: the whole queue contract, in one process."""

    name: ClassVar[str] = "memory"
    capabilities: ClassVar[QueueBridgeCapabilities] = QueueBridgeCapabilities(
        durable=unsupported("jobs live in process memory"),
        reconnect=unsupported("in-process: there is no connection to lose"),
        fifo_within_priority=YES,
    )

    def __init__(
        self,
        store: MemoryQueueStore | None = None,
        *,
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        default_lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
    ) -> None:
        super().__init__(
            default_max_attempts=default_max_attempts, default_lease_ttl_ms=default_lease_ttl_ms
        )
        self.store = store or MemoryQueueStore()

    async def _start_transport(self) -> None:
        pass

    async def _destroy_transport(self) -> None:
        pass

    async def _interrupt_waits(self) -> None:
        await self._notify()  # blocked lease_next calls see the bridge stop and return

    async def _transport_ok(self) -> bool:
        return True

    async def is_healthy(self) -> bool:
        return self.running  # nothing to be healthy about before start

    async def _notify(self) -> None:
        async with self.store.changed:
            self.store.changed.notify_all()

    async def _enqueue(self, request: EnqueueRequest) -> str:
        q = self.store.queues[request.queue]
        key = request.idempotency_key
        if key is not None:
            existing = q.keys.get(key)
            if existing is not None:
                return existing
        now = now_ms()
        record = _Record(
            id=new_id(),
            enqueued_at_ms=now,
            available_at_ms=now + request.delay_ms,
            seq=next(self.store.seq),
            **_kept(request),
        )
        q.jobs[record.id] = record
        if key is not None:
            q.keys[key] = record.id
        await self._notify()
        return record.id

    def _recover_expired(self, q: _Queue, now: int) -> None:
        for record in list(q.jobs.values()):
            if record.lease_id is not None and record.lease_expires_at_ms <= now:
                record.lease_id = None
                record.worker_id = None
                record.last_error = f"lease expired at attempt {record.deliveries}"
                if record.deliveries >= record.max_attempts:
                    self._to_dead(q, record, record.last_error, now)
                else:
                    q.retries += 1

    def _to_dead(self, q: _Queue, record: _Record, reason: str, now: int) -> None:
        q.jobs.pop(record.id, None)
        record.lease_id = None
        q.dead[record.id] = (record, reason, now)

    @staticmethod
    def _job(record: _Record) -> Job:
        return Job(
            id=record.id,
            queue=record.queue,
            payload=json_copy(record.payload, "payload"),
            parameter=json_copy(record.parameter, "parameter"),
            headers=dict(record.headers),
            attempt=record.deliveries,
            max_attempts=record.max_attempts,
            priority=record.priority,
            enqueued_at_ms=record.enqueued_at_ms,
            idempotency_key=record.idempotency_key,
            lease_id=record.lease_id or "",
            lease_expires_at_ms=record.lease_expires_at_ms,
            last_error=record.last_error,
        )

    def _take(self, queue: str, batch: int, worker_id: str | None) -> tuple[list[Job], int | None]:
        q = self.store.queues[queue]
        now = now_ms()
        self._recover_expired(q, now)
        ready = [r for r in q.jobs.values() if r.lease_id is None and r.available_at_ms <= now]
        ready.sort(key=lambda r: (-r.priority, r.available_at_ms, r.seq))
        out = []
        for record in ready[:batch]:
            record.deliveries += 1
            record.lease_id = new_id()
            record.worker_id = worker_id
            record.leased_at_ms = now
            record.lease_expires_at_ms = now + record.lease_ttl_ms
            out.append(self._job(record))
        # when should a waiter look again? the next delayed job or lease expiry
        upcoming = [
            r.available_at_ms if r.lease_id is None else r.lease_expires_at_ms
            for r in q.jobs.values()
        ]
        return out, (min(upcoming) if upcoming else None)

    async def _lease(
        self, queue: str, batch: int, wait_ms: int, worker_id: str | None
    ) -> list[Job]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        while True:
            jobs, upcoming = self._take(queue, batch, worker_id)
            remaining = deadline - loop.time()
            if jobs or remaining <= 0 or not self.running:
                return jobs
            timeout = remaining
            if upcoming is not None:
                timeout = min(timeout, max((upcoming - now_ms()) / 1000, 0.001))
            async with self.store.changed:
                try:
                    await asyncio.wait_for(self.store.changed.wait(), timeout)
                except TimeoutError:
                    pass

    def _held(self, job: Job) -> tuple[_Queue, _Record]:
        q = self.store.queues[job.queue]
        record = q.jobs.get(job.id)
        now = now_ms()
        if record is None or record.lease_id != job.lease_id or not job.lease_id:
            raise LeaseExpiredError(f"job {job.id} is not leased under lease {job.lease_id!r}")
        if record.lease_expires_at_ms <= now:
            self._recover_expired(q, now)
            raise LeaseExpiredError(f"lease {job.lease_id} on job {job.id} expired")
        return q, record

    async def _extend_lease(self, job: Job, lease_ttl_ms: int | None) -> Job:
        _, record = self._held(job)
        record.lease_expires_at_ms = now_ms() + (lease_ttl_ms or record.lease_ttl_ms)
        return replace(job, lease_expires_at_ms=record.lease_expires_at_ms)

    async def _ack(self, job: Job) -> None:
        q, record = self._held(job)
        del q.jobs[record.id]
        await self._notify()

    async def _nack(self, job: Job, reason: str | None, delay_ms: int) -> NackOutcome:
        q, record = self._held(job)
        now = now_ms()
        record.last_error = reason
        if record.deliveries >= record.max_attempts:
            self._to_dead(q, record, reason or f"failed {record.deliveries} time(s)", now)
            await self._notify()
            return "dead_letter"
        record.lease_id = None
        record.worker_id = None
        record.available_at_ms = now + delay_ms
        q.retries += 1
        await self._notify()
        return "retry"

    async def _move_to_dead_letter(self, job: Job, reason: str) -> None:
        q, record = self._held(job)
        self._to_dead(q, record, reason, now_ms())
        await self._notify()

    async def _peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]:
        q = self.store.queues[queue]
        out = []
        for record, reason, at in list(q.dead.values())[:limit]:
            out.append(
                DeadLetterJob(
                    id=record.id,
                    queue=queue,
                    payload=json_copy(record.payload, "payload"),
                    parameter=json_copy(record.parameter, "parameter"),
                    headers=dict(record.headers),
                    attempts=record.deliveries,
                    reason=reason,
                    dead_lettered_at_ms=at,
                    idempotency_key=record.idempotency_key,
                )
            )
        return out

    async def _redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int:
        q = self.store.queues[queue]
        ids = list(q.dead) if job_ids is None else [i for i in job_ids if i in q.dead]
        now = now_ms()
        for job_id in ids:
            record, _reason, _at = q.dead.pop(job_id)
            record.deliveries = 0
            record.available_at_ms = now
            record.seq = next(self.store.seq)
            q.jobs[job_id] = record
        if ids:
            await self._notify()
        return len(ids)

    async def _purge_dead_letter(self, queue: str) -> int:
        q = self.store.queues[queue]
        count = len(q.dead)
        q.dead.clear()
        return count

    async def _inspect_leases(self, queue: str) -> list[LeaseInfo]:
        q = self.store.queues[queue]
        now = now_ms()
        self._recover_expired(q, now)
        return [
            LeaseInfo(
                r.id, r.lease_id, r.deliveries, r.worker_id, r.leased_at_ms, r.lease_expires_at_ms
            )
            for r in q.jobs.values()
            if r.lease_id is not None
        ]

    async def _metrics(self, queue: str) -> QueueMetrics:
        q = self.store.queues[queue]
        now = now_ms()
        self._recover_expired(q, now)
        pending = [r for r in q.jobs.values() if r.lease_id is None]
        inflight = len(q.jobs) - len(pending)
        oldest = min((r.enqueued_at_ms for r in pending), default=now)
        return QueueMetrics(
            pending=len(pending),
            inflight=inflight,
            dead_letter=len(q.dead),
            retries=q.retries,
            oldest_age_ms=now - oldest,
        )
