"""The lease ledger of the NATS queue bridge: one revision-checked KV record per leased job."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
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
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes | None) -> LeaseRecord | None:
        """Parse a KV value; ``None`` for an unreadable one (it is then overwritten)."""
        try:
            data: dict[str, Any] = json.loads(raw or b"")
            return cls(**data)
        except (ValueError, TypeError):
            return None

    def live(self, now_ms: int) -> bool:
        """A lease that is held and not expired."""
        return self.state == "leased" and self.expires_at_ms > now_ms

    def expired(self, now_ms: int) -> bool:
        """A lease that ran out and was not recovered yet."""
        return self.state == "leased" and self.expires_at_ms <= now_ms


def ledger_key(qtok: str, job_id: str) -> str:
    """KV key of a job's ledger record."""
    return f"L.{qtok}.{job_id}"
