"""A fault-workload service, run as a real OS process by the conformance faults suite.

``python -m reference_services.deploy.faultwork`` serves one service,
``faultwork`` v1, with a durable shared subscription to ``fault.work`` events
and a worker of the ``faultjobs`` queue. Each handler writes ``start``, then
runs its side effect (an ``effect`` line plus a state-store write) through the
idempotency helper (``recorded`` once the helper has marked it done), then
takes ``SERVICE_CONFIG_DELAY_MS`` more (the window in which a SIGKILL lands
mid-handler), then writes ``done``. Lines are JSON,
appended with one ``write`` each to ``SERVICE_CONFIG_LOG``, so they survive a SIGKILL.

Environment, besides the usual deployment variables (EVENT_BRIDGE, QUEUE_BRIDGE,
STORE, *_URL, PURISTA_PREFIX, SHUTDOWN_TIMEOUT_S): ``FAULTWORK_INSTANCE_ID``
(reuse it on restart to get a persistent session back), ``FAULTWORK_EVENT_OPTS``
and ``FAULTWORK_QUEUE_OPTS`` (JSON constructor options, e.g. short heartbeats),
``SERVICE_CONFIG_IDEMPOTENT=false`` (run effects without the helper, to show the
suite catches it) and ``SERVICE_CONFIG_CLAIM_TTL_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

from reference_services.deploy.config import DeploymentConfig
from reference_services.deploy.factory import make_event_bridge, make_queue_bridge, make_stores
from reference_services.deploy.process import Adapters, start_parts, stopped
from reference_services.runtime.context import Context
from reference_services.runtime.definitions import FailureHandling
from reference_services.runtime.messages import AnyMessage
from reference_services.runtime.queue import Job
from reference_services.runtime.retry import RetryPolicy
from reference_services.runtime.service import ServiceBuilder
from reference_services.runtime.shutdown import ShutdownSignals, destroy_all

EVENT = "fault.work"
QUEUE = "faultjobs"

faultwork_v1 = ServiceBuilder("faultwork", "1", "Fault-suite workload: logged, idempotent work")
log = logging.getLogger("reference_services.deploy.faultwork")
_fd: dict[str, int] = {}


def _write(ctx: Context, event: str, msg_id: str) -> None:
    path = str(ctx.config.get("log", ""))
    if not path:
        return
    if path not in _fd:
        _fd[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = {
        "t": time.time(),
        "ev": event,
        "id": msg_id,
        "pid": os.getpid(),
        "inst": ctx.bridge.instance_id,
    }
    os.write(_fd[path], (json.dumps(line) + "\n").encode())


async def _handle(ctx: Context, msg_id: str) -> None:
    _write(ctx, "start", msg_id)
    state = ctx.stores.state

    async def effect() -> int:
        _write(ctx, "effect", msg_id)
        if state is not None:
            await state.set(f"faultwork:effect:{msg_id}", {"pid": os.getpid()})
        return os.getpid()

    if str(ctx.config.get("idempotent", "true")).lower() != "false" and ctx.idempotency:
        await ctx.idempotency.run_once(f"work:{msg_id}", effect)
    else:
        await effect()
    _write(ctx, "recorded", msg_id)  # the helper has recorded the effect as done
    await asyncio.sleep(float(ctx.config.get("delay_ms", 200)) / 1000)
    _write(ctx, "done", msg_id)


@faultwork_v1.subscription(
    "onWork",
    event_name=EVENT,
    shared=True,
    durable=True,
    failure=FailureHandling(max_attempts=50, retry_delay_ms=100),
)
async def on_work(ctx: Context, message: AnyMessage) -> None:
    """Handle one ``fault.work`` event."""
    await _handle(ctx, str(message.payload["id"]))


@faultwork_v1.queue_worker(
    QUEUE, retry=RetryPolicy(max_attempts=50, retry_delay_ms=100), wait_ms=200, concurrency=4
)
async def on_job(ctx: Context, job: Job) -> None:
    """Handle one ``faultjobs`` job."""
    await _handle(ctx, str(job.payload["id"]))


def _opts(var: str) -> dict[str, Any]:
    opts: dict[str, Any] = json.loads(os.environ.get(var) or "{}")
    return opts


async def serve() -> int:
    """Start the service on the configured adapters, serve until SIGTERM, drain, exit."""
    cfg = DeploymentConfig.from_env()
    event_opts = _opts("FAULTWORK_EVENT_OPTS")
    if os.environ.get("FAULTWORK_INSTANCE_ID"):
        event_opts["instance_id"] = os.environ["FAULTWORK_INSTANCE_ID"]
    queue_opts = _opts("FAULTWORK_QUEUE_OPTS")
    instance_id = os.environ.get("FAULTWORK_INSTANCE_ID")
    adapters = Adapters(
        make_event_bridge(cfg, **event_opts),
        make_queue_bridge(cfg, instance_id=instance_id, **queue_opts),
        make_stores(cfg),
    )
    bridge, queue, stores = adapters.bridge, adapters.queue, adapters.stores
    instance = adapters.instance(faultwork_v1, dict(cfg.service_config))
    if instance.idempotency is not None:
        ttl = float(cfg.service_config.get("claim_ttl_s", 5))
        instance.idempotency.claim_ttl_s = ttl
        instance.idempotency.wait_s = ttl + 1
    async with ShutdownSignals() as signals:  # before connecting: a SIGTERM now still drains
        code = await start_parts(
            [*adapters.parts, instance], signals, cfg.shutdown_timeout_s, log
        )
        if code is not None:
            return code
        print(f"READY faultwork instance={bridge.instance_id} pid={os.getpid()}", flush=True)
        order = [instance, bridge, queue, stores.state, stores.config, stores.secret]
        await signals.stop.wait()
        log.info("shutdown requested by %s", signals.cause)
        result = await destroy_all(order, timeout_s=cfg.shutdown_timeout_s, logger=log)
    return stopped(result)


def main() -> int:
    """Entry point."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
