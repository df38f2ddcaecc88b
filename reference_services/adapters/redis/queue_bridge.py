"""RedisQueueBridge: the queue contract of :class:`DefaultQueueBridge`, on Redis.

Why sorted sets + hashes + Lua rather than Streams with consumer groups:
the contract needs priorities, delayed jobs, per-job ``max_attempts``,
lease ids that make a stale ack fail, ``extend_lease``, a dead letter with
redrive, and expired-lease recovery that counts the attempt and dead-letters
at the limit. Streams give XAUTOCLAIM and a delivery counter, but no priorities
or delays, and claim/ack are separate commands with no lease identity, so an
ack from a worker whose lease was reclaimed would still succeed. With one Lua
script per operation every transition (lease + expiry + attempt count, nack +
reschedule or dead letter, recovery) is a single atomic step on the server,
so N workers (bridge objects) can never lease the same job twice, and the
semantics are exactly those of the in-memory reference model.

Robustness: the redis client reconnects per command with bounded, backed-off
retries, and each operation is retried with the same arguments for up to
``outage_retry_s`` before it fails with a 503 (:class:`RedisUnavailableError`).
A retried script after a lost reply returns its first answer (client-generated
job ids, lease request ids and settle markers), so a retry neither enqueues
twice, nor leases twice, nor reports a stale lease for an ack that went through.
A job whose stored data cannot be decoded, or whose record was damaged or
deleted behind the bridge's back, is dead-lettered (or dropped when nothing is
left of it) with a log line or a reason; it never blocks leasing or recovery.
Blocking ``lease_next(wait_ms=...)`` waits on a pub/sub wake-up (published by
the scripts) bounded by the next delayed job or lease expiry and by a poll
interval, so a lost notification costs latency, not correctness.

Durability holds when Redis runs with ``appendonly yes`` and ``appendfsync
always``; ``start()`` reads the server's settings and declares ``durable``
unsupported (with the reason) otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any, ClassVar

from redis.commands.core import AsyncScript

from reference_services.adapters.redis.client import (
    RedisSettings,
    RedisUnavailableError,
    durability,
    guarded,
    lenient_text,
    ping,
    strict_text,
)
from reference_services.adapters.redis.queue_scripts import SCRIPTS, script_source
from reference_services.runtime.errors import UnhandledError
from reference_services.runtime.ids import new_id
from reference_services.runtime.queue import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_MAX_ATTEMPTS,
    DeadLetterJob,
    Job,
    LeaseExpiredError,
    LeaseInfo,
    NackOutcome,
    QueueInputError,
    QueueMetrics,
)
from reference_services.runtime.spi.capabilities import YES, QueueBridgeCapabilities
from reference_services.runtime.spi.queue_base import EnqueueRequest, QueueBridgeBase

__all__ = ["RedisQueueBridge", "RedisUnavailableError"]

log = logging.getLogger("reference_services.bridge.redis_queue")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise QueueInputError(f"{what} is not JSON: {exc}") from None


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {str(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _loads_lenient(raw: str | None) -> Any:
    """Decode stored JSON for inspection (dead letters); undecodable text is returned as is."""
    if raw is None:
        return None
    raw = lenient_text(raw)
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _job(queue: str, h: dict[str, str]) -> Job:
    """A :class:`Job` from its hash; raises ValueError/KeyError on malformed data."""
    for value in h.values():
        strict_text(value)
    headers = json.loads(h.get("headers") or "{}")
    if not isinstance(headers, dict):
        raise ValueError("headers are not an object")
    return Job(
        id=h["id"],
        queue=queue,
        payload=json.loads(h["payload"]),
        parameter=json.loads(h.get("parameter") or "null"),
        headers={str(k): str(v) for k, v in headers.items()},
        attempt=int(h["deliveries"]),
        max_attempts=int(h["max_attempts"]),
        priority=int(h["priority"]),
        enqueued_at_ms=int(h["enqueued_at"]),
        idempotency_key=h.get("idem"),
        lease_id=h.get("lease_id", ""),
        lease_expires_at_ms=int(h.get("lease_expires_at", 0)),
        last_error=h.get("last_error"),
    )


class RedisQueueBridge(QueueBridgeBase):
    """Queue bridge on Redis; several objects with the same url+prefix are competing workers.

    ``url`` defaults to ``REDIS_URL``; every key lives under ``<prefix>:q:{<queue>}``.
    Timings: ``socket_timeout_s``/``connect_timeout_s`` per command, ``retry_attempts``
    with backoff inside the client, ``outage_retry_s`` across a Redis outage,
    ``health_timeout_s`` for the PING behind ``is_ready``/``is_healthy``,
    ``poll_interval_ms`` as the longest a blocking lease sleeps without a wake-up,
    ``drain_timeout_s`` for ``destroy``. ``idempotency_ttl_ms`` (None = forever, as
    the reference model) bounds how long an idempotency key is remembered.
    """

    name: ClassVar[str] = "redis"
    capabilities: QueueBridgeCapabilities = QueueBridgeCapabilities(fifo_within_priority=YES)

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        default_lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        idempotency_ttl_ms: int | None = None,
        poll_interval_ms: int = 1000,
        socket_timeout_s: float | None = 5.0,
        connect_timeout_s: float = 2.0,
        retry_attempts: int = 3,
        retry_backoff_base_s: float = 0.05,
        retry_backoff_cap_s: float = 1.0,
        health_timeout_s: float = 1.0,
        outage_retry_s: float = 5.0,
        drain_timeout_s: float = 10.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = RedisSettings.resolve(
            url,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            retry_attempts=retry_attempts,
            retry_backoff_base_s=retry_backoff_base_s,
            retry_backoff_cap_s=retry_backoff_cap_s,
            health_timeout_s=health_timeout_s,
        )
        super().__init__(
            default_max_attempts=default_max_attempts,
            default_lease_ttl_ms=default_lease_ttl_ms,
            drain_timeout_s=drain_timeout_s,
        )
        self.prefix = prefix
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.poll_interval_ms = poll_interval_ms
        self.outage_retry_s = outage_retry_s
        self.log = logger or log
        self.channel = f"{prefix}:q:notify"
        self._client = self.settings.client()
        self._scripts: dict[str, AsyncScript] = {
            name: self._client.register_script(script_source(name)) for name in SCRIPTS
        }
        self._wakers: dict[str, asyncio.Event] = {}
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> RedisQueueBridge:
        """A bridge configured from ``REDIS_URL`` (and ``PURISTA_PREFIX`` if set)."""
        import os

        kwargs.setdefault("prefix", os.environ.get("PURISTA_PREFIX", "purista"))
        return cls(None, **kwargs)

    # life cycle -----------------------------------------------------------------------------

    async def _start_transport(self) -> None:
        """Check Redis answers, read its persistence settings, start the wake-up listener."""
        await guarded(self._client.ping(), "start")
        for name in SCRIPTS:  # loaded up front; after a Redis restart NOSCRIPT reloads them
            await guarded(self._client.script_load(script_source(name)), "script load")
        durable = await durability(self._client)
        if not durable:
            self.log.warning("redis queue bridge: durable unsupported: %s", durable.reason)
        self.capabilities = replace(type(self).capabilities, durable=durable)
        self._ensure_listener()

    async def _interrupt_waits(self) -> None:
        for event in self._wakers.values():
            event.set()

    async def _destroy_transport(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
            self._listener = None
        await self._client.aclose()

    async def _transport_ok(self) -> bool:
        return await ping(self._client, self.settings.health_timeout_s)

    # plumbing -------------------------------------------------------------------------------

    def _base(self, queue: str) -> str:
        return f"{self.prefix}:q:{{{queue}}}"

    async def _run(self, script: str, queue: str, *args: Any) -> Any:
        if self.state == "destroyed":
            raise RedisUnavailableError("redis queue bridge is destroyed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_retry_s
        delay = 0.05
        while True:
            call = self._scripts[script](keys=[self._base(queue)], args=list(args))
            try:
                return await guarded(call, f"{script} on queue {queue!r}")
            except RedisUnavailableError:
                # same arguments = same ids: a retry never acts twice (see the Lua markers)
                if self.state == "destroyed" or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Turn pub/sub notifications into wake-ups; resubscribe after any failure."""
        delay = 0.05
        while self.state != "destroyed":
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._wake_all()  # anything published while we were not listening
                delay = 0.05
                while self.state != "destroyed":
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._wake(str(msg.get("data")))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.debug("redis queue bridge: wake-up listener lost: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    def _wake(self, queue: str) -> None:
        event = self._wakers.pop(queue, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        for queue in list(self._wakers):
            self._wake(queue)

    @staticmethod
    def _check_lease_result(result: Any, job: Job) -> None:
        if result == "stale":
            raise LeaseExpiredError(f"job {job.id} is not leased under lease {job.lease_id!r}")
        if result == "expired":
            raise LeaseExpiredError(f"lease {job.lease_id} on job {job.id} expired")

    # the queue contract ---------------------------------------------------------------------

    async def _enqueue(self, request: EnqueueRequest) -> str:
        key = request.idempotency_key
        result = await self._run(
            "enqueue",
            request.queue,
            new_id(),
            "1" if key is not None else "0",
            key or "",
            self.idempotency_ttl_ms or 0,
            _dumps(request.payload, "payload"),
            _dumps(request.parameter, "parameter"),
            _dumps(request.headers, "headers"),
            request.max_attempts,
            request.priority,
            request.lease_ttl_ms,
            request.delay_ms,
            self.channel,
            request.queue,
        )
        return str(result)

    async def _take(
        self, queue: str, batch: int, worker_id: str | None
    ) -> tuple[list[Job], int | None]:
        raw = await self._run(
            "lease",
            queue,
            batch,
            "1" if worker_id is not None else "0",
            worker_id or "",
            new_id(),
            *[new_id() for _ in range(batch)],
        )
        data = json.loads(raw)
        jobs: list[Job] = []
        for flat in data.get("jobs") or []:
            h = _pairs(flat)
            try:
                jobs.append(_job(queue, h))
            except (KeyError, TypeError, ValueError) as exc:
                await self._reject_malformed(queue, h, exc)
        upcoming = int(data.get("upcoming", -1))
        return jobs, (upcoming if upcoming >= 0 else None)

    async def _reject_malformed(self, queue: str, h: dict[str, str], exc: Exception) -> None:
        job_id, lease_id = h.get("id", ""), h.get("lease_id", "")
        reason = f"malformed job data: {type(exc).__name__}: {exc}"
        self.log.warning("redis queue %r: dead-lettering job %s: %s", queue, job_id, reason)
        if job_id and lease_id:
            await self._run("move_to_dead", queue, job_id, lease_id, new_id(), reason)

    async def _lease(
        self, queue: str, batch: int, wait_ms: int, worker_id: str | None
    ) -> list[Job]:
        """Raises :class:`RedisUnavailableError` (503) when Redis cannot be reached; a wait
        cut short by ``destroy()`` returns ``[]``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        if wait_ms > 0:
            self._ensure_listener()
        while True:
            waker = self._wakers.setdefault(queue, asyncio.Event())
            jobs, upcoming = await self._take(queue, batch, worker_id)
            remaining = deadline - loop.time()
            if jobs or remaining <= 0 or not self.running:
                return jobs
            timeout = min(remaining, self.poll_interval_ms / 1000)
            if upcoming is not None:
                timeout = min(timeout, max(upcoming / 1000, 0.001))
            try:
                await asyncio.wait_for(waker.wait(), timeout)
            except TimeoutError:
                pass
            if not self.running:  # destroy() woke us: give the caller nothing rather than a 503
                return []

    async def _extend_lease(self, job: Job, lease_ttl_ms: int | None) -> Job:
        result = await self._run("extend", job.queue, job.id, job.lease_id, lease_ttl_ms or 0)
        self._check_lease_result(result, job)
        return replace(job, lease_expires_at_ms=int(result))

    async def _ack(self, job: Job) -> None:
        result = await self._run("ack", job.queue, job.id, job.lease_id, new_id())
        self._check_lease_result(result, job)

    async def _nack(self, job: Job, reason: str | None, delay_ms: int) -> NackOutcome:
        result = await self._run(
            "nack",
            job.queue,
            job.id,
            job.lease_id,
            new_id(),
            "1" if reason is not None else "0",
            reason or "",
            delay_ms,
            self.channel,
            job.queue,
        )
        self._check_lease_result(result, job)
        if result not in ("retry", "dead_letter"):
            raise UnhandledError(f"unexpected nack result {result!r}")
        return result  # type: ignore[no-any-return]

    async def _move_to_dead_letter(self, job: Job, reason: str) -> None:
        result = await self._run("move_to_dead", job.queue, job.id, job.lease_id, new_id(), reason)
        self._check_lease_result(result, job)

    #: the corruptions :meth:`corrupt_record` can make (what an operator or a bug did to
    #: the stored data)
    CORRUPTIONS: ClassVar[tuple[str, ...]] = (
        "deliveries_fraction",
        "deliveries_hex",
        "job_not_a_hash",
        "ready_entry_to_string",
    )

    async def corrupt_record(self, queue: str, job_id: str, how: str) -> str | None:
        """Tests only: damage the stored record of ``job_id`` (a pending job) as ``how``
        says; returns the id of the damaged record, None for an unknown ``how``."""
        job = f"{self._base(queue)}:job:{job_id}"
        client = self._client
        if how == "deliveries_fraction":
            await client.hset(job, "deliveries", "1.5")
        elif how == "deliveries_hex":
            await client.hset(job, "deliveries", "0x10")
        elif how == "job_not_a_hash":
            await client.delete(job)
            await client.set(job, "not a job")
        elif how == "ready_entry_to_string":
            ghost = f"ghost-{job_id}"
            await client.set(f"{self._base(queue)}:job:{ghost}", "a string, not a job")
            member = f"{0:015d}:{0:015d}:{ghost}"
            await client.zadd(f"{self._base(queue)}:ready", {member: 0})
            return ghost
        else:
            return None
        return job_id

    async def _peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]:
        rows = await self._run("peek_dead", queue, limit)
        out = []
        for flat in rows:
            h = _pairs(flat)
            headers = _loads_lenient(h.get("headers"))
            out.append(
                DeadLetterJob(
                    id=h.get("id", ""),
                    queue=queue,
                    payload=_loads_lenient(h.get("payload")),
                    parameter=_loads_lenient(h.get("parameter")),
                    headers=headers if isinstance(headers, dict) else {},
                    attempts=_int(h.get("deliveries")),
                    reason=lenient_text(h.get("dead_reason", "")),
                    dead_lettered_at_ms=_int(h.get("dead_at")),
                    idempotency_key=h.get("idem"),
                )
            )
        return out

    async def _redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int:
        ids = [] if job_ids is None else [str(i) for i in job_ids]
        if job_ids is not None and not ids:
            return 0
        everything = "1" if job_ids is None else "0"
        return int(await self._run("redrive", queue, self.channel, queue, everything, *ids))

    async def _purge_dead_letter(self, queue: str) -> int:
        return int(await self._run("purge_dead", queue))

    async def _inspect_leases(self, queue: str) -> list[LeaseInfo]:
        rows = await self._run("inspect", queue)
        return [
            LeaseInfo(
                job_id=r[0],
                lease_id=r[1] or "",
                attempt=_int(r[2]),
                worker_id=r[3] if r[6] == "1" else None,
                leased_at_ms=_int(r[4]),
                expires_at_ms=_int(r[5]),
            )
            for r in rows
        ]

    async def _metrics(self, queue: str) -> QueueMetrics:
        pending, inflight, dead, retries, age = await self._run("metrics", queue)
        return QueueMetrics(
            pending=int(pending),
            inflight=int(inflight),
            dead_letter=int(dead),
            retries=int(retries),
            oldest_age_ms=int(age),
        )
