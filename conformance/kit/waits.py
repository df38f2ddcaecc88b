"""Waiting on conditions with deadlines; never a bare fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

#: seconds without progress after which a quick run stops waiting (see :func:`wait_for`)
QUICK_STALL_S = 2.0
_MODE = {"quick": False}


def set_quick(quick: bool) -> None:
    """Switch stall detection on for this process (the plugin calls it for ``--quick``)."""
    _MODE["quick"] = quick


async def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.005,
    *,
    failed: Callable[[], bool] | None = None,
    progress: Callable[[], object] | None = None,
) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes; return whether it held.

    Stops early, returning False, once ``failed()`` holds (the check already knows it
    failed: a duplicate, a reordering) and, in quick runs, once ``progress()`` (say, a
    delivery count) has not changed for :data:`QUICK_STALL_S`: a broken adapter gets its
    failure in seconds instead of the full timeout.
    """
    now = time.monotonic()
    deadline = now + timeout_s
    stall = QUICK_STALL_S if progress is not None and _MODE["quick"] else None
    last = progress() if progress is not None else None
    since = now
    while True:
        if predicate():
            return True
        if failed is not None and failed():
            return False
        now = time.monotonic()
        if now >= deadline:
            return False
        if stall is not None and progress is not None:
            current = progress()
            if current != last:
                last, since = current, now
            elif now - since >= stall:
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
