"""Delays over a range, in flight at once: ``enqueue(delay_ms)`` and ``nack(delay_ms)``.

Each job must stay unleasable until its delay passed (20 ms early at most, for clock
granularity) and become leasable soon after: within a quarter of the delay plus a fixed
margin for polling and scheduling.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest

QB = ("queue_bridge",)
EARLY_MS = 20.0
LATE_FRACTION = 0.25
LATE_MARGIN_MS = 300.0


def _delays(aut: AdapterUnderTest) -> list[int]:
    return [150, 500, 1200]


async def _lease_times(q: Any, queue: str, want: int, timeout_s: float) -> dict[str, float]:
    """Lease every job as soon as it is leasable; the monotonic time each one came."""
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for job in await q.lease_next(queue, 10):
            got[job.payload["key"]] = time.monotonic()
            await q.ack(job)
        await asyncio.sleep(0.005)
    return got


def _judge(due: dict[str, tuple[float, int]], got: dict[str, float], what: str) -> None:
    bad = []
    for key, (start, delay_ms) in due.items():
        if key not in got:
            bad.append(f"{key}: never leasable (delay {delay_ms} ms)")
            continue
        waited = (got[key] - start) * 1000
        late = delay_ms * (1 + LATE_FRACTION) + LATE_MARGIN_MS
        if waited < delay_ms - EARLY_MS:
            bad.append(f"{key}: leased after {waited:.0f} ms, before its {delay_ms} ms delay")
        elif waited > late:
            bad.append(f"{key}: leased after {waited:.0f} ms, {delay_ms} ms delay (max {late:.0f})")
    assert not bad, f"{what}: " + "; ".join(bad)


@check("queue_bridge.delays.enqueue", kinds=QB, needs=("delayed_jobs",))
async def test_enqueue_delays(aut: AdapterUnderTest) -> None:
    """Jobs enqueued at once with delays from 150 ms to 1.2 s each become leasable at their
    delay: not before, and not much after."""
    q = await aut.new()
    due: dict[str, tuple[float, int]] = {}
    for delay in _delays(aut):
        for n in range(2):
            key = f"d{delay}-{n}"
            due[key] = (time.monotonic(), delay)
            await q.enqueue("delays", {"key": key}, delay_ms=delay)
    got = await _lease_times(q, "delays", len(due), max(_delays(aut)) / 1000 * 2 + 5)
    _judge(due, got, "enqueue(delay_ms)")
    aut.metric("waited_ms", {k: round((got[k] - due[k][0]) * 1000) for k in got})


@check("queue_bridge.delays.nack", kinds=QB, needs=("delayed_jobs",))
async def test_nack_delays(aut: AdapterUnderTest) -> None:
    """Jobs nacked at once with delays from 150 ms to 1.2 s are leased again at their delay:
    not before, and not much after."""
    q = await aut.new()
    delays = {f"n{d}-{n}": d for d in _delays(aut) for n in range(2)}
    for key in delays:
        await q.enqueue("nacks", {"key": key}, max_attempts=5)
    leased: list[Any] = []
    deadline = time.monotonic() + 10
    while len(leased) < len(delays) and time.monotonic() < deadline:
        leased += await q.lease_next("nacks", len(delays) - len(leased))
    assert len(leased) == len(delays), f"leased {len(leased)} of {len(delays)} fresh jobs"
    due: dict[str, tuple[float, int]] = {}
    for job in leased:
        key = job.payload["key"]
        due[key] = (time.monotonic(), delays[key])
        outcome = await q.nack(job, "try later", delay_ms=delays[key])
        assert outcome == "retry", f"nack of {key} at attempt 1 of 5 gave {outcome!r}"
    got = await _lease_times(q, "nacks", len(due), max(delays.values()) / 1000 * 2 + 5)
    _judge(due, got, "nack(delay_ms)")
    aut.metric("waited_ms", {k: round((got[k] - due[k][0]) * 1000) for k in got})
