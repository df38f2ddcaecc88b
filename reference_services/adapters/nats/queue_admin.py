"""Dead-letter administration and inspection of the NATS queue bridge (a mixin)."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

import nats.js.errors

from reference_services.adapters.nats.connection import NatsTimings, NatsUnavailableError
from reference_services.adapters.nats.queue_ledger import JOB_FIELDS, LeaseRecord, parse_job
from reference_services.adapters.nats.subjects import name_token
from reference_services.runtime.ids import now_ms
from reference_services.runtime.queue import DeadLetterJob, LeaseInfo, QueueMetrics

log = logging.getLogger("reference_services.adapters.nats.queue_bridge")


class NatsQueueAdmin:
    """peek/redrive/purge dead letters, inspect_leases and metrics over the bridge's helpers."""

    _js: Any
    _nc: Any
    _root: str
    _jobs_stream: str
    _dead_stream: str
    timings: NatsTimings
    _op: Any
    _ensure_setup: Any
    _publish_job: Any
    _scan: Any
    _recover: Any
    _levels: Any
    _consumer: Any
    _subject_counts: Any

    # ---- dead letters ----------------------------------------------------------------------

    async def _dead_letters(self, qtok: str, limit: int | None) -> list[tuple[int, dict[str, Any]]]:
        subject = f"{self._root}.dlq.{qtok}"
        out: list[tuple[int, dict[str, Any]]] = []
        seq = 1
        while limit is None or len(out) < limit:
            try:
                raw = await self._js.get_msg(self._dead_stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            seq = raw.seq + 1
            letter = parse_job(raw.data)
            if letter is None or "reason" not in letter:
                log.warning("nats queue: skipping a malformed dead letter at seq %s", raw.seq)
                continue
            out.append((raw.seq, letter))
        return out

    async def _peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]:
        async with self._op():
            await self._ensure_setup()
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

    async def _redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int:
        qtok = name_token(queue)
        wanted = None if job_ids is None else set(job_ids)
        count = 0
        async with self._op():
            await self._ensure_setup()
            for dseq, letter in await self._dead_letters(qtok, None):
                if wanted is not None and letter["id"] not in wanted:
                    continue
                body = {f: letter[f] for f in JOB_FIELDS}
                body["available_at_ms"] = now_ms()
                await self._publish_job(qtok, body, f"redrive.{letter['id']}.{dseq}")
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self._js.delete_msg(self._dead_stream, dseq)
                count += 1
        return count

    async def _purge_dead_letter(self, queue: str) -> int:
        async with self._op():
            await self._ensure_setup()
            subject = f"{self._root}.dlq.{name_token(queue)}"
            resp = await self._nc.request(
                f"$JS.API.STREAM.PURGE.{self._dead_stream}",
                json.dumps({"filter": subject}).encode(),
                timeout=self.timings.op_timeout_s,
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
        for key, record, rev in await self._scan(qtok):
            now = now_ms()
            if record.expired(now):
                await self._recover(qtok, key, record, rev)
            elif record.live(now):
                live.append((key, record))
            elif record.state in ("done", "dead"):
                settling += 1
        return live, settling

    async def _inspect_leases(self, queue: str) -> list[LeaseInfo]:
        async with self._op():
            await self._ensure_setup()
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

    async def _metrics(self, queue: str) -> QueueMetrics:
        """Pending counts delayed and waiting-to-retry jobs."""
        qtok = name_token(queue)
        async with self._op():
            await self._ensure_setup()
            live, settling = await self._live_records(qtok)
            job_subject = f"{self._root}.job.{qtok}.*"
            # the consumers' view, not the stream's message count: after a SIGKILL
            # nats-server 2.9 can resurrect acked messages below the ack floor
            total = 0
            floors = []
            for ltok in await self._levels(qtok):
                await self._consumer(qtok, ltok)
                info = await self._js.consumer_info(self._jobs_stream, f"q-{qtok}-{ltok}")
                total += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
                floors.append(int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0)
            floor = min(floors, default=0)
            extra = await self._subject_counts(self._dead_stream, f"{self._root}.*.{qtok}")
            dead = extra.get(f"{self._root}.dlq.{qtok}", 0)
            retries = extra.get(f"{self._root}.retry.{qtok}", 0)
            pending = max(total - len(live) - settling, 0)
            now = now_ms()
            oldest = now
            if pending:
                leased = {r.seq for _, r in live}
                oldest = await self._oldest_pending(job_subject, leased, floor, now)
        return QueueMetrics(
            pending=pending,
            inflight=len(live),
            dead_letter=dead,
            retries=retries,
            oldest_age_ms=max(now - oldest, 0),
        )

    async def _oldest_pending(self, subject: str, leased: set[int], floor: int, now: int) -> int:
        seq = floor + 1
        for _ in range(len(leased) + 1):
            try:
                raw = await self._js.get_msg(self._jobs_stream, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return now
            if raw.seq not in leased:
                body = parse_job(raw.data)
                return body["enqueued_at_ms"] if body is not None else now
            seq = raw.seq + 1
        return now
