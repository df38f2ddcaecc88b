"""The lease ledger of the NATS queue bridge: one revision-checked KV record per leased job."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Literal

LeaseState = Literal["leased", "idle", "done", "dead"]


@dataclass(frozen=True)
class LeaseRecord:
    """What the ledger knows about one job (key ``L.<queue>.<job id>``).

    ``seq`` is the job's stream sequence (a redriven job gets a new one),
    ``deliveries`` the attempts so far, ``reply`` the JetStream ack subject of
    the message, usable from any connection (acks address the stream sequence).
    """

    seq: int
    deliveries: int
    max_attempts: int
    lease_ttl_ms: int
    state: LeaseState
    lease_id: str | None = None
    worker_id: str | None = None
    leased_at_ms: int = 0
    expires_at_ms: int = 0
    reply: str = ""
    last_error: str | None = None
    dead_lettered_at_ms: int = 0

    def dumps(self) -> bytes:
        """JSON bytes for the KV value."""
        # every field is a scalar: no deep copy (asdict's) needed
        return json.dumps(
            {name: getattr(self, name) for name in _RECORD_FIELDS}, separators=(",", ":")
        ).encode()

    @classmethod
    def loads(cls, raw: bytes | None) -> LeaseRecord | None:
        """Parse a KV value; ``None`` for an unreadable one (see :func:`record_problem`)."""
        if record_problem(raw) is not None:
            return None
        return cls(**json.loads(raw or b""))

    def live(self, now_ms: int) -> bool:
        """A lease that is held and not expired."""
        return self.state == "leased" and self.expires_at_ms > now_ms

    def expired(self, now_ms: int) -> bool:
        """A lease that ran out and was not recovered yet."""
        return self.state == "leased" and self.expires_at_ms <= now_ms


_RECORD_FIELDS = tuple(f.name for f in fields(LeaseRecord))
_RECORD_INTS = (
    "seq",
    "deliveries",
    "max_attempts",
    "lease_ttl_ms",
    "leased_at_ms",
    "expires_at_ms",
    "dead_lettered_at_ms",
)
_RECORD_OPTIONAL_TEXT = ("lease_id", "worker_id", "last_error")


def record_problem(raw: bytes | None) -> str | None:
    """Why a ledger value is unusable (wrong JSON, fields or field types), or None."""
    try:
        data = json.loads(raw or b"")
    except (ValueError, RecursionError) as exc:
        return f"not JSON: {type(exc).__name__}"
    if not isinstance(data, dict):
        return "not an object"
    unknown = set(data).difference(_RECORD_FIELDS)
    if unknown:
        return f"unknown fields {sorted(unknown)}"
    for name in ("seq", "deliveries", "max_attempts", "lease_ttl_ms", "state"):
        if name not in data:
            return f"missing field {name}"
    for name in _RECORD_INTS:
        value = data.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name} is not an integer: {value!r}"[:200]
    for name in _RECORD_OPTIONAL_TEXT:
        if data.get(name) is not None and not isinstance(data[name], str):
            return f"{name} is not text"
    if not isinstance(data.get("reply", ""), str):
        return "reply is not text"
    if data["state"] not in ("leased", "idle", "done", "dead"):
        return f"unknown state {data['state']!r}"[:200]
    return None


def ledger_key(qtok: str, job_id: str) -> str:
    """KV key of a job's ledger record."""
    return f"L.{qtok}.{job_id}"


JOB_FIELDS = (
    "id",
    "queue",
    "payload",
    "parameter",
    "headers",
    "max_attempts",
    "priority",
    "lease_ttl_ms",
    "enqueued_at_ms",
    "available_at_ms",
    "idempotency_key",
)


def parse_job(raw: bytes | None) -> dict[str, Any] | None:
    """A job body from the wire, or ``None`` when it is malformed."""
    try:
        body = json.loads(raw or b"")
    except (ValueError, RecursionError):  # a 100k-deep body must not escape as an error
        return None
    if not isinstance(body, dict) or any(f not in body for f in JOB_FIELDS):
        return None
    ints = ("max_attempts", "priority", "lease_ttl_ms", "enqueued_at_ms", "available_at_ms")
    if not all(isinstance(body[k], int) and not isinstance(body[k], bool) for k in ints):
        return None
    if not isinstance(body["id"], str) or not body["id"] or not isinstance(body["queue"], str):
        return None
    headers, key = body["headers"], body["idempotency_key"]
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        return None
    if key is not None and not isinstance(key, str):
        return None
    if body["max_attempts"] < 1 or body["lease_ttl_ms"] < 1:
        return None
    return body
