"""aio-pika's robust connection with exponential reconnect backoff.

aio-pika waits a fixed ``reconnect_interval`` between attempts; this
subclass grows the wait while the broker stays away (doubling from
``reconnect_interval`` up to ``max_reconnect_interval``) and resets it once
connected again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika import RobustConnection


class BackoffRobustConnection(RobustConnection):
    """A :class:`aio_pika.RobustConnection` whose reconnect wait backs off."""

    def __init__(self, *args: Any, max_reconnect_interval: float = 5.0, **kwargs: Any) -> None:
        self._base_interval = 1.0
        self._current_interval = 1.0
        self.max_reconnect_interval = max_reconnect_interval
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def reconnect_interval(self) -> float:
        """The wait before the next attempt; each read while disconnected doubles the next."""
        value = self._current_interval
        if not self.connected.is_set():
            self._current_interval = min(self._current_interval * 2, self.max_reconnect_interval)
        return value

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._base_interval = float(value)
        self._current_interval = float(value)

    async def _on_connected(self) -> None:
        self._current_interval = self._base_interval
        await super()._on_connected()

    @property
    def down(self) -> bool:
        """True while the transport is not connected."""
        return not self.connected.is_set()


async def wait_connected(connection: RobustConnection, timeout_s: float) -> bool:
    """Wait until ``connection`` is connected; False after ``timeout_s``."""
    if connection.connected.is_set():
        return True  # the usual case: no timer, no task for every publish
    try:
        await asyncio.wait_for(connection.connected.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
