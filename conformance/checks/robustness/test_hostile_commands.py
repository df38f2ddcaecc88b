"""Forged commands: the route decides what runs, a disagreeing body is rejected once
(never requeued), and a command past its deadline is not started."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conformance.checks.robustness.hooks import (
    bridge_counter,
    core_counter,
    invoke_forged,
    raw_command_hook,
)
from conformance.kit import addr, command, responder
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import Stopwatch, wait_for
from reference_services.runtime.codec import encode
from reference_services.runtime.ids import now_ms
from reference_services.runtime.messages import CommandErrorResponse

EB = ("event_bridge",)
#: an idle bridge after one rejected message uses next to no CPU; a requeue loop uses most
#: of a core (26k redeliveries in 5 s were seen)
MAX_CPU_FRACTION = 0.1
WATCH_S = 2.0


class Runs:
    """Counts executions per command target."""

    def __init__(self) -> None:
        self.by_target: dict[str, int] = {}

    def handler(self, target: str) -> Any:
        async def run(cmd: Any) -> Any:
            self.by_target[target] = self.by_target.get(target, 0) + 1
            return {"ran": target}

        return responder(run)


async def _served(aut: AdapterUnderTest, runs: Runs, *targets: str) -> Any:
    server = await aut.new()
    for target in targets:
        await server.register_command(addr(target), runs.handler(target))
    return server


async def _cpu_fraction(seconds: float) -> float:
    """The share of one core this process used over ``seconds`` of wall time."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu0) / (time.monotonic() - wall0)


@check("robustness.route.unserved_receiver_not_requeued", kinds=EB)
async def test_unserved_receiver_not_requeued(aut: AdapterUnderTest) -> None:
    """Each command on a served route whose body names a function nobody serves is rejected
    once: nothing runs, none is redelivered in a loop (CPU stays idle), each is counted once
    where the bridge counts rejections (``route_rejections`` of its core, its
    ``rejected_messages``), and the bridge serves on."""
    runs = Runs()
    server = await _served(aut, runs, "echo")
    publish = raw_command_hook(server)
    client = await aut.new()
    forged = [command(client, addr("nobody", target="serves-this"), {"x": i}) for i in range(3)]
    before = core_counter(server, "route_rejections")
    rejected_before = bridge_counter(server, "rejected_messages")
    for cmd in forged:
        await publish(encode(cmd), addr("echo"))
    cpu = await _cpu_fraction(WATCH_S)
    after = core_counter(server, "route_rejections")
    rejections = None if before is None or after is None else after - before
    rejected = (
        None
        if rejected_before is None
        else bridge_counter(server, "rejected_messages") - rejected_before
    )
    aut.metric("cpu_fraction_after_forged", round(cpu, 3))
    aut.metric("route_rejections", rejections)
    aut.metric("rejected_messages", rejected)
    aut.metric("rejections_per_s", None if rejections is None else round(rejections / WATCH_S, 1))
    assert cpu < MAX_CPU_FRACTION, (
        f"the bridge used {cpu:.0%} of a core for {WATCH_S}s after {len(forged)} forged "
        "commands: they are redelivered in a loop"
    )
    if rejections is not None:
        assert rejections == len(forged), (
            f"expected each of {len(forged)} forged commands rejected once, route_rejections "
            f"counted {rejections}"
        )
    if rejected is not None:
        assert rejected == len(forged), (
            f"expected each of {len(forged)} forged commands counted once in rejected_messages, "
            f"got {rejected}"
        )
    assert runs.by_target == {}, f"a forged command ran {runs.by_target}"
    assert await client.invoke(command(client, addr("echo"), {"x": 2}), 10) == {"ran": "echo"}


@check("robustness.route.body_cannot_pick_handler", kinds=EB)
async def test_body_cannot_pick_handler(aut: AdapterUnderTest) -> None:
    """A command on the route of ``echo`` whose body names ``other`` (served by the same
    instance) runs neither: the route, not the body, chooses the handler."""
    runs = Runs()
    server = await _served(aut, runs, "echo", "other")
    publish = raw_command_hook(server)
    client = await aut.new()
    for i in range(3):
        await publish(encode(command(client, addr("other"), {"i": i})), addr("echo"))
    # the legitimate invoke goes after the forged ones on the same route: once it is
    # answered, the forged ones were handled (or are running)
    assert await client.invoke(command(client, addr("echo"), {"ok": 1}), 10) == {"ran": "echo"}
    await wait_for(lambda: runs.by_target.get("other", 0) > 0, 1.0)
    aut.metric("runs", dict(runs.by_target))
    rejections = core_counter(server, "route_rejections")
    aut.metric("route_rejections", rejections)
    if rejections is not None:
        assert rejections == 3, f"3 forged commands, route_rejections counted {rejections}"
    assert runs.by_target.get("other", 0) == 0, (
        f"a body naming 'other' on the route of 'echo' ran 'other' "
        f"{runs.by_target['other']} time(s)"
    )
    assert runs.by_target.get("echo", 0) == 1, f"unexpected executions {runs.by_target}"
    assert await client.invoke(command(client, addr("other"), {"ok": 2}), 10) == {"ran": "other"}


@check("robustness.route.misrouted_answered", kinds=EB)
async def test_misrouted_answered(aut: AdapterUnderTest) -> None:
    """A peer that sends a command on the route of ``echo`` whose body names another
    function (served by the same instance, or by nobody) and waits for the answer gets a
    handled 400 from the serving instance, at once, with its correlation id and trace id,
    whose message names the command, the function its body names and the route it arrived
    on; nothing runs, and the route serves on."""
    runs = Runs()
    server = await _served(aut, runs, "echo", "other")
    client = await aut.new()
    route = addr("echo")
    for receiver in (addr("other"), addr("nobody", target="serves-this")):
        forged = command(client, receiver, {"x": 1}, trace_id=f"trace-{receiver.service_name}")
        watch = Stopwatch()
        response = await invoke_forged(client, forged, route, 10)
        took = watch.elapsed
        aut.metric(f"answer_s_{receiver.service_name}", round(took, 3))
        assert isinstance(response, CommandErrorResponse), (
            f"a body naming {receiver} on the route of {route} was answered {response!r}"
        )
        err = response.payload
        assert err.status == 400, f"misrouted {receiver}: status {err.status}, expected 400"
        assert response.is_handled_error is True, f"misrouted {receiver}: 400 not handled"
        assert response.correlation_id == forged.correlation_id
        assert err.trace_id == forged.trace_id, f"misrouted {receiver}: trace id {err.trace_id!r}"
        assert response.sender.instance_id == server.instance_id, (
            f"the 400 came from {response.sender.instance_id!r}, not the serving instance"
        )
        route_name = ".".join(route.key)
        missing = [
            part for part in (forged.id, str(receiver), route_name) if part not in err.message
        ]
        assert not missing, f"the 400's message {err.message!r} does not name {missing}"
        assert took < 5, f"the 400 to a misrouted command took {took:.2f}s"
    assert runs.by_target == {}, f"a misrouted command ran {runs.by_target}"
    assert await client.invoke(command(client, route, {"ok": 1}), 10) == {"ran": "echo"}


@check("robustness.deadline.expired_not_started", kinds=EB)
async def test_expired_not_started(aut: AdapterUnderTest) -> None:
    """A command whose deadline (``expiresAt``, stamped by the invoker) has passed is not
    started and not answered; one still within its deadline runs."""
    runs = Runs()
    server = await _served(aut, runs, "echo")
    publish = raw_command_hook(server)
    client = await aut.new()
    n = aut.n(20)
    expired = [
        command(client, addr("echo"), {"i": i}).model_copy(update={"expires_at": now_ms() - 1})
        for i in range(n)
    ]
    for cmd in expired:
        await publish(encode(cmd), addr("echo"))
    live = command(client, addr("echo"), {"live": 1}).model_copy(
        update={"expires_at": now_ms() + 30_000}
    )
    await publish(encode(live), addr("echo"))
    await wait_for(lambda: runs.by_target.get("echo", 0) >= 1, 10)
    await wait_for(lambda: runs.by_target.get("echo", 0) > 1, 1.0)
    executed = runs.by_target.get("echo", 0) - 1
    aut.metric("expired_sent", n)
    aut.metric("expired_executed", executed)
    counted = core_counter(server, "expired_commands")
    aut.metric("expired_counted", counted)
    assert runs.by_target.get("echo", 0) >= 1, "the command within its deadline did not run"
    assert executed == 0, f"{executed} of {n} commands past their deadline were executed"
    if counted is not None:
        assert counted == n, f"{n} commands past their deadline, expired_commands counted {counted}"
