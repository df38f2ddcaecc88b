"""A burst of invokes while the broker is frozen: every invoke ends within its ttl + 1 s,
no command runs after its caller gave up, and memory returns to its level before."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import time
from array import array
from collections import Counter
from typing import Any

import pytest

from conformance.kit import addr, command, responder
from conformance.kit.marks import check
from conformance.kit.skips import no_lifecycle
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from harness.errors import LifecycleFaultsUnavailable
from reference_services.runtime.errors import PuristaError

EB = ("event_bridge",)
TTL_S = 1.0
SLACK_S = 1.0
MEMORY_FACTOR = 1.1
BURST = 10_000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _settled_rss_mb() -> float:
    """Resident memory once garbage is collected and free heap handed back (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return _rss_mb()


def _census() -> Counter[str]:
    """Live objects by type (what a leak would show)."""
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


async def _sample_peak(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], _rss_mb())
        await asyncio.sleep(0.1)


@check("robustness.burst.paused_broker", kinds=EB, needs=("reconnect",))
async def test_burst_paused_broker(aut: AdapterUnderTest) -> None:
    """10,000 invokes with ttl 1 s while the broker is frozen (SIGSTOP): the slowest ends within
    ttl + 1 s, none runs after its caller gave up (also once the broker is thawed), and memory
    after the burst is within 10 % of before."""
    if not aut.spec.services:
        pytest.skip("no broker process to freeze")
    dedicated = aut.isolate()
    options = dict(aut.spec.fault_options)
    server = await aut.new(**options)
    client = await aut.new(**options)
    ended: dict[str, float] = {}
    late: list[float] = []
    runs = 0

    async def echo(cmd: Any) -> Any:
        nonlocal runs
        runs += 1
        if cmd.correlation_id in ended:
            late.append(time.monotonic() - ended[cmd.correlation_id])
        return {"ok": True}

    await server.register_command(addr("burst"), responder(echo))
    for _ in range(50):  # warm every path up before measuring
        await client.invoke(command(client, addr("burst"), {}), 10)
    handle = dedicated.get(aut.spec.services[0])
    if handle is None or not getattr(handle, "supports_lifecycle_faults", False):
        no_lifecycle(getattr(handle, "provider", "unknown"))
    n = aut.n(BURST, 500)
    # the commands exist before the burst (what is measured is the bridge, not building them)
    commands = [command(client, addr("burst"), {"i": i}) for i in range(n)]
    before = _settled_rss_mb()
    blocks_before = sys.getallocatedblocks()
    types_before = _census()
    warm_runs = runs
    statuses: Counter[str] = Counter()
    # an array, not a list of floats: 10,000 float objects made during the burst would pin
    # the allocator's arenas and read as memory the bridge did not give back
    latencies = array("d")

    async def one(i: int) -> None:
        cmd = commands[i]
        start = time.monotonic()
        try:
            await client.invoke(cmd, TTL_S)
            statuses["ok"] += 1
        except PuristaError as exc:
            statuses[str(exc.status)] += 1
        finally:
            ended[cmd.correlation_id] = time.monotonic()
            latencies.append(ended[cmd.correlation_id] - start)

    peak = [before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_peak(peak, stop))
    try:
        await asyncio.to_thread(handle.pause)
    except LifecycleFaultsUnavailable as exc:
        no_lifecycle(exc.provider)
    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await asyncio.to_thread(handle.resume)
    # thawed: whatever was queued reaches the server now; let it run (or not) to the end
    await wait_for(lambda: client.pending_invocations == 0, 30)
    await wait_quiet(lambda: (runs, len(late)), quiet_s=3.0, timeout_s=60)
    stop.set()
    await sampler
    ended.clear()
    latencies_sorted = sorted(latencies)
    after = _settled_rss_mb()
    # live Python objects (not judged): tells a leak from memory the allocator keeps
    aut.metric("allocated_blocks_before", blocks_before)
    aut.metric("allocated_blocks_after", sys.getallocatedblocks())
    aut.metric("objects_kept", dict((_census() - types_before).most_common(8)))
    slowest = latencies_sorted[-1]
    aut.metric("invokes", n)
    aut.metric("ttl_s", TTL_S)
    aut.metric("slowest_s", round(slowest, 3))
    aut.metric("p50_s", round(latencies_sorted[len(latencies_sorted) // 2], 3))
    aut.metric("statuses", dict(statuses))
    aut.metric("memory_before_mb", round(before, 1))
    aut.metric("memory_peak_mb", round(peak[0], 1))
    aut.metric("memory_after_mb", round(after, 1))
    aut.metric("executed_after_caller_gave_up", len(late))
    aut.metric("executed_during_burst", runs - warm_runs)
    core = getattr(client, "core", None)
    aut.metric("info_dropped", getattr(core, "info_dropped", None))
    server_core = getattr(server, "core", None)
    aut.metric("expired_not_started", getattr(server_core, "expired_commands", None))
    problems = []
    if slowest > TTL_S + SLACK_S:
        problems.append(f"the slowest invoke took {slowest:.2f}s (ttl {TTL_S}s + {SLACK_S}s)")
    if late:
        problems.append(f"{len(late)} command(s) ran after their caller gave up")
    if after > before * MEMORY_FACTOR:
        problems.append(f"memory {before:.0f} MB before, {after:.0f} MB after the burst")
    assert not problems, "; ".join(problems) + f" (statuses {dict(statuses)})"
