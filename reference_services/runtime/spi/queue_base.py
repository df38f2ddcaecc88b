"""QueueBridgeBase: what every queue bridge does the same way, around transport hooks.

The base owns argument validation (one rule per argument, one message naming
it), the life cycle (``start``/``destroy`` idempotent; any operation before
``start`` or after ``destroy`` raises :class:`QueueNotRunningError`, 503),
the in-flight count ``destroy`` drains (once, bounded by ``drain_timeout_s``),
and the defaults for ``max_attempts`` and ``lease_ttl_ms``. A transport
implements the ``_`` hooks and receives validated, normalised arguments.

Idempotency keys: ``None`` means "no key"; any other value must be a
non-empty string. ``""`` is rejected (400) rather than treated as a key or as
"no key": it is what a missing value formatted into a key looks like, and
as a key it would silently collapse every such job into the first one.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from reference_services.runtime.queue import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_MAX_ATTEMPTS,
    DeadLetterJob,
    Job,
    LeaseInfo,
    NackOutcome,
    QueueInputError,
    QueueMetrics,
    QueueNotRunningError,
    validate_enqueue,
)
from reference_services.runtime.spi.capabilities import QueueBridgeCapabilities
from reference_services.runtime.spi.inflight import InflightTracker

__all__ = [
    "EnqueueRequest",
    "QueueBridgeBase",
    "QueueState",
    "json_copy",
    "validate_idempotency_key",
    "validate_queue_name",
]

log = logging.getLogger("reference_services.queue")

QueueState = Literal["created", "running", "destroyed"]


def json_copy(value: Any, what: str) -> Any:
    """A JSON round-trip copy of ``value``; a 400 naming ``what`` when it is not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise QueueInputError(f"{what} is not JSON: {exc}") from None


def validate_queue_name(queue: Any) -> None:
    """A queue name is a non-empty string."""
    if not isinstance(queue, str) or not queue:
        raise QueueInputError(f"queue must be a non-empty string, got {queue!r}")


def validate_idempotency_key(key: Any) -> None:
    """``None`` (no key) or a non-empty string; ``""`` is rejected (see the module docstring)."""
    if key is not None and (not isinstance(key, str) or not key):
        raise QueueInputError(f"idempotency_key must be a non-empty string, got {key!r}")


@dataclass(frozen=True)
class EnqueueRequest:
    """Validated enqueue arguments: JSON copies of the values, defaults applied."""

    queue: str
    payload: Any
    parameter: Any
    headers: dict[str, str]
    max_attempts: int
    priority: int
    lease_ttl_ms: int
    delay_ms: int
    idempotency_key: str | None


class QueueBridgeBase(ABC):
    """Base of queue bridges: validation and life cycle here, transport in the ``_`` hooks."""

    kind: ClassVar[Literal["queue_bridge"]] = "queue_bridge"
    name: ClassVar[str] = "base"
    capabilities: QueueBridgeCapabilities = QueueBridgeCapabilities()

    def __init__(
        self,
        *,
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        default_lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.default_max_attempts = default_max_attempts
        self.default_lease_ttl_ms = default_lease_ttl_ms
        self.drain_timeout_s = drain_timeout_s
        self._state: QueueState = "created"
        self._ops = InflightTracker()

    # ---- what transports may read -----------------------------------------------------

    @property
    def state(self) -> QueueState:
        """``created`` until ``start``, ``running``, then ``destroyed`` once destroy began."""
        return self._state

    @property
    def running(self) -> bool:
        """True between a completed ``start`` and the beginning of ``destroy``."""
        return self._state == "running"

    @property
    def operations_in_flight(self) -> int:
        """Public operations running now."""
        return self._ops.count

    # ---- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the transport; a second ``start`` while running does nothing."""
        if self._state == "running":
            return
        await self._start_transport()
        self._state = "running"

    async def destroy(self) -> None:
        """Refuse new operations, let running ones finish (bounded), close; idempotent."""
        if self._state != "running":
            return
        self._state = "destroyed"
        await self._interrupt_waits()
        if not await self._ops.wait_idle(self.drain_timeout_s):
            log.warning(
                "%s queue bridge: %d operation(s) still running at destroy",
                self.name,
                self._ops.count,
            )
        await self._destroy_transport()

    async def is_ready(self) -> bool:
        """Running and the transport answers."""
        return self.running and await self._transport_ok()

    async def is_healthy(self) -> bool:
        """Not destroyed and the transport answers."""
        return self._state != "destroyed" and await self._transport_ok()

    def _require_running(self) -> None:
        if self._state == "created":
            raise QueueNotRunningError(f"the {self.name} queue bridge is not started")
        if self._state == "destroyed":
            raise QueueNotRunningError(f"the {self.name} queue bridge is destroyed")

    # ---- the queue contract ------------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        payload: Any,
        parameter: Any = None,
        *,
        delay_ms: int = 0,
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
        max_attempts: int | None = None,
        priority: int = 0,
        lease_ttl_ms: int | None = None,
    ) -> str:
        """Add a job; a known idempotency key returns the original job id."""
        validate_enqueue(queue, delay_ms, max_attempts, priority, lease_ttl_ms)
        validate_idempotency_key(idempotency_key)
        request = EnqueueRequest(
            queue=queue,
            payload=json_copy(payload, "payload"),
            parameter=json_copy(parameter, "parameter"),
            headers=dict(headers or {}),
            max_attempts=max_attempts or self.default_max_attempts,
            priority=priority,
            lease_ttl_ms=lease_ttl_ms or self.default_lease_ttl_ms,
            delay_ms=delay_ms,
            idempotency_key=idempotency_key,
        )
        self._require_running()
        with self._ops.track():
            return await self._enqueue(request)

    async def lease_next(
        self, queue: str, batch: int = 1, wait_ms: int = 0, *, worker_id: str | None = None
    ) -> list[Job]:
        """Lease up to ``batch`` ready jobs, waiting up to ``wait_ms`` for one."""
        if not isinstance(batch, int) or batch < 1:
            raise QueueInputError(f"batch must be an int >= 1, got {batch!r}")
        validate_queue_name(queue)
        self._require_running()
        with self._ops.track():
            return await self._lease(queue, batch, max(wait_ms, 0), worker_id)

    async def extend_lease(self, job: Job, lease_ttl_ms: int | None = None) -> Job:
        """Push the lease's expiry out by ``lease_ttl_ms`` (default: the job's ttl) from now."""
        self._require_running()
        with self._ops.track():
            return await self._extend_lease(job, lease_ttl_ms)

    async def ack(self, job: Job) -> None:
        """Finish a job; a stale lease raises :class:`LeaseExpiredError`."""
        self._require_running()
        with self._ops.track():
            await self._ack(job)

    async def nack(
        self, job: Job, reason: str | None = None, delay_ms: int | None = None
    ) -> NackOutcome:
        """Give a job back: retried after ``delay_ms``, or dead-lettered at max attempts."""
        self._require_running()
        with self._ops.track():
            return await self._nack(job, reason, max(delay_ms or 0, 0))

    async def move_to_dead_letter(self, job: Job, reason: str) -> None:
        """Dead-letter a leased job now, whatever its attempt count."""
        self._require_running()
        with self._ops.track():
            await self._move_to_dead_letter(job, reason)

    async def peek_dead_letter(self, queue: str, limit: int = 100) -> list[DeadLetterJob]:
        """Dead letters in the order they arrived, oldest first (none for ``limit`` <= 0)."""
        validate_queue_name(queue)
        self._require_running()
        if limit <= 0:
            return []
        with self._ops.track():
            return await self._peek_dead_letter(queue, limit)

    async def redrive_dead_letter(self, queue: str, job_ids: list[str] | None = None) -> int:
        """Move dead letters (all, or ``job_ids``) back to the queue with fresh attempts."""
        validate_queue_name(queue)
        self._require_running()
        with self._ops.track():
            return await self._redrive_dead_letter(queue, job_ids)

    async def purge_dead_letter(self, queue: str) -> int:
        """Delete every dead letter of ``queue``; returns how many."""
        validate_queue_name(queue)
        self._require_running()
        with self._ops.track():
            return await self._purge_dead_letter(queue)

    async def inspect_leases(self, queue: str) -> list[LeaseInfo]:
        """Active (unexpired) leases of ``queue``."""
        validate_queue_name(queue)
        self._require_running()
        with self._ops.track():
            return await self._inspect_leases(queue)

    async def metrics(self, queue: str) -> QueueMetrics:
        """Depth figures of ``queue``."""
        validate_queue_name(queue)
        self._require_running()
        with self._ops.track():
            return await self._metrics(queue)

    # ---- transport hooks ---------------------------------------------------------------

    @abstractmethod
    async def _start_transport(self) -> None:
        """Connect and declare; raise to leave the bridge not started."""

    @abstractmethod
    async def _destroy_transport(self) -> None:
        """Close connections; running operations have finished (or the drain timed out)."""

    async def _interrupt_waits(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called as destroy begins: end blocking waits early if the transport can."""

    @abstractmethod
    async def _transport_ok(self) -> bool:
        """Whether the transport answers now (behind ``is_ready``/``is_healthy``)."""

    @abstractmethod
    async def _enqueue(self, request: EnqueueRequest) -> str: ...

    @abstractmethod
    async def _lease(
        self, queue: str, batch: int, wait_ms: int, worker_id: str | None
    ) -> list[Job]: ...

    @abstractmethod
    async def _extend_lease(self, job: Job, lease_ttl_ms: int | None) -> Job: ...

    @abstractmethod
    async def _ack(self, job: Job) -> None: ...

    @abstractmethod
    async def _nack(self, job: Job, reason: str | None, delay_ms: int) -> NackOutcome: ...

    @abstractmethod
    async def _move_to_dead_letter(self, job: Job, reason: str) -> None: ...

    @abstractmethod
    async def _peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]: ...

    @abstractmethod
    async def _redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int: ...

    @abstractmethod
    async def _purge_dead_letter(self, queue: str) -> int: ...

    @abstractmethod
    async def _inspect_leases(self, queue: str) -> list[LeaseInfo]: ...

    @abstractmethod
    async def _metrics(self, queue: str) -> QueueMetrics: ...
