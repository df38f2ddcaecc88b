"""Counts handlers in flight so that destroy can drain them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class InflightTracker:
    """A counter of running handlers with a wait-until-idle."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        """Handlers running now."""
        return self._count

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Mark one handler as running for the duration of the block."""
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no handler runs; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
