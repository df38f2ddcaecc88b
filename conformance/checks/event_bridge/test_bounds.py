"""Bounds on the bridge's own reports: info messages (infoInvokeTimeout and the like) while
the broker does not take them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.checks.robustness.hooks import core_counter
from conformance.kit import Gate, addr, command, echo_payload, event, invoke_status, responder
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import Stopwatch, wait_for
from reference_services.runtime.messages import MessageType
from reference_services.runtime.spi.bridge_base import EventBridgeBase

EB = ("event_bridge",)
MAX_IN_FLIGHT = 64  # info publishes a bridge on EventBridgeBase keeps going at once
GIVE_UP_S = 2.0  # after which a publish that hangs is given up
TIMEOUTS = 100
TTL_S = 0.3


class InfoHold:
    """Holds the bridge's info publishes (its commands and events go through) until
    released, recording how many were held at once and how many got through."""

    def __init__(self, bridge: Any) -> None:
        self.held = 0
        self.peak = 0
        self.published = 0
        self.release = asyncio.Event()
        original = bridge._publish

        async def publish(message: Any) -> None:
            if message.message_type != MessageType.INFO_INVOKE_TIMEOUT:
                return await original(message)
            self.held += 1
            self.peak = max(self.peak, self.held)
            try:
                await self.release.wait()
            finally:
                self.held -= 1
            await original(message)
            self.published += 1

        bridge._publish = publish  # shadows the class's, on this instance only


async def _held_infos(aut: AdapterUnderTest) -> tuple[Gate, Any, InfoHold]:
    """A server whose ``never`` command stalls on the gate, and a client whose info
    publishes are held (skips an adapter not built on EventBridgeBase)."""
    gate = Gate()
    server = await aut.new()
    await server.register_command(addr("never"), gate.stalled("too late"))
    client = await aut.new()
    if core_counter(client, "info_dropped") is None:
        pytest.skip("info bookkeeping is EventBridgeBase's (the adapter is not built on it)")
    return gate, client, InfoHold(client)


@check("event_bridge.info.bounded", kinds=EB)
async def test_info_bounded(aut: AdapterUnderTest) -> None:
    """While the broker takes no info message, a burst of 100 invoke timeouts keeps at most
    64 info publishes going and counts the other 36 as dropped; a publish that hangs is
    given up after 2 s (counted too) and frees its place; once the broker takes them again,
    the next timeout's info is published."""
    gate, client, hold = await _held_infos(aut)
    try:
        cmds = [command(client, addr("never"), i) for i in range(TIMEOUTS)]
        outcomes = await asyncio.gather(*(invoke_status(client, c, TTL_S) for c in cmds))
        statuses = sorted({getattr(o[1], "status", o[0]) for o in outcomes})
        assert statuses == [504], f"the burst's invokes ended with {statuses}, not only 504"
        watch = Stopwatch()
        # the 504 and the timeout's info need not come in the same step: wait for all 100
        reported = await wait_for(
            lambda: hold.held + core_counter(client, "info_dropped") >= TIMEOUTS, 5
        )
        assert reported, (
            f"of {TIMEOUTS} timeouts' infos, {hold.held} are held and "
            f"{core_counter(client, 'info_dropped')} counted in info_dropped after 5 s: the "
            "rest went unaccounted"
        )
        assert hold.held == MAX_IN_FLIGHT, (
            f"{hold.held} info publishes held after {TIMEOUTS} timeouts (expected "
            f"{MAX_IN_FLIGHT}: the cap)"
        )
        in_flight = core_counter(client, "info_in_flight")
        dropped = core_counter(client, "info_dropped")
        assert await wait_for(lambda: core_counter(client, "info_in_flight") == 0, GIVE_UP_S + 3), (
            f"info_in_flight {core_counter(client, 'info_in_flight')} "
            f"{watch.elapsed:.1f}s after the burst (the held publishes were never given up)"
        )
        gave_up_s = watch.elapsed
        held_after = hold.held
        dropped_after = core_counter(client, "info_dropped")
        hold.release.set()
        late = await invoke_status(client, command(client, addr("never"), "late"), TTL_S)
        published = await wait_for(lambda: hold.published == 1, 5)
    finally:
        gate.open()
        hold.release.set()
    aut.metric("held_peak", hold.peak)
    aut.metric("gave_up_after_s", round(gave_up_s, 2))
    assert hold.peak == MAX_IN_FLIGHT, (
        f"{hold.peak} info publishes went at once (cap {MAX_IN_FLIGHT})"
    )
    assert in_flight == MAX_IN_FLIGHT, f"info_in_flight {in_flight} with {MAX_IN_FLIGHT} held"
    assert dropped == TIMEOUTS - MAX_IN_FLIGHT, (
        f"info_dropped {dropped} over the cap (expected {TIMEOUTS - MAX_IN_FLIGHT})"
    )
    assert GIVE_UP_S * 0.8 <= gave_up_s < GIVE_UP_S + 1.0, (
        f"hanging info publishes given up after {gave_up_s:.2f}s (expected {GIVE_UP_S:g}s)"
    )
    assert held_after == 0, f"{held_after} info publishes still held with none in flight"
    assert dropped_after == TIMEOUTS, (
        f"info_dropped {dropped_after} once the held ones were given up (expected {TIMEOUTS})"
    )
    assert late[0] == "error" and late[1].status == 504, f"the late invoke: {late[:2]}"
    assert published, "after the broker took infos again, the next timeout's info never went out"


@check("event_bridge.bounds.cancelled_caller_forgotten", kinds=EB)
async def test_cancelled_caller_forgotten(aut: AdapterUnderTest) -> None:
    """An invoke whose caller is cancelled (a request aborted upstream) leaves nothing
    pending: the entry goes at once, not at its ttl; the others keep theirs."""
    gate = Gate()
    server = await aut.new()
    await server.register_command(addr("slow"), gate.stalled("late"))
    client = await aut.new()
    calls = [
        asyncio.ensure_future(client.invoke(command(client, addr("slow"), i), 30)) for i in range(3)
    ]
    try:
        assert await wait_for(lambda: gate.entered == 3, 10), f"{gate.entered}/3 handlers started"
        pending_before = client.pending_invocations
        calls[0].cancel()
        await asyncio.wait({calls[0]}, timeout=1)
        forgotten = await wait_for(lambda: client.pending_invocations == 2, 1.0)
        pending_after = client.pending_invocations
        gate.open()
        answers = await asyncio.wait_for(asyncio.gather(*calls[1:]), 10)
    finally:
        gate.open()
        for call in calls:
            call.cancel()
    assert pending_before == 3, f"{pending_before} invocations pending with 3 in flight"
    assert forgotten, (
        f"{pending_after} invocations pending 1 s after one of 3 callers was cancelled "
        "(expected 2: its entry waits for its ttl)"
    )
    assert answers == ["late", "late"], f"the other callers got {answers}"
    assert await wait_for(lambda: client.pending_invocations == 0, 2), (
        f"{client.pending_invocations} pending after every call ended"
    )


@check("event_bridge.bounds.destroy_ends_own_tasks", kinds=EB)
async def test_destroy_ends_own_tasks(aut: AdapterUnderTest) -> None:
    """destroy() ends the bridge's own background work (here: info publishes the broker
    does not take) before it returns, promptly: none is left running after it."""
    gate, client, hold = await _held_infos(aut)
    try:
        cmds = [command(client, addr("never"), i) for i in range(10)]
        await asyncio.gather(*(invoke_status(client, c, TTL_S) for c in cmds))
        assert await wait_for(lambda: hold.held == 10, 5), f"{hold.held}/10 info publishes held"
        watch = Stopwatch()
        await aut.destroy(client, timeout_s=10)
        took = watch.elapsed
        left = hold.held
    finally:
        gate.open()
        hold.release.set()
    aut.metric("destroy_s", round(took, 3))
    assert left == 0, f"{left} of the bridge's info publishes still ran after destroy returned"
    assert took < 1.0, f"destroy took {took:.2f}s to end 10 cancellable publishes"


@check("event_bridge.bounds.no_bytes_held", kinds=EB)
async def test_no_bytes_held(aut: AdapterUnderTest) -> None:
    """The encoded bytes a bridge keeps while it sends a message are gone once the send is
    over, whatever its outcome (answered, failed, refused, an event): nothing accumulates."""
    server = await aut.new()
    await server.register_command(addr("echo"), responder(echo_payload))
    client = await aut.new()
    if not isinstance(client, EventBridgeBase):
        pytest.skip("the held bytes are EventBridgeBase's (the adapter is not built on it)")
    outcomes = await asyncio.gather(
        *(invoke_status(client, command(client, addr("echo"), i), 5) for i in range(20)),
        *(invoke_status(client, command(client, addr("nobody"), i), 0.5) for i in range(5)),
    )
    for i in range(20):
        await client.emit_message(event(client, "noted", {"id": i}))
    answered = sum(1 for o in outcomes if o[0] == "ok")
    assert answered == 20, f"{answered}/20 invokes answered"
    assert await wait_for(lambda: not client.core._encoded and not server.core._encoded, 3), (
        f"bytes still held after every send ended: {len(client.core._encoded)} by the "
        f"sender, {len(server.core._encoded)} by the server"
    )
