"""Dead letters and inspection of the NATS queue bridge: a helper the bridge holds."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors

from reference_services.adapters.nats.connection import NatsUnavailableError
from reference_services.adapters.nats.queue_io import QueueIO
from reference_services.adapters.nats.queue_ledger import JOB_FIELDS, LeaseRecord, parse_job
from reference_services.adapters.nats.subjects import name_token
from reference_services.runtime.ids import now_ms
from reference_services.runtime.queue import DeadLetterJob, LeaseInfo, QueueMetrics

log = logging.getLogger("reference_services.adapters.nats.queue_bridge")

Recover = Callable[[str, str, LeaseRecord, int], Awaitable[None]]
"""The bridge's recovery of an expired lease: ``(qtok, key, record, revision)``."""
Consumer = Callable[[str, str], Awaitable[float]]
"""The bridge's declare-on-first-use of a priority level's consumer: ``(qtok, ltok)``."""


class QueueAdmin:
    """peek/redrive/purge dead letters, inspect_leases and metrics, through :class:`QueueIO`.

    The caller (the bridge) tracks the operation, maps broker errors and
    declares streams first; ``recover`` and ``consumer`` are the bridge's.
    """

    def __init__(self, io: QueueIO, recover: Recover, consumer: Consumer) -> None:
        self._io = io
        self._recover = recover
        self._consumer = consumer

    # ---- dead letters ----------------------------------------------------------------------

    async def _dead_letters(self, qtok: str, limit: int | None) -> list[tuple[int, dict[str, Any]]]:
        io = self._io
        subject = f"{io.root}.dlq.{qtok}"
        out: list[tuple[int, dict[str, Any]]] = []
        seq = 1
        while limit is None or len(out) < limit:
            try:
                raw = await io.js.get_msg(io.dead_stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            seq = raw.seq + 1
            letter = parse_job(raw.data)
            if letter is None or "reason" not in letter:
                log.warning("nats queue: skipping a malformed dead letter at seq %s", raw.seq)
                continue
            out.append((raw.seq, letter))
        return out

    async def peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]:
        """Dead letters in the order they arrived, oldest first."""
        letters = await self._dead_letters(name_token(queue), limit)
        return [
            DeadLetterJob(
                id=d["id"],
                queue=queue,
                payload=d["payload"],
                parameter=d["parameter"],
                headers=dict(d["headers"]),
                attempts=int(d.get("attempts", 0)),
                reason=str(d["reason"]),
                dead_lettered_at_ms=int(d.get("dead_lettered_at_ms", 0)),
                idempotency_key=d.get("idempotency_key"),
            )
            for _, d in letters
        ]

    async def redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int:
        """Republish dead letters (all, or ``job_ids``) as fresh jobs with the same id."""
        qtok = name_token(queue)
        wanted = None if job_ids is None else set(job_ids)
        count = 0
        for dseq, letter in await self._dead_letters(qtok, None):
            if wanted is not None and letter["id"] not in wanted:
                continue
            body = {f: letter[f] for f in JOB_FIELDS}
            body["available_at_ms"] = now_ms()
            await self._io.publish_job(qtok, body, f"redrive.{letter['id']}.{dseq}")
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._io.js.delete_msg(self._io.dead_stream, dseq)
            count += 1
        return count

    async def purge_dead_letter(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; returns how many."""
        io = self._io
        resp = await io.nc.request(
            f"$JS.API.STREAM.PURGE.{io.dead_stream}",
            json.dumps({"filter": f"{io.root}.dlq.{name_token(queue)}"}).encode(),
            timeout=io.op_timeout_s,
        )
        data = json.loads(resp.data)
        if "error" in data:
            raise NatsUnavailableError(f"purge failed: {data['error']}")
        return int(data.get("purged", 0))

    # ---- inspection ------------------------------------------------------------------------

    async def _live_records(self, qtok: str) -> tuple[list[tuple[str, LeaseRecord]], int]:
        """Live leases (recovering expired ones on the way) and the count of settling records."""
        live = []
        settling = 0
        for key, record, rev in await self._io.scan(qtok):
            now = now_ms()
            if record.expired(now):
                await self._recover(qtok, key, record, rev)
            elif record.live(now):
                live.append((key, record))
            elif record.state in ("done", "dead"):
                settling += 1
        return live, settling

    async def inspect_leases(self, queue: str) -> list[LeaseInfo]:
        """Active (unexpired) leases of ``queue``."""
        live, _ = await self._live_records(name_token(queue))
        return [
            LeaseInfo(
                job_id=key.split(".", 2)[2],
                lease_id=r.lease_id or "",
                attempt=r.deliveries,
                worker_id=r.worker_id,
                leased_at_ms=r.leased_at_ms,
                expires_at_ms=r.expires_at_ms,
            )
            for key, r in live
        ]

    async def metrics(self, queue: str) -> QueueMetrics:
        """Depth figures; pending counts delayed and waiting-to-retry jobs."""
        io = self._io
        qtok = name_token(queue)
        live, settling = await self._live_records(qtok)
        # the consumers' view, not the stream's message count: after a SIGKILL
        # nats-server 2.9 can resurrect acked messages below the ack floor
        total = 0
        floors = []
        for ltok in await io.levels(qtok):
            await self._consumer(qtok, ltok)
            info = await io.js.consumer_info(io.jobs_stream, f"q-{qtok}-{ltok}")
            total += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            floors.append(int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0)
        extra = await io.subject_counts(io.dead_stream, f"{io.root}.*.{qtok}")
        pending = max(total - len(live) - settling, 0)
        now = now_ms()
        oldest = now
        if pending:
            leased = {r.seq for _, r in live}
            floor = min(floors, default=0)
            oldest = await self._oldest_pending(f"{io.root}.job.{qtok}.*", leased, floor, now)
        return QueueMetrics(
            pending=pending,
            inflight=len(live),
            dead_letter=extra.get(f"{io.root}.dlq.{qtok}", 0),
            retries=extra.get(f"{io.root}.retry.{qtok}", 0),
            oldest_age_ms=max(now - oldest, 0),
        )

    async def _oldest_pending(self, subject: str, leased: set[int], floor: int, now: int) -> int:
        seq = floor + 1
        for _ in range(len(leased) + 1):
            try:
                raw = await self._io.js.get_msg(
                    self._io.jobs_stream, seq=seq, subject=subject, next=True
                )
            except nats.js.errors.NotFoundError:
                return now
            if raw.seq not in leased:
                body = parse_job(raw.data)
                return body["enqueued_at_ms"] if body is not None else now
            seq = raw.seq + 1
        return now
