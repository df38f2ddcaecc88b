"""DefaultEventBridge behaviour: routing, failures, drain, bad input, no leaks."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from typing import TypeVar

import pytest

from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.runtime.codec import encode
from reference_services.runtime.definitions import FailureHandling, Subscription
from reference_services.runtime.errors import HandledError, PuristaError
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandPayload,
    CustomMessage,
    SenderAddress,
    success_response,
)

from .helpers import CALLER, command, wait_for

ECHO = Address(service_name="svc", service_version="1", service_target="echo")


def _event(name: str, payload: object = None, **kw: object) -> CustomMessage:
    return CustomMessage(sender=CALLER, event_name=name, payload=payload, **kw)  # type: ignore[arg-type]


def _sub(service: str, target: str, **kw: object) -> Subscription:
    return Subscription(
        subscriber=Address(service_name=service, service_version="1", service_target=target),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def hub_bridges():
    hub = MemoryHub()
    bridges = [DefaultEventBridge(hub, drain_timeout_s=2) for _ in range(3)]
    for b in bridges:
        await b.start()
    yield hub, bridges
    for b in bridges:
        await b.destroy()


async def test_malformed_message_is_logged_and_dropped_and_bridge_keeps_serving(
    hub_bridges, caplog: pytest.LogCaptureFixture
) -> None:
    hub, (bridge, *_rest) = hub_bridges
    got: list[object] = []

    async def handler(msg):
        got.append(msg.payload)

    await bridge.register_subscription(_sub("s", "t", event_name="e"), handler)
    with caplog.at_level(logging.WARNING):
        assert bridge.receive_raw(b"{not json") is False
        assert bridge.receive_raw(b'{"messageType": "customMessage"}') is False
    assert hub.rejected_messages == 2
    assert "not JSON" in caplog.text and "id: missing" in caplog.text
    assert bridge.receive_raw(encode(_event("e", {"n": 1}))) is True
    await wait_for(lambda: got == [{"n": 1}], what="the valid message")


async def test_shared_subscription_reaches_one_instance_and_non_shared_reach_all(
    hub_bridges,
) -> None:
    _hub, bridges = hub_bridges
    shared: Counter[int] = Counter()
    every: Counter[int] = Counter()
    for index, bridge in enumerate(bridges):

        async def on_shared(msg, index=index):
            shared[msg.payload] += 1

        async def on_every(msg, index=index):
            every[(index, msg.payload)] += 1

        await bridge.register_subscription(_sub("a", "shared", event_name="e"), on_shared)
        await bridge.register_subscription(
            _sub("b", "every", event_name="e", shared=False), on_every
        )
    for n in range(60):
        await bridges[n % 3].emit_message(_event("e", n))
    await wait_for(lambda: sum(shared.values()) == 60 and sum(every.values()) == 180)
    assert set(shared.values()) == {1}
    assert set(every.values()) == {1}


async def test_filters_on_sender_principal_and_tenant(hub_bridges) -> None:
    _hub, (bridge, *_r) = hub_bridges
    got: list[object] = []

    async def handler(msg):
        got.append(msg.payload)

    from reference_services.runtime.definitions import AddressFilter

    await bridge.register_subscription(
        _sub(
            "f",
            "t",
            event_name="e",
            principal_id="p1",
            tenant_id="t1",
            sender=AddressFilter(service_name="caller"),
        ),
        handler,
    )
    other = SenderAddress(
        service_name="other", service_version="1", service_target="x", instance_id="o"
    )
    await bridge.emit_message(_event("e", 1, principal_id="p1", tenant_id="t1"))
    await bridge.emit_message(_event("e", 2, principal_id="p2", tenant_id="t1"))
    await bridge.emit_message(_event("e", 3, principal_id="p1", tenant_id="t2"))
    await bridge.emit_message(
        CustomMessage(sender=other, event_name="e", payload=4, principal_id="p1", tenant_id="t1")
    )
    await bridge.emit_message(_event("x", 5, principal_id="p1", tenant_id="t1"))
    await bridge.emit_message(_event("e", 6, principal_id="p1", tenant_id="t1"))
    await wait_for(lambda: len(got) >= 2)
    assert got == [1, 6]


async def test_unknown_command_fails_fast_with_404(hub_bridges) -> None:
    _hub, (bridge, *_r) = hub_bridges
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PuristaError) as info:
        await bridge.invoke(command("nobody", "home"), ttl_s=5)
    assert info.value.status == 404
    assert loop.time() - start < 1


async def test_shared_command_runs_on_exactly_one_instance(hub_bridges) -> None:
    _hub, bridges = hub_bridges
    executed: Counter[str] = Counter()

    for bridge in bridges[1:]:

        async def echo(cmd: Command, bridge=bridge):
            executed[cmd.id] += 1
            return success_response(cmd, {"by": bridge.instance_id})

        await bridge.register_command(ECHO, echo)
    results = await asyncio.gather(
        *(bridges[0].invoke(command("svc", "echo", n)) for n in range(100))
    )
    assert len(executed) == 100 and set(executed.values()) == {1}
    assert {r["by"] for r in results} == {bridges[1].instance_id, bridges[2].instance_id}


async def test_retries_are_bounded_then_dead_lettered_with_reason(hub_bridges) -> None:
    _hub, (bridge, *_r) = hub_bridges
    attempts: Counter[object] = Counter()
    letters: list[dict] = []

    async def failing(msg):
        attempts[msg.payload] += 1
        raise RuntimeError("boom")

    async def on_dead(msg):
        letters.append(msg.payload)

    policy = FailureHandling(max_attempts=3, retry_delay_ms=5, dead_letter_target="dlq")
    await bridge.register_subscription(_sub("r", "t", event_name="e", failure=policy), failing)
    await bridge.register_subscription(_sub("d", "t", event_name="dlq"), on_dead)
    await bridge.emit_message(_event("e", "poison"))
    await wait_for(lambda: len(letters) == 1, what="the dead letter")
    assert attempts["poison"] == 3
    assert letters[0]["reason"] == "RuntimeError: boom"
    assert letters[0]["attempts"] == 3
    assert letters[0]["message"]["payload"] == "poison"


async def test_handled_error_is_not_redelivered(hub_bridges) -> None:
    _hub, (bridge, *_r) = hub_bridges
    calls: list[object] = []

    async def handler(msg):
        calls.append(msg.payload)
        raise HandledError("no thanks")

    await bridge.register_subscription(
        _sub("h", "t", event_name="e", failure=FailureHandling(max_attempts=5, retry_delay_ms=1)),
        handler,
    )
    await bridge.emit_message(_event("e", 1))
    await bridge.emit_message(_event("e", 2))
    await wait_for(lambda: calls[-1:] == [2])
    assert calls == [1, 2]


B = TypeVar("B", bound=DefaultEventBridge)


async def _started(*bridges: B) -> tuple[B, ...]:
    """Start ``bridges`` in order; the same bridges."""
    for bridge in bridges:
        await bridge.start()
    return bridges


async def test_durable_shared_subscription_buffers_while_no_instance_runs() -> None:
    hub = MemoryHub()
    producer, consumer = await _started(DefaultEventBridge(hub), DefaultEventBridge(hub))
    got: list[object] = []

    async def handler(msg):
        got.append(msg.payload)

    sub = _sub("dur", "t", event_name="e")
    await consumer.register_subscription(sub, handler)
    await consumer.destroy()
    for n in range(5):
        await producer.emit_message(_event("e", n))
    restarted = DefaultEventBridge(hub)
    await restarted.start()
    await restarted.register_subscription(sub, handler)
    await wait_for(lambda: sorted(got) == [0, 1, 2, 3, 4])  # type: ignore[type-var]
    await restarted.destroy()
    await producer.destroy()


async def test_destroy_drains_in_flight_and_rejects_pending_with_503() -> None:
    hub = MemoryHub()
    caller, server = await _started(
        DefaultEventBridge(hub), DefaultEventBridge(hub, drain_timeout_s=5)
    )
    release = asyncio.Event()
    finished: list[str] = []
    started: list[str] = []

    async def slow(cmd: Command):
        started.append(cmd.id)
        await release.wait()
        finished.append(cmd.id)
        return success_response(cmd, "done")

    never = Address(service_name="svc", service_version="1", service_target="never")

    async def hang(cmd: Command):
        await asyncio.Event().wait()

    await server.register_command(ECHO, slow)
    hanging = DefaultEventBridge(hub, drain_timeout_s=0.1)
    await hanging.start()
    await hanging.register_command(never, hang)
    calls = [asyncio.create_task(caller.invoke(command("svc", "echo", n), 10)) for n in range(5)]
    await wait_for(lambda: len(started) == 5)
    destroying = asyncio.create_task(server.destroy())
    await asyncio.sleep(0)
    assert not destroying.done()
    release.set()
    await destroying
    assert len(finished) == 5
    assert [await c for c in calls] == ["done"] * 5

    pending = asyncio.create_task(caller.invoke(command("svc", "never"), 10))
    await wait_for(lambda: caller.pending_invocations == 1)
    await caller.destroy()
    with pytest.raises(PuristaError) as info:
        await pending
    assert info.value.status == 503
    assert caller.pending_invocations == 0
    await hanging.destroy()
    assert hanging.drain_timed_out


async def test_ten_thousand_mixed_invocations_leave_no_pending_entry() -> None:
    hub = MemoryHub()
    caller, server = await _started(DefaultEventBridge(hub), DefaultEventBridge(hub))
    release = asyncio.Event()

    async def handler(cmd: Command):
        kind = cmd.payload.payload % 3
        if kind == 1:
            raise HandledError("bad", 422)
        if kind == 2:
            await release.wait()  # answered only after the caller gave up: a late response
        return success_response(cmd, "ok")

    await server.register_command(ECHO, handler)
    outcomes: Counter[object] = Counter()

    async def one(n: int) -> None:
        try:
            await caller.invoke(command("svc", "echo", n), ttl_s=0.2 if n % 3 == 2 else 60)
            outcomes["ok"] += 1
        except PuristaError as exc:
            outcomes[exc.status] += 1

    await asyncio.gather(*(one(n) for n in range(10_000)))
    release.set()
    assert outcomes == {"ok": 3334, 422: 3333, 504: 3333}
    await wait_for(lambda: server.inflight == 0, within=10)
    assert caller.pending_invocations == 0
    # a slow command is answered late, not started once its deadline passed, or not sent
    # at all (no send slot free before its ttl ended)
    late = caller.core.pending.late_responses
    assert late + server.core.expired_commands + caller.core.unsent_timeouts == 3333
    await caller.destroy()
    await server.destroy()


async def test_emit_event_name_chains_the_handler_result(hub_bridges) -> None:
    _hub, (bridge, *_r) = hub_bridges
    chained: list[CustomMessage] = []

    async def first(msg):
        return {"doubled": msg.payload * 2}

    async def second(msg):
        chained.append(msg)

    await bridge.register_subscription(_sub("c", "one", event_name="a", emit_event_name="b"), first)
    await bridge.register_subscription(_sub("c", "two", event_name="b"), second)
    await bridge.emit_message(_event("a", 21, principal_id="p", tenant_id="t"))
    await wait_for(lambda: len(chained) == 1)
    assert chained[0].payload == {"doubled": 42}
    assert (chained[0].principal_id, chained[0].tenant_id) == ("p", "t")
    assert chained[0].sender.service_name == "c"


class _FlakyEmit(DefaultEventBridge):
    """Publishing event ``b`` fails the first ``failures`` times (a broker hiccup)."""

    def __init__(self, hub: MemoryHub, failures: int) -> None:
        super().__init__(hub, drain_timeout_s=2)
        self.failures = failures
        self.failed = 0

    async def _publish(self, message) -> None:
        if isinstance(message, CustomMessage) and message.event_name == "b":
            if self.failed < self.failures:
                self.failed += 1
                raise ConnectionError("broker hiccup")
        await super()._publish(message)


@pytest.mark.parametrize("failures", [2, 50])
async def test_a_failing_chained_publish_does_not_run_the_handler_again(failures: int) -> None:
    hub = MemoryHub()
    bridge = _FlakyEmit(hub, failures)
    await bridge.start()
    effects: list[object] = []
    chained: list[CustomMessage] = []
    dead: list[CustomMessage] = []

    async def first(msg):
        effects.append(msg.payload)
        return {"doubled": msg.payload * 2}

    async def second(msg):
        chained.append(msg)

    async def on_dead(msg):
        dead.append(msg)

    failure = FailureHandling(max_attempts=3, retry_delay_ms=10, dead_letter_target="dlq")
    sub = _sub("c", "one", event_name="a", emit_event_name="b", failure=failure)
    await bridge.register_subscription(sub, first)
    await bridge.register_subscription(_sub("c", "two", event_name="b"), second)
    await bridge.register_subscription(_sub("c", "dl", event_name="dlq"), on_dead)
    await bridge.emit_message(_event("a", 21))
    if failures < 3:
        await wait_for(lambda: len(chained) == 1)
        assert chained[0].payload == {"doubled": 42}
    else:
        await wait_for(lambda: len(dead) == 1)
        assert "emitting 'b' failed" in dead[0].payload["reason"]
        assert chained == []
    await wait_for(lambda: bridge.inflight == 0)
    assert effects == [21], "the handler ran again because its chained emit failed"
    await bridge.destroy()



async def test_a_duplicate_correlation_id_is_a_409_naming_it(hub_bridges) -> None:
    _hub, (server, caller, _b) = hub_bridges
    release = asyncio.Event()

    async def slow(cmd: Command):
        await release.wait()
        return success_response(cmd, "done")

    await server.register_command(ECHO, slow)
    first = command("svc", "echo", 1)
    pending = asyncio.create_task(caller.invoke(first, 5))
    await wait_for(lambda: caller.pending_invocations == 1)
    again = command("svc", "echo", 2, correlation_id=first.correlation_id)
    with pytest.raises(HandledError) as info:
        await caller.invoke(again, 5)
    assert info.value.status == 409
    assert first.correlation_id in str(info.value)
    release.set()
    assert await pending == "done"
    assert caller.pending_invocations == 0


class _CountingBinds(DefaultEventBridge):
    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub, drain_timeout_s=2)
        self.bound: Counter[str] = Counter()

    async def _bind_command(self, reg) -> None:
        self.bound[str(reg.address)] += 1
        await super()._bind_command(reg)

    async def _unbind_command(self, reg) -> None:
        self.bound[str(reg.address)] -= 1
        await super()._unbind_command(reg)

    async def _bind_subscription(self, reg) -> None:
        self.bound[str(reg.subscription.subscriber)] += 1
        await super()._bind_subscription(reg)

    async def _unbind_subscription(self, reg) -> None:
        self.bound[str(reg.subscription.subscriber)] -= 1
        await super()._unbind_subscription(reg)


async def test_re_registering_replaces_the_binding_instead_of_adding_one() -> None:
    hub = MemoryHub()
    server, caller = await _started(
        _CountingBinds(hub), DefaultEventBridge(hub, drain_timeout_s=2)
    )
    seen: list[str] = []

    async def old(cmd: Command):
        return success_response(cmd, "old")

    async def new(cmd: Command):
        return success_response(cmd, "new")

    async def on_old(msg):
        seen.append("old")

    async def on_new(msg):
        seen.append("new")

    async def on_marker(msg):
        seen.append("marker")

    await server.register_command(ECHO, old)
    await server.register_command(ECHO, new)
    sub = _sub("svc", "listen", event_name="ping")
    await server.register_subscription(sub, on_old)
    await server.register_subscription(sub, on_new)
    assert all(n == 1 for n in server.bound.values()), dict(server.bound)
    assert await caller.invoke(command("svc", "echo"), 5) == "new"
    await server.register_subscription(_sub("svc", "marker", event_name="marker"), on_marker)
    await caller.emit_message(_event("ping"))
    await caller.emit_message(_event("marker"))  # the hub keeps order: copies of ping come first
    await wait_for(lambda: "marker" in seen)
    assert seen == ["new", "marker"]
    await caller.destroy()
    await server.destroy()


async def test_destroy_waits_for_cancelled_background_tasks_to_clean_up() -> None:
    bridge = DefaultEventBridge(MemoryHub(), drain_timeout_s=1)
    await bridge.start()
    cleaned: list[str] = []

    async def background() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # clean-up that itself awaits (closing a consumer)
            cleaned.append("cleaned")

    bridge.core.spawn(background(), name="test-background")
    await asyncio.sleep(0)
    await bridge.destroy()
    assert cleaned == ["cleaned"], "destroy returned before its background task ended"


async def test_every_sent_message_is_encoded_once(hub_bridges, monkeypatch) -> None:
    """The size check of invoke and emit_message encodes; the transport reuses those bytes
    (a second encode per message was a third of a round trip's codec time)."""
    from reference_services.runtime.spi import bridge_base

    _hub, (caller, server, _) = hub_bridges
    delivered = asyncio.Event()

    async def echo(cmd: Command):
        return success_response(cmd, cmd.payload.payload)

    async def on_event(_msg) -> None:
        delivered.set()

    await server.register_command(ECHO, echo)
    await server.register_subscription(_sub("s", "t", event_name="once"), on_event)
    encoded: list[str] = []
    real = bridge_base.encode

    def counting(message, **kw):
        encoded.append(str(message.message_type))
        return real(message, **kw)

    monkeypatch.setattr(bridge_base, "encode", counting)
    assert await caller.invoke(command("svc", "echo", 7)) == 7
    await caller.emit_message(_event("once", 1))
    await asyncio.wait_for(delivered.wait(), 5)
    assert Counter(encoded) == {
        "command": 1,
        "commandSuccessResponse": 1,
        "customMessage": 1,
    }, encoded



class _SlowSendBridge(DefaultEventBridge):
    """A transport whose sends wait for a gate (a broker slow to take a publish)."""

    def __init__(self, hub: MemoryHub) -> None:
        super().__init__(hub)
        self.gate = asyncio.Event()

    async def _send_command(self, command: Command) -> None:
        await self.gate.wait()
        await super()._send_command(command)


async def test_an_invocation_cancelled_while_sending_leaves_nothing_pending() -> None:
    """A caller cancelled while its command is being sent: its pending entry goes at once,
    not when its ttl ends (then failing a future nobody awaits, and emitting a timeout)."""
    hub = MemoryHub()
    caller, server = await _started(_SlowSendBridge(hub), DefaultEventBridge(hub))
    try:

        async def echo(cmd: Command):
            return success_response(cmd, cmd.payload.payload)

        await server.register_command(ECHO, echo)
        task = asyncio.ensure_future(caller.invoke(command("svc", "echo", 1), ttl_s=60))
        await wait_for(lambda: caller.pending_invocations == 1, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert caller.pending_invocations == 0
    finally:
        caller.gate.set()
        await caller.destroy()
        await server.destroy()


def _commands_alive(correlation_id: str) -> int:
    gc.collect()
    return sum(
        1 for o in gc.get_objects() if isinstance(o, Command) and o.correlation_id == correlation_id
    )


async def test_a_waiting_invocation_keeps_no_copy_of_its_command(hub_bridges) -> None:
    """While the handler works, the process holds one copy of the command (the handler's):
    the invoker dropped the one it sent, so 10,000 pending invocations do not hold 20,000."""
    _hub, (server, client, _) = hub_bridges
    started = asyncio.Event()
    release = asyncio.Event()

    async def wait(cmd: Command) -> object:
        started.set()
        await release.wait()
        return success_response(cmd, cmd.payload.payload)

    await server.register_command(ECHO, wait)
    sent = Command(sender=CALLER, receiver=ECHO, payload=CommandPayload(payload={"n": 1}))
    correlation_id = sent.correlation_id
    call = asyncio.ensure_future(client.invoke(sent, ttl_s=10))
    del sent
    await asyncio.wait_for(started.wait(), 5)
    assert _commands_alive(correlation_id) == 1
    release.set()
    assert await asyncio.wait_for(call, 5) == {"n": 1}
