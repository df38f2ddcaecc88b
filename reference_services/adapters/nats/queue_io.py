"""The NATS queue bridge's broker I/O: its connection handles, names, ledger and messages.

One :class:`QueueIO` per bridge object; the bridge (leasing) and
:class:`~reference_services.adapters.nats.queue_admin.QueueAdmin` (dead letters,
inspection) both work through it.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from reference_services.adapters.nats.queue_ledger import LeaseRecord, parse_job
from reference_services.adapters.nats.subjects import level_token, name_token, parse_level


class QueueIO:
    """Streams, buckets and subjects of one queue deployment (``prefix``), and their I/O.

    ``nc``/``js`` are set by the bridge when it connects, ``ledger``/``keys`` when
    it declares the buckets; ``redeclare`` is called when the server lost a stream.
    """

    def __init__(
        self, prefix: str, op_timeout_s: float, redeclare: Callable[[], Awaitable[None]]
    ) -> None:
        p = name_token(prefix)
        self.root = f"{p}_q"
        self.jobs_stream = f"{p}_QJOBS"
        self.dead_stream = f"{p}_QDEAD"
        self.ledger_bucket = f"{p}_qledger"
        self.keys_bucket = f"{p}_qkeys"
        self.op_timeout_s = op_timeout_s
        self._redeclare = redeclare
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.ledger: KeyValue | None = None
        self.keys: KeyValue | None = None

    async def levels(self, qtok: str) -> list[str]:
        """Priority levels of a queue holding messages, highest first."""
        counts = await self.subject_counts(self.jobs_stream, f"{self.root}.job.{qtok}.*")
        levels = []
        for subject, count in counts.items():
            level = parse_level(subject.rsplit(".", 1)[1])
            if count and level is not None:
                levels.append((level, subject.rsplit(".", 1)[1]))
        return [tok for _, tok in sorted(levels, reverse=True)]

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> Any:
        try:
            return await self.js.publish(subject, data, headers=headers, timeout=self.op_timeout_s)
        except nats.js.errors.NoStreamResponseError:
            await self._redeclare()
            return await self.js.publish(subject, data, headers=headers, timeout=self.op_timeout_s)

    async def ack_reply(self, reply: str) -> None:
        """Ack (remove) a job message by its ack subject, waiting for the server."""
        if not reply:
            return
        try:
            await self.nc.request(reply, b"+ACK", timeout=self.op_timeout_s)
        except nats.errors.NoRespondersError:
            pass

    async def nak_reply(self, reply: str, delay_ms: int | None) -> None:
        payload = b"-NAK"
        if delay_ms:
            payload += b" " + json.dumps({"delay": int(delay_ms) * 1_000_000}).encode()
        await self.nc.publish(reply, payload)

    async def progress_reply(self, reply: str) -> None:
        await self.nc.publish(reply, b"+WPI")

    async def lget(self, key: str) -> tuple[LeaseRecord | None, int]:
        record, rev, _ = await self.lget_settled(key)
        return record, rev

    async def lget_settled(
        self, key: str
    ) -> tuple[LeaseRecord | None, int, tuple[int, str | None]]:
        """Record and revision; for a removed record, the (sequence, lease) it settled."""
        try:
            entry = await self.ledger.get(key)
        except nats.js.errors.KeyNotFoundError as exc:
            marker = getattr(exc, "entry", None)
            settled: tuple[int, str | None] = (0, None)
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                data = json.loads(marker.value or b"{}")
                settled = (int(data.get("settled_seq", 0)), data.get("lease_id"))
            return None, 0, settled
        return LeaseRecord.loads(entry.value), entry.revision, (0, None)

    async def lraw(self, key: str) -> bytes | None:
        """The raw value of a ledger record (None when absent)."""
        try:
            entry = await self.ledger.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value

    async def lput(self, key: str, record: LeaseRecord, rev: int, *, strict: bool = False) -> int:
        """Write ``record`` if the key is still at ``rev`` (0 = absent); raises on conflict.

        ``strict`` with ``rev`` 0: only if the key never had a value or a purge marker
        (a marker tells which message it settled, so writing over it needs a read first).
        """
        for attempt in (1, 2):
            try:
                if rev or strict:
                    return int(await self.ledger.update(key, record.dumps(), last=rev))
                return int(await self.ledger.create(key, record.dumps()))
            except nats.js.errors.NoStreamResponseError:
                if attempt == 2:
                    raise
                await self._redeclare()
        raise AssertionError("unreachable")

    async def ldel(self, key: str, rev: int, seq: int, lease_id: str | None = None) -> None:
        """Remove a settled ledger record with a purge marker, if it is still at ``rev``
        (best effort: the job is settled already; a record left behind is cleaned up when
        its message shows up again)."""
        with contextlib.suppress(nats.js.errors.APIError, nats.errors.Error, TimeoutError):
            await self.lsettle(key, rev, seq, lease_id)

    async def lsettle(self, key: str, rev: int, seq: int, lease_id: str | None) -> None:
        """Settle the lease at ``rev``: replace the record with a purge marker naming the
        message and lease it settled; KeyWrongLastSequenceError when the key moved on.

        A marker rather than a message delete: nats-server 2.9 can resurrect
        messages removed by limits after a SIGKILL, and the newer marker keeps
        such an old revision hidden.
        """
        headers = {
            "KV-Operation": "PURGE",
            "Nats-Rollup": "sub",
            "Nats-Expected-Last-Subject-Sequence": str(rev),
        }
        marker = json.dumps({"settled_seq": seq, "lease_id": lease_id}).encode()
        try:
            await self.publish(f"$KV.{self.ledger_bucket}.{key}", marker, headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10071, 10164):  # wrong last sequence, as nats-py's KV maps it
                raise nats.js.errors.KeyWrongLastSequenceError(
                    description=exc.description
                ) from None
            raise

    async def count_retry(self, qtok: str, job_id: str, seq: int, attempt: int) -> None:
        await self.publish(
            f"{self.root}.retry.{qtok}", b"", {"Nats-Msg-Id": f"retry.{job_id}.{seq}.{attempt}"}
        )

    async def job_body(self, seq: int) -> dict[str, Any] | None:
        try:
            raw = await self.js.get_msg(self.jobs_stream, seq=seq)
        except nats.js.errors.NotFoundError:
            return None
        return parse_job(raw.data)

    async def subject_counts(self, stream: str, subject_filter: str) -> dict[str, int]:
        info = await self.js.stream_info(stream, subjects_filter=subject_filter)
        return dict(info.state.subjects or {})

    async def scan(self, qtok: str) -> list[tuple[str, LeaseRecord, int]]:
        """Every ledger record of a queue, with key and revision.

        A snapshot through a pull consumer of its own (the last value of each key), read
        up to the count the consumer had when it was created. Not nats-py's KV watch: it
        may signal the end of its initial values before delivering them (its consumer
        info can count them delivered already), and a scan then came back empty while
        leases were held (seen in the contract suite, queue_bridge.inspect_leases)."""
        assert self.js is not None
        stream, pre = f"KV_{self.ledger_bucket}", f"$KV.{self.ledger_bucket}."
        name = f"scan-{uuid.uuid4().hex}"
        info = await self.js.add_consumer(
            stream,
            config=ConsumerConfig(
                name=name,
                filter_subject=f"{pre}L.{qtok}.*",
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,  # the server drops it should we fail to
                mem_storage=True,
            ),
        )
        out = []
        sub = None
        try:
            left = int(info.num_pending or 0)
            sub = await self.js.pull_subscribe_bind(consumer=name, stream=stream)
            while left > 0:
                for msg in await sub.fetch(min(left, 256), timeout=self.op_timeout_s):
                    left -= 1
                    if msg.headers and (
                        msg.headers.get("KV-Operation") in ("DEL", "PURGE")
                        or "Nats-Marker-Reason" in msg.headers  # a 2.11+ server's marker
                    ):
                        continue
                    record = LeaseRecord.loads(msg.data)
                    if record is not None:
                        out.append((msg.subject[len(pre) :], record, msg.metadata.sequence.stream))
        finally:
            with contextlib.suppress(Exception):
                if sub is not None:
                    await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(stream, name)
        return out

    async def publish_job(self, qtok: str, body: dict[str, Any], msg_id: str) -> Any:
        data = json.dumps(body, separators=(",", ":")).encode()
        subject = f"{self.root}.job.{qtok}.{level_token(body['priority'])}"
        ack = await self.publish(subject, data, {"Nats-Msg-Id": msg_id})
        # wake blocked lease_next calls (a separate subject: a core subscriber on the
        # job subject would answer JetStream publishes' "no stream" with a timeout)
        await self.nc.publish(f"{self.root}.wake.{qtok}", b"")
        return ack
