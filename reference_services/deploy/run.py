"""Run services as a long-lived process: monolith, microservice or edge."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_event_bridge, make_queue_bridge, make_stores
from reference_services.deploy.process import Adapters, start_parts, stopped
from reference_services.deploy.telemetry_file import configure
from reference_services.runtime.health import HealthServer
from reference_services.runtime.service import ServiceInstance
from reference_services.runtime.shutdown import ShutdownSignals, destroy_all
from reference_services.services import ALL_SERVICES

log = logging.getLogger("reference_services.deploy")


def service_config(cfg: DeploymentConfig) -> dict[str, Any]:
    """Service config from ``SERVICE_CONFIG_*`` variables, typed where services need it."""
    out: dict[str, Any] = dict(cfg.service_config)
    for listed in ("gateway_blocked_customers", "gateway_slow_customers"):
        if isinstance(out.get(listed), str):
            out[listed] = tuple(x for x in out[listed].split(",") if x)
    if "gateway_latency_ms" in out:
        out["gateway_latency_ms"] = int(out["gateway_latency_ms"])
    if "threshold" in out:
        out["threshold"] = float(out["threshold"])
    return out


async def run(cfg: DeploymentConfig, services: tuple[str, ...], *, ready_line: bool = True) -> int:
    """Start ``services`` on the configured adapters, serve until a signal, then shut down."""
    unknown = [s for s in services if s not in ALL_SERVICES]
    if unknown:
        raise ValueError(f"unknown service(s) {unknown}; known: {sorted(ALL_SERVICES)}")
    stop_telemetry = configure(os.environ)
    try:
        return await _run(cfg, services, ready_line=ready_line)
    finally:
        if stop_telemetry is not None:
            stop_telemetry()


async def _run(cfg: DeploymentConfig, services: tuple[str, ...], *, ready_line: bool) -> int:
    bridge = make_event_bridge(cfg)
    adapters = Adapters(
        bridge, make_queue_bridge(cfg, instance_id=bridge.instance_id), make_stores(cfg)
    )
    queue, stores = adapters.queue, adapters.stores
    instances: list[ServiceInstance] = [
        adapters.instance(ALL_SERVICES[name], service_config(cfg)) for name in services
    ]
    health = None
    if cfg.health_port is not None:
        health = HealthServer(
            [bridge, queue, *instances], host=cfg.health_host, port=cfg.health_port
        )
    async with ShutdownSignals() as signals:  # before connecting: a SIGTERM now still drains
        # a signal or a failure while the services or the health server start stops too
        parts = [*adapters.parts, *instances, *([health] if health is not None else [])]
        code = await start_parts(parts, signals, cfg.shutdown_timeout_s, log)
        if code is not None:
            return code
        if ready_line:
            print(f"READY {' '.join(services)} instance={bridge.instance_id}", flush=True)
        # services first (stop intake, drain), then the bridge (drain, reject pending), the rest
        order: list[Any] = [
            *reversed(instances),
            bridge,
            queue,
            stores.state,
            stores.config,
            stores.secret,
        ]
        if health is not None:
            order.append(health)
        await signals.stop.wait()
        log.info("shutdown requested by %s", signals.cause)
        result = await destroy_all(order, timeout_s=cfg.shutdown_timeout_s, logger=log)
    return stopped(result)


def main(argv: list[str] | None = None) -> int:
    """``python -m reference_services.deploy monolith|microservice|edge [--service NAME]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m reference_services.deploy")
    parser.add_argument("pattern", choices=["monolith", "microservice", "edge"])
    parser.add_argument("--service", action="append", help="service to run (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = DeploymentConfig.from_env()
    if args.pattern == "edge":
        services = tuple(args.service or ["sensor"])
    elif args.pattern == "microservice":
        if not args.service or len(args.service) != 1:
            parser.error("microservice runs exactly one --service")
        services = tuple(args.service)
    else:
        services = tuple(args.service or cfg.services)
    return asyncio.run(run(cfg, services))


if __name__ == "__main__":
    sys.exit(main())
