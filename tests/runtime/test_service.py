"""Services: the command pipeline in PURISTA's order, subscriptions, info messages."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pydantic import BaseModel

from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.adapters.memory.stores import DefaultStateStore
from reference_services.runtime.definitions import FailureHandling
from reference_services.runtime.errors import HandledError, PuristaError
from reference_services.runtime.messages import MessageType
from reference_services.runtime.service import DefinitionError, ServiceBuilder
from reference_services.runtime.spi.capabilities import EventBridgeCapabilities, unsupported

from .helpers import command, wait_for, wait_for_async


class In(BaseModel):
    n: int


class Out(BaseModel):
    doubled: int


def _service(trail: list[str]) -> ServiceBuilder:
    svc = ServiceBuilder("calc", "1")

    async def transform_input(ctx, payload, parameter):
        trail.append("transform_input")
        return {"n": int(payload["n"])}, parameter

    async def before(ctx, payload, parameter):
        trail.append("before_guard")
        if payload.n < 0:
            raise HandledError("negative numbers are not allowed", 403)

    async def after(ctx, result, payload, parameter):
        trail.append("after_guard")

    async def transform_output(ctx, result, payload, parameter):
        trail.append("transform_output")
        return {"result": result.doubled if isinstance(result, Out) else result["doubled"]}

    @svc.command(
        "double",
        payload=In,
        output=Out,
        success_event="doubled",
        transform_input=transform_input,
        before_guards=[before],
        after_guards=[after],
        transform_output=transform_output,
    )
    async def double(ctx, payload: In, parameter):
        trail.append("handler")
        if payload.n == 13:
            return {"doubled": "not a number"}
        return Out(doubled=payload.n * 2)

    return svc


@pytest.fixture
async def bridge():
    b = DefaultEventBridge(MemoryHub())
    await b.start()
    yield b
    await b.destroy()


async def test_command_pipeline_runs_hooks_in_purista_order(bridge) -> None:
    trail: list[str] = []
    instance = _service(trail).get_instance(bridge)
    await instance.start()
    assert await bridge.invoke(command("calc", "double", {"n": "21"})) == {"result": 42}
    assert trail == [
        "transform_input",
        "before_guard",
        "handler",
        "after_guard",
        "transform_output",
    ]
    await instance.destroy()


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"n": "x"}, 500, "ValueError"),  # transform_input itself fails: unhandled
        ({"n": -1}, 403, "negative"),  # before guard
        ({"n": 13}, 500, "invalid output"),  # output validation
    ],
)
async def test_command_failures_carry_their_status(bridge, payload, status, fragment) -> None:
    instance = _service([]).get_instance(bridge)
    await instance.start()
    with pytest.raises(PuristaError) as info:
        await bridge.invoke(command("calc", "double", payload))
    assert info.value.status == status
    assert fragment in info.value.message
    await instance.destroy()


async def test_invalid_payload_is_a_400_naming_the_field(bridge) -> None:
    svc = ServiceBuilder("v", "1")

    @svc.command("go", payload=In)
    async def go(ctx, payload, parameter):
        return payload.n

    instance = svc.get_instance(bridge)
    await instance.start()
    with pytest.raises(PuristaError) as info:
        await bridge.invoke(command("v", "go", {"n": "not an int"}))
    assert info.value.status == 400
    assert info.value.data[0]["loc"] == ["n"]
    await instance.destroy()


async def test_success_event_reaches_subscribers_and_info_messages_are_emitted(bridge) -> None:
    seen: Counter[str] = Counter()
    events: list[object] = []
    watcher = ServiceBuilder("watcher", "1")

    @watcher.subscription("info", sender=None, shared=False, durable=False)
    async def all_messages(ctx, message):
        seen[message.message_type] += 1

    @watcher.subscription("doubled", event_name="doubled")
    async def on_doubled(ctx, message):
        events.append(message.payload)

    w = watcher.get_instance(bridge)
    await w.start()
    instance = _service([]).get_instance(bridge)
    await instance.start()
    await bridge.invoke(command("calc", "double", {"n": 2}))
    await instance.destroy()
    await wait_for(lambda: seen[MessageType.INFO_SERVICE_SHUTDOWN] >= 1 and events)
    assert events == [{"result": 4}]
    for kind in (
        MessageType.INFO_SERVICE_INIT,
        MessageType.INFO_SERVICE_FUNCTION_ADDED,
        MessageType.INFO_SERVICE_READY,
        MessageType.INFO_SERVICE_DRAIN,
        MessageType.INFO_SERVICE_SHUTDOWN,
    ):
        assert seen[kind] >= 1, kind
    await w.destroy()


async def test_invoke_timeout_and_subscription_error_info_messages_are_emitted(bridge) -> None:
    seen: Counter[str] = Counter()
    watcher = ServiceBuilder("watcher", "1")

    @watcher.subscription("timeouts", message_type=MessageType.INFO_INVOKE_TIMEOUT, shared=False)
    async def on_timeout(ctx, message):
        seen["timeout"] += 1

    @watcher.subscription(
        "suberrors", message_type=MessageType.INFO_SUBSCRIPTION_ERROR, shared=False
    )
    async def on_error(ctx, message):
        seen["suberror"] += 1

    slow = ServiceBuilder("slow", "1")

    @slow.command("wait")
    async def wait(ctx, payload, parameter):
        import asyncio

        await asyncio.sleep(0.3)

    @slow.subscription("fail", event_name="x", failure=FailureHandling(max_attempts=1))
    async def fail(ctx, message):
        raise RuntimeError("nope")

    for svc in (watcher, slow):
        await svc.get_instance(bridge).start()
    with pytest.raises(PuristaError) as info:
        await bridge.invoke(command("slow", "wait"), ttl_s=0.05)
    assert info.value.status == 504
    from reference_services.runtime.messages import CustomMessage

    from .helpers import CALLER

    await bridge.emit_message(CustomMessage(sender=CALLER, event_name="x"))
    await wait_for(lambda: seen["timeout"] == 1 and seen["suberror"] == 1)


async def test_strict_mode_rejects_definitions_the_bridge_cannot_honour() -> None:
    class NoDurability(DefaultEventBridge):
        capabilities = EventBridgeCapabilities(
            durable_subscriptions=unsupported("test bridge keeps nothing"),
        )

    bridge = NoDurability()
    await bridge.start()
    svc = ServiceBuilder("s", "1")

    @svc.subscription("d", event_name="e", durable=True)
    async def handler(ctx, message):
        return None

    with pytest.raises(DefinitionError, match="test bridge keeps nothing"):
        await svc.get_instance(bridge, strict=True).start()
    lenient = svc.get_instance(bridge)
    await lenient.start()
    assert lenient.warnings and "durable" in lenient.warnings[0]
    await bridge.destroy()


async def test_context_invoke_and_emit_carry_principal_and_tenant(bridge) -> None:
    front = ServiceBuilder("front", "1")
    back = ServiceBuilder("back", "1")
    seen: list[tuple[str | None, str | None]] = []

    @front.command("go")
    async def go(ctx, payload, parameter):
        await ctx.emit("went", {"x": 1})
        return await ctx.invoke(back.address("echo"), payload)

    @back.command("echo")
    async def echo(ctx, payload, parameter):
        seen.append((ctx.message.principal_id, ctx.message.tenant_id))
        return payload

    @back.subscription("went", event_name="went")
    async def went(ctx, message):
        seen.append((message.principal_id, message.tenant_id))

    for svc in (front, back):
        await svc.get_instance(bridge, state_store=DefaultStateStore()).start()
    out = await bridge.invoke(command("front", "go", "hi", principal_id="p", tenant_id="t"))
    assert out == "hi"
    await wait_for(lambda: len(seen) == 2)
    assert seen == [("p", "t"), ("p", "t")]


async def test_a_job_longer_than_its_lease_runs_once_and_is_acked(bridge) -> None:
    from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge

    queue = DefaultQueueBridge()
    await queue.start()
    svc = ServiceBuilder("jobs", "1")
    runs: list[int] = []
    finished: list[int] = []

    @svc.queue_worker("long", concurrency=3, wait_ms=20)
    async def work(ctx, job):
        runs.append(job.attempt)
        await asyncio.sleep(1.0)  # three times the 300 ms lease
        finished.append(job.attempt)

    instance = svc.get_instance(bridge, queue_bridge=queue)
    await instance.start()
    await queue.enqueue("long", {"n": 1}, lease_ttl_ms=300)
    await wait_for(lambda: len(finished) == 1, within=10)
    await wait_for_async(lambda: _settled(queue, "long"), within=5, what="the ack")
    assert runs == [1], "the job ran again while its first run was still going"
    assert await queue.peek_dead_letter("long") == []
    await instance.destroy()
    await queue.destroy()


async def _settled(queue, name: str) -> bool:
    metrics = await queue.metrics(name)
    return metrics.pending == 0 and metrics.inflight == 0


async def test_a_definition_error_after_registering_leaves_no_binding(bridge) -> None:
    svc = ServiceBuilder("half", "1")

    @svc.command("ping")
    async def ping(ctx, payload, parameter):
        return "pong"

    @svc.queue_worker("jobs")
    async def work(ctx, job):
        return None

    with pytest.raises(DefinitionError, match="no queue bridge"):
        await svc.get_instance(bridge).start()
    assert bridge.core.registered_commands == []
    assert bridge.core.registered_subscriptions == []


class _SlowBinds(DefaultEventBridge):
    """Binding takes a moment, as it does over a network."""

    async def _bind_command(self, reg) -> None:
        await asyncio.sleep(0.05)
        await super()._bind_command(reg)


async def test_concurrent_start_and_destroy_do_not_interleave() -> None:
    bridge = _SlowBinds(MemoryHub())
    await bridge.start()
    svc = ServiceBuilder("racy", "1")
    calls: list[str] = []

    @svc.command("ping")
    async def ping(ctx, payload, parameter):
        calls.append("ping")
        return "pong"

    instance = svc.get_instance(bridge)
    await asyncio.gather(instance.start(), instance.destroy())
    assert bridge.core.registered_commands == [], "destroy during start was lost"
    assert not await instance.is_ready()
    await asyncio.gather(instance.start(), instance.start(), instance.destroy(), instance.start())
    assert len(bridge.core.registered_commands) == 1
    assert await instance.is_ready()
    await instance.destroy()
    assert bridge.core.registered_commands == []
    await asyncio.gather(instance.destroy(), instance.destroy())
    await bridge.destroy()


def test_a_command_or_subscription_defined_twice_is_refused_and_the_first_kept() -> None:
    svc = ServiceBuilder("twice", "1")

    @svc.command("add")
    async def first(ctx, payload, parameter):  # type: ignore[no-untyped-def]
        return 1

    @svc.subscription("audit", event_name="e")
    async def watch(ctx, message):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(DefinitionError, match="command 'add' is defined twice on twice"):
        svc.command("add")(first)
    with pytest.raises(DefinitionError, match="subscription 'audit' is defined twice on twice"):
        svc.subscription("audit")(watch)
    assert svc.commands["add"].handler is first and svc.commands["add"].name == "add"
    assert svc.subscriptions["audit"].event_name == "e"


def test_a_second_worker_for_one_queue_is_refused_and_the_first_kept() -> None:
    svc = ServiceBuilder("twice", "1")

    @svc.queue_worker("jobs", concurrency=2)
    async def first(ctx, job):  # type: ignore[no-untyped-def]
        return None

    async def second(ctx, job):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(DefinitionError, match="queue worker for 'jobs' is defined twice on twice"):
        svc.queue_worker("jobs")(second)
    assert svc.queue_workers["jobs"].handler is first
    assert svc.queue_workers["jobs"].concurrency == 2


async def test_a_context_invoke_keeps_no_copy_of_its_command_while_it_waits(bridge) -> None:
    import gc

    from reference_services.runtime.messages import Command

    front = ServiceBuilder("front", "1")
    back = ServiceBuilder("back", "1")
    waiting: list[str] = []
    release = asyncio.Event()

    @front.command("go")
    async def go(ctx, payload, parameter):
        return await ctx.invoke(back.address("slow"), {"big": "x" * 1000})

    @back.command("slow")
    async def slow(ctx, payload, parameter):
        waiting.append(ctx.message.correlation_id)
        await release.wait()
        return len(payload["big"])

    for svc in (front, back):
        await svc.get_instance(bridge, state_store=DefaultStateStore()).start()
    call = asyncio.ensure_future(bridge.invoke(command("front", "go")))
    await wait_for(lambda: bool(waiting))
    gc.collect()
    copies = [o for o in gc.get_objects() if isinstance(o, Command)
              and o.correlation_id == waiting[0]]
    assert len(copies) == 1, f"{len(copies)} copies of the command held while its handler runs"
    release.set()
    assert await asyncio.wait_for(call, 5) == 1000
