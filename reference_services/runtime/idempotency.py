"""Idempotency: a side effect happens once per key, even when a message arrives twice.

A claim is created atomically (``set_if_absent``) with a ttl; the owner runs
the effect and records ``done`` with its result. A second delivery finds
``done`` and returns the recorded result; one that finds a live claim waits
for it; one that finds an expired claim (its owner crashed) takes over.
A failing effect releases its claim so that a retry can run it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.ids import new_id
from reference_services.runtime.spi.protocols import StateStore

T = TypeVar("T")


class IdempotencyConflict(UnhandledError):
    """Another worker holds the claim and did not finish in time (409, retryable)."""

    default_status = StatusCode.CONFLICT


class Idempotency:
    """Run effects at most once per key, backed by a state store."""

    def __init__(
        self,
        store: StateStore,
        *,
        prefix: str = "idempotency",
        claim_ttl_s: float = 30.0,
        wait_s: float | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.claim_ttl_s = claim_ttl_s
        self.wait_s = claim_ttl_s + 1 if wait_s is None else wait_s
        self.poll_s = poll_s
        self.owner = new_id()

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    async def run_once(self, key: str, effect: Callable[[], Awaitable[T]]) -> T:
        """Run ``effect`` unless it already ran for ``key``; return its (recorded) result."""
        name = self._key(key)
        deadline = time.monotonic() + self.wait_s
        while True:
            claim = {"state": "pending", "owner": self.owner, "at": time.time()}
            if await self.store.set_if_absent(name, claim, ttl_s=self.claim_ttl_s):
                break
            current = (await self.store.get(name)).get(name)
            if isinstance(current, dict) and current.get("state") == "done":
                return current.get("result")  # type: ignore[return-value]
            if time.monotonic() >= deadline:
                raise IdempotencyConflict(f"effect {key!r} is claimed by another worker")
            await asyncio.sleep(self.poll_s)
        try:
            result = await effect()
        except BaseException:
            await self.store.remove(name)
            raise
        await self.store.set(name, {"state": "done", "owner": self.owner, "result": result})
        return result

    async def was_done(self, key: str) -> bool:
        """Whether the effect for ``key`` completed."""
        name = self._key(key)
        current = (await self.store.get(name)).get(name)
        return isinstance(current, dict) and current.get("state") == "done"
