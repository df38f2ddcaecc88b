"""Commands: request/response over the event bridge."""

from __future__ import annotations

import asyncio
import statistics
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from conformance.checks.robustness.hooks import bridge_counter
from conformance.kit import (
    CommandConfig,
    Gate,
    Recorder,
    addr,
    collect,
    command,
    event,
    invoke_status,
    pending_invocations,
    responder,
    stalled_command,
    subscription,
)
from conformance.kit.ledger import Ledger, expect_exactly_once
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import Stopwatch, wait_for, wait_quiet
from reference_services.runtime.definitions import Subscription
from reference_services.runtime.errors import HandledError, PuristaError, StatusCode, UnhandledError
from reference_services.runtime.ids import now_ms
from reference_services.runtime.messages import MessageType, success_response

EB = ("event_bridge",)
TIMEOUT_MARGIN_S = 0.5


async def _echo_server(
    aut: AdapterUnderTest, target: str, executions: Ledger | None = None, label: str = "server"
) -> Any:
    bridge = await aut.new()

    async def echo(cmd: Any) -> Any:
        if executions is not None:
            executions.delivered(cmd.correlation_id, by=label)
        return {
            "echo": cmd.payload.payload,
            "parameter": cmd.payload.parameter,
            "correlationId": cmd.correlation_id,
        }

    await bridge.register_command(addr(target), responder(echo))
    return bridge


async def _invoke_many(
    clients: list[Any], target: str, senders: int, per_sender: int, answers: Ledger
) -> list[float]:
    latencies: list[float] = []

    async def sender(index: int) -> None:
        client = clients[index % len(clients)]
        for i in range(per_sender):
            cmd = command(
                client, addr(target), {"sender": index, "i": i, "text": "ünï ✓"}, {"n": i}
            )
            answers.sent(cmd.correlation_id)
            status, result, took = await invoke_status(client, cmd, 10)
            latencies.append(took)
            if status != "ok":
                raise AssertionError(f"invocation {cmd.correlation_id} failed: {result!r}")
            ok = result.get("echo") == {"sender": index, "i": i, "text": "ünï ✓"} and result.get(
                "parameter"
            ) == {"n": i}
            # record under the id the answer carries: a wrong answer shows up as unexpected
            answers.delivered(str(result.get("correlationId")) if ok else f"wrong:{result}")

    await asyncio.gather(*(sender(s) for s in range(senders)))
    return latencies


def _latency_metrics(aut: AdapterUnderTest, latencies: list[float]) -> None:
    if latencies:
        ordered = sorted(latencies)
        aut.metric("latency_p50_ms", round(statistics.median(ordered) * 1000, 2))
        aut.metric("latency_p95_ms", round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2))


@check("event_bridge.commands.round_trip", kinds=EB)
async def test_round_trip(aut: AdapterUnderTest) -> None:
    """Many concurrent invocations from two client instances each get their own result, once."""
    target = "calc"
    executions = Ledger("executions")
    await _echo_server(aut, target, executions)
    clients = [await aut.new(), await aut.new()]
    answers = Ledger("answers")
    senders, per = 5, aut.n(60)
    latencies = await _invoke_many(clients, target, senders, per, answers)
    for mid in answers.sent_ids():
        executions.sent(mid)
    expect_exactly_once(answers, executions)
    aut.metric("invocations", senders * per)
    _latency_metrics(aut, latencies)


@check("event_bridge.commands.invoker_instance", kinds=EB)
async def test_invoker_instance(aut: AdapterUnderTest) -> None:
    """A command whose sender names another instance (forwarded, or built elsewhere) goes
    out from the invoking instance: the handler sees the invoker's instance id with the
    sender's service and target kept, and the answer comes back to the invoker."""
    seen: list[Any] = []
    server = await aut.new()

    async def record(cmd: Any) -> Any:
        seen.append(cmd.sender)
        return {"answered": cmd.payload.payload}

    await server.register_command(addr("calc"), responder(record))
    client = await aut.new()
    built = command(client, addr("calc"), {"x": 1})
    foreign = built.model_copy(
        update={"sender": built.sender.model_copy(update={"instance_id": "elsewhere-1"})}
    )
    status, result, _ = await invoke_status(client, foreign, 5)
    assert status == "ok" and result == {"answered": {"x": 1}}, (
        f"a command naming another sender instance was not answered to the invoker: {result!r}"
    )
    assert len(seen) == 1, f"the handler ran {len(seen)} times"
    got, want = seen[0], built.sender
    assert got.instance_id == client.instance_id, (
        f"the handler saw sender instance {got.instance_id!r}, not the invoker's "
        f"{client.instance_id!r}"
    )
    assert (got.service_name, got.service_version, got.service_target) == (
        want.service_name,
        want.service_version,
        want.service_target,
    ), f"the sender's service or target changed on the way: {got!r}"


@check("event_bridge.commands.default_ttl", kinds=EB)
async def test_default_ttl(aut: AdapterUnderTest) -> None:
    """``invoke`` without a ttl (the bridge's default command ttl applies) is answered like
    one with a ttl."""
    await _echo_server(aut, "calc")
    client = await aut.new()
    cmd = command(client, addr("calc"), {"x": 2}, {"p": 1})
    try:
        result = await asyncio.wait_for(client.invoke(cmd), 10)
    except Exception as exc:  # a crash here is the finding, whatever its type
        raise AssertionError(f"invoke without a ttl failed: {exc!r}") from exc
    assert result.get("echo") == {"x": 2} and result.get("parameter") == {"p": 1}, (
        f"invoke without a ttl answered {result!r}"
    )


@check("event_bridge.commands.handled_error", kinds=EB)
async def test_handled_error(aut: AdapterUnderTest) -> None:
    """A handled error reaches the caller with its status, message and data intact."""
    server = await aut.new()
    client = await aut.new()

    async def refuse(cmd: Any) -> Any:
        p = cmd.payload.payload
        raise HandledError(p["message"], p["status"], data=p["data"])

    await server.register_command(addr("strict"), responder(refuse))
    cases = [
        (400, "bad input", {"field": "name", "ünï": [1, 2.5, None]}),
        (401, "not allowed", None),
        (403, "forbidden ✋", {"why": "policy"}),
        (404, "no such user", {"id": "u-1"}),
        (409, "conflict", [1, "two"]),
        (422, "unprocessable", {"nested": {"deep": [True, False]}}),
    ]
    outcomes = await asyncio.gather(
        *(
            invoke_status(
                client, command(client, addr("strict"), {"status": s, "message": m, "data": d}), 10
            )
            for s, m, d in cases
        )
    )
    problems = []
    for (status, message, data), (kind, err, _) in zip(cases, outcomes, strict=True):
        if kind != "error" or not isinstance(err, PuristaError):
            problems.append(f"{status}: expected an error, got {err!r}")
        elif (err.status, err.message, err.data, err.is_handled) != (status, message, data, True):
            problems.append(
                f"{status}: got status={err.status} message={err.message!r} "
                f"data={err.data!r} handled={err.is_handled}"
            )
    assert not problems, "; ".join(problems)


@check("event_bridge.commands.unhandled_error", kinds=EB)
async def test_unhandled_error(aut: AdapterUnderTest) -> None:
    """An exception in a handler becomes a 500 unhandled error; an explicit status is kept."""
    server = await aut.new()
    client = await aut.new()

    async def crash(cmd: Any) -> Any:
        if cmd.payload.payload == "503":
            raise UnhandledError("downstream unavailable", 503)
        raise RuntimeError("boom ünï")

    await server.register_command(addr("fragile"), responder(crash))
    k1, e1, _ = await invoke_status(client, command(client, addr("fragile"), "x"), 10)
    k2, e2, _ = await invoke_status(client, command(client, addr("fragile"), "503"), 10)
    assert k1 == "error" and e1.status == 500 and not e1.is_handled, f"got {e1!r}"
    assert "boom ünï" in e1.message, f"error message lost: {e1.message!r}"
    assert k2 == "error" and e2.status == 503 and not e2.is_handled, f"got {e2!r}"
    assert e2.message == "downstream unavailable", f"message changed: {e2.message!r}"
    # the server survives handler crashes
    assert await server.is_healthy(), "server unhealthy after handler errors"


@check("event_bridge.commands.unknown_fails_fast", kinds=EB, needs=("unknown_command_fails_fast",))
async def test_unknown_fails_fast(aut: AdapterUnderTest) -> None:
    """Invoking a command nobody serves fails well before the ttl with the status the adapter
    declares (``unknown_command_status``: 404 "nobody serves it", 503 "nobody answered";
    any of 404/502/503 when it declares none) and a message that names the command; the
    error carries the command's trace id, as every error a response brings back does."""
    declared = aut.spec.capabilities.unknown_command_status
    allowed = (404, 502, 503) if declared is None else (declared,)
    client = await aut.new()
    await _echo_server(aut, "known")
    ttl = 2.0
    cmds = [command(client, addr(f"nobody-{i}"), trace_id=f"trace-nobody-{i}") for i in range(5)]
    outcomes = await asyncio.gather(*(invoke_status(client, cmd, ttl) for cmd in cmds))
    slow = [
        (round(took, 3), getattr(err, "status", err)) for _, err, took in outcomes if took >= 1.0
    ]
    wrong = [
        (kind, getattr(err, "status", err))
        for kind, err, _ in outcomes
        if kind != "error" or err.status not in allowed
    ]
    assert not wrong, (
        f"expected {'/'.join(map(str, allowed))}"
        f"{' (declared unknown_command_status)' if declared else ''}, got {wrong}: "
        f"{[getattr(err, 'message', err) for _, err, _ in outcomes][:2]}"
    )
    unnamed = [
        (str(cmd.receiver), err.message)
        for cmd, (_, err, _) in zip(cmds, outcomes, strict=True)
        if str(cmd.receiver) not in err.message
    ]
    assert not unnamed, f"the error does not name the command (sent to, message): {unnamed}"
    assert not slow, f"unknown command took >= 1s to fail (ttl {ttl}s): {slow}"
    untraced = [
        (cmd.trace_id, getattr(err, "trace_id", None))
        for cmd, (_, err, _) in zip(cmds, outcomes, strict=True)
        if getattr(err, "trace_id", None) != cmd.trace_id
    ]
    assert not untraced, f"the error lost the command's trace id (sent, got): {untraced}"
    aut.metric("fail_ms", [round(took * 1000, 1) for _, _, took in outcomes])


@check("event_bridge.commands.timeout", kinds=EB)
async def test_timeout(aut: AdapterUnderTest) -> None:
    """A handler slower than the ttl gives 504 within ttl + 0.5 s, for every concurrent caller;
    each 504 carries its command's trace id."""
    client, gate = await stalled_command(aut, "slow")
    ttl = 0.3
    cmds = [command(client, addr("slow"), i, trace_id=f"trace-slow-{i}") for i in range(10)]
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(invoke_status(client, cmd, ttl) for cmd in cmds)),
            ttl + TIMEOUT_MARGIN_S + 2,
        )
    except TimeoutError:
        raise AssertionError(
            f"no 504 within {ttl + TIMEOUT_MARGIN_S + 2:.1f}s for ttl {ttl}s: the ttl is ignored"
        ) from None
    finally:
        gate.open()
    bad = [
        (kind, getattr(err, "status", err), round(took, 3))
        for kind, err, took in outcomes
        if kind != "error" or err.status != 504 or not ttl * 0.95 <= took <= ttl + TIMEOUT_MARGIN_S
    ]
    assert not bad, f"expected 504 after {ttl}s (+{TIMEOUT_MARGIN_S}s), got {bad}"
    untraced = [
        (cmd.trace_id, getattr(err, "trace_id", None))
        for cmd, (_, err, _) in zip(cmds, outcomes, strict=True)
        if getattr(err, "trace_id", None) != cmd.trace_id
    ]
    assert not untraced, f"a 504 lost its command's trace id (sent, got): {untraced}"
    aut.metric("timeout_s", sorted(round(t, 3) for _, _, t in outcomes))
    pending = pending_invocations(client)
    assert pending == 0, f"{pending} pending invocation(s) leaked after timeouts"


@check("event_bridge.commands.info_on_timeout", kinds=EB)
async def test_info_on_timeout(aut: AdapterUnderTest) -> None:
    """Each invoke that times out is reported once as an infoInvokeTimeout from the invoking
    instance's bridge (sender service eventBridge) with the command's correlation id and its
    receiver (``service.version.function``); an invoke answered in time is not reported."""
    infos: list[Any] = []
    watcher = await aut.new()
    await watcher.register_subscription(
        replace(subscription("timeout-watch"), message_type=MessageType.INFO_INVOKE_TIMEOUT),
        collect(infos),
    )
    client, gate = await stalled_command(aut, "timeout-info-slow")
    await _echo_server(aut, "timeout-info-fast")
    slow = [command(client, addr("timeout-info-slow"), i) for i in range(3)]
    fast = command(client, addr("timeout-info-fast"), "in time")
    try:
        outcomes = await asyncio.gather(
            *(invoke_status(client, cmd, 0.3) for cmd in slow), invoke_status(client, fast, 10)
        )
    finally:
        gate.open()
    statuses = [kind if kind == "ok" else getattr(err, "status", err) for kind, err, _ in outcomes]
    assert statuses == [504, 504, 504, "ok"], f"expected three 504 and one answer: {statuses}"
    ids = {cmd.correlation_id for cmd in [*slow, fast]}
    mine = lambda: [m for m in infos if m.payload.get("correlationId") in ids]  # noqa: E731
    await wait_for(lambda: len(mine()) >= len(slow), 10, progress=lambda: len(infos))
    await wait_quiet(lambda: len(infos), quiet_s=0.3)
    got = Counter(m.payload.get("correlationId") for m in mine())
    assert got == Counter(cmd.correlation_id for cmd in slow), (
        f"expected one infoInvokeTimeout per timed-out invoke ({[c.correlation_id for c in slow]})"
        f" and none for {fast.correlation_id}, got {[m.payload for m in mine()]}"
    )
    for m in mine():
        assert m.sender.service_name == "eventBridge", f"info sender: {m.sender!r}"
        assert m.sender.instance_id == client.instance_id, (
            f"info from instance {m.sender.instance_id}, the invoker is {client.instance_id}"
        )
        assert m.payload.get("receiver") == str(addr("timeout-info-slow")), (
            f"receiver not named: {m.payload}"
        )


@check("event_bridge.commands.unregistered_not_served", kinds=EB)
async def test_unregistered_not_served(aut: AdapterUnderTest) -> None:
    """A command unregistered is no longer served: an invoke after ``unregister_command`` runs
    no handler and fails (404/502/503, or 504 at its ttl where unknown commands do not fail
    fast); registered again, the command is served again, and only the invokes made while
    it was registered ever ran. Unregistering it twice, or a command or subscription never
    registered, is a no-op."""
    ran: list[Any] = []

    async def handler(cmd: Any) -> Any:
        ran.append(cmd.payload.payload)
        return {"ran": cmd.payload.payload}

    server = await aut.new()
    client = await aut.new()
    target = addr("unregistered")
    await server.register_command(target, responder(handler))
    kind, result, _ = await invoke_status(client, command(client, target, "before"), 10)
    assert (kind, result) == ("ok", {"ran": "before"}), f"registered command: {kind} {result!r}"
    await server.unregister_command(target)
    kind, err, _ = await invoke_status(client, command(client, target, "while-unregistered"), 1.0)
    assert kind == "error" and err.status in (404, 502, 503, 504), (
        f"an invoke of an unregistered command gave {kind} {err!r}"
    )
    await server.unregister_command(target)  # twice, and what was never registered: no-ops
    await server.unregister_command(addr("never-registered"))
    await server.unregister_subscription(addr("never-subscribed", target="on"))
    await server.register_command(target, responder(handler))
    kind, result, _ = await invoke_status(client, command(client, target, "again"), 10)
    assert (kind, result) == ("ok", {"ran": "again"}), f"registered again: {kind} {result!r}"
    await wait_quiet(lambda: len(ran), quiet_s=0.3)
    assert ran == ["before", "again"], f"handler runs: {ran}"


@check("event_bridge.commands.deadline_stamped", kinds=EB)
async def test_deadline_stamped(aut: AdapterUnderTest) -> None:
    """The command a server receives carries the invoker's deadline (``expiresAt``, ms since
    the epoch): the invoke's start plus its ttl; a deadline the caller set earlier is kept,
    one set later is brought down to the ttl's."""
    seen: dict[str, Any] = {}

    async def handler(cmd: Any) -> Any:
        seen[cmd.payload.payload] = cmd.expires_at
        return {"ok": True}

    server = await aut.new()
    await server.register_command(addr("deadline"), responder(handler))
    client = await aut.new()
    ttl_s = 10.0
    bounds: dict[str, tuple[int, int]] = {}
    cases = {
        "unset": None,
        "earlier": lambda now: now + 4_000,  # kept: sooner than now + ttl
        "later": lambda now: now + 600_000,  # lowered to now + ttl
    }
    for name, stamp in cases.items():
        cmd = command(client, addr("deadline"), name)
        before = now_ms()
        if stamp is not None:
            cmd = cmd.model_copy(update={"expires_at": stamp(before)})
        assert await client.invoke(cmd, ttl_s) == {"ok": True}
        after = now_ms()
        ttl_ms = round(ttl_s * 1000)
        if name == "earlier":
            bounds[name] = (before + 4_000, before + 4_000)
        else:
            bounds[name] = (before + ttl_ms, after + ttl_ms)
    aut.metric(
        "expires_at_minus_low_bound_ms",
        {
            name: None if seen.get(name) is None else seen[name] - low
            for name, (low, _) in bounds.items()
        },
    )
    wrong = {
        name: (seen.get(name), low, high)
        for name, (low, high) in bounds.items()
        if seen.get(name) is None or not low <= seen[name] <= high
    }
    assert not wrong, f"expiresAt the server saw, outside (low, high): {wrong}"


@check("event_bridge.commands.late_response_ignored", kinds=EB)
async def test_late_response_ignored(aut: AdapterUnderTest) -> None:
    """A response arriving after the timeout is dropped; later invocations get their own answers."""
    server = await aut.new()
    done = asyncio.Event()

    async def handler(cmd: Any) -> Any:
        if cmd.payload.payload == "slow":
            await asyncio.sleep(0.4)
            done.set()
            return "late answer"
        return {"fresh": cmd.payload.payload}

    await server.register_command(addr("sometimes-slow"), responder(handler))
    client = await aut.new()
    kind, err, _ = await invoke_status(
        client, command(client, addr("sometimes-slow"), "slow"), 0.15
    )
    assert kind == "error" and err.status == 504, f"expected 504, got {err!r}"
    await asyncio.wait_for(done.wait(), 5)
    await wait_quiet(lambda: pending_invocations(client), quiet_s=0.2)
    results = await asyncio.gather(
        *(invoke_status(client, command(client, addr("sometimes-slow"), i), 5) for i in range(5))
    )
    wrong = [(i, r) for i, (k, r, _) in enumerate(results) if k != "ok" or r != {"fresh": i}]
    assert not wrong, f"answers after a late response are wrong: {wrong}"
    assert await client.is_healthy(), "client unhealthy after a late response"
    assert pending_invocations(client) == 0, "pending invocations leaked"


@check("event_bridge.commands.shared_exactly_once", kinds=EB, needs=("shared_commands",))
async def test_shared_exactly_once(aut: AdapterUnderTest) -> None:
    """With three instances serving one command, each invocation runs on exactly one of them."""
    executions = Ledger("executions")
    for i in range(3):
        await _echo_server(aut, "shared", executions, label=f"server{i}")
    clients = [await aut.new(), await aut.new()]
    answers = Ledger("answers")
    await _invoke_many(clients, "shared", 5, aut.n(40), answers)
    await wait_quiet(lambda: executions.total_delivered, quiet_s=0.2)
    for mid in answers.sent_ids():
        executions.sent(mid)
    expect_exactly_once(answers, executions)
    spread = Counter(executions.receivers())
    aut.metric("executions_per_instance", dict(sorted(spread.items())))


@check("event_bridge.commands.pinned_instance", kinds=EB, needs=("shared_commands",))
async def test_pinned_instance(aut: AdapterUnderTest) -> None:
    """A command whose receiver names an instance (receiver instanceId) runs on that instance
    only, although three instances serve it, and its answer comes back: each of the three
    pinned several times in a row (an order no round robin over the three follows)."""
    runs: list[tuple[str, str]] = []  # (pinned instance, instance that ran it)
    servers = []
    for _ in range(3):
        server = await aut.new()

        def handler(me: str) -> Any:
            async def run(cmd: Any) -> Any:
                runs.append((str(cmd.payload.payload["pinned"]), me))
                return {"ranOn": me}

            return responder(run)

        await server.register_command(addr("pinned"), handler(server.instance_id))
        servers.append(server)
    client = await aut.new()
    wrong = []
    rounds = 4
    for i in range(rounds * len(servers)):
        target = servers[i // rounds].instance_id
        receiver = addr("pinned").model_copy(update={"instance_id": target})
        cmd = command(client, receiver, {"pinned": target, "i": i})
        status, result, _ = await invoke_status(client, cmd, 10)
        if status != "ok" or result != {"ranOn": target}:
            wrong.append(f"pinned to {target}: {status} {result!r}")
    await wait_quiet(lambda: len(runs), quiet_s=0.2)
    assert not wrong, "pinned commands not answered by their instance: " + "; ".join(wrong[:6])
    elsewhere = [r for r in runs if r[0] != r[1]]
    assert not elsewhere, f"pinned commands ran on another instance: {elsewhere[:6]}"
    assert len(runs) == rounds * len(servers), f"{len(runs)} executions of {rounds * 3} commands"


SERVER_LIMIT_BYTES = 64 * 1024  # the least every adapter must carry (fidelity.large_payload)


@check("event_bridge.commands.oversize_not_executed", kinds=EB)
async def test_oversize_not_executed(aut: AdapterUnderTest) -> None:
    """A command larger than the serving instance accepts (its max_message_bytes, smaller than
    the invoker's) is not executed: the invoker gets an error, by its ttl at the latest, and
    the server counts each such command once in rejected_messages where it counts
    rejections (two here); a command within the limit then still runs there."""
    runs: list[Any] = []
    server = await aut.new(max_message_bytes=SERVER_LIMIT_BYTES)

    async def run(cmd: Any) -> Any:
        runs.append(cmd.payload.payload["size"])
        return {"ran": cmd.payload.payload["size"]}

    await server.register_command(addr("bounded"), responder(run))
    client = await aut.new()
    ttl = 1.5
    pad = "x" * (SERVER_LIMIT_BYTES + 1024)
    bigs = [command(client, addr("bounded"), {"size": "big", "pad": pad}) for _ in range(2)]
    outcomes = await asyncio.gather(*(invoke_status(client, big, ttl) for big in bigs))
    aut.metric(
        "oversize_outcome",
        [
            [status, getattr(result, "status", None), round(took, 3)]
            for status, result, took in outcomes
        ],
    )
    for status, result, took in outcomes:
        assert status == "error", f"a command over the server's limit was answered: {result!r:.120}"
        assert took <= ttl + TIMEOUT_MARGIN_S, f"the oversize command failed after {took:.2f}s"
    rejected = bridge_counter(server, "rejected_messages")
    aut.metric("server_rejected_messages", rejected)
    if rejected is not None:  # the server counts what it refuses: these commands, once each
        assert rejected == len(bigs), (
            f"the server counted {rejected} rejected messages, not {len(bigs)}"
        )
    small = command(client, addr("bounded"), {"size": "small"})
    status, result, _ = await invoke_status(client, small, 10)
    assert status == "ok" and result == {"ran": "small"}, f"then a small command: {result!r}"
    await wait_quiet(lambda: len(runs), quiet_s=0.2)
    assert runs == ["small"], f"executions: {runs} (the oversize command must not run)"


@check("event_bridge.commands.oversize_refused_at_sender", kinds=EB)
async def test_oversize_refused_at_sender(aut: AdapterUnderTest) -> None:
    """An invoke or an emit over the sender's own max_message_bytes fails at once with a
    handled 400 whose message names the message, its size and the limit; nothing is sent
    (no handler runs, no subscriber gets it), and the next message within the limit goes
    through."""
    runs: list[Any] = []
    server = await aut.new()

    async def run(cmd: Any) -> Any:
        runs.append(cmd.payload.payload["size"])
        return {"ran": cmd.payload.payload["size"]}

    await server.register_command(addr("refused-big"), responder(run))
    got: list[Any] = []
    await server.register_subscription(subscription("big-events", event_name="big"), collect(got))
    client = await aut.new(max_message_bytes=SERVER_LIMIT_BYTES)
    pad = "x" * (SERVER_LIMIT_BYTES + 1024)
    refusals = []
    big_cmd = command(client, addr("refused-big"), {"size": "big", "pad": pad}, trace_id="t-big")
    kind, err, took = await invoke_status(client, big_cmd, 5)
    refusals.append(("invoke", big_cmd.id, kind, err, took))
    big_event = event(client, "big", {"size": "big", "pad": pad})
    watch = Stopwatch()
    try:
        await client.emit_message(big_event)
    except PuristaError as exc:
        refusals.append(("emit", big_event.id, "error", exc, watch.elapsed))
    else:
        refusals.append(("emit", big_event.id, "ok", None, watch.elapsed))
    for what, message_id, kind, err, took in refusals:
        assert kind == "error" and isinstance(err, PuristaError), f"{what} over the limit: {err!r}"
        assert err.status == 400 and err.is_handled, (
            f"{what} over the limit: {err!r} (a handled 400)"
        )
        assert took < 1.0, f"{what} over the limit failed after {took:.2f}s, not at once"
        unnamed = [p for p in (message_id, str(SERVER_LIMIT_BYTES)) if p not in err.message]
        assert not unnamed, f"{what} over the limit: {err.message!r} does not name {unnamed}"
    status, result, _ = await invoke_status(
        client, command(client, addr("refused-big"), {"size": "small"}), 10
    )
    assert status == "ok" and result == {"ran": "small"}, f"then a small command: {result!r}"
    await client.emit_message(event(client, "big", {"size": "small"}))
    assert await wait_for(lambda: len(got) >= 1, 10), "the event within the limit never arrived"
    await wait_quiet(lambda: len(got), quiet_s=0.2)
    assert runs == ["small"], f"executions: {runs} (the oversize command must not be sent)"
    sizes = [m.payload["size"] for m in got]
    assert sizes == ["small"], f"deliveries: {sizes} (the oversize event must not be sent)"


@check("event_bridge.commands.success_event", kinds=EB)
async def test_success_event(aut: AdapterUnderTest) -> None:
    """A success response that carries an event name also reaches that event's subscribers,
    once per invocation, with the result as payload, from the serving instance (its sender
    names the instance that ran the handler, whatever the handler's response said)."""
    server = await aut.new()

    async def create(cmd: Any) -> Any:
        return success_response(cmd, {"user": cmd.payload.payload}, event_name="user.created")

    await server.register_command(
        addr("create-user"), create, CommandConfig(success_event_name="user.created")
    )
    listener = await aut.new()
    events = Ledger("success events")
    await listener.register_subscription(
        Subscription(
            subscriber=addr("audit", target="on"),
            message_type=MessageType.COMMAND_SUCCESS_RESPONSE,
            event_name="user.created",
            durable=False,
        ),
        Recorder(events, "audit", key=lambda m: _sent_by(m, senders)),
    )
    senders: list[Any] = []
    client = await aut.new()
    n = aut.n(20)
    results = await asyncio.gather(
        *(
            invoke_status(client, command(client, addr("create-user"), f"u{i}"), 10)
            for i in range(n)
        )
    )
    wrong = [r for r in results if r[0] != "ok"]
    assert not wrong, f"invocations failed: {wrong[:5]}"
    for i in range(n):
        events.sent(f"u{i}")
    await wait_for(events.all_arrived, 10, progress=lambda: events.total_delivered)
    await wait_quiet(lambda: events.total_delivered, quiet_s=0.2)
    expect_exactly_once(events)
    strangers = [s for s in senders if s.instance_id != server.instance_id]
    assert not strangers, (
        f"success events not from the serving instance {server.instance_id}: {strangers[:3]}"
    )


def _sent_by(message: Any, senders: list[Any]) -> str:
    """The success event's key (its user), noting who sent it."""
    senders.append(message.sender)
    return str(message.payload["user"])


TTL_RANGE_S = (0.25, 0.8, 1.6, 2.5)


@check("event_bridge.commands.timeout_range", kinds=EB)
async def test_timeout_range(aut: AdapterUnderTest) -> None:
    """Mixed ttls from 0.25 s to 2.5 s in flight at once: each stalled command gets 504 at its
    own ttl (+0.5 s), and a command with a ttl over 1 s answered a second before its ttl
    succeeds."""
    gate = Gate()
    server = await aut.new()

    async def maybe_stall(cmd: Any) -> Any:
        answer_after = cmd.payload.parameter
        if answer_after is None:
            await gate.wait()
            return "too late"
        await asyncio.sleep(answer_after)
        return {"answered_after": answer_after}

    await server.register_command(addr("ttls"), responder(maybe_stall))
    client = await aut.new()
    calls = []
    for ttl in TTL_RANGE_S:
        for n in range(2):
            calls.append((ttl, None, command(client, addr("ttls"), f"stall-{ttl}-{n}")))
        if ttl > 1.0:  # answered a second before its ttl: a long ttl cut short fails
            after = round(ttl - 1.0, 3)
            calls.append((ttl, after, command(client, addr("ttls"), f"answer-{ttl}", after)))
    longest = max(TTL_RANGE_S) + TIMEOUT_MARGIN_S + 2
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(invoke_status(client, cmd, ttl) for ttl, _, cmd in calls)), longest
        )
    except TimeoutError:
        raise AssertionError(
            f"not every invocation ended within {longest:.1f}s: a ttl up to "
            f"{max(TTL_RANGE_S)}s was not honoured"
        ) from None
    finally:
        gate.open()
    bad = []
    for (ttl, answer_after, _), (kind, value, took) in zip(calls, outcomes, strict=True):
        if answer_after is not None:
            if kind != "ok":
                bad.append(f"ttl {ttl}s, answered after {answer_after}s: {value!r} ({took:.2f}s)")
        elif kind != "error" or value.status != 504:
            bad.append(f"ttl {ttl}s, stalled: expected 504, got {kind} {value!r}")
        elif not ttl * 0.95 <= took <= ttl + TIMEOUT_MARGIN_S:
            bad.append(f"ttl {ttl}s, stalled: 504 after {took:.2f}s")
    assert not bad, "; ".join(bad)
    aut.metric("took_s", [round(t, 2) for _, _, t in outcomes])
    pending = pending_invocations(client)
    assert pending == 0, f"{pending} pending invocation(s) leaked after timeouts"


class HeldSends:
    """Holds every command ``bridge`` sends until :meth:`release`: a transport that takes its
    time to accept a send (a congested connection). It wraps the ``_send_command`` hook of the
    shared base, so it skips an adapter not built on it."""

    def __init__(self, bridge: Any) -> None:
        send = getattr(bridge, "_send_command", None)
        if not callable(send) or not hasattr(bridge, "max_sends_in_flight"):
            pytest.skip(f"{type(bridge).__name__} has no _send_command hook to slow down")
        self._open = asyncio.Event()
        self.held = 0
        self.sent: list[Any] = []

        async def held_send(cmd: Any) -> None:
            self.held += 1
            await self._open.wait()
            self.sent.append(cmd.payload.payload)
            await send(cmd)

        bridge._send_command = held_send

    def release(self) -> None:
        """Let every held send (and every later one) through."""
        self._open.set()

    def hold(self) -> None:
        """Hold the sends from now on again."""
        self._open.clear()


@check("event_bridge.commands.send_slots", kinds=EB)
async def test_send_slots(aut: AdapterUnderTest) -> None:
    """At most ``max_sends_in_flight`` invocations send at once. While sends that take their
    time hold every slot, a further invocation waits in line: one whose ttl ends first fails
    504 at its ttl without being sent (counted in ``unsent_timeouts`` and reported as an
    infoInvokeTimeout naming it), as one whose caller left is never sent and takes no slot
    with it; those still in line when many before them gave up get the slots as the sends
    end, and are answered. Once the line is empty the slots are all back: again exactly
    ``max_sends_in_flight`` sends at once; an invocation refused before it is sent (over the
    client's size limit: 400) gives its slot back. Each 504 carries its command's trace id."""
    runs: list[Any] = []
    server = await aut.new()

    async def run(cmd: Any) -> Any:
        runs.append(cmd.payload.payload)
        return {"ran": cmd.payload.payload}

    await server.register_command(addr("slots"), responder(run))
    infos: list[Any] = []
    watcher = await aut.new()
    await watcher.register_subscription(
        Subscription(
            subscriber=addr("slots-watch", target="on"),
            message_type=MessageType.INFO_INVOKE_TIMEOUT,
        ),
        collect(infos),
    )
    client = await aut.new(max_message_bytes=SERVER_LIMIT_BYTES)
    sends = HeldSends(client)
    client.max_sends_in_flight = 2

    def call(tag: str, ttl: float, pad: str = "") -> tuple[Any, asyncio.Future[Any]]:
        payload = {"tag": tag, "pad": pad} if pad else tag
        cmd = command(client, addr("slots"), payload, trace_id=f"trace-{tag}")
        return cmd, asyncio.ensure_future(invoke_status(client, cmd, ttl))

    first = [call(f"first-{i}", 10) for i in range(2)]
    try:
        assert await wait_for(lambda: sends.held == 2, 5), f"{sends.held} of 2 sends started"
        short_ttl = 0.4
        gave_up = [call(f"gave-up-{i}", short_ttl) for i in range(6)]
        left = call("left-line", 10)
        waiting = [call(f"waiting-{i}", 10) for i in range(2)]
        outcomes = await asyncio.gather(*(f for _, f in gave_up))
        left[1].cancel()  # its caller leaves the line
        await asyncio.wait({left[1]})
        await wait_quiet(lambda: sends.held, quiet_s=0.2)
        assert sends.held == 2, f"{sends.held} sends at once with max_sends_in_flight 2"
    finally:
        sends.release()
    later = await asyncio.gather(*(f for _, f in first + waiting))
    bad = [
        (kind, getattr(err, "status", err), getattr(err, "trace_id", None), round(took, 3))
        for (cmd, _), (kind, err, took) in zip(gave_up, outcomes, strict=True)
        if kind != "error"
        or err.status != 504
        or err.trace_id != cmd.trace_id
        or not short_ttl * 0.95 <= took <= short_ttl + TIMEOUT_MARGIN_S
    ]
    assert not bad, (
        f"waiting for a slot past the ttl: expected 504 after {short_ttl}s with the command's "
        f"trace id, got {bad}"
    )
    wrong = [
        (cmd.payload.payload, o[:2])
        for (cmd, _), o in zip(first + waiting, later, strict=True)
        if o[:2] != ("ok", {"ran": cmd.payload.payload})
    ]
    assert not wrong, f"invocations that kept their place in line: {wrong}"
    await wait_quiet(lambda: (len(runs), len(infos)), quiet_s=0.3)
    sent = sorted(sends.sent)
    assert not [s for s in sent if s.startswith(("gave-up", "left"))], (
        f"sent after giving up: {sent}"
    )
    assert sorted(runs) == sorted(cmd.payload.payload for cmd, _ in first + waiting), (
        f"executions: {sorted(runs)}"
    )
    unsent = getattr(getattr(client, "core", None), "unsent_timeouts", None)
    aut.metric("unsent_timeouts", unsent)
    if isinstance(unsent, int):
        assert unsent == len(gave_up), f"unsent_timeouts {unsent}, {len(gave_up)} gave up"
    want = {cmd.correlation_id: cmd for cmd, _ in gave_up}
    reported = [m for m in infos if m.payload.get("correlationId") in want]
    assert len(reported) == len(want), (
        f"{len(reported)} infoInvokeTimeout for {len(want)} invocations that were never sent"
    )
    unnamed = [m.payload for m in reported if "slots" not in str(m.payload.get("receiver"))]
    assert not unnamed, f"the receiver is not named: {unnamed}"
    sends.hold()
    base = sends.held
    again = [call(f"again-{i}", 10) for i in range(3)]
    try:
        await wait_for(lambda: sends.held >= base + 2, 5)
        await wait_quiet(lambda: sends.held, quiet_s=0.2)
        in_flight = sends.held - base
    finally:
        sends.release()
    assert in_flight == 2, f"{in_flight} sends at once once the line was empty (max 2)"
    again_out = await asyncio.gather(*(f for _, f in again))
    assert [o[0] for o in again_out] == ["ok"] * 3, f"after the line emptied: {again_out}"
    pad = "x" * (SERVER_LIMIT_BYTES + 1024)  # over the client's own limit: refused, never sent
    refused = await asyncio.gather(*(f for _, f in [call(f"big-{i}", 5, pad) for i in range(3)]))
    assert [getattr(o[1], "status", o[1]) for o in refused] == [400] * 3, f"oversize: {refused}"
    kind, result, took = await call("after-refusals", 2)[1]
    assert kind == "ok", (
        f"after three invocations refused before sending, the next one got {result!r} after "
        f"{took:.2f}s: the refused ones kept their send slots"
    )
    assert pending_invocations(client) == 0, "pending invocations leaked"


@check("event_bridge.commands.slow_send_timeout", kinds=EB)
async def test_slow_send_timeout(aut: AdapterUnderTest) -> None:
    """A send that has not completed when the ttl ends fails the invocation with 504 (with
    the command's trace id) at the ttl, not when the send ends; the command is not sent
    later, and the next invocation, sent at once, is answered."""
    runs: list[Any] = []
    server = await aut.new()

    async def run(cmd: Any) -> Any:
        runs.append(cmd.payload.payload)
        return {"ran": cmd.payload.payload}

    await server.register_command(addr("slow-send"), responder(run))
    client = await aut.new()
    sends = HeldSends(client)
    ttl = 0.4
    call = asyncio.ensure_future(
        invoke_status(
            client, command(client, addr("slow-send"), "held", trace_id="trace-held"), ttl
        )
    )
    await asyncio.wait({call}, timeout=ttl + 2)
    sends.release()
    assert call.done(), f"the invocation was still waiting for its send {ttl + 2:.1f}s later"
    status, err, took = call.result()
    aut.metric("held_send", [status, getattr(err, "status", None), round(took, 3)])
    assert status == "error" and err.status == 504, f"a send held past its ttl: {err!r}"
    assert err.trace_id == "trace-held", f"its 504 lost the trace id: {err.trace_id!r}"
    assert str(addr("slow-send")) in err.message, f"its 504 does not name the receiver: {err!r}"
    assert pending_invocations(client) == 0, "a send that timed out is still pending after its 504"
    assert ttl * 0.95 <= took <= ttl + TIMEOUT_MARGIN_S, f"it failed after {took:.2f}s (ttl {ttl})"
    status, result, _ = await invoke_status(client, command(client, addr("slow-send"), "next"), 10)
    assert status == "ok" and result == {"ran": "next"}, f"the next invocation: {result!r}"
    await wait_quiet(lambda: len(runs), quiet_s=0.3)
    assert runs == ["next"], f"executions: {runs} (the held send must not go out late)"
    assert pending_invocations(client) == 0, "pending invocations leaked"


@check("event_bridge.commands.slot_wait_within_ttl", kinds=EB)
async def test_slot_wait_within_ttl(aut: AdapterUnderTest) -> None:
    """The time an invocation waits for a send slot counts against its ttl: one that got its
    slot after 0.9 s of a 1.2 s ttl, was sent and is never answered fails 504 at its ttl,
    not 0.9 s later."""
    client, gate = await stalled_command(aut, "slot-wait")
    sends = HeldSends(client)
    client.max_sends_in_flight = 1
    first = asyncio.ensure_future(invoke_status(client, command(client, addr("slot-wait"), 0), 5))
    try:
        assert await wait_for(lambda: sends.held == 1, 5), "the first send never started"
        ttl, line_s = 1.2, 0.9
        waiter = command(client, addr("slot-wait"), 1, trace_id="trace-slot-wait")
        second = asyncio.ensure_future(invoke_status(client, waiter, ttl))
        await asyncio.sleep(line_s)  # the congestion lasts this long, then the sends go out
        sends.release()
        kind, err, took = await asyncio.wait_for(second, ttl + 5)
    finally:
        sends.release()
        gate.open()
        await asyncio.wait({first}, timeout=5)
    aut.metric("slot_wait_504_s", round(took, 3))
    assert gate.entered >= 1, "nothing reached the server once the sends were let through"
    assert kind == "error" and err.status == 504, f"never answered after its slot wait: {err!r}"
    assert err.trace_id == "trace-slot-wait", f"its 504 lost the trace id: {err.trace_id!r}"
    assert ttl * 0.95 <= took <= ttl + TIMEOUT_MARGIN_S, (
        f"it failed after {took:.2f}s for a ttl of {ttl}s, {line_s}s of it in line for a slot"
    )


@check("event_bridge.commands.duplicate_correlation_refused", kinds=EB)
async def test_duplicate_correlation_refused(aut: AdapterUnderTest) -> None:
    """An invocation that reuses the correlation id of one still waiting is refused at once
    with a handled 409 naming that id, and is not sent; the first still gets its own answer,
    and once it has, the id can be used again."""
    gate = Gate()
    runs: list[Any] = []
    server = await aut.new()

    async def run(cmd: Any) -> Any:
        runs.append(cmd.payload.payload)
        await gate.wait(10)
        return {"ran": cmd.payload.payload}

    await server.register_command(addr("dup-corr"), responder(run))
    client = await aut.new()
    first = command(client, addr("dup-corr"), "first")
    call = asyncio.ensure_future(invoke_status(client, first, 10))
    try:
        assert await wait_for(lambda: gate.entered == 1, 5), "the first invocation never ran"
        twin = command(client, addr("dup-corr"), "twin").model_copy(
            update={"correlation_id": first.correlation_id}
        )
        kind, err, took = await invoke_status(client, twin, 5)
    finally:
        gate.open()
    assert kind == "error" and isinstance(err, PuristaError), f"a reused correlation id: {err!r}"
    assert err.status == 409 and err.is_handled, f"a reused correlation id: {err!r} (handled 409)"
    assert first.correlation_id in err.message, f"the 409 does not name the id: {err.message!r}"
    assert took < 1.0, f"the 409 took {took:.2f}s"
    first_kind, first_result, _ = await call
    assert first_kind == "ok" and first_result == {"ran": "first"}, f"the first: {first_result!r}"
    again = command(client, addr("dup-corr"), "again").model_copy(
        update={"correlation_id": first.correlation_id}
    )
    kind, result, _ = await invoke_status(client, again, 10)
    assert kind == "ok" and result == {"ran": "again"}, f"the id once free again: {result!r}"
    assert runs == ["first", "again"], f"executions: {runs} (the refused twin must not be sent)"
    assert pending_invocations(client) == 0, "invocations left pending"


@check("event_bridge.commands.send_failure", kinds=EB)
async def test_send_failure(aut: AdapterUnderTest) -> None:
    """A send that fails (the transport raises: a connection lost) fails the invocation at
    once with 503 and the command's trace id, a PuristaError from the transport keeps its
    status and gets the trace id, and an invocation whose caller leaves while its send is
    under way ends; none of them leaves a pending invocation, and the next one is answered."""
    await _echo_server(aut, "send-fail")
    client = await aut.new()
    send = getattr(client, "_send_command", None)
    if not callable(send):
        pytest.skip(f"{type(client).__name__} has no _send_command hook to break")
    failure: list[BaseException] = []

    async def failing_send(cmd: Any) -> None:
        if failure:
            raise failure[0]
        await send(cmd)

    client._send_command = failing_send
    failure[:] = [ConnectionError("connection lost")]
    lost = command(client, addr("send-fail"), "lost", trace_id="trace-lost")
    kind, err, took = await invoke_status(client, lost, 5)
    assert kind == "error" and err.status == 503, f"a send that raised: {kind} {err!r}"
    assert err.trace_id == "trace-lost", f"its error lost the trace id: {err.trace_id!r}"
    assert took < 1.0, f"a failed send took {took:.2f}s to fail the invocation"
    unnamed = [
        p
        for p in (str(lost.receiver), "ConnectionError", "connection lost")
        if p not in err.message
    ]
    assert not unnamed, f"the 503 of a lost send ({err.message!r}) does not name {unnamed}"
    assert pending_invocations(client) == 0, "a failed send left a pending invocation"
    failure[:] = [UnhandledError("broker refused", StatusCode.SERVICE_UNAVAILABLE)]
    refused = command(client, addr("send-fail"), "refused", trace_id="trace-refused")
    kind, err, _ = await invoke_status(client, refused, 5)
    assert kind == "error" and err.status == 503, f"a send that refused: {kind} {err!r}"
    assert err.trace_id == "trace-refused", f"its error lost the trace id: {err.trace_id!r}"
    assert pending_invocations(client) == 0, "a refused send left a pending invocation"
    failure.clear()
    sends = HeldSends(client)
    leaving = asyncio.ensure_future(
        invoke_status(client, command(client, addr("send-fail"), "leaving"), 5)
    )
    assert await wait_for(lambda: sends.held == 1, 5), "the held send never started"
    leaving.cancel()
    await asyncio.wait({leaving})
    assert pending_invocations(client) == 0, "a caller that left during its send stays pending"
    sends.release()
    kind, result, _ = await invoke_status(client, command(client, addr("send-fail"), "next"), 10)
    assert kind == "ok", f"after the failed sends the next invocation got {result!r}"
