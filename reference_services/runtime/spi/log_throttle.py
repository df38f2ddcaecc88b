"""Per-message log lines that a flood of bad input cannot turn into a flood of logs.

A publisher can send a bridge thousands of malformed, misrouted or expired messages a
second; each is counted on the bridge (``rejected_messages``, ``expired_commands``, ...)
and quarantined or answered as before, but its log line goes through a
:class:`LogThrottle`: the first of a kind is written at once, then at most one line per
``every_s`` seconds, which says how many lines of that kind it held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: default seconds between two lines of one kind
EVERY_S = 5.0


class LogThrottle:
    """Writes at most one record per kind every ``every_s`` seconds to ``logger``."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._every_s = every_s
        self._clock = clock
        #: per kind: when its last line was written, and how many were held back since
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless a line of ``kind`` was written less than ``every_s``
        ago (then count it as held back); True when it was written."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._every_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        held = self._held.pop(kind, 0)
        self._last[kind] = now
        if held:
            msg += " (and %d more like it in the last %.0fs, not logged)"
            args = (*args, held, now - last)  # type: ignore[operator]
        self._logger.log(level, msg, *args)
        return True

    def held_back(self, kind: str) -> int:
        """Lines of ``kind`` held back since its last written line."""
        return self._held.get(kind, 0)
