"""Codec and in-memory bridge throughput: prints figures, asserts nothing."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc

from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.runtime.codec import decode, encode
from reference_services.runtime.definitions import Subscription
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandPayload,
    CustomMessage,
    SenderAddress,
    success_response,
)

SENDER = SenderAddress(
    service_name="bench", service_version="1", service_target="t", instance_id="i"
)
PAYLOAD = {"user": {"id": "u" * 32, "name": "Ada Lovelace", "tags": ["a", "b", "ü"]}, "n": 1.5}


def bench_codec(n: int = 20_000) -> None:
    message = CustomMessage(sender=SENDER, event_name="e", payload=PAYLOAD)
    raw = encode(message)
    start = time.perf_counter()
    for _ in range(n):
        encode(message)
    enc = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        decode(raw)
    dec = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        json.loads(raw)
    plain = time.perf_counter() - start
    print(
        f"codec: {len(raw)} B message; encode {n / enc:,.0f}/s, decode {n / dec:,.0f}/s "
        f"(json.loads alone {n / plain:,.0f}/s: validation is {dec / plain:.1f}x the parse)"
    )


async def bench_bridge(n: int = 5_000, trace_memory: bool = False) -> None:
    hub = MemoryHub()
    a, b = DefaultEventBridge(hub), DefaultEventBridge(hub)
    await a.start()
    await b.start()
    target = Address(service_name="s", service_version="1", service_target="echo")

    async def echo(cmd: Command):
        return success_response(cmd, cmd.payload.payload)

    await b.register_command(target, echo)
    done = asyncio.Event()
    seen = 0

    async def on_event(msg):
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    await b.register_subscription(
        Subscription(
            subscriber=Address(service_name="s", service_version="1", service_target="sub"),
            event_name="e",
        ),
        on_event,
    )
    if trace_memory:
        tracemalloc.start()
    start = time.perf_counter()
    await asyncio.gather(
        *(
            a.invoke(
                Command(sender=SENDER, receiver=target, payload=CommandPayload(payload=PAYLOAD))
            )
            for _ in range(n)
        )
    )
    invoke_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        await a.emit_message(CustomMessage(sender=SENDER, event_name="e", payload=PAYLOAD))
    await done.wait()
    emit_s = time.perf_counter() - start
    if trace_memory:
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"memory bridge: peak traced memory for {n} concurrent invokes and {n} events: "
            f"{peak / 2**20:.1f} MiB; pending after: {a.pending_invocations}"
        )
    else:
        print(
            f"memory bridge: {n} concurrent invokes {n / invoke_s:,.0f}/s; "
            f"{n} events {n / emit_s:,.0f}/s; pending after: {a.pending_invocations}"
        )
    await a.destroy()
    await b.destroy()


if __name__ == "__main__":
    bench_codec()
    asyncio.run(bench_bridge())
    asyncio.run(bench_bridge(trace_memory=True))
