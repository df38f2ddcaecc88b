"""Graceful shutdown on SIGTERM, SIGINT and SIGQUIT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Protocol


class Destroyable(Protocol):
    """Anything with an async ``destroy``."""

    async def destroy(self) -> None: ...


SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


async def destroy_in_order(
    things: Sequence[Destroyable], *, timeout_s: float = 30.0, logger: logging.Logger | None = None
) -> int:
    """Destroy ``things`` one after another within ``timeout_s`` in total.

    Returns the exit code: 0 when all finished cleanly, 1 on an error or timeout.
    """
    log = logger or logging.getLogger("reference_services.shutdown")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    code = 0
    for thing in things:
        remaining = deadline - loop.time()
        name = type(thing).__name__
        if remaining <= 0:
            log.error("shutdown timed out before %s was destroyed", name)
            return 1
        try:
            await asyncio.wait_for(thing.destroy(), remaining)
        except TimeoutError:
            log.error("shutdown timed out while destroying %s", name)
            return 1
        except Exception:
            log.exception("destroying %s failed", name)
            code = 1
    return code


async def graceful_shutdown(
    things: Sequence[Destroyable],
    *,
    timeout_s: float = 30.0,
    logger: logging.Logger | None = None,
    signals: Sequence[signal.Signals] = SHUTDOWN_SIGNALS,
    stop: asyncio.Event | None = None,
) -> int:
    """Wait for a shutdown signal (or ``stop``), then destroy ``things`` in order.

    Returns the process exit code (0 clean, 1 error or timeout); a second
    signal during shutdown is ignored so handlers can finish.
    """
    log = logger or logging.getLogger("reference_services.shutdown")
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stop.wait()
        log.info("shutdown requested by %s", received[0] if received else "stop event")
        for sig in signals:
            loop.add_signal_handler(sig, lambda: None)
        return await destroy_in_order(things, timeout_s=timeout_s, logger=log)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
