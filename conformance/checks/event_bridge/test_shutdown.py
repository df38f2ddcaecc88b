"""Shutdown past the happy path: a destroy cut short by its caller, work offered while the
bridge drains, handlers that ignore cancellation, and a destroyed bridge staying down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.kit import (
    SAYS_SHUTDOWN,
    Gate,
    addr,
    built_on_base,
    command,
    echo_payload,
    event,
    invoke_status,
    responder,
    subscription,
)
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import Stopwatch, wait_for
from reference_services.runtime.errors import PuristaError

EB = ("event_bridge",)
# what a destroy cut short may still take to reject its pending invocations and close
CLOSE_AFTER_CUT_S = 1.0
MARGIN_S = 0.8


async def _refused(call: Any) -> tuple[int | None, str, str | None]:
    """The status, message and trace id a refused call raised; (None, "", None) when it
    was accepted."""
    try:
        await asyncio.wait_for(call, 5)
    except PuristaError as exc:
        return exc.status, exc.message, exc.trace_id
    return None, "", None


def _clear_refusal(
    what: str, got: tuple[int | None, str, str | None], trace_id: str | None
) -> None:
    status, message, traced = got
    assert status == 503, f"{what}: {got} (expected 503)"
    assert SAYS_SHUTDOWN.search(message or ""), (
        f"{what}: the 503 says {message!r}, not that the bridge is shutting down or destroyed"
    )
    if trace_id is not None:
        assert traced == trace_id, f"{what}: the 503 carries trace id {traced!r}, not {trace_id!r}"


@check("event_bridge.lifecycle.destroy_cut_short", kinds=EB, needs=("graceful_drain",))
async def test_destroy_cut_short(aut: AdapterUnderTest) -> None:
    """A destroy whose caller cancels it during the drain (a shutdown deadline ran out) still
    rejects the pending invocations with 503 and closes, within a second, and then ends
    cancelled: the cancellation goes on, it is not swallowed."""
    if not built_on_base(aut):
        pytest.skip("the adapter does not take drain_timeout_s")
    gate = Gate()
    server = await aut.new()
    await server.register_command(addr("stuck"), gate.stalled("never"))
    bridge = await aut.new(drain_timeout_s=30.0)
    await bridge.register_command(addr("held"), gate.stalled("never"))
    caller = await aut.new()
    held = asyncio.ensure_future(invoke_status(caller, command(caller, addr("held"), 0), 30))
    pending = asyncio.ensure_future(invoke_status(bridge, command(bridge, addr("stuck"), 1), 30))
    try:
        assert await wait_for(lambda: gate.entered == 2, 10), f"{gate.entered}/2 handlers started"
        destroying = asyncio.ensure_future(bridge.destroy())
        await asyncio.wait({destroying}, timeout=0.3)
        assert not destroying.done(), "destroy returned while a handler still ran"
        watch = Stopwatch()
        destroying.cancel()
        await asyncio.wait({destroying}, timeout=CLOSE_AFTER_CUT_S + 3)
        ended_s = watch.elapsed
        kind, err, _ = await asyncio.wait_for(pending, 3)
        rejected_s = watch.elapsed
        healthy = await bridge.is_healthy()
    finally:
        gate.open()
        held.cancel()  # its answer went with the destroyed bridge
    aut.metric("cut_to_end_s", round(ended_s, 3))
    assert destroying.done(), f"destroy still running {ended_s:.2f}s after it was cancelled"
    assert destroying.cancelled(), (
        "a destroy cancelled during its drain returned normally: the cancellation was swallowed"
    )
    assert ended_s < CLOSE_AFTER_CUT_S + MARGIN_S, (
        f"a cancelled destroy took {ended_s:.2f}s to end (rejecting and closing is bounded "
        f"by {CLOSE_AFTER_CUT_S:g}s)"
    )
    assert kind == "error" and err.status == 503, (
        f"a pending invocation of a bridge whose destroy was cut short: {kind} {err!r} "
        "(expected 503)"
    )
    assert rejected_s < CLOSE_AFTER_CUT_S + MARGIN_S, f"rejected only after {rejected_s:.2f}s"
    assert healthy is False, "still healthy (connected) after a destroy cut short"
    assert bridge.drain_timed_out is True, "drain_timed_out is not True after a cut-short drain"


@check("event_bridge.lifecycle.draining_refuses_work", kinds=EB, needs=("graceful_drain",))
async def test_draining_refuses_work(aut: AdapterUnderTest) -> None:
    """While destroy() waits for a running handler, the bridge refuses new work of its own
    with 503 (an invoke, an emit) and starts no new handler for a command sent to it."""
    gate = Gate()
    bridge = await aut.new(drain_timeout_s=10.0) if built_on_base(aut) else await aut.new()
    await bridge.register_command(addr("busy"), gate.stalled("done"))
    other = await aut.new()
    await other.register_command(addr("elsewhere"), responder(echo_payload))
    client = await aut.new()
    first = asyncio.ensure_future(invoke_status(client, command(client, addr("busy"), 0), 20))
    assert await wait_for(lambda: gate.entered == 1, 10), "the first handler did not start"
    destroying = asyncio.ensure_future(aut.destroy(bridge))
    try:
        await asyncio.wait({destroying}, timeout=0.3)
        assert not destroying.done(), "destroy returned while a handler still ran"
        cmd = command(bridge, addr("elsewhere"), 1, trace_id="trace-draining")
        invoked = await _refused(bridge.invoke(cmd, 3))
        emitted = await _refused(bridge.emit_message(event(bridge, "late", {"id": 1})))
        late = asyncio.ensure_future(invoke_status(client, command(client, addr("busy"), 2), 1.5))
        await asyncio.wait({late}, timeout=3)
        entered = gate.entered
    finally:
        gate.open()
        await asyncio.wait({destroying, first}, timeout=10)
    _clear_refusal("an invoke from a draining bridge", invoked, "trace-draining")
    _clear_refusal("an emit from a draining bridge", emitted, None)
    assert entered == 1, f"{entered - 1} new handler(s) started on a draining bridge"
    assert first.result()[:2] == ("ok", "done"), f"the running handler's call: {first.result()}"


@check("event_bridge.lifecycle.destroy_past_stuck_handler", kinds=EB, needs=("graceful_drain",))
async def test_destroy_past_stuck_handler(aut: AdapterUnderTest) -> None:
    """A handler that ignores cancellation holds destroy() for the drain timeout and then at
    most that long again (at most 2 s, for the bridge's own tasks to end when cancelled):
    destroy returns and the bridge is closed."""
    if not built_on_base(aut):
        pytest.skip("the adapter does not take drain_timeout_s")
    drain_s = 1.0
    release = asyncio.Event()
    cancelled: list[int] = []  # whether a bridge cancels a straggler is its own affair

    async def stubborn(msg: Any) -> None:
        while not release.is_set():
            try:
                await asyncio.wait_for(release.wait(), 30)
            except asyncio.CancelledError:
                cancelled.append(1)  # ignored: the handler runs on

    bridge = await aut.new(drain_timeout_s=drain_s)
    await bridge.register_subscription(subscription("stubborn", event_name="stub"), stubborn)
    client = await aut.new()
    await client.emit_message(event(client, "stub", {"id": 0}))
    try:
        assert await wait_for(lambda: bridge.inflight == 1, 10), "the handler did not start"
        watch = Stopwatch()
        await aut.destroy(bridge, timeout_s=15)
        took = watch.elapsed
        healthy = await bridge.is_healthy()
    finally:
        release.set()
    aut.metric("destroy_s", round(took, 3))
    bound = drain_s + min(2.0, drain_s) + MARGIN_S
    assert took < bound, (
        f"destroy took {took:.2f}s past a handler ignoring cancellation (drain_timeout_s="
        f"{drain_s:g}: bounded by {bound:.1f}s)"
    )
    assert took >= drain_s * 0.9, f"destroy returned after {took:.2f}s, before the drain timeout"
    assert healthy is False, "still healthy (connected) after destroy"
    assert bridge.drain_timed_out is True, "drain_timed_out is not True after a timed-out drain"


@check("event_bridge.lifecycle.destroyed_stays_down", kinds=EB)
async def test_destroyed_stays_down(aut: AdapterUnderTest) -> None:
    """A destroyed bridge stays down: start() again is refused with 503 and leaves it not
    ready and not healthy; invoke and emit get 503; a second destroy returns at once."""
    bridge = await aut.new()
    await bridge.register_command(addr("gone"), responder(echo_payload))
    await aut.destroy(bridge)
    restart = await _refused(bridge.start())
    ready, healthy = await bridge.is_ready(), await bridge.is_healthy()
    invoked = await _refused(bridge.invoke(command(bridge, addr("gone"), 1, trace_id="t-gone"), 2))
    emitted = await _refused(bridge.emit_message(event(bridge, "after", {"id": 1})))
    watch = Stopwatch()
    await asyncio.wait_for(bridge.destroy(), 5)
    again_s = watch.elapsed
    _clear_refusal("start() after destroy", restart, None)
    assert ready is False and healthy is False, (
        f"after destroy and a refused start: ready {ready!r}, healthy {healthy!r}"
    )
    _clear_refusal("invoke after destroy and start()", invoked, "t-gone")
    _clear_refusal("emit after destroy and start()", emitted, None)
    assert again_s < 0.5, f"a second destroy took {again_s:.2f}s"


@check("event_bridge.lifecycle.not_started_refuses", kinds=EB)
async def test_not_started_refuses(aut: AdapterUnderTest) -> None:
    """Before start(), invoke and emit are refused with a 503 that says the bridge is not
    started (not that it was destroyed), carrying the command's trace id."""
    bridge = aut.build()
    invoked = await _refused(bridge.invoke(command(bridge, addr("x"), 1, trace_id="t-early"), 2))
    emitted = await _refused(bridge.emit_message(event(bridge, "early", {"id": 1})))
    for what, got in (("invoke before start", invoked), ("emit before start", emitted)):
        status, message, _ = got
        assert status == 503, f"{what}: {got} (expected 503)"
        assert "start" in (message or "").lower() and not SAYS_SHUTDOWN.search(message), (
            f"{what}: the 503 says {message!r}, not that the bridge is not started"
        )
    assert invoked[2] == "t-early", f"invoke before start: the 503 carries {invoked[2]!r}"
