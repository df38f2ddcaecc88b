"""A service process for the SIGTERM test: slow handlers fed by an in-process load.

Writes ``started <n>`` and ``finished <n>`` lines to the file given as argv[1]
and prints READY once work is flowing.
"""

from __future__ import annotations

import asyncio
import sys

from reference_services.adapters.memory.event_bridge import DefaultEventBridge
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.messages import Command, CommandPayload, SenderAddress
from reference_services.runtime.service import ServiceBuilder
from reference_services.runtime.shutdown import graceful_shutdown

worker = ServiceBuilder("worker", "1")
LOG = open(sys.argv[1], "a", buffering=1)


@worker.command("work")
async def work(ctx, payload, parameter):
    LOG.write(f"started {payload}\n")
    await asyncio.sleep(0.5)
    LOG.write(f"finished {payload}\n")
    return payload


async def main() -> int:
    bridge = DefaultEventBridge(drain_timeout_s=10)
    await bridge.start()
    instance = worker.get_instance(bridge)
    await instance.start()
    sender = SenderAddress(
        service_name="load", service_version="1", service_target="x", instance_id="l"
    )

    calls: set[asyncio.Future[None]] = set()

    async def load() -> None:
        n = 0
        while True:
            n += 1
            cmd = Command(
                sender=sender, receiver=worker.address("work"), payload=CommandPayload(payload=n)
            )
            calls.add(task := asyncio.ensure_future(_call(cmd)))
            task.add_done_callback(calls.discard)
            await asyncio.sleep(0.02)

    async def _call(cmd: Command) -> None:
        try:
            await bridge.invoke(cmd, 30)
        except PuristaError:
            pass

    feeder = asyncio.ensure_future(load())
    print("READY", flush=True)

    class StopFeeder:
        async def destroy(self) -> None:
            feeder.cancel()

    return await graceful_shutdown([StopFeeder(), instance, bridge], timeout_s=20)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
