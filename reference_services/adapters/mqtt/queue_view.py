"""The MQTT queue's shared view: job records, idempotency claims and retry counters.

Every queue bridge instance subscribes (plain, not shared) to the retained topics under
``<prefix>/queue/`` and folds what arrives, in the broker's order, into a
:class:`QueueView`. The broker delivers one total order of these messages to every
subscriber (Mosquitto is single-threaded), so every instance's view goes through the same
states; a *sync* (a message to oneself, see the bridge) tells an instance that its view
holds everything the broker processed before.

Topics (``Q`` is the queue's topic level, :func:`queue_level`):

- ``<root>/Q/jobs``: the jobs themselves, consumed through a shared subscription;
- ``<root>/Q/rec/<job id>`` (retained): the job's record (pending, leased or dead);
  an empty retained message deletes it (the job was acknowledged or purged);
- ``<root>/Q/idem/<hash of key>`` (retained): which job id an idempotency key got;
- ``<root>/Q/stats/<client id>`` (retained): one instance's count of retrying nacks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from reference_services.runtime.queue import DeadLetterJob, Job, LeaseInfo

_SAFE_LEVEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def queue_level(queue: str) -> str:
    """One topic level for a queue name: itself when plain, else a hash (never ambiguous)."""
    if _SAFE_LEVEL.fullmatch(queue) and not queue.startswith("h-"):
        return queue
    return "h-" + hashlib.sha256(queue.encode()).hexdigest()[:40]


def key_level(key: str) -> str:
    """The topic level of an idempotency key (a hash: keys may hold any character)."""
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _message_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The fields a job and its dead letter share, from a job dict."""
    return {
        "id": data["id"],
        "queue": data["queue"],
        "payload": data.get("payload"),
        "parameter": data.get("parameter"),
        "headers": dict(data.get("headers") or {}),
        "idempotency_key": data.get("idempotency_key"),
    }


def job_from(data: dict[str, Any], lease: dict[str, Any] | None = None) -> Job:
    """A :class:`Job` from a job dict (and its lease)."""
    lease = lease or {}
    return Job(
        **_message_fields(data),
        attempt=int(data["attempt"]),
        max_attempts=int(data["max_attempts"]),
        priority=int(data.get("priority", 0)),
        enqueued_at_ms=int(data["enqueued_at_ms"]),
        lease_id=lease.get("lease_id", ""),
        lease_expires_at_ms=int(lease.get("expires_at_ms", 0)),
        last_error=data.get("last_error"),
    )


@dataclass
class _Queue:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_order: dict[str, int] = field(default_factory=dict)
    idem: dict[str, str] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)


class QueueView:
    """What one instance knows of every queue under its prefix (see the module docstring)."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._seq = 0

    def _q(self, queue: str) -> _Queue:
        return self._queues.setdefault(queue, _Queue())

    # ---- folding broker messages ------------------------------------------------------

    def apply_record(self, queue_lvl: str, job_id: str, payload: bytes) -> None:
        """A record message (empty: the job is gone)."""
        if not payload:
            for q in self._queues.values():
                if q.records.pop(job_id, None) is not None:
                    q.dead_order.pop(job_id, None)
            return
        rec = json.loads(payload)
        q = self._q(rec["job"]["queue"])
        q.records[job_id] = rec
        if rec["status"] == "dead":
            if job_id not in q.dead_order:
                self._seq += 1
                q.dead_order[job_id] = self._seq
        else:
            q.dead_order.pop(job_id, None)

    def apply_claim(self, payload: bytes, retained: bool) -> None:
        """An idempotency claim: a live claim wins only if it is the first one seen; a
        retained one (the broker's snapshot) or a restore (a loser putting the winner back)
        always sets the key."""
        if not payload:
            return
        claim = json.loads(payload)
        idem = self._q(claim["queue"]).idem
        if retained or claim.get("restore") or claim["key"] not in idem:
            idem[claim["key"]] = claim["job_id"]

    def apply_stats(self, client: str, payload: bytes) -> None:
        """One instance's retry counter."""
        if payload:
            stats = json.loads(payload)
            self._q(stats["queue"]).retries[client] = int(stats["retries"])

    # ---- reading ------------------------------------------------------------------------

    def claimed(self, queue: str, key: str) -> str | None:
        """The job id ``key`` was given, if any."""
        return self._q(queue).idem.get(key)

    def records(self, queue: str, status: str) -> list[dict[str, Any]]:
        """Records of ``queue`` in ``status``; dead ones oldest first."""
        q = self._q(queue)
        out = [r for r in q.records.values() if r["status"] == status]
        if status == "dead":
            out.sort(key=lambda r: (r["dead"]["at_ms"], q.dead_order.get(r["job"]["id"], 0)))
        return out

    def record(self, queue: str, job_id: str) -> dict[str, Any] | None:
        """The record of one job."""
        return self._q(queue).records.get(job_id)

    def retries(self, queue: str) -> int:
        """Retrying nacks of ``queue`` over every instance."""
        return sum(self._q(queue).retries.values())

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetterJob]:
        """The oldest ``limit`` dead letters."""
        out = []
        for rec in self.records(queue, "dead")[:limit]:
            job, dead = rec["job"], rec["dead"]
            out.append(
                DeadLetterJob(
                    **_message_fields(job),
                    attempts=int(dead["attempts"]),
                    reason=dead["reason"],
                    dead_lettered_at_ms=int(dead["at_ms"]),
                )
            )
        return out

    def leases(self, queue: str) -> list[LeaseInfo]:
        """Every lease of ``queue`` the records show."""
        return [
            LeaseInfo(
                job_id=r["job"]["id"],
                lease_id=r["lease"]["lease_id"],
                attempt=int(r["job"]["attempt"]),
                worker_id=r["lease"].get("worker_id"),
                leased_at_ms=int(r["lease"]["leased_at_ms"]),
                expires_at_ms=int(r["lease"]["expires_at_ms"]),
            )
            for r in self.records(queue, "leased")
        ]
