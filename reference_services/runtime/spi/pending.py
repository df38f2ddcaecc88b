"""The pending-invocation registry: one future per correlation id, nothing leaks."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass

from reference_services.runtime.errors import HandledError, PuristaError, StatusCode, UnhandledError
from reference_services.runtime.messages import CommandResponse


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[CommandResponse]
    timer: asyncio.TimerHandle
    #: what is invoked (str() of it names it in errors); an object the caller holds anyway
    description: object
    #: the command's trace id, which every error failing this waiter carries
    trace_id: str | None = None


class DuplicateCorrelationId(HandledError):
    """An invocation reused the correlation id of one still waiting (409)."""

    default_status = StatusCode.CONFLICT


class PendingInvocations:
    """Tracks invocations waiting for a response.

    A response resolves its entry once; a timeout fails it with 504; a late
    or unknown response is ignored (and counted). Entries are removed on every
    path, so the registry is empty when nothing is in flight.
    """

    def __init__(self, on_timeout: Callable[[str, str], None] | None = None) -> None:
        self._entries: dict[str, _Pending] = {}
        self._on_timeout = on_timeout
        self.late_responses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, correlation_id: object) -> bool:
        return correlation_id in self._entries

    def add(
        self,
        correlation_id: str,
        ttl_s: float,
        description: object = "",
        trace_id: str | None = None,
    ) -> asyncio.Future[CommandResponse]:
        """Register a waiter that fails with a 504 error after ``ttl_s`` seconds.

        A waiter given up on (cancelled, or its caller gone) must be handed to
        :meth:`discard`: the entry keeps no callback of its own (no closure per waiter)."""
        if correlation_id in self._entries:
            raise DuplicateCorrelationId(
                f"correlation id {correlation_id!r} is already pending: "
                "each invocation needs its own correlation id"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommandResponse] = loop.create_future()
        timer = loop.call_later(ttl_s, self._expire, correlation_id, ttl_s)
        self._entries[correlation_id] = _Pending(future, timer, description, trace_id)
        return future

    def resolve(self, response: CommandResponse) -> bool:
        """Hand a response to its waiter; False if none waits (late or unknown)."""
        entry = self._entries.pop(response.correlation_id, None)
        if entry is None or entry.future.done():
            self.late_responses += 1
            return False
        entry.timer.cancel()
        entry.future.set_result(response)
        return True

    def reject_all(self, error: PuristaError) -> int:
        """Fail every waiter with ``error`` (used by destroy: 503), each with a copy that
        carries its command's trace id."""
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            entry.timer.cancel()
            if not entry.future.done():
                own = copy.copy(error)
                own.trace_id = entry.trace_id
                entry.future.set_exception(own)
        return len(entries)

    def _expire(self, correlation_id: str, ttl_s: float) -> None:
        entry = self._entries.pop(correlation_id, None)
        if entry is None or entry.future.done():
            return
        entry.future.set_exception(
            UnhandledError(
                f"invocation {str(entry.description) or correlation_id} timed out after "
                f"{ttl_s:.3f}s",
                StatusCode.GATEWAY_TIMEOUT,
                trace_id=entry.trace_id,
            )
        )
        if self._on_timeout is not None:
            self._on_timeout(correlation_id, str(entry.description))

    def discard(self, correlation_id: str, future: asyncio.Future[CommandResponse]) -> None:
        """Give up on the waiter ``future`` (returned by :meth:`add`): cancel it and remove
        its entry and timer now (nothing of it stays until its ttl)."""
        entry = self._entries.get(correlation_id)
        if entry is not None and entry.future is future:
            entry.timer.cancel()
            del self._entries[correlation_id]
        future.cancel()
