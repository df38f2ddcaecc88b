"""Lifecycle: readiness, drain on destroy, pending invocations rejected with 503."""

from __future__ import annotations

import asyncio
from typing import Any

from conformance.kit import Gate, addr, command, event, invoke_status, responder, subscription
from conformance.marks import check
from conformance.under_test import AdapterUnderTest
from conformance.waits import Stopwatch, wait_for
from reference_services.runtime.errors import PuristaError

EB = ("event_bridge",)


@check("event_bridge.lifecycle.ready_healthy", kinds=EB)
async def test_ready_healthy(aut: AdapterUnderTest) -> None:
    """Not ready before start, ready and healthy after, not ready after destroy (twice is fine)."""
    bridge = aut.build()
    assert not await bridge.is_ready(), "ready before start"
    await bridge.start()
    assert await bridge.is_ready(), "not ready after start"
    assert await bridge.is_healthy(), "not healthy after start"
    await aut.destroy(bridge)
    assert not await bridge.is_ready(), "still ready after destroy"
    await asyncio.wait_for(bridge.destroy(), 10)


@check("event_bridge.lifecycle.destroy_drains", kinds=EB, needs=("graceful_drain",))
async def test_destroy_drains(aut: AdapterUnderTest) -> None:
    """destroy() waits for running subscription and command handlers; their results still count."""
    gate = Gate()
    finished: list[str] = []
    server = await aut.new(drain_timeout_s=10.0) if _takes_drain(aut) else await aut.new()

    async def slow_sub(msg: Any) -> None:
        await gate.wait()
        finished.append(f"event:{msg.payload['id']}")

    async def slow_cmd(cmd: Any) -> Any:
        await gate.wait()
        finished.append(f"command:{cmd.payload.payload}")
        return {"done": cmd.payload.payload}

    await server.register_subscription(subscription("drainer", event_name="slow"), slow_sub)
    await server.register_command(addr("slow-cmd"), responder(slow_cmd))
    client = await aut.new()
    for i in range(5):
        await client.emit_message(event(client, "slow", {"id": i}))
    calls = [
        asyncio.ensure_future(invoke_status(client, command(client, addr("slow-cmd"), i), 20))
        for i in range(3)
    ]
    assert await wait_for(lambda: gate.entered == 8, 10), f"only {gate.entered}/8 handlers started"
    destroying = asyncio.ensure_future(aut.destroy(server))
    await asyncio.wait({destroying}, timeout=0.3)
    early = destroying.done()
    running_at_return = 8 - len(finished) if early else None
    gate.open()
    await destroying
    assert not early, f"destroy returned while {running_at_return} handler(s) were still running"
    assert len(finished) == 8, f"only {len(finished)}/8 in-flight handlers finished: {finished}"
    outcomes = await asyncio.gather(*calls)
    lost = [(i, o[1]) for i, o in enumerate(outcomes) if o[:2] != ("ok", {"done": i})]
    assert not lost, f"commands in flight during destroy got no result: {lost}"


def _takes_drain(aut: AdapterUnderTest) -> bool:
    return aut.spec.source == "builtin"


@check("event_bridge.lifecycle.destroy_rejects_pending", kinds=EB)
async def test_destroy_rejects_pending(aut: AdapterUnderTest) -> None:
    """Destroying the invoking bridge fails its pending invocations with 503 at once."""
    gate = Gate()
    server = await aut.new()

    async def never(cmd: Any) -> Any:
        await gate.wait()
        return "too late"

    await server.register_command(addr("hang"), responder(never))
    client = await aut.new()
    calls = [
        asyncio.ensure_future(invoke_status(client, command(client, addr("hang"), i), 20))
        for i in range(5)
    ]
    try:
        assert await wait_for(lambda: gate.entered == 5, 10), f"{gate.entered}/5 handlers started"
        watch = Stopwatch()
        await aut.destroy(client)
        outcomes = await asyncio.wait_for(asyncio.gather(*calls), 5)
    finally:
        gate.open()
    bad = [(k, getattr(e, "status", e)) for k, e, _ in outcomes if k != "error" or e.status != 503]
    assert not bad, f"pending invocations not rejected with 503: {bad}"
    assert watch.elapsed < 2.0, f"rejection took {watch.elapsed:.2f}s"
    try:
        await client.invoke(command(client, addr("hang"), "after"), 1)
    except PuristaError as exc:
        assert exc.status == 503, f"invoke after destroy: expected 503, got {exc.status}"
    else:
        raise AssertionError("invoke after destroy succeeded")
