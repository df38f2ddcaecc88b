"""Graceful shutdown on SIGTERM, SIGINT and SIGQUIT.

One deadline (``timeout_s``) is shared by every step: each step gets what is
left of it, minus a short ``grace_s`` reserved for every step after it, so a
slow step cannot eat the time the later ones need to close their connections.
A step that times out or fails is named and the remaining steps are still
destroyed; an event bridge whose destroy is cut short in its drain still rejects
its pending invocations and closes its connection (``CLOSE_AFTER_CUT_S``).
Install the signal handlers (:class:`ShutdownSignals`) *before* connecting to
anything, so that a signal during a slow start-up still ends in a shutdown that
closes what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
DEFAULT_GRACE_S = 0.5


class Destroyable(Protocol):
    """Anything with an async ``destroy``."""

    async def destroy(self) -> None: ...


class Startable(Destroyable, Protocol):
    """Anything with async ``start`` and ``destroy``."""

    async def start(self) -> None: ...


@dataclass
class ShutdownResult:
    """What a shutdown did: the exit code and the steps that timed out or failed."""

    timed_out: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def code(self) -> int:
        """0 when every step finished cleanly (and no reason was given), else 1."""
        return 1 if self.timed_out or self.failed or self.reason else 0

    def summary(self) -> str:
        """One line naming what went wrong (or ``clean``)."""
        parts = [self.reason] if self.reason else []
        if self.timed_out:
            parts.append("timed out: " + ", ".join(self.timed_out))
        if self.failed:
            parts.append("failed: " + ", ".join(self.failed))
        return "; ".join(parts) or "clean"


def describe(thing: Any) -> str:
    """A name for a step in logs: the class, and the adapter name when it has one."""
    name = getattr(thing, "name", None)
    cls = type(thing).__name__
    return f"{cls}({name})" if isinstance(name, str) and name and name != cls else cls


async def destroy_all(
    things: Sequence[Destroyable],
    *,
    timeout_s: float = 30.0,
    grace_s: float = DEFAULT_GRACE_S,
    logger: logging.Logger | None = None,
    result: ShutdownResult | None = None,
) -> ShutdownResult:
    """Destroy ``things`` in order under one deadline; every one of them, whatever happens."""
    log = logger or logging.getLogger("reference_services.shutdown")
    result = result or ShutdownResult()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for index, thing in enumerate(things):
        name = describe(thing)
        later = len(things) - index - 1
        budget = max(deadline - loop.time() - grace_s * later, min(grace_s, timeout_s))
        try:
            await asyncio.wait_for(thing.destroy(), budget)
        except TimeoutError:
            log.error("shutdown: destroying %s timed out after %.2fs", name, budget)
            result.timed_out.append(name)
        except Exception:
            log.exception("shutdown: destroying %s failed", name)
            result.failed.append(name)
    if result.code:
        log.error("shutdown incomplete: %s", result.summary())
    else:
        log.info("shutdown complete")
    return result


async def destroy_in_order(
    things: Sequence[Destroyable], *, timeout_s: float = 30.0, logger: logging.Logger | None = None
) -> int:
    """Destroy ``things`` (see :func:`destroy_all`); the exit code: 0 clean, 1 otherwise."""
    return (await destroy_all(things, timeout_s=timeout_s, logger=logger)).code


class ShutdownSignals:
    """Shutdown signal handlers on the running loop; ``stop`` is set by the first signal.

    Later signals are ignored (handlers get to finish). Use as ``async with``, or
    call :meth:`install` and :meth:`remove`.
    """

    def __init__(
        self,
        signals: Sequence[signal.Signals] = SHUTDOWN_SIGNALS,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.signals = tuple(signals)
        self.stop = stop or asyncio.Event()
        self.received: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> ShutdownSignals:
        self._loop = asyncio.get_running_loop()
        for sig in self.signals:
            self._loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def _on_signal(self, sig: signal.Signals) -> None:
        self.received.append(sig.name)
        self.stop.set()

    @property
    def cause(self) -> str:
        """What asked for the shutdown."""
        return self.received[0] if self.received else "stop event"

    def remove(self) -> None:
        if self._loop is None:
            return
        for sig in self.signals:
            with contextlib.suppress(Exception):
                self._loop.remove_signal_handler(sig)
        self._loop = None

    async def __aenter__(self) -> ShutdownSignals:
        return self.install()

    async def __aexit__(self, *exc: object) -> None:
        self.remove()


class StartupInterrupted(Exception):
    """A shutdown was requested before start-up finished."""

    def __init__(self, cause: str, pending: str) -> None:
        super().__init__(f"shutdown requested by {cause} while starting {pending}")
        self.cause = cause
        self.pending = pending


async def start_in_order(
    parts: Sequence[Startable], signals: ShutdownSignals, started: list[Any]
) -> None:
    """Start ``parts`` one after another, appending each to ``started`` once it started.

    A shutdown signal cancels the start in progress and raises
    :class:`StartupInterrupted` naming it; the part being started is appended to
    ``started`` too (it may hold half-open connections), so destroy them all.
    """
    for part in parts:
        starting = asyncio.ensure_future(part.start())
        stopping = asyncio.ensure_future(signals.stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(starting, DEFAULT_GRACE_S)
            started.append(part)
            raise StartupInterrupted(signals.cause, describe(part))
        started.append(part)
        starting.result()  # a failed start raises here


async def graceful_shutdown(
    things: Sequence[Destroyable],
    *,
    timeout_s: float = 30.0,
    logger: logging.Logger | None = None,
    signals: Sequence[signal.Signals] = SHUTDOWN_SIGNALS,
    stop: asyncio.Event | None = None,
    handlers: ShutdownSignals | None = None,
) -> int:
    """Wait for a shutdown signal (or ``stop``), then destroy ``things`` in order.

    Pass ``handlers`` when they were installed earlier (before connecting).
    Returns the process exit code (0 clean, 1 error or timeout).
    """
    log = logger or logging.getLogger("reference_services.shutdown")
    own = handlers is None
    active = handlers if handlers is not None else ShutdownSignals(signals, stop).install()
    try:
        await active.stop.wait()
        log.info("shutdown requested by %s", active.cause)
        result = await destroy_all(things, timeout_s=timeout_s, logger=log)
        return result.code
    finally:
        if own:
            active.remove()
