"""NatsQueueBridge: the queue contract of DefaultQueueBridge on NATS JetStream.

Design (names use ``p`` = the encoded prefix, ``q`` = the encoded queue name):

* **Jobs** live in the stream ``<p>_QJOBS`` (work-queue retention, file
  storage), subject ``<p>_q.job.<q>.<level>`` (``level`` = priority: ``p5``,
  ``p0``, ``m1`` for -1); ``enqueue`` returns once JetStream confirmed the
  publish. One durable pull consumer per queue and priority level (explicit
  ack, unlimited deliveries) hands each message to one puller at a time; a job
  leaves the stream only when it is acked (done or dead-lettered).
* **Leasing** looks at the levels holding messages (stream subject counts),
  highest first, and pulls with ``no_wait`` from each until ``batch`` jobs are
  leased: higher priorities first, FIFO within a level. A blocked
  ``lease_next`` wakes on a core ``<p>_q.wake.<q>`` signal sent after each
  enqueue/redrive, and polls every ``poll_s`` for delayed and nak'ed jobs.
  A pull waits for its first answer a bounded time (``pull_answer_s`` or three
  times the slowest recent answer) on an inbox that outlives it, because
  nats-server 2.9 leaves some concurrent no-wait pulls unanswered
  (:mod:`~reference_services.adapters.nats.queue_pull`).
* **Leases** are recorded in the KV bucket ``<p>_qledger`` (key
  ``L.<q>.<job id>``): attempt count, lease id, worker, expiry, last error and
  the message's ack subject. Every transition (lease, extend, ack, nack, dead
  letter, expiry recovery) is a revision-checked update, so exactly one party
  wins: a stale lease id cannot ack (:class:`LeaseExpiredError`), two workers
  never hold one job (a redelivered message whose ledger shows a live lease is
  nak'ed until that lease ends), and ``attempt`` counts real leases (not
  JetStream's ``num_delivered``, which also counts early deliveries of delayed
  jobs and redeliveries after a broker restart). Because JetStream acks
  address the stream sequence, any bridge object can settle any lease.
* **Round trips**: a bridge writes against the record and revision it wrote
  itself (its leases, its nacks) and reads the ledger only when such a write
  finds the revision moved; a first delivery is claimed by a strict create.
  So a nack is one ledger write (its nak rides along when delayed >= 100 ms),
  a lease is a pull (sent with the levels request) and one write, an ack one
  write and then the ack with the purge marker; a fetched batch is claimed
  concurrently.
* **Lease expiry**: the holding bridge keeps JetStream's ack timer alive with
  ``in_progress`` while the lease lives and, at expiry, recovers it (attempt
  + 1 on the next lease, or dead letter at ``max_attempts``) and naks it so it
  is redelivered at once; lease_next/metrics/inspect_leases recover expired
  leases they see, as the reference does. If the holding *process* dies,
  JetStream redelivers after the consumer's ``ack_wait_s`` (the crash-recovery
  bound, default 30 s); ``destroy`` naks held messages with the remaining lease
  time, so a closed bridge's leases come back exactly at their expiry.
* **Delays**: a job fetched before ``available_at`` is nak'ed with the
  remaining delay (not counted as an attempt); ``nack(delay_ms)`` naks with it.
* **Dead letters** go to ``<p>_QDEAD`` subject ``<p>_q.dlq.<q>`` with the header
  ``x-purista-dead-letter-reason``; redrive republishes them as fresh jobs with
  the same id; retries are counted by tiny messages on ``<p>_q.retry.<q>``.
* **Idempotency keys**: KV bucket ``<p>_qkeys`` maps key -> job id (atomic
  ``create``); the job is published first with ``Nats-Msg-Id`` = the key, so a
  crash between the two can duplicate a job but never lose one.
* **After a broker SIGKILL** nats-server 2.9 may resurrect messages that
  limits or acks had removed: ledger records are removed with purge markers
  (which stay newest), depths come from consumer info (not stream counts), and
  an ack whose reply was lost can be retried (it finishes the same lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from reference_services.adapters.nats.connection import (
    NatsTimings,
    NatsUnavailableError,
    connect_nats,
    resolve_url,
)
from reference_services.adapters.nats.queue_admin import QueueAdmin
from reference_services.adapters.nats.queue_io import QueueIO
from reference_services.adapters.nats.queue_ledger import (
    LeaseRecord,
    ledger_key,
    parse_job,
    record_problem,
)
from reference_services.adapters.nats.queue_pull import NoWaitPuller, PullRefused
from reference_services.adapters.nats.subjects import level_token, name_token
from reference_services.runtime.errors import PuristaError
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
from reference_services.runtime.redact import redact_url
from reference_services.runtime.spi.capabilities import YES, QueueBridgeCapabilities
from reference_services.runtime.spi.queue_base import EnqueueRequest, QueueBridgeBase

log = logging.getLogger(__name__)

DEAD_LETTER_REASON_HEADER = "x-purista-dead-letter-reason"
#: how much of a quarantined record its dead letter keeps
RAW_LIMIT = 64 * 1024


def _header_safe(text: str) -> str:
    return " ".join(text.split())[:1000] or "-"


@dataclass
class _Held:
    key: str
    reply: str
    expires_ms: int
    #: the ledger record this bridge wrote for the lease, and its revision: settling tries
    #: a revision-checked write against it before reading the ledger (a write that finds
    #: the revision moved reads and decides again, so the cache never decides alone)
    record: LeaseRecord | None = None
    rev: int = 0
    task: asyncio.Task[None] | None = None


#: idle records this bridge wrote (nack, recovery), kept for the next claim of the job
IDLE_CACHE_SIZE = 4096
#: a nack delayed at least this long sends its nak together with the ledger write (below
#: it, the write is awaited first: an immediate redelivery could beat the write)
NAK_WITH_WRITE_MIN_MS = 100


class NatsQueueBridge(QueueBridgeBase):
    """Queue bridge on NATS JetStream (see the module docstring for the design)."""

    name: ClassVar[str] = "nats"
    capabilities: ClassVar[QueueBridgeCapabilities] = QueueBridgeCapabilities(
        durable=YES,
        delayed_jobs=YES,
        priorities=YES,
        idempotency_keys=YES,
        lease_recovery=YES,
        blocking_lease=YES,
        reconnect=YES,
        fifo_within_priority=YES,
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        default_lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 100_000,
        timings: NatsTimings | Mapping[str, Any] | None = None,
        drain_timeout_s: float = 10.0,
        poll_s: float = 0.2,
        pull_answer_s: float = 0.25,
        client_name: str = "purista-queue",
    ) -> None:
        super().__init__(
            default_max_attempts=default_max_attempts,
            default_lease_ttl_ms=default_lease_ttl_ms,
            drain_timeout_s=drain_timeout_s,
        )
        self.url = resolve_url(url)
        self.prefix = prefix
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.timings = NatsTimings.of(timings)
        self.client_name = client_name
        self.malformed_count = 0
        self._io = QueueIO(prefix, self.timings.op_timeout_s, self._redeclare)
        self._admin = QueueAdmin(self._io, self._recover, self._consumer)
        self._consumers: dict[tuple[str, str], float] = {}
        self._checked: dict[tuple[str, str], float] = {}
        self._wakers: dict[str, tuple[Any, asyncio.Event]] = {}
        self._pullers: dict[str, NoWaitPuller] = {}
        self.poll_s = poll_s
        self.pull_answer_s = pull_answer_s
        self._setup_lock = asyncio.Lock()
        self._needs_setup = True
        self._held: dict[str, _Held] = {}
        self._idle: dict[str, tuple[LeaseRecord, int]] = {}
        self._top_level: dict[str, str | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_env(cls, **kwargs: Any) -> NatsQueueBridge:
        """A bridge for ``NATS_URL`` (and ``PURISTA_PREFIX`` when set)."""
        import os

        kwargs.setdefault("prefix", os.environ.get("PURISTA_PREFIX", "purista"))
        return cls(None, **kwargs)

    # ---- lifecycle -------------------------------------------------------------------

    async def _start_transport(self) -> None:
        """Connect and declare streams, buckets and consumers."""
        self._io.nc = await connect_nats(
            self.url,
            self.client_name,
            self.timings,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._io.js = self._io.nc.jetstream(timeout=self.timings.op_timeout_s)
        self._needs_setup = True
        try:
            async with self._op():
                await self._ensure_setup()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._io.nc.close()
            self._io.nc = None
            raise

    async def _destroy_transport(self) -> None:
        """Hand held leases back at their expiry, close."""
        now = now_ms()
        for held in list(self._held.values()):
            if held.task is not None:
                held.task.cancel()
            with contextlib.suppress(Exception):
                await self._io.nak_reply(held.reply, max(held.expires_ms - now, 1))
        self._held.clear()
        for task in list(self._tasks):
            task.cancel()
        for puller in self._pullers.values():
            with contextlib.suppress(Exception):
                await puller.close()
        self._pullers.clear()
        if self._io.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._io.nc.flush(), self.timings.op_timeout_s)
            with contextlib.suppress(Exception):
                await self._io.nc.close()
        self._io.nc = None
        self._consumers.clear()
        self._wakers.clear()

    async def _transport_ok(self) -> bool:
        return self._io.nc is not None and self._io.nc.is_connected

    async def _on_disconnected(self) -> None:
        log.warning("nats queue %s: disconnected from %s", self.prefix, redact_url(self.url))

    async def _on_reconnected(self) -> None:
        log.info("nats queue %s: reconnected, re-declaring streams and consumers", self.prefix)
        self._needs_setup = True
        self._spawn(self._resetup())

    async def _resetup(self) -> None:
        with contextlib.suppress(Exception):
            await self._ensure_setup()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @contextlib.asynccontextmanager
    async def _op(self) -> AsyncIterator[None]:
        """Run one broker operation: wait for a connection; broker failures become a 503."""
        try:
            await self._wait_connected()
            yield
        except PuristaError:
            raise
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            self._needs_setup = True
            raise NatsUnavailableError(f"NATS queue operation failed: {exc!r}") from exc

    async def _wait_connected(self) -> None:
        """Wait up to ``op_timeout_s`` for a connection rather than buffer while disconnected.

        (nats-py buffers publishes while reconnecting and flushes them later: an
        enqueue that failed with 503 must not appear afterwards.)
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timings.op_timeout_s
        while not self._io.nc.is_connected:
            if self._io.nc.is_closed or loop.time() >= deadline:
                raise NatsUnavailableError(f"not connected to NATS at {redact_url(self.url)}")
            await asyncio.sleep(0.05)

    async def _ensure_setup(self) -> None:
        if not self._needs_setup:
            return
        async with self._setup_lock:
            if not self._needs_setup:
                return
            js = self._io.js
            await self._add_stream(
                StreamConfig(
                    name=self._io.jobs_stream,
                    subjects=[f"{self._io.root}.job.*.*"],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                )
            )
            await self._add_stream(
                StreamConfig(
                    name=self._io.dead_stream,
                    subjects=[f"{self._io.root}.dlq.*", f"{self._io.root}.retry.*"],
                    storage=StorageType.FILE,
                )
            )
            for bucket in (self._io.ledger_bucket, self._io.keys_bucket):
                await js.create_key_value(
                    KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE)
                )
            self._io.ledger = await js.key_value(self._io.ledger_bucket)
            self._io.keys = await js.key_value(self._io.keys_bucket)
            for qtok, ltok in list(self._consumers):
                self._consumers[(qtok, ltok)] = await self._add_consumer(qtok, ltok)
            self._needs_setup = False

    async def _add_stream(self, config: Any) -> None:
        try:
            await self._io.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self._io.js.stream_info(config.name)  # exists with another config: use it

    async def _add_consumer(self, qtok: str, ltok: str) -> float:
        durable = f"q-{qtok}-{ltok}"
        await self._io.js.add_consumer(
            self._io.jobs_stream,
            ConsumerConfig(
                durable_name=durable,
                filter_subject=f"{self._io.root}.job.{qtok}.{ltok}",
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=self.max_ack_pending,
            ),
        )
        info = await self._io.js.consumer_info(self._io.jobs_stream, durable)
        actual = float(info.config.ack_wait or self.ack_wait_s)
        if abs(actual - self.ack_wait_s) > 0.01:
            log.warning(
                "nats queue: consumer %s keeps ack_wait=%ss (asked %ss): an existing "
                "durable consumer's config is not changed",
                durable,
                actual,
                self.ack_wait_s,
            )
        return actual

    async def _consumer(self, qtok: str, ltok: str) -> float:
        """The consumer of one priority level (declared on first use); its ack_wait."""
        await self._ensure_setup()
        ack_wait = self._consumers.get((qtok, ltok))
        if ack_wait is None:
            ack_wait = self._consumers[(qtok, ltok)] = await self._add_consumer(qtok, ltok)
        return ack_wait

    async def _waker(self, qtok: str) -> asyncio.Event:
        """An event set by every enqueue on the queue (a core subscription on its subjects)."""
        hit = self._wakers.get(qtok)
        if hit is None:
            event = asyncio.Event()

            async def wake(_msg: Any) -> None:
                event.set()

            sub = await self._io.nc.subscribe(f"{self._io.root}.wake.{qtok}", cb=wake)
            hit = self._wakers[qtok] = (sub, event)
        return hit[1]

    # ---- small broker helpers ----------------------------------------------------------

    async def _check_consumer(self, qtok: str, ltok: str) -> None:
        """After a pull got no answer, at most every 2 s: is the consumer still there?"""
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked.get((qtok, ltok), 0.0) < 2.0:
            return
        self._checked[(qtok, ltok)] = loop.time()
        try:
            await self._io.js.consumer_info(self._io.jobs_stream, f"q-{qtok}-{ltok}")
        except nats.js.errors.NotFoundError:
            await self._redeclare()

    async def _redeclare(self) -> None:
        """The server lost a stream or consumer (new store, operator): declare everything again."""
        log.warning("nats queue %s: streams or consumers missing, declaring again", self.prefix)
        self._needs_setup = True
        await self._ensure_setup()

    # ---- enqueue -------------------------------------------------------------------------

    async def _enqueue(self, request: EnqueueRequest) -> str:
        """Publish a job (JetStream confirms); a known idempotency key returns the original id."""
        body = {
            "id": new_id(),
            "queue": request.queue,
            "payload": request.payload,
            "parameter": request.parameter,
            "headers": {str(k): str(v) for k, v in request.headers.items()},
            "max_attempts": request.max_attempts,
            "priority": request.priority,
            "lease_ttl_ms": request.lease_ttl_ms,
            "enqueued_at_ms": (now := now_ms()),
            "available_at_ms": now + request.delay_ms,
            "idempotency_key": request.idempotency_key,
        }
        qtok = name_token(request.queue)
        async with self._op():
            await self._ensure_setup()
            if request.idempotency_key is None:
                await self._io.publish_job(qtok, body, body["id"])
                return str(body["id"])
            return await self._enqueue_keyed(qtok, body, request.idempotency_key)

    async def _enqueue_keyed(self, qtok: str, body: dict[str, Any], key: str) -> str:
        kv_key = f"{qtok}.{name_token(key)}"
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            return (await self._io.keys.get(kv_key)).value.decode()
        ack = await self._io.publish_job(qtok, body, f"idem.{qtok}.{name_token(key)}")
        job_id = str(body["id"])
        if ack.duplicate:  # a concurrent enqueue with this key won the dedup window
            original = await self._io.job_body(ack.seq)
            if original is not None:
                job_id = str(original["id"])
        try:
            await self._io.keys.create(kv_key, job_id.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            existing = (await self._io.keys.get(kv_key)).value.decode()
            if existing != job_id and not ack.duplicate:
                with contextlib.suppress(nats.js.errors.Error):
                    await self._io.js.delete_msg(self._io.jobs_stream, ack.seq)
            return existing
        return job_id

    # ---- leasing -------------------------------------------------------------------------

    async def _lease(
        self, queue: str, batch: int, wait_ms: int, worker_id: str | None
    ) -> list[Job]:
        qtok = name_token(queue)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        out: list[Job] = []
        async with self._op():
            await self._ensure_setup()
            wake = await self._waker(qtok)
            while True:
                wake.clear()
                levels, early = await self._levels_and_early_pull(qtok, batch)
                try:
                    for ltok in levels:
                        if len(out) >= batch:
                            break
                        ack_wait = await self._consumer(qtok, ltok)
                        if early and early[0] == ltok:
                            msgs = early[1][: batch - len(out)]
                            early = (ltok, early[1][len(msgs) :])
                        else:
                            msgs = await self._pull(qtok, ltok, batch - len(out))
                        claimed = await self._claim_all(
                            queue, qtok, msgs, worker_id, ack_wait, out
                        )
                        if not claimed:
                            return out  # cut short by a broker error after some leases
                finally:
                    # pulled early but not ours to lease (a higher level had jobs, or the
                    # batch was full): straight back, unclaimed
                    for msg in early[1] if early else ():
                        with contextlib.suppress(Exception):
                            await self._io.nak_reply(msg.reply, None)
                remaining = deadline - loop.time()
                if out or remaining <= 0:
                    return out
                # new jobs set ``wake``; delayed and nak'ed ones come back without a
                # publish, hence the poll interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(remaining, self.poll_s))

    async def _levels_and_early_pull(
        self, qtok: str, batch: int
    ) -> tuple[list[str], tuple[str, list[Msg]] | None]:
        """The levels holding messages, and meanwhile a pull from the level that was highest
        last time (one round trip instead of two when it still is; jobs are claimed only
        after the levels said which level comes first)."""
        guess = self._top_level.get(qtok)
        if guess is None or (qtok, guess) not in self._consumers:
            levels = await self._io.levels(qtok)
            self._top_level[qtok] = levels[0] if levels else None
            return levels, None
        # the pull in a task of its own, the levels in this one: both in flight at once
        pulling = asyncio.ensure_future(self._pull(qtok, guess, batch))
        got_levels: list[str] | BaseException
        got_msgs: list[Msg] | BaseException
        try:
            got_levels = await self._io.levels(qtok)
        except asyncio.CancelledError:
            pulling.cancel()
            raise
        except Exception as exc:
            got_levels = exc
        try:
            got_msgs = await pulling  # a cancelled caller cancels the pull with it
        except Exception as exc:
            got_msgs = exc
        if isinstance(got_levels, BaseException):
            for msg in got_msgs if isinstance(got_msgs, list) else ():
                with contextlib.suppress(Exception):
                    await self._io.nak_reply(msg.reply, None)
            raise got_levels
        if isinstance(got_msgs, BaseException):
            raise got_msgs
        self._top_level[qtok] = got_levels[0] if got_levels else None
        return got_levels, (guess, got_msgs)

    async def _pull(self, qtok: str, ltok: str, batch: int) -> list[Msg]:
        durable = f"q-{qtok}-{ltok}"
        puller = self._pullers.get(durable)
        if puller is None:
            waker = self._wakers.get(qtok)
            puller = self._pullers[durable] = NoWaitPuller(
                self._io.nc,
                self._io.js._prefix,
                self._io.jobs_stream,
                durable,
                waker[1].set if waker is not None else lambda: None,
            )
        try:
            return await puller.pull(
                batch,
                min(self.pull_answer_s, self.timings.op_timeout_s),
                self.timings.op_timeout_s,
                self._consumers.get((qtok, ltok), self.ack_wait_s) / 2,
            )
        except (TimeoutError, nats.errors.NoRespondersError, PullRefused) as exc:
            log.debug("nats queue: pull on %s failed: %r", durable, exc)
            await self._check_consumer(qtok, ltok)
            return []

    async def _claim_all(
        self,
        queue: str,
        qtok: str,
        msgs: list[Msg],
        worker_id: str | None,
        ack_wait: float,
        out: list[Job],
    ) -> bool:
        """Claim fetched messages into ``out`` (concurrently: one ledger round trip for the
        batch, not one per job; ``out`` keeps the fetch order); False when a broker error
        cut the batch short (the jobs claimed are returned, the error is raised if none)."""
        results: list[Any]
        if len(msgs) == 1:  # as gather would give it, without a task for the one claim
            try:
                results = [await self._claim(queue, qtok, msgs[0], worker_id, ack_wait)]
            except BaseException as exc:  # judged below, as gather's result would be
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self._claim(queue, qtok, msg, worker_id, ack_wait) for msg in msgs),
                return_exceptions=True,
            )
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                failure = failure or result
            elif result is not None:
                out.append(result)
        if failure is None:
            return True
        if isinstance(failure, asyncio.CancelledError) or not out:
            raise failure
        log.warning("nats queue %s: lease batch cut short: %r", queue, failure)
        return False

    async def _claim(
        self, queue: str, qtok: str, msg: Msg, worker_id: str | None, ack_wait: float
    ) -> Job | None:
        """Turn a fetched message into a lease, or put it back (delayed, held, settled)."""
        body = parse_job(msg.data)
        seq = msg.metadata.sequence.stream
        if body is None:
            await self._quarantine(queue, qtok, msg, "malformed job body")
            return None
        key = ledger_key(qtok, body["id"])
        guess = self._guess(key, seq, msg)
        for _ in range(8):
            now = now_ms()
            if body["available_at_ms"] > now:
                await self._io.nak_reply(msg.reply, body["available_at_ms"] - now)
                return None
            guessed = guess is not None
            if guess is not None:
                # what the ledger holds if nobody else wrote since (our own idle record, or
                # nothing for a first delivery): the revision-checked write below proves it,
                # and a write that finds otherwise comes back here to read the ledger
                (record, rev), settled, guess = guess, (0, None), None
            else:
                record, rev, settled = await self._io.lget_settled(key)
            if record is None and rev:
                # a ledger record nobody can use: the job goes to the dead letter now,
                # instead of failing every lease until someone repairs the record
                raw = await self._io.lraw(key)
                why = record_problem(raw) or "unreadable"
                await self._quarantine(
                    queue, qtok, msg, f"malformed lease record: {why}", body=body, record=raw
                )
                await self._io.ldel(key, rev, seq)
                return None
            if record is None and settled[0] == seq:
                # this very message was settled, but its ack was lost or the broker
                # resurrected it after a crash: finish it instead of running it again
                await self._io.ack_reply(msg.reply)
                return None
            if record is not None and record.seq != seq:
                record = None  # left over from an earlier life of this job id (redrive)
            if record is not None and record.state == "done":
                await self._io.ack_reply(msg.reply)
                await self._io.ldel(key, rev, seq, record.lease_id)
                return None
            if record is not None and record.state == "dead":
                await self._finish_dead(qtok, key, record, rev, body, msg.reply)
                return None
            if record is not None and record.live(now):
                await self._io.nak_reply(msg.reply, record.expires_at_ms - now)
                return None
            last_error = record.last_error if record is not None else None
            retried = False
            if record is not None and record.expired(now):
                last_error = f"lease expired at attempt {record.deliveries}"
                if record.deliveries >= record.max_attempts:
                    try:
                        await self._dead_letter(qtok, key, record, rev, last_error, msg.reply, body)
                    except nats.js.errors.KeyWrongLastSequenceError:
                        continue
                    return None
                retried = True
            deliveries = (record.deliveries if record is not None else 0) + 1
            lease_id = f"{seq}.{deliveries}.{new_id()[:12]}"
            new = LeaseRecord(
                seq=seq,
                deliveries=deliveries,
                max_attempts=body["max_attempts"],
                lease_ttl_ms=body["lease_ttl_ms"],
                state="leased",
                lease_id=lease_id,
                worker_id=worker_id,
                leased_at_ms=now,
                expires_at_ms=now + body["lease_ttl_ms"],
                reply=msg.reply,
                last_error=last_error,
            )
            try:
                new_rev = await self._io.lput(key, new, rev, strict=guessed)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except Exception:
                # the write may have landed without us hearing it: undo it once we can
                self._spawn(self._abandon(key, lease_id, msg.reply))
                raise
            if retried and record is not None:
                await self._io.count_retry(qtok, body["id"], seq, record.deliveries)
            self._hold(lease_id, key, msg.reply, new, new_rev, ack_wait)
            return Job(
                id=body["id"],
                queue=queue,
                payload=body["payload"],
                parameter=body["parameter"],
                headers=dict(body["headers"]),
                attempt=deliveries,
                max_attempts=body["max_attempts"],
                priority=body["priority"],
                enqueued_at_ms=body["enqueued_at_ms"],
                idempotency_key=body["idempotency_key"],
                lease_id=lease_id,
                lease_expires_at_ms=new.expires_at_ms,
                last_error=last_error,
            )
        await self._io.nak_reply(msg.reply, 50)
        return None

    async def _abandon(self, key: str, lease_id: str, reply: str) -> None:
        """Roll back a lease whose grant nobody received (its write's reply was lost)."""
        for _ in range(60):
            try:
                await self._wait_connected()
                record, rev = await self._io.lget(key)
                if record is not None and record.lease_id == lease_id and record.state == "leased":
                    idle = replace(
                        record,
                        state="idle",
                        lease_id=None,
                        worker_id=None,
                        deliveries=record.deliveries - 1,
                    )
                    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                        await self._io.lput(key, idle, rev)
                        await self._io.nak_reply(reply, None)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)

    def _guess(self, key: str, seq: int, msg: Msg) -> tuple[LeaseRecord | None, int] | None:
        """What the ledger most likely holds for a fetched job, without asking it: the idle
        record this bridge wrote for this very message, or no record at all for a message
        delivered the first time; None when only reading the ledger can tell."""
        cached = self._idle.pop(key, None)
        if cached is not None and cached[0].seq == seq:
            return cached
        if getattr(msg.metadata, "num_delivered", 0) == 1:
            return None, 0
        return None

    def _remember_idle(self, key: str, record: LeaseRecord, rev: int) -> None:
        if len(self._idle) >= IDLE_CACHE_SIZE:
            self._idle.pop(next(iter(self._idle)))
        self._idle[key] = (record, rev)

    def _hold(
        self, lease_id: str, key: str, reply: str, record: LeaseRecord, rev: int, ack_wait: float
    ) -> None:
        held = _Held(key, reply, record.expires_at_ms, record, rev)
        self._held[lease_id] = held
        held.task = self._spawn(self._keep(lease_id, held, ack_wait))

    def _release(self, lease_id: str | None) -> None:
        held = self._held.pop(lease_id or "", None)
        if held is not None and held.task is not None and held.task is not asyncio.current_task():
            held.task.cancel()

    async def _keep(self, lease_id: str, held: _Held, ack_wait: float) -> None:
        """Keep JetStream's ack timer alive while the lease lives; recover it at expiry."""
        progress_s = max(min(ack_wait / 3, 10.0), 0.2)
        while self._held.get(lease_id) is held:
            remaining = (held.expires_ms - now_ms()) / 1000
            try:
                if remaining > 0:
                    await asyncio.sleep(min(remaining, progress_s))
                    if held.expires_ms > now_ms():
                        await self._io.progress_reply(held.reply)
                    continue
                record, rev = await self._io.lget(held.key)
                if record is None or record.lease_id != lease_id or record.state != "leased":
                    break
                if record.expires_at_ms > now_ms():  # extended through another bridge
                    held.expires_ms, held.record, held.rev = record.expires_at_ms, record, rev
                    continue
                await self._recover(held.key.split(".")[1], held.key, record, rev)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("nats queue: lease keeper for %s: %r", lease_id, exc)
                await asyncio.sleep(0.5)
        if self._held.get(lease_id) is held:
            self._held.pop(lease_id, None)

    async def _recover(self, qtok: str, key: str, record: LeaseRecord, rev: int) -> None:
        """An expired lease: back to the queue with attempt+1 next, or dead letter at max."""
        reason = f"lease expired at attempt {record.deliveries}"
        try:
            if record.deliveries >= record.max_attempts:
                await self._dead_letter(qtok, key, record, rev, reason, record.reply)
            else:
                idle = replace(
                    record, state="idle", lease_id=None, worker_id=None, last_error=reason
                )
                new_rev = await self._io.lput(key, idle, rev)
                self._remember_idle(key, idle, new_rev)
                job_id = key.split(".", 2)[2]
                await self._io.count_retry(qtok, job_id, record.seq, record.deliveries)
                await self._io.nak_reply(record.reply, None)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # someone else settled or recovered it first
        self._release(record.lease_id)

    #: the corruptions :meth:`corrupt_record` can make
    CORRUPTIONS: ClassVar[tuple[str, ...]] = (
        "ledger_wrong_types",
        "deep_body",
        "body_not_json",
    )

    async def corrupt_record(self, queue: str, job_id: str, how: str) -> str | None:
        """Tests only: damage what the broker holds for ``job_id`` (a pending job), or put a
        damaged job beside it, as ``how`` says; returns the id the damaged record has in a
        dead letter (``malformed-<seq>`` for a body nobody can parse), None for an unknown
        ``how``."""
        qtok = name_token(queue)
        io = self._io
        if how == "ledger_wrong_types":
            seq = await self._stream_seq_of(qtok, job_id)
            record = {
                "seq": seq,
                "deliveries": "1",
                "max_attempts": 3,
                "lease_ttl_ms": 1000,
                "state": "leased",
                "expires_at_ms": "soon",
            }
            await io.ledger.put(ledger_key(qtok, job_id), json.dumps(record).encode())
            return job_id
        if how in ("deep_body", "body_not_json"):
            data = b"[" * 100_000 + b"]" * 100_000 if how == "deep_body" else b"\xff{not json"
            ack = await io.js.publish(
                f"{io.root}.job.{qtok}.{level_token(0)}", data, timeout=self.timings.op_timeout_s
            )
            await io.nc.publish(f"{io.root}.wake.{qtok}", b"")
            return f"malformed-{ack.seq}"
        return None

    async def _stream_seq_of(self, qtok: str, job_id: str) -> int:
        io = self._io
        seq = 1
        while True:
            raw = await io.js.get_msg(
                io.jobs_stream, seq=seq, subject=f"{io.root}.job.{qtok}.*", next=True
            )
            body = parse_job(raw.data)
            if body is not None and body["id"] == job_id:
                return int(raw.seq)
            seq = raw.seq + 1

    async def _quarantine(
        self,
        queue: str,
        qtok: str,
        msg: Msg,
        reason: str,
        *,
        body: dict[str, Any] | None = None,
        record: bytes | None = None,
    ) -> None:
        """Dead-letter a job the queue cannot use, at once, with the reason and the raw
        record (truncated to :data:`RAW_LIMIT` bytes), then remove it from the queue."""
        seq = msg.metadata.sequence.stream
        self.malformed_count += 1
        log.warning("nats queue %s: quarantining job at sequence %d: %s", queue, seq, reason)
        data = msg.data or b""
        raw = {
            "body": data[:RAW_LIMIT].decode("utf-8", "replace"),
            "body_bytes": len(data),
        }
        if record is not None:
            raw["lease_record"] = record[:RAW_LIMIT].decode("utf-8", "replace")
        job = body or {
            "id": f"malformed-{seq}",
            "queue": queue,
            "payload": None,
            "parameter": None,
            "headers": {},
            "max_attempts": self.default_max_attempts,
            "priority": 0,
            "lease_ttl_ms": self.default_lease_ttl_ms,
            "enqueued_at_ms": 0,
            "available_at_ms": 0,
            "idempotency_key": None,
        }
        letter = {
            **job,
            "attempts": 0,
            "reason": reason,
            "dead_lettered_at_ms": now_ms(),
            "raw": raw,
        }
        await self._io.publish(
            f"{self._io.root}.dlq.{qtok}",
            json.dumps(letter, separators=(",", ":")).encode(),
            {
                "Nats-Msg-Id": f"dlq.quarantine.{qtok}.{seq}",
                DEAD_LETTER_REASON_HEADER: _header_safe(reason),
            },
        )
        await self._io.ack_reply(msg.reply)

    async def _dead_letter(
        self,
        qtok: str,
        key: str,
        record: LeaseRecord,
        rev: int,
        reason: str,
        reply: str,
        body: dict[str, Any] | None = None,
    ) -> None:
        dead = replace(
            record,
            state="dead",
            lease_id=None,
            last_error=reason,
            reply=reply or record.reply,
            dead_lettered_at_ms=now_ms(),
        )
        new_rev = await self._io.lput(key, dead, rev)
        self._release(record.lease_id)
        await self._finish_dead(qtok, key, dead, new_rev, body, dead.reply)

    async def _finish_dead(
        self,
        qtok: str,
        key: str,
        record: LeaseRecord,
        rev: int,
        body: dict[str, Any] | None,
        reply: str,
    ) -> None:
        """Publish the dead letter (deduplicated), remove the job, drop the ledger record."""
        if body is None:
            body = await self._io.job_body(record.seq)
        if body is not None:
            reason = record.last_error or "dead-lettered"
            letter = {
                **body,
                "attempts": record.deliveries,
                "reason": reason,
                "dead_lettered_at_ms": record.dead_lettered_at_ms or now_ms(),
            }
            await self._io.publish(
                f"{self._io.root}.dlq.{qtok}",
                json.dumps(letter, separators=(",", ":")).encode(),
                {
                    "Nats-Msg-Id": f"dlq.{body['id']}.{record.seq}",
                    DEAD_LETTER_REASON_HEADER: _header_safe(reason),
                },
            )
        await self._io.ack_reply(reply)
        await self._io.ldel(key, rev, record.seq)

    async def _verify(self, job: Job) -> tuple[str, str, LeaseRecord, int]:
        """The ledger record of a lease still held under ``job.lease_id``, or LeaseExpiredError."""
        qtok = name_token(job.queue)
        key = ledger_key(qtok, job.id)
        record, rev = await self._io.lget(key)
        if (
            not job.lease_id
            or record is None
            or record.state != "leased"
            or record.lease_id != job.lease_id
        ):
            self._release(job.lease_id)
            raise LeaseExpiredError(f"job {job.id} is not leased under lease {job.lease_id!r}")
        if record.expires_at_ms <= now_ms():
            await self._recover(qtok, key, record, rev)
            raise LeaseExpiredError(f"lease {job.lease_id} on job {job.id} expired")
        return qtok, key, record, rev

    def _cached_lease(self, job: Job) -> tuple[str, str, LeaseRecord, int] | None:
        """The record and revision this bridge wrote for a live lease it holds, if any."""
        held = self._held.get(job.lease_id or "")
        record = held.record if held is not None else None
        if record is None or record.lease_id != job.lease_id or record.expires_at_ms <= now_ms():
            return None  # not ours, or expired: only the ledger can say what happens now
        return name_token(job.queue), held.key, record, held.rev

    async def _with_lease(self, job: Job, action: Any, doing: str) -> Any:
        """Run ``action(qtok, key, record, rev)`` (revision-checked writes) on the lease.

        First against what this bridge wrote for the lease, saving the ledger read; a
        write that finds the revision moved (extended, settled or recovered elsewhere)
        reads the ledger and runs ``action`` again on what it holds.
        """
        cached = self._cached_lease(job)
        if cached is not None:
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                return await action(*cached)
        try:
            return await action(*await self._verify(job))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise LeaseExpiredError(
                f"lease {job.lease_id} changed while {doing} (expired or settled)"
            ) from None

    async def _extend_lease(self, job: Job, lease_ttl_ms: int | None) -> Job:
        async def extend(_qtok: str, key: str, record: LeaseRecord, rev: int) -> Job:
            expires = now_ms() + (lease_ttl_ms or record.lease_ttl_ms)
            new = replace(record, expires_at_ms=expires)
            new_rev = await self._io.lput(key, new, rev)
            held = self._held.get(job.lease_id or "")
            if held is not None:
                held.expires_ms, held.record, held.rev = expires, new, new_rev
            await self._io.progress_reply(record.reply)
            return replace(job, lease_expires_at_ms=expires)

        async with self._op():
            result: Job = await self._with_lease(job, extend, "extending")
            return result

    async def _ack(self, job: Job) -> None:
        async def finish(_qtok: str, key: str, record: LeaseRecord, rev: int) -> None:
            # the revision-checked purge marker settles the lease (one write: it names the
            # settled message and lease), then the message is acked: an ack whose reply is
            # lost is finished by a retried ack (below) or when the message shows up again
            await self._io.lsettle(key, rev, record.seq, record.lease_id)
            await self._io.ack_reply(record.reply)
            self._release(job.lease_id)

        async with self._op():
            cached = self._cached_lease(job)
            if cached is not None:
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    return await finish(*cached)
            key = ledger_key(name_token(job.queue), job.id)
            record, rev, settled = await self._io.lget_settled(key)
            # an ack that finished released its lease; one still held here was cut short
            # (its reply or its purge marker lost) and this retry finishes it. A settled
            # lease acked again is expired, as on every queue bridge.
            held = self._held.get(job.lease_id or "")
            if (held is not None and record is not None and record.state == "done"
                    and record.lease_id == job.lease_id):
                self._release(job.lease_id)
                await self._io.ack_reply(record.reply)
                await self._io.ldel(key, rev, record.seq, record.lease_id)
                return
            if held is not None and record is None and settled[1] == job.lease_id:
                # it got as far as its purge marker: ack the message again
                await self._io.ack_reply(held.reply)
                self._release(job.lease_id)
                return
            try:
                await finish(*await self._verify(job))
            except nats.js.errors.KeyWrongLastSequenceError:
                raise LeaseExpiredError(
                    f"lease {job.lease_id} changed while settling (expired or settled)"
                ) from None

    async def _nack(self, job: Job, reason: str | None, delay_ms: int) -> NackOutcome:
        async def nack(qtok: str, key: str, record: LeaseRecord, rev: int) -> NackOutcome:
            if record.deliveries >= record.max_attempts:
                why = reason or f"failed {record.deliveries} time(s)"
                await self._dead_letter(qtok, key, record, rev, why, record.reply)
                return "dead_letter"
            idle = replace(record, state="idle", lease_id=None, worker_id=None, last_error=reason)
            write = asyncio.ensure_future(self._io.lput(key, idle, rev))
            naked = delay_ms >= NAK_WITH_WRITE_MIN_MS
            if naked:
                # The nak goes out right behind the write instead of a round trip later: the
                # redelivery it asks for comes delay_ms after, long after the server stored
                # the write. A write that fails (the lease was lost) leaves only a nak that
                # makes the job come back sooner, where a claim reads the ledger and decides.
                await asyncio.sleep(0)  # the write's request is on the wire first
                await self._io.nak_reply(record.reply, delay_ms)
            new_rev = await write
            self._release(job.lease_id)
            self._remember_idle(key, idle, new_rev)
            if not naked:
                await self._io.nak_reply(record.reply, delay_ms)
            await self._io.count_retry(qtok, job.id, record.seq, record.deliveries)
            return "retry"

        async with self._op():
            outcome: NackOutcome = await self._with_lease(job, nack, "nacking")
            return outcome

    async def _move_to_dead_letter(self, job: Job, reason: str) -> None:
        async def dead(qtok: str, key: str, record: LeaseRecord, rev: int) -> None:
            await self._dead_letter(qtok, key, record, rev, reason, record.reply)

        async with self._op():
            await self._with_lease(job, dead, "dead-lettering")

    # ---- dead letters and inspection (QueueAdmin) ---------------------------------------

    async def _peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]:
        async with self._op():
            await self._ensure_setup()
            return await self._admin.peek_dead_letter(queue, limit)

    async def _redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int:
        async with self._op():
            await self._ensure_setup()
            return await self._admin.redrive_dead_letter(queue, job_ids)

    async def _purge_dead_letter(self, queue: str) -> int:
        async with self._op():
            await self._ensure_setup()
            return await self._admin.purge_dead_letter(queue)

    async def _inspect_leases(self, queue: str) -> list[LeaseInfo]:
        async with self._op():
            await self._ensure_setup()
            return await self._admin.inspect_leases(queue)

    async def _metrics(self, queue: str) -> QueueMetrics:
        async with self._op():
            await self._ensure_setup()
            return await self._admin.metrics(queue)
