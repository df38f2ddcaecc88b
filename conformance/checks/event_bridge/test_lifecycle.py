"""Lifecycle: readiness, drain on destroy, pending invocations rejected with 503."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.adapters import ServiceUnavailable
from conformance.kit import (
    SAYS_SHUTDOWN,
    Gate,
    Recorder,
    addr,
    built_on_base,
    command,
    event,
    invoke_status,
    responder,
    stalled_command,
    subscription,
)
from conformance.kit.ledger import Ledger, expect_at_least_once
from conformance.kit.marks import check
from conformance.kit.skips import not_tested
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import Stopwatch, wait_for, wait_for_async
from reference_services.runtime.errors import PuristaError

EB = ("event_bridge",)


@check("event_bridge.lifecycle.ready_healthy", kinds=EB)
async def test_ready_healthy(aut: AdapterUnderTest) -> None:
    """Not ready (nor healthy) before start, ready and healthy after, not ready after destroy
    (twice is fine); each answer a bool."""
    bridge = aut.build()
    ready, healthy = await bridge.is_ready(), await bridge.is_healthy()
    assert ready is False and healthy is False, (
        f"before start: ready {ready!r}, healthy {healthy!r} (bools, both False)"
    )
    await bridge.start()
    assert await bridge.is_ready() is True, "not ready after start"
    assert await bridge.is_healthy() is True, "not healthy after start"
    await aut.destroy(bridge)
    assert not await bridge.is_ready(), "still ready after destroy"
    await asyncio.wait_for(bridge.destroy(), 10)


@check("event_bridge.lifecycle.destroy_drains", kinds=EB, needs=("graceful_drain",))
async def test_destroy_drains(aut: AdapterUnderTest) -> None:
    """destroy() waits for running subscription and command handlers; their results still
    count; while it waits, the bridge is not ready (it takes no new work)."""
    gate = Gate()
    finished: list[str] = []
    server = await aut.new(drain_timeout_s=10.0) if built_on_base(aut) else await aut.new()

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
    ready_while_draining = None if early else await server.is_ready()
    gate.open()
    await destroying
    assert not early, f"destroy returned while {running_at_return} handler(s) were still running"
    assert ready_while_draining is False, "ready while draining (it takes no new work)"
    assert len(finished) == 8, f"only {len(finished)}/8 in-flight handlers finished: {finished}"
    outcomes = await asyncio.gather(*calls)
    lost = [(i, o[1]) for i, o in enumerate(outcomes) if o[:2] != ("ok", {"done": i})]
    assert not lost, f"commands in flight during destroy got no result: {lost}"
    if built_on_base(aut):
        assert server.drain_timed_out is False, "drain_timed_out is set after a drain that ended"


DRAIN_S = 1.0
CLOSE_MARGIN_S = 0.8


@check("event_bridge.lifecycle.destroy_drain_bounded", kinds=EB, needs=("graceful_drain",))
async def test_destroy_drain_is_bounded(aut: AdapterUnderTest) -> None:
    """destroy() waits for handlers that never finish at most ``drain_timeout_s``, once:
    not once per phase (commands, subscriptions, responses) or per connection."""
    if not built_on_base(aut):
        pytest.skip("the adapter does not take drain_timeout_s")
    gate = Gate()
    server = await aut.new(drain_timeout_s=DRAIN_S)

    async def stuck_sub(msg: Any) -> None:
        await gate.wait()

    await server.register_subscription(subscription("stuck", event_name="stuck"), stuck_sub)
    await server.register_command(addr("stuck-cmd"), gate.stalled("never"))
    client = await aut.new()
    await client.emit_message(event(client, "stuck", {"id": 0}))
    call = asyncio.ensure_future(invoke_status(client, command(client, addr("stuck-cmd"), 0), 20))
    try:
        assert await wait_for(lambda: gate.entered == 2, 10), f"{gate.entered}/2 handlers started"
        watch = Stopwatch()
        await aut.destroy(server)
        took = watch.elapsed
    finally:
        gate.open()
        call.cancel()  # its server is gone: no answer comes before its 20 s ttl
        await asyncio.gather(call, return_exceptions=True)
    aut.metric("destroy_s", round(took, 3))
    assert took >= DRAIN_S * 0.9, f"destroy returned after {took:.2f}s, before the drain timeout"
    assert took < DRAIN_S + CLOSE_MARGIN_S, (
        f"destroy took {took:.2f}s with drain_timeout_s={DRAIN_S}: it waited more than once"
    )
    assert server.drain_timed_out is True, "drain_timed_out is not True after a timed-out drain"


@check("event_bridge.lifecycle.destroy_rejects_pending", kinds=EB)
async def test_destroy_rejects_pending(aut: AdapterUnderTest) -> None:
    """Destroying the invoking bridge fails its pending invocations with 503 at once, and an
    invoke after it with 503 too; each 503 carries its command's trace id."""
    client, gate = await stalled_command(aut, "hang")
    cmds = [command(client, addr("hang"), i, trace_id=f"trace-hang-{i}") for i in range(5)]
    calls = [asyncio.ensure_future(invoke_status(client, cmd, 20)) for cmd in cmds]
    try:
        assert await wait_for(lambda: gate.entered == 5, 10), f"{gate.entered}/5 handlers started"
        watch = Stopwatch()
        await aut.destroy(client)
        outcomes = await asyncio.wait_for(asyncio.gather(*calls), 5)
    finally:
        gate.open()
    bad = [(k, getattr(e, "status", e)) for k, e, _ in outcomes if k != "error" or e.status != 503]
    assert not bad, f"pending invocations not rejected with 503: {bad}"
    unclear = [e.message for _, e, _ in outcomes if not SAYS_SHUTDOWN.search(e.message or "")]
    assert not unclear, f"a pending invocation's 503 does not say the bridge shuts down: {unclear}"
    assert watch.elapsed < 2.0, f"rejection took {watch.elapsed:.2f}s"
    untraced = [
        (cmd.trace_id, getattr(err, "trace_id", None))
        for cmd, (_, err, _) in zip(cmds, outcomes, strict=True)
        if getattr(err, "trace_id", None) != cmd.trace_id
    ]
    assert not untraced, f"a 503 lost its command's trace id (sent, got): {untraced}"
    try:
        await client.invoke(command(client, addr("hang"), "after", trace_id="trace-after"), 1)
    except PuristaError as exc:
        assert exc.status == 503, f"invoke after destroy: expected 503, got {exc.status}"
        assert exc.trace_id == "trace-after", f"invoke after destroy: trace id {exc.trace_id!r}"
    else:
        raise AssertionError("invoke after destroy succeeded")


async def _emit_until_accepted(bridge: Any, msg: Any, timeout_s: float) -> bool:
    """Emit, retrying while the bridge still reconnects; False if it never accepted."""
    watch = Stopwatch()
    while watch.elapsed < timeout_s:
        try:
            await bridge.emit_message(msg)
            return True
        except Exception:
            await asyncio.sleep(0.1)
    return False


@check("event_bridge.lifecycle.reconnect", kinds=EB, needs=("reconnect",))
async def test_reconnect(aut: AdapterUnderTest) -> None:
    """After its broker restarts, the bridge reconnects by itself and re-registers its
    subscriptions and commands (uses a dedicated broker; whether health was seen going down
    during the restart is recorded)."""
    if aut.is_reference:
        pytest.skip("in-process adapter: there is no broker connection to lose")
    try:
        handles = aut.isolate()
        consumer = await aut.new()
    except ServiceUnavailable as exc:
        not_tested(f"no dedicated broker: {exc}")
    if not handles:
        pytest.skip("the adapter uses no harness service, nothing to restart")
    ledger = Ledger("reconnect")
    await consumer.register_subscription(
        subscription("survivor", event_name="beat"), Recorder(ledger, "consumer")
    )

    async def pong(cmd: Any) -> Any:
        return {"pong": cmd.payload.payload}

    await consumer.register_command(addr("ping"), responder(pong))
    producer = await aut.new()
    for i in range(5):
        await producer.emit_message(event(producer, "beat", {"id": f"before-{i}"}))
        ledger.sent(f"before-{i}")
    assert await wait_for(ledger.all_arrived, 10), "messages before the outage did not arrive"
    handle = next(iter(handles.values()))
    watch = Stopwatch()
    restarting = asyncio.ensure_future(asyncio.to_thread(handle.restart, False))
    went_down = await wait_for_async(lambda: _not(consumer.is_healthy()), 20)
    down_after = watch.elapsed
    await restarting
    back = await wait_for_async(consumer.is_healthy, 20)
    aut.metric("broker_restart_s", round(watch.elapsed, 2))
    aut.observe("health_went_down_during_restart", went_down)
    if went_down:
        aut.metric("unhealthy_after_s", round(down_after, 2))
    assert back, "the bridge never became healthy again after the broker came back"
    for i in range(5):
        ok = await _emit_until_accepted(producer, event(producer, "beat", {"id": f"after-{i}"}), 20)
        ledger.sent(f"after-{i}", acknowledged=ok)
    await wait_for(ledger.all_arrived, 20)
    expect_at_least_once(ledger)
    kind, result, _ = await invoke_status(producer, command(producer, addr("ping"), 7), 10)
    assert (kind, result) == ("ok", {"pong": 7}), f"command after reconnect: {result!r}"


async def _not(awaitable: Any) -> bool:
    return not await awaitable
