"""Broker process faults on a dedicated broker instance: SIGKILL + restart, SIGSTOP + SIGCONT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from conformance.checks.faults.engine import Fault, run_fault
from conformance.checks.faults.workload import make_workload
from conformance.kit.marks import check
from conformance.kit.skips import no_lifecycle
from conformance.kit.under_test import AdapterUnderTest
from harness.errors import LifecycleFaultsUnavailable

KINDS = ("event_bridge", "queue_bridge")
# the verdict follows these declarations (engine.expectations): no loss when they are declared
FOLLOWS = (
    "durable_subscriptions",
    "manual_ack",
    "survives_broker_restart",
    "durable",
    "durable_commands",
    "publisher_confirms",
)
DOWN_S = 1.5
PAUSE_S = 5.0


@contextlib.asynccontextmanager
async def _outage(stop: Callable[[], object], restore: Callable[[], object]) -> AsyncIterator[None]:
    """``stop()`` the broker (in a thread) for the block; ``restore()`` it when the block ends."""
    await asyncio.to_thread(stop)
    try:
        yield
    finally:
        await asyncio.to_thread(restore)


def _killed(handle: Any) -> AbstractAsyncContextManager[None]:
    """SIGKILL the broker; start it again (same port, same data) when the block ends."""
    return _outage(handle.kill, handle.start)


def _paused(handle: Any) -> AbstractAsyncContextManager[None]:
    """SIGSTOP the broker's process group; SIGCONT when the block ends."""
    return _outage(handle.pause, handle.resume)


async def _run(
    aut: AdapterUnderTest, dedicated: Any, fault: Any, name: str, hold_s: float, crash: bool
) -> None:
    if not aut.spec.services:
        pytest.skip("no broker process to fault")
    try:
        handle = await asyncio.to_thread(dedicated.get, aut.spec.services[0])
    except LifecycleFaultsUnavailable as exc:
        no_lifecycle(exc.provider)
    if not handle.supports_lifecycle_faults:
        no_lifecycle(handle.provider)
    workload = make_workload(aut, handle.url, handle.url)
    try:
        await run_fault(aut, workload, Fault(name, hold_s, lambda: fault(handle), crash=crash))
    finally:
        await workload.close()
        await aut.close()


@check("faults.broker.kill_restart", kinds=KINDS, needs=("reconnect",), exercises=FOLLOWS)
async def test_kill_restart(aut: AdapterUnderTest, faults_dedicated: Any) -> None:
    """The broker is SIGKILLed under load and restarted on the same port and data: every
    acknowledged message of a durable subscription / queue is still delivered."""
    await _run(aut, faults_dedicated, _killed, "broker_kill", DOWN_S, crash=True)


@check(
    "faults.broker.pause_resume",
    kinds=KINDS,
    needs=("reconnect",),
    exercises=FOLLOWS[:2] + FOLLOWS[3:4],
)
async def test_pause_resume(aut: AdapterUnderTest, faults_dedicated: Any) -> None:
    """The broker is frozen (SIGSTOP) longer than the heartbeat, then thawed: the adapter
    recovers and loses nothing acknowledged."""
    await _run(aut, faults_dedicated, _paused, "broker_pause", PAUSE_S, crash=False)
