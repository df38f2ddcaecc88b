"""Waiting on conditions with deadlines; never a bare fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.005
) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)


async def wait_for_async(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.05
) -> bool:
    """Like :func:`wait_for` for an async predicate (exceptions count as False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await asyncio.wait_for(predicate(), max(interval_s, 1.0)):
                return True
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)


async def wait_quiet(
    value: Callable[[], object], quiet_s: float = 0.3, timeout_s: float = 3.0
) -> bool:
    """Wait until ``value()`` stays unchanged for ``quiet_s`` (proves nothing more arrives).

    Returns False if it kept changing for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    last = value()
    since = time.monotonic()
    while True:
        await asyncio.sleep(min(0.01, quiet_s))
        now = time.monotonic()
        current = value()
        if current != last:
            last, since = current, now
        elif now - since >= quiet_s:
            return True
        if now >= deadline:
            return False


class Stopwatch:
    """Elapsed seconds since creation."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the stopwatch was created."""
        return time.monotonic() - self.start
