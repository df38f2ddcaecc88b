"""Network faults between an adapter and its broker, through a Toxiproxy proxy.

The server/worker instances and one producer connect through the proxy (with
short heartbeat/ping/reconnect timings); two producers connect directly. Each
check holds one fault while the workload runs, then measures recovery and
judges the history against the adapter's capabilities.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from conformance.checks.faults.engine import Fault, run_fault
from conformance.checks.faults.workload import make_workload
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest

KINDS = ("event_bridge", "queue_bridge")
HEARTBEAT_PLUS_S = 5.0  # > every tuned heartbeat/ping detection time (1-3 s)


@contextlib.asynccontextmanager
async def _toxics(proxy: Any, *contexts: Any) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for ctx in contexts:
            await stack.enter_async_context(ctx)
        yield


async def _run(
    aut: AdapterUnderTest, toxiproxy: Any, name: str, hold_s: float, faults: Any
) -> None:
    if not aut.spec.services:
        pytest.skip("no broker: nothing between the adapter and a broker to fault")
    direct = aut.ctx.url(aut.spec.services[0])
    parts = urlsplit(direct)
    proxy = await _create_proxy(toxiproxy, f"{parts.hostname}:{parts.port}", direct)
    try:
        workload = make_workload(aut, direct, proxy.url)
        fault = Fault(name, hold_s, lambda: _toxics(proxy, *faults(proxy)))
        try:
            await run_fault(aut, workload, fault)
        finally:
            await workload.close()
            await aut.close()
    finally:
        await proxy.adelete()


async def _create_proxy(toxiproxy: Any, upstream: str, url: str) -> Any:
    import asyncio
    import uuid

    return await asyncio.to_thread(
        toxiproxy.create_proxy, f"cf-{uuid.uuid4().hex[:10]}", upstream, url=url
    )


def _both(make: Any) -> Any:
    return lambda p: (make(p, "downstream"), make(p, "upstream"))


@check("faults.network.latency", kinds=KINDS)
async def test_latency(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """300 ms +- 150 ms latency both ways: nothing lost, invocations answer or fail in ttl."""
    await _run(
        aut,
        faults_toxiproxy,
        "latency",
        2.5,
        _both(lambda p, s: p.latency(300, jitter=150, stream=s)),
    )


@check("faults.network.bandwidth", kinds=KINDS)
async def test_bandwidth(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """Bandwidth limited to 4 KB/s both ways: slow, but nothing lost."""
    await _run(
        aut, faults_toxiproxy, "bandwidth", 2.5, _both(lambda p, s: p.bandwidth(4, stream=s))
    )


@check("faults.network.black_hole", kinds=KINDS, needs=("reconnect",))
async def test_black_hole(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """Every byte swallowed, connections left open, longer than the heartbeat: the adapter
    notices the dead connection, reconnects, and loses nothing acknowledged."""
    await _run(
        aut,
        faults_toxiproxy,
        "black_hole",
        HEARTBEAT_PLUS_S,
        _both(lambda p, s: p.black_hole(stream=s)),
    )


@check("faults.network.reset_peer", kinds=KINDS, needs=("reconnect",))
async def test_reset_peer(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """Connections reset (TCP RST) for 2 s, new ones too: reconnect, nothing lost."""
    await _run(
        aut, faults_toxiproxy, "reset_peer", 2.0, lambda p: (p.reset_peer(0, stream="downstream"),)
    )


@check("faults.network.down", kinds=KINDS, needs=("reconnect",))
async def test_down(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """The broker unreachable for 4 s (connections dropped, new ones refused)."""
    await _run(aut, faults_toxiproxy, "down", 4.0, lambda p: (p.down(),))


@check("faults.network.slicer", kinds=KINDS)
async def test_slicer(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """Data cut into ~16-byte packets 200 us apart: frames reassembled, nothing lost."""
    await _run(
        aut, faults_toxiproxy, "slicer", 2.5, _both(lambda p, s: p.slicer(16, 8, 200, stream=s))
    )


@check("faults.network.one_way_cut", kinds=KINDS, needs=("reconnect",))
async def test_one_way_cut(aut: AdapterUnderTest, faults_toxiproxy: Any) -> None:
    """Client-to-broker bytes swallowed while broker-to-client still flows (a half-open
    link), longer than the heartbeat: detected, reconnected, nothing lost."""
    await _run(
        aut,
        faults_toxiproxy,
        "one_way_cut",
        HEARTBEAT_PLUS_S,
        lambda p: (p.black_hole(stream="upstream"),),
    )
