"""BridgeCore.send_within: a send that does not suspend costs no timer (and, for a bridge
declaring ``sends_run_in_caller`` on Python 3.11, no task); one that does keeps the deadline,
its result, its error and the caller's cancellation; a timeout the send binds to its own task
never cancels the caller."""

from __future__ import annotations

import asyncio
import sys

import pytest

from reference_services.adapters.memory.event_bridge import DefaultEventBridge
from reference_services.testing import wait_until


@pytest.fixture
def core() -> object:
    return DefaultEventBridge().core


async def test_a_send_that_does_not_suspend_runs_without_a_task(core) -> None:
    ran: list[asyncio.Task | None] = []

    async def send() -> None:
        ran.append(asyncio.current_task())

    before = len(asyncio.all_tasks())
    await core.send_within(send(), 1.0)
    if sys.version_info >= (3, 12):
        # an eager task of its own, finished at once: never scheduled, nothing left behind
        assert ran[0] is not asyncio.current_task() and ran[0].done()
    else:
        assert ran == [asyncio.current_task()]  # ran in the caller, no task of its own
    assert len(asyncio.all_tasks()) == before


class _OwnTaskBridge(DefaultEventBridge):
    """A bridge whose sends may bind to the current task (as aiormq's publish does)."""

    sends_run_in_caller = False


@pytest.mark.parametrize("bridge_class", [DefaultEventBridge, _OwnTaskBridge])
async def test_a_send_runs_its_first_step_in_its_own_task_unless_declared(bridge_class) -> None:
    ran: list[asyncio.Task | None] = []

    async def send() -> None:
        ran.append(asyncio.current_task())
        await asyncio.sleep(0)

    await bridge_class().core.send_within(send(), 1.0)
    in_caller = bridge_class.sends_run_in_caller and sys.version_info < (3, 12)
    assert (ran[0] is asyncio.current_task()) is in_caller


async def test_a_timeout_the_send_binds_to_its_task_fires_in_the_send_not_the_caller() -> None:
    core = _OwnTaskBridge().core

    async def send() -> None:
        async with asyncio.timeout(0.05):  # as aiormq bounds its wait for a publish confirm
            await asyncio.sleep(10)

    # the send's own timeout ends the send: the caller gets it as the send's error, and is
    # not cancelled (a timeout bound to the caller's task would cancel the caller instead)
    with pytest.raises(TimeoutError):
        await core.send_within(send(), 5.0)
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0)  # still running: no cancellation pending for the caller


async def test_a_suspending_send_finishes_with_its_result_and_errors(core) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    got: list[str] = []

    async def send() -> None:
        await asyncio.sleep(0)
        got.append(await fut)

    loop.call_later(0.01, fut.set_result, "value")
    await core.send_within(send(), 1.0)
    assert got == ["value"]

    async def fails_later() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("late failure")

    async def fails_now() -> None:
        raise KeyError("at once")

    with pytest.raises(ValueError, match="late failure"):
        await core.send_within(fails_later(), 1.0)
    with pytest.raises(KeyError):
        await core.send_within(fails_now(), 1.0)


async def test_the_deadline_holds_for_a_send_slow_to_cancel(core) -> None:
    events: list[str] = []

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # ignores its cancellation for a while
            events.append("finished late")

    with pytest.raises(TimeoutError):
        await core.send_within(stubborn(), 0.05)
    # the caller got its timeout while the send was still finishing, not after it
    assert events == []
    await wait_until(lambda: bool(events), 5.0, "the abandoned send to finish")
    assert events == ["finished late"]


async def test_a_cancelled_caller_cancels_its_send(core) -> None:
    events: list[str] = []

    async def waits() -> None:
        events.append("sending")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    caller = asyncio.ensure_future(core.send_within(waits(), 10.0))
    await wait_until(lambda: bool(events), 5.0, "the send to start")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await wait_until(lambda: len(events) == 2, 5.0, "the send to be cancelled")
    assert events == ["sending", "cancelled"]
