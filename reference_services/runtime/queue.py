"""Queue bridge data types: jobs, leases, dead letters, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from reference_services.runtime.errors import HandledError, StatusCode, UnhandledError


@dataclass(frozen=True)
class Job:
    """A leased job. ``lease_id`` proves the lease: stale leases cannot ack."""

    id: str
    queue: str
    payload: Any
    parameter: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    attempt: int = 1
    max_attempts: int = 3
    priority: int = 0
    enqueued_at_ms: int = 0
    idempotency_key: str | None = None
    lease_id: str = ""
    lease_expires_at_ms: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class DeadLetterJob:
    """A job that reached the dead letter, with the reason."""

    id: str
    queue: str
    payload: Any
    parameter: Any
    headers: dict[str, str]
    attempts: int
    reason: str
    dead_lettered_at_ms: int
    idempotency_key: str | None = None


@dataclass(frozen=True)
class LeaseInfo:
    """One active lease, as ``inspect_leases`` reports it."""

    job_id: str
    lease_id: str
    attempt: int
    worker_id: str | None
    leased_at_ms: int
    expires_at_ms: int


@dataclass(frozen=True)
class QueueMetrics:
    """Queue depth and health figures."""

    pending: int
    inflight: int
    dead_letter: int
    retries: int
    oldest_age_ms: int


NackOutcome = Literal["retry", "dead_letter"]

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LEASE_TTL_MS = 30_000


class LeaseExpiredError(HandledError):
    """The lease is no longer held (expired and recovered, or already settled)."""

    default_status = StatusCode.CONFLICT


class QueueInputError(HandledError):
    """Bad arguments to a queue operation (400), naming what was wrong."""

    default_status = StatusCode.BAD_REQUEST


class QueueNotRunningError(UnhandledError):
    """A queue operation on a bridge that is not started, or already destroyed (503)."""

    default_status = StatusCode.SERVICE_UNAVAILABLE


def validate_enqueue(
    queue: str, delay_ms: int, max_attempts: int | None, priority: int, lease_ttl_ms: int | None
) -> None:
    """Reject bad enqueue arguments with a message naming the argument."""
    if not isinstance(queue, str) or not queue:
        raise QueueInputError(f"queue must be a non-empty string, got {queue!r}")
    if not isinstance(delay_ms, int) or delay_ms < 0:
        raise QueueInputError(f"delay_ms must be an int >= 0, got {delay_ms!r}")
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise QueueInputError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    if not isinstance(priority, int):
        raise QueueInputError(f"priority must be an int, got {priority!r}")
    if lease_ttl_ms is not None and (not isinstance(lease_ttl_ms, int) or lease_ttl_ms <= 0):
        raise QueueInputError(f"lease_ttl_ms must be an int > 0, got {lease_ttl_ms!r}")
