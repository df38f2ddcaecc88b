"""A PURISTA queue bridge in one SQLite file: every queue hook, nothing else.

Tables (every row carries ``ns``, the prefix, so deployments share a file safely):

- ``jobs``: one row per job, pending, leased or dead-lettered (``dead = 1``). ``seq``
  orders jobs of one priority (FIFO); ``dead_seq`` orders the dead letter.
- ``idem``: idempotency key -> the job id it first created (kept after the job ends).
- ``stats``: per queue counters (``retries``).

The rules are the in-memory bridge's (``reference_services.adapters.memory``), written
as SQL. Every hook that changes state runs in one ``BEGIN IMMEDIATE`` transaction, so
two instances (two connections, or two processes) can never lease one job twice: the
write lock serialises "pick the ready jobs, then lease them". Expired leases are
recovered lazily, at the start of the hooks that read the queue.

SQLite cannot notify another connection, so a blocking ``lease_next`` polls every
``poll_s`` (and no later than the next delayed job or lease expiry it knows of).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from reference_services.runtime.queue import (
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
from reference_services.runtime.spi.queue_base import EnqueueRequest, QueueBridgeBase

T = TypeVar("T")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        ns TEXT NOT NULL, id TEXT NOT NULL, queue TEXT NOT NULL,
        payload TEXT NOT NULL, parameter TEXT NOT NULL, headers TEXT NOT NULL,
        max_attempts INTEGER NOT NULL, priority INTEGER NOT NULL,
        lease_ttl_ms INTEGER NOT NULL, enqueued_at_ms INTEGER NOT NULL,
        available_at_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
        idempotency_key TEXT, deliveries INTEGER NOT NULL DEFAULT 0,
        lease_id TEXT, worker_id TEXT, leased_at_ms INTEGER NOT NULL DEFAULT 0,
        lease_expires_at_ms INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        dead INTEGER NOT NULL DEFAULT 0, dead_reason TEXT, dead_at_ms INTEGER,
        dead_seq INTEGER,
        PRIMARY KEY (ns, id))""",
    "CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (ns, queue, dead, lease_id, priority, seq)",
    """CREATE TABLE IF NOT EXISTS idem (
        ns TEXT NOT NULL, queue TEXT NOT NULL, key TEXT NOT NULL, job_id TEXT NOT NULL,
        PRIMARY KEY (ns, queue, key))""",
    """CREATE TABLE IF NOT EXISTS stats (
        ns TEXT NOT NULL, queue TEXT NOT NULL, retries INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (ns, queue))""",
)
COLUMNS = (
    "id, queue, payload, parameter, headers, max_attempts, priority, enqueued_at_ms, "
    "idempotency_key, deliveries, lease_id, lease_expires_at_ms, last_error, worker_id, "
    "leased_at_ms, dead_reason, dead_at_ms, lease_ttl_ms"
)


def now_ms() -> int:
    """Wall-clock milliseconds: the same clock in every process sharing the file."""
    return time.time_ns() // 1_000_000


class SqliteQueueBridge(QueueBridgeBase):
    """Queue bridge in an SQLite file: durable, priorities, delays, dead letters."""

    name: ClassVar[str] = "sqlite"
    capabilities: ClassVar[QueueBridgeCapabilities] = QueueBridgeCapabilities(
        durable=YES,  # a file; the suite's restart check needs a broker, so it skips
        reconnect=unsupported("a local file: there is no connection to lose"),
        fifo_within_priority=YES,
    )

    def __init__(
        self, path: str | Path, *, prefix: str = "purista", poll_s: float = 0.02, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.prefix = prefix
        self.poll_s = poll_s
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # ---- connection ----------------------------------------------------------------

    async def _start_transport(self) -> None:
        self._db = await asyncio.to_thread(self._open)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            db.execute(statement)
        return db

    async def _destroy_transport(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await asyncio.to_thread(db.close)

    async def _transport_ok(self) -> bool:
        try:
            await self._run(lambda db: db.execute("SELECT 1").fetchone())
        except (sqlite3.Error, RuntimeError):
            return False
        return True

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(db)`` in a worker thread, in one ``BEGIN IMMEDIATE`` transaction.

        A ``LeaseExpiredError`` raised by ``work`` still commits: the lease recovery it
        did before finding the lease stale must not be lost.
        """

        def call() -> T:
            with self._lock:
                db = self._db
                if db is None:
                    raise RuntimeError(f"the {self.name} queue bridge has no connection")
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                except LeaseExpiredError:
                    db.execute("COMMIT")
                    raise
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result

        return await asyncio.to_thread(call)

    # ---- SQL helpers (called inside a transaction) -----------------------------------

    def _next(self, db: sqlite3.Connection, column: str) -> int:
        row = db.execute(
            f"SELECT COALESCE(MAX({column}), 0) + 1 FROM jobs WHERE ns = ?", (self.prefix,)
        ).fetchone()
        return int(row[0])

    def _count_retry(self, db: sqlite3.Connection, queue: str) -> None:
        db.execute(
            "INSERT INTO stats (ns, queue, retries) VALUES (?, ?, 1) "
            "ON CONFLICT (ns, queue) DO UPDATE SET retries = retries + 1",
            (self.prefix, queue),
        )

    def _to_dead(self, db: sqlite3.Connection, job_id: str, reason: str, now: int) -> None:
        db.execute(
            "UPDATE jobs SET dead = 1, dead_reason = ?, dead_at_ms = ?, dead_seq = ?, "
            "lease_id = NULL WHERE ns = ? AND id = ?",
            (reason, now, self._next(db, "dead_seq"), self.prefix, job_id),
        )

    def _recover_expired(self, db: sqlite3.Connection, queue: str, now: int) -> None:
        expired = db.execute(
            "SELECT id, deliveries, max_attempts FROM jobs WHERE ns = ? AND queue = ? "
            "AND dead = 0 AND lease_id IS NOT NULL AND lease_expires_at_ms <= ?",
            (self.prefix, queue, now),
        ).fetchall()
        for job_id, deliveries, max_attempts in expired:
            error = f"lease expired at attempt {deliveries}"
            db.execute(
                "UPDATE jobs SET lease_id = NULL, worker_id = NULL, last_error = ? "
                "WHERE ns = ? AND id = ?",
                (error, self.prefix, job_id),
            )
            if deliveries >= max_attempts:
                self._to_dead(db, job_id, error, now)
            else:
                self._count_retry(db, queue)

    @staticmethod
    def _message(row: tuple[Any, ...]) -> dict[str, Any]:
        """The fields a job and its dead letter share, decoded from a ``COLUMNS`` row."""
        return {
            "id": row[0],
            "queue": row[1],
            "payload": json.loads(row[2]),
            "parameter": json.loads(row[3]),
            "headers": json.loads(row[4]),
            "idempotency_key": row[8],
        }

    @classmethod
    def _job(cls, row: tuple[Any, ...]) -> Job:
        return Job(
            **cls._message(row),
            max_attempts=row[5],
            priority=row[6],
            enqueued_at_ms=row[7],
            attempt=row[9],
            lease_id=row[10] or "",
            lease_expires_at_ms=row[11],
            last_error=row[12],
        )

    def _held(self, db: sqlite3.Connection, job: Job) -> tuple[Any, ...]:
        """The row of a job still leased under ``job.lease_id``, or LeaseExpiredError."""
        row = db.execute(
            f"SELECT {COLUMNS} FROM jobs WHERE ns = ? AND id = ? AND dead = 0",
            (self.prefix, job.id),
        ).fetchone()
        if row is None or not job.lease_id or row[10] != job.lease_id:
            raise LeaseExpiredError(f"job {job.id} is not leased under lease {job.lease_id!r}")
        now = now_ms()
        if row[11] <= now:
            self._recover_expired(db, job.queue, now)
            raise LeaseExpiredError(f"lease {job.lease_id} on job {job.id} expired")
        return row

    # ---- the hooks QueueBridgeBase calls -------------------------------------------

    async def _enqueue(self, request: EnqueueRequest) -> str:
        def enqueue(db: sqlite3.Connection) -> str:
            key = request.idempotency_key
            if key is not None:
                known = db.execute(
                    "SELECT job_id FROM idem WHERE ns = ? AND queue = ? AND key = ?",
                    (self.prefix, request.queue, key),
                ).fetchone()
                if known:
                    return str(known[0])
            job_id, now = uuid.uuid4().hex, now_ms()
            db.execute(
                "INSERT INTO jobs (ns, id, queue, payload, parameter, headers, max_attempts, "
                "priority, lease_ttl_ms, enqueued_at_ms, available_at_ms, seq, idempotency_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.prefix,
                    job_id,
                    request.queue,
                    json.dumps(request.payload),
                    json.dumps(request.parameter),
                    json.dumps(request.headers),
                    request.max_attempts,
                    request.priority,
                    request.lease_ttl_ms,
                    now,
                    now + request.delay_ms,
                    self._next(db, "seq"),
                    key,
                ),
            )
            if key is not None:
                db.execute(
                    "INSERT INTO idem (ns, queue, key, job_id) VALUES (?, ?, ?, ?)",
                    (self.prefix, request.queue, key, job_id),
                )
            return job_id

        return await self._run(enqueue)

    def _take(
        self, db: sqlite3.Connection, queue: str, batch: int, worker_id: str | None
    ) -> tuple[list[Job], int | None]:
        now = now_ms()
        self._recover_expired(db, queue, now)
        ready = db.execute(
            "SELECT id FROM jobs WHERE ns = ? AND queue = ? AND dead = 0 AND lease_id IS NULL "
            "AND available_at_ms <= ? ORDER BY priority DESC, available_at_ms, seq LIMIT ?",
            (self.prefix, queue, now, batch),
        ).fetchall()
        jobs = []
        for (job_id,) in ready:
            db.execute(
                "UPDATE jobs SET deliveries = deliveries + 1, lease_id = ?, worker_id = ?, "
                "leased_at_ms = ?, lease_expires_at_ms = ? + lease_ttl_ms "
                "WHERE ns = ? AND id = ?",
                (uuid.uuid4().hex, worker_id, now, now, self.prefix, job_id),
            )
            row = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE ns = ? AND id = ?", (self.prefix, job_id)
            ).fetchone()
            jobs.append(self._job(row))
        # when could a waiter find work? the next delayed job or lease expiry
        upcoming = db.execute(
            "SELECT MIN(CASE WHEN lease_id IS NULL THEN available_at_ms "
            "ELSE lease_expires_at_ms END) FROM jobs WHERE ns = ? AND queue = ? AND dead = 0",
            (self.prefix, queue),
        ).fetchone()[0]
        return jobs, upcoming

    async def _lease(
        self, queue: str, batch: int, wait_ms: int, worker_id: str | None
    ) -> list[Job]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        while True:
            jobs, upcoming = await self._run(lambda db: self._take(db, queue, batch, worker_id))
            remaining = deadline - loop.time()
            if jobs or remaining <= 0 or not self.running:
                return jobs
            pause = min(remaining, self.poll_s)
            if upcoming is not None:
                pause = min(pause, max((upcoming - now_ms()) / 1000, 0.001))
            await asyncio.sleep(pause)

    async def _extend_lease(self, job: Job, lease_ttl_ms: int | None) -> Job:
        def extend(db: sqlite3.Connection) -> Job:
            row = self._held(db, job)
            expires = now_ms() + (lease_ttl_ms or row[17])
            db.execute(
                "UPDATE jobs SET lease_expires_at_ms = ? WHERE ns = ? AND id = ?",
                (expires, self.prefix, job.id),
            )
            return replace(job, lease_expires_at_ms=expires)

        return await self._run(extend)

    async def _ack(self, job: Job) -> None:
        def ack(db: sqlite3.Connection) -> None:
            self._held(db, job)
            db.execute("DELETE FROM jobs WHERE ns = ? AND id = ?", (self.prefix, job.id))

        await self._run(ack)

    async def _nack(self, job: Job, reason: str | None, delay_ms: int) -> NackOutcome:
        def nack(db: sqlite3.Connection) -> NackOutcome:
            row = self._held(db, job)
            now, deliveries, max_attempts = now_ms(), row[9], row[5]
            db.execute(
                "UPDATE jobs SET last_error = ? WHERE ns = ? AND id = ?",
                (reason, self.prefix, job.id),
            )
            if deliveries >= max_attempts:
                self._to_dead(db, job.id, reason or f"failed {deliveries} time(s)", now)
                return "dead_letter"
            db.execute(
                "UPDATE jobs SET lease_id = NULL, worker_id = NULL, available_at_ms = ? "
                "WHERE ns = ? AND id = ?",
                (now + delay_ms, self.prefix, job.id),
            )
            self._count_retry(db, job.queue)
            return "retry"

        return await self._run(nack)

    async def _move_to_dead_letter(self, job: Job, reason: str) -> None:
        def move(db: sqlite3.Connection) -> None:
            self._held(db, job)
            self._to_dead(db, job.id, reason, now_ms())

        await self._run(move)

    async def _peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]:
        def peek(db: sqlite3.Connection) -> list[DeadLetterJob]:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE ns = ? AND queue = ? AND dead = 1 "
                "ORDER BY dead_seq LIMIT ?",
                (self.prefix, queue, limit),
            ).fetchall()
            return [
                DeadLetterJob(
                    **self._message(r), attempts=r[9], reason=r[15], dead_lettered_at_ms=r[16]
                )
                for r in rows
            ]

        return await self._run(peek)

    async def _redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int:
        def redrive(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "SELECT id FROM jobs WHERE ns = ? AND queue = ? AND dead = 1 ORDER BY dead_seq",
                (self.prefix, queue),
            ).fetchall()
            wanted = None if job_ids is None else set(job_ids)
            ids = [r[0] for r in rows if wanted is None or r[0] in wanted]
            now = now_ms()
            for job_id in ids:  # back at the end of the queue, with fresh attempts
                db.execute(
                    "UPDATE jobs SET dead = 0, dead_reason = NULL, dead_at_ms = NULL, "
                    "dead_seq = NULL, deliveries = 0, available_at_ms = ?, seq = ? "
                    "WHERE ns = ? AND id = ?",
                    (now, self._next(db, "seq"), self.prefix, job_id),
                )
            return len(ids)

        return await self._run(redrive)

    async def _purge_dead_letter(self, queue: str) -> int:
        def purge(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM jobs WHERE ns = ? AND queue = ? AND dead = 1", (self.prefix, queue)
            )
            return cursor.rowcount

        return await self._run(purge)

    async def _inspect_leases(self, queue: str) -> list[LeaseInfo]:
        def inspect(db: sqlite3.Connection) -> list[LeaseInfo]:
            self._recover_expired(db, queue, now_ms())
            rows = db.execute(
                "SELECT id, lease_id, deliveries, worker_id, leased_at_ms, lease_expires_at_ms "
                "FROM jobs WHERE ns = ? AND queue = ? AND dead = 0 AND lease_id IS NOT NULL",
                (self.prefix, queue),
            ).fetchall()
            return [LeaseInfo(*row) for row in rows]

        return await self._run(inspect)

    async def _metrics(self, queue: str) -> QueueMetrics:
        def metrics(db: sqlite3.Connection) -> QueueMetrics:
            now = now_ms()
            self._recover_expired(db, queue, now)
            pending, inflight, dead, oldest = db.execute(
                "SELECT COALESCE(SUM(dead = 0 AND lease_id IS NULL), 0), "
                "COALESCE(SUM(dead = 0 AND lease_id IS NOT NULL), 0), "
                "COALESCE(SUM(dead = 1), 0), "
                "MIN(CASE WHEN dead = 0 AND lease_id IS NULL THEN enqueued_at_ms END) "
                "FROM jobs WHERE ns = ? AND queue = ?",
                (self.prefix, queue),
            ).fetchone()
            retries = db.execute(
                "SELECT retries FROM stats WHERE ns = ? AND queue = ?", (self.prefix, queue)
            ).fetchone()
            return QueueMetrics(
                pending=pending,
                inflight=inflight,
                dead_letter=dead,
                retries=retries[0] if retries else 0,
                oldest_age_ms=now - (oldest if oldest is not None else now),
            )

        return await self._run(metrics)
