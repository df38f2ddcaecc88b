"""Counts handlers in flight so that destroy can drain them."""

from __future__ import annotations

import asyncio
from types import TracebackType


class InflightTracker:
    """A counter of running handlers with a wait-until-idle."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._block = _Tracked(self)

    @property
    def count(self) -> int:
        """Handlers running now."""
        return self._count

    def track(self) -> _Tracked:
        """Mark one handler as running for the duration of the block (a ``with`` block;
        one shared object: tracking allocates nothing, ten thousand at once included)."""
        return self._block

    def _enter(self) -> None:
        self._count += 1
        self._idle.clear()

    def _exit(self) -> None:
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


class _Tracked:
    """The context manager :meth:`InflightTracker.track` returns (stateless, reentrant)."""

    __slots__ = ("_tracker",)

    def __init__(self, tracker: InflightTracker) -> None:
        self._tracker = tracker

    def __enter__(self) -> None:
        self._tracker._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tracker._exit()
