"""What every deployment does around its services: the configured adapters, the services and
their health server, started in order (a shutdown signal or a failed start meanwhile destroys
what started), and the ``STOPPED`` line a process ends with."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reference_services.runtime.context import Stores
from reference_services.runtime.service import ServiceBuilder, ServiceInstance
from reference_services.runtime.shutdown import (
    ShutdownResult,
    ShutdownSignals,
    StartupInterrupted,
    destroy_all,
    start_in_order,
)


@dataclass
class Adapters:
    """One deployment's event bridge, queue bridge and stores."""

    bridge: Any
    queue: Any
    stores: Stores

    @property
    def parts(self) -> list[Any]:
        """All of them, in start order."""
        return [self.bridge, self.queue, self.stores.state, self.stores.config, self.stores.secret]

    def instance(self, builder: ServiceBuilder, config: dict[str, Any]) -> ServiceInstance:
        """An instance of ``builder``'s service on these adapters (not started)."""
        return builder.get_instance(
            self.bridge,
            state_store=self.stores.state,
            config_store=self.stores.config,
            secret_store=self.stores.secret,
            queue_bridge=self.queue,
            config=config,
        )


async def start_parts(
    parts: Sequence[Any], signals: ShutdownSignals, timeout_s: float, log: logging.Logger
) -> int | None:
    """Start ``parts`` (the adapters, then the service instances and the health server) in
    order: ``None`` once all run. A shutdown signal meanwhile destroys what started, prints
    the ``STOPPED`` line and returns the exit code; a failed start destroys what started
    and raises."""
    started: list[Any] = []
    try:
        await start_in_order(parts, signals, started)
    except StartupInterrupted as exc:
        log.error("%s; shutting down", exc)
        result = await destroy_all(
            list(reversed(started)),
            timeout_s=timeout_s,
            logger=log,
            result=ShutdownResult(reason=str(exc)),
        )
        return stopped(result)
    except BaseException:
        await destroy_all(list(reversed(started)), timeout_s=timeout_s, logger=log)
        raise
    return None


def stopped(result: ShutdownResult) -> int:
    """Print the ``STOPPED`` line of ``result`` (the deployment tests read it); its exit code."""
    print(f"STOPPED code={result.code} {result.summary()}", flush=True)
    return result.code
