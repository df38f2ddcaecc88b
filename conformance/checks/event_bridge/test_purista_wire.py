"""PURISTA v3 on the wire: a bridge and a PURISTA peer (raw broker client) in one fleet.

For adapters declaring ``purista_wire``. Each check either publishes through
the adapter and reads what lands on the broker with the raw client (compared
with the golden vectors in ``data/purista_wire.json``), or plays PURISTA with
the raw client (names, headers, bodies built from PURISTA's conventions) and
checks the adapter delivers and answers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conformance.checks.event_bridge.purista_peer import (
    PEERS,
    VECTORS,
    Landed,
    address,
    peer_for,
    purista_command,
    purista_error,
    purista_event,
    purista_success,
)
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet
from reference_services.runtime.definitions import FailureHandling, Subscription
from reference_services.runtime.errors import HandledError, PuristaError
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandPayload,
    CustomMessage,
    MessageType,
    SenderAddress,
    success_response,
)

EB = ("event_bridge",)
NEEDS = ("purista_wire",)
INST = VECTORS["instances"]
TTL_S = 10.0
# NATS gives each message of a queue group to a random member: one round of 5 commands or
# 6 events all goes to one member once in 16 or 32 runs, so the group checks send rounds
# until both members have had some (a broken group still fails: duplicates, or a member
# with none after every round).
GROUP_ROUNDS = 5


def _transport(aut: AdapterUnderTest) -> str:
    protocol = aut.spec.protocol
    if protocol not in PEERS:
        pytest.skip(f"no raw PURISTA peer for the adapter's protocol ({protocol!r})")
    return protocol


def _addr(parts: list[str]) -> Address:
    return Address(service_name=parts[0], service_version=parts[1], service_target=parts[2])


def _sender(parts: list[str]) -> SenderAddress:
    return SenderAddress(
        service_name=parts[0],
        service_version=parts[1],
        service_target=parts[2],
        instance_id=parts[3],
    )


def _golden(case: str, key: str, prefix: str, **extra: str) -> Any:
    value = VECTORS[case][key]["value"]
    text = json.dumps(value).replace("{prefix}", prefix).replace("{PREFIX}", prefix.upper())
    for name, sub in extra.items():
        text = text.replace("{" + name + "}", sub)
    return json.loads(text)


def _nulls(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path or "<root>"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


def _envelope_problems(body: dict[str, Any], sent_ms: int | None = None) -> list[str]:
    problems = [f"{p} is null (PURISTA leaves undefined fields out)" for p in _nulls(body)]
    if not isinstance(body.get("otp"), str):
        problems.append(f"otp missing or not a string: {body.get('otp')!r}")
    stamp = body.get("timestamp")
    if not isinstance(stamp, int) or stamp < 10**12:
        problems.append(f"timestamp {stamp!r} is not epoch milliseconds")
    if sent_ms is not None and stamp != sent_ms:
        problems.append(f"timestamp {stamp!r} is not the message's {sent_ms}")
    return problems


def _landed(peer: Any, pred: Any) -> list[Landed]:
    return [m for m in peer.landed if pred(m)]


def _route_of(transport: str, case: str, prefix: str) -> str | None:
    key = {"nats": "nats_subject", "mqtt": "mqtt_topic"}.get(transport)
    return None if key is None else str(_golden(case, key, prefix))


def _odd_ms() -> int:
    """A timestamp with a non-zero millisecond part, so s and ms cannot be confused."""
    import time

    now = int(time.time() * 1000)
    return now - now % 1000 + 321


async def _bridge(aut: AdapterUnderTest) -> Any:
    return await aut.new(instance_id=INST["py_bridge"])


@check("event_bridge.wire.purista.event_out", kinds=EB, needs=NEEDS)
async def test_event_out(aut: AdapterUnderTest) -> None:
    """An event the adapter emits lands where and as PURISTA publishes one: subject /
    topic / headers and properties as in the golden vectors, envelope as JSON.stringify."""
    transport = _transport(aut)
    bridge = await _bridge(aut)
    peer = await peer_for(transport, bridge, INST["ts_peer"])
    try:
        await peer.capture()
        spec = VECTORS["py_event"]["message"]
        stamp = _odd_ms()
        msg = CustomMessage(
            sender=_sender(spec["sender"]),
            event_name=spec["eventName"],
            timestamp=stamp,
            payload={"n": 1},
        )
        await bridge.emit_message(msg)
        mine = lambda m: m.json().get("id") == msg.id  # noqa: E731
        assert await wait_for(lambda: _landed(peer, mine), TTL_S), "the event never landed"
        got = _landed(peer, mine)[0]
        problems = _envelope_problems(got.json(), stamp)
        route = _route_of(transport, "py_event", bridge.prefix)
        if route is not None and got.route != route:
            problems.append(f"published on {got.route!r}, PURISTA uses {route!r}")
        if transport == "amqp":
            problems += _amqp_problems(got, "py_event", msg.id, stamp)
        else:
            carried = (
                got.headers
                if transport == "nats"
                else dict(got.properties.get("UserProperty") or [])
            )
            key = "nats_headers" if transport == "nats" else "mqtt_user_properties"
            for name, value in VECTORS["py_event"][key]["value"].items():
                if carried.get(name) != value:
                    problems.append(f"{key} {name}={carried.get(name)!r}, PURISTA: {value!r}")
            if transport == "mqtt":
                problems += _expiry_problems(got, "py_event")
        assert not problems, "; ".join(problems)
    finally:
        await peer.close()


def _expiry_problems(got: Landed, case: str) -> list[str]:
    """The MQTT 5 message expiry PURISTA sets (the broker forwards what is left of it)."""
    want = VECTORS["mqtt_message_expiry_s"]["value"][case]
    seen = got.properties.get("MessageExpiryInterval")
    if seen is None or not want - 2 <= seen <= want:
        return [f"message expiry {seen!r} s on {got.route}, PURISTA sets {want} s"]
    return []


def _amqp_problems(got: Landed, case: str, message_id: str, stamp: int) -> list[str]:
    problems = []
    want = VECTORS[case]["amqp_headers"]["value"]
    for key, value in want.items():
        if got.headers.get(key) != value:
            problems.append(f"header {key}={got.headers.get(key)!r}, PURISTA sends {value!r}")
    for key, value in VECTORS[case]["amqp_properties"]["value"].items():
        if got.properties.get(key) != value:
            problems.append(f"property {key}={got.properties.get(key)!r}, PURISTA: {value!r}")
    if got.properties.get("message_id") != message_id:
        problems.append("messageId property is not the message id")
    if got.properties.get("timestamp_raw") != stamp:
        problems.append(
            f"timestamp property {got.properties.get('timestamp_raw')!r} is not the message's "
            f"{stamp} ms (PURISTA writes Date.now() ms there)"
        )
    return problems


@check("event_bridge.wire.purista.event_in", kinds=EB, needs=NEEDS)
async def test_event_in(aut: AdapterUnderTest) -> None:
    """An event published exactly as PURISTA publishes it reaches the adapter's subscription."""
    transport = _transport(aut)
    bridge = await _bridge(aut)
    got: list[Any] = []

    async def on(message: Any) -> None:
        got.append(message)

    spec = VECTORS["ts_event"]["message"]
    await bridge.register_subscription(
        Subscription(
            subscriber=_addr(["pyService", "1.0.0", "onSignUp"]),
            message_type=MessageType.CUSTOM_MESSAGE,
            event_name=spec["eventName"],
        ),
        on,
    )
    peer = await peer_for(transport, bridge, INST["ts_peer"])
    try:
        body = purista_event(address(*spec["sender"]), spec["eventName"], {"user": "ada"})
        await peer.publish_event(body)
        where = _route_of(transport, "ts_event", bridge.prefix) or "the exchange"
        assert await wait_for(lambda: got, TTL_S), (
            f"a PURISTA event on {where} never reached the subscription"
        )
        assert got[0].id == body["id"] and got[0].payload == {"user": "ada"}
    finally:
        await peer.close()


@check("event_bridge.wire.purista.command_in", kinds=EB, needs=NEEDS)
async def test_command_in(aut: AdapterUnderTest) -> None:
    """A command sent as PURISTA sends it is served, and the response, success and handled
    error (status kept), comes back where PURISTA waits for it."""
    transport = _transport(aut)
    bridge = await _bridge(aut)
    spec = VECTORS["ts_command"]["message"]

    async def handler(cmd: Command) -> Any:
        if cmd.payload.payload == "bad":
            raise HandledError("no such user", status=404)
        return success_response(cmd, {"user": cmd.payload.payload, "p": cmd.payload.parameter})

    await bridge.register_command(_addr(spec["receiver"]), handler)
    peer = await peer_for(transport, bridge, INST["ts_peer"])
    try:
        await peer.capture()
        sender, receiver = address(*spec["sender"]), address(*spec["receiver"])
        ok = purista_command(sender, receiver, "ada", {"x": 1})
        try:
            response = await peer.invoke(ok, TTL_S)
        except TimeoutError as exc:
            raise AssertionError("no response where PURISTA waits for it (timeout)") from exc
        except Exception as exc:
            raise AssertionError(f"PURISTA's invoke failed: {type(exc).__name__}: {exc}") from exc
        assert response["messageType"] == "commandSuccessResponse", response
        assert response["payload"] == {"user": "ada", "p": {"x": 1}}
        assert response["correlationId"] == ok["correlationId"]
        assert response["receiver"]["instanceId"] == INST["ts_peer"]
        problems = _envelope_problems(response)
        bad = purista_command(sender, receiver, "bad", None)
        error = await peer.invoke(bad, TTL_S)
        assert error["messageType"] == "commandErrorResponse", error
        assert error["isHandledError"] is True and error["payload"]["status"] == 404, error
        problems += _envelope_problems(error)
        if transport in ("amqp", "mqtt"):  # the captured copy may trail the delivery
            ids = {ok["correlationId"], bad["correlationId"]}
            kinds = ("commandSuccessResponse", "commandErrorResponse")
            await wait_for(
                lambda: (
                    ids
                    <= {
                        m.json().get("correlationId")
                        for m in peer.landed
                        if m.json().get("messageType") in kinds
                    }
                ),
                5,
            )
        problems += _response_route_problems(transport, peer, bridge.prefix, ok, bad)
        assert not problems, "; ".join(problems)
    finally:
        await peer.close()


def _response_route_problems(
    transport: str, peer: Any, prefix: str, ok: dict[str, Any], bad: dict[str, Any]
) -> list[str]:
    problems: list[str] = []

    kinds = ("commandSuccessResponse", "commandErrorResponse")

    def response_to(cmd: dict[str, Any]) -> list[Landed]:
        return _landed(
            peer,
            lambda m: (
                m.json().get("correlationId") == cmd["correlationId"]
                and m.json().get("messageType") in kinds
            ),
        )

    if transport == "mqtt":
        for cmd, key in ((ok, "mqtt_response_topic"), (bad, "mqtt_error_topic")):
            want = _golden("ts_command", key, prefix)
            routes = [m.route for m in response_to(cmd)]
            if want not in routes:
                problems.append(f"response published on {routes}, PURISTA expects {want!r}")
            for landed in response_to(cmd)[:1]:
                problems += _expiry_problems(landed, "ts_command_response")
    if transport == "amqp":
        want = _golden("ts_command", "amqp_response_headers", prefix, reply_queue=peer.reply_queue)
        landed = response_to(ok)
        if not landed:
            problems.append("the response did not go through the exchange")
        else:
            for key, value in want.items():
                if landed[0].headers.get(key) != value:
                    problems.append(
                        f"response header {key}={landed[0].headers.get(key)!r}, PURISTA: {value!r}"
                    )
    return problems


@check("event_bridge.wire.purista.command_out", kinds=EB, needs=NEEDS)
async def test_command_out(aut: AdapterUnderTest) -> None:
    """The adapter invokes a command PURISTA serves: it lands where PURISTA's command
    filter listens, the response reaches the adapter, a handled error keeps its status."""
    transport = _transport(aut)
    bridge = await _bridge(aut)
    spec = VECTORS["py_command"]["message"]
    peer = await peer_for(transport, bridge, INST["ts_peer"])
    served: list[dict[str, Any]] = []

    async def handler(command: dict[str, Any]) -> dict[str, Any]:
        served.append(command)
        if command["payload"]["payload"] == "bad":
            return purista_error(command, INST["ts_peer"], 409, "conflict")
        return purista_success(command, INST["ts_peer"], {"pong": command["payload"]["payload"]})

    try:
        await peer.capture()
        await peer.serve(address(*spec["receiver"]), handler)
        cmd = Command(
            sender=_sender(spec["sender"]),
            receiver=_addr(spec["receiver"]),
            payload=CommandPayload(payload="hi"),
        )
        try:
            result = await bridge.invoke(cmd, TTL_S)
        except PuristaError as exc:
            raise AssertionError(
                f"invoking a PURISTA-served command failed: {exc.status} {exc} "
                f"(served by the peer: {len(served)})"
            ) from exc
        assert result == {"pong": "hi"}
        assert len(served) == 1
        problems = _envelope_problems(served[0])
        landed = _landed(
            peer,
            lambda m: m.json().get("id") == cmd.id and m.json().get("messageType") == "command",
        )
        route = _route_of(transport, "py_command", bridge.prefix)
        if route is not None and [m.route for m in landed] != [route]:
            problems.append(f"command published on {[m.route for m in landed]}, want {route!r}")
        if transport == "mqtt" and landed:
            problems += _expiry_problems(landed[0], "py_command")
        if transport == "amqp" and landed:
            want = VECTORS["py_command"]["amqp_headers"]["value"]
            for key, value in want.items():
                if landed[0].headers.get(key) != value:
                    problems.append(f"header {key}={landed[0].headers.get(key)!r}, want {value!r}")
            if landed[0].properties.get("correlation_id") != cmd.correlation_id:
                problems.append("correlationId property is not the command's")
            if not landed[0].properties.get("reply_to"):
                problems.append("no replyTo property")
        bad = Command(
            sender=_sender(spec["sender"]),
            receiver=_addr(spec["receiver"]),
            payload=CommandPayload(payload="bad"),
        )
        with pytest.raises(PuristaError) as info:
            await bridge.invoke(bad, TTL_S)
        assert info.value.status == 409, f"handled error came back as {info.value.status}"
        assert info.value.is_handled, "PURISTA's handled error arrived as unhandled"
        assert not problems, "; ".join(problems)
    finally:
        await peer.close()


@check("event_bridge.wire.purista.mixed_fleet_command_once", kinds=EB, needs=NEEDS)
async def test_mixed_fleet_command_once(aut: AdapterUnderTest) -> None:
    """A command served by a PURISTA instance and one of the adapter's runs exactly once per
    invocation, on one of them (same queue / queue group / share group)."""
    transport = _transport(aut)
    server = await _bridge(aut)
    caller = await aut.new(instance_id=INST["py_caller"])
    spec = VECTORS["ts_command"]["message"]
    ran: list[tuple[str, str]] = []

    async def handler(cmd: Command) -> Any:
        ran.append(("py", cmd.correlation_id))
        return success_response(cmd, "py")

    await server.register_command(_addr(spec["receiver"]), handler)
    peer = await peer_for(transport, server, INST["ts_peer"])

    async def ts_handler(command: dict[str, Any]) -> dict[str, Any]:
        ran.append(("ts", command["correlationId"]))
        return purista_success(command, INST["ts_peer"], "ts")

    try:
        await peer.serve(address(*spec["receiver"]), ts_handler)

        def by_runtime() -> dict[str, int]:
            return {k: sum(1 for r, _ in ran if r == k) for k in ("py", "ts")}

        results: list[Any] = []
        for _ in range(GROUP_ROUNDS):  # NATS picks a random member: see GROUP_ROUNDS
            for i in range(aut.n(20)):
                cmd = Command(
                    sender=_sender(["caller", "1", "run", INST["py_caller"]]),
                    receiver=_addr(spec["receiver"]),
                    payload=CommandPayload(payload=i),
                )
                results.append(await caller.invoke(cmd, TTL_S))
            if all(by_runtime().values()):
                break
        n = len(results)
        await wait_quiet(lambda: len(ran), quiet_s=0.5)  # a second run would show by now
        ids = [c for _, c in ran]
        assert len(ids) == n and len(set(ids)) == n, (
            f"{n} invocations ran {len(ids)} times ({len(ids) - len(set(ids))} duplicates)"
        )
        by = by_runtime()
        aut.metric("runs_by_runtime", by)
        assert set(results) <= {"py", "ts"}
        # commands shared by two members, one of them getting none means they are not in
        # one group (a PURISTA instance and ours would then each run every command)
        assert by["py"] and by["ts"], f"not one group: runs by runtime {by}"
    finally:
        await peer.close()


MIXED_FLEET_OPTION = "purista_share_groups"
"""A bridge option for joining PURISTA's share groups where they are not the default
(MQTT: PURISTA's single ``sharedpurista`` group makes different subscribers compete)."""


async def _emit_from_both(n: int, peer: Any, publisher: Any, event_name: str) -> list[str]:
    """Emit ``n`` ``event_name`` events, alternately from our publisher and from PURISTA's
    peer (payload ``{"i": i}``); their ids."""
    sent: list[str] = []
    spec = VECTORS["ts_event"]["message"]
    for i in range(n):
        if i % 2:
            body = purista_event(address(*spec["sender"]), event_name, {"i": i})
            await peer.publish_event(body)
            sent.append(body["id"])
        else:
            msg = CustomMessage(
                sender=_sender(["caller", "1", "run", INST["py_caller"]]),
                event_name=event_name,
                payload={"i": i},
            )
            await publisher.emit_message(msg)
            sent.append(msg.id)
    return sent


def _mixed_fleet_options(aut: AdapterUnderTest) -> dict[str, Any]:
    import inspect

    cls = aut.spec.adapter_class
    if cls is None:
        return {}
    return (
        {MIXED_FLEET_OPTION: True}
        if MIXED_FLEET_OPTION in inspect.signature(cls.__init__).parameters
        else {}
    )


@check("event_bridge.wire.purista.mixed_fleet_subscription_once", kinds=EB, needs=NEEDS)
async def test_mixed_fleet_subscription_once(aut: AdapterUnderTest) -> None:
    """A shared, non-durable, auto-acknowledged subscription (PURISTA: a core NATS
    subscription) with one PURISTA member and one of the adapter's: each event, whether
    PURISTA or the adapter published it, reaches exactly one of them (PURISTA's queue /
    queue group / share group), and both get some."""
    await _mixed_fleet_subscription(aut, durable=False)


@check(
    "event_bridge.wire.purista.mixed_fleet_durable_subscription_once",
    kinds=EB,
    needs=(*NEEDS, "purista_durable_wire"),
)
async def test_mixed_fleet_durable_subscription_once(aut: AdapterUnderTest) -> None:
    """The same with a durable, manually acknowledged subscription (PURISTA: a durable
    queue declared without arguments, a JetStream push consumer with a deliver group):
    each event reaches exactly one member, whichever runtime it runs."""
    await _mixed_fleet_subscription(aut, durable=True)


@check("event_bridge.wire.purista.mixed_fleet_untyped_subscription_once", kinds=EB, needs=NEEDS)
async def test_mixed_fleet_untyped_subscription_once(aut: AdapterUnderTest) -> None:
    """The non-durable case for a subscription naming no message type (PURISTA: a
    wildcard in the type slot of its filter or no ``messageType`` in its binding)."""
    await _mixed_fleet_subscription(aut, durable=False, typed=False)


async def _mixed_fleet_subscription(
    aut: AdapterUnderTest, *, durable: bool, typed: bool = True
) -> None:
    transport = _transport(aut)
    member = await aut.new(instance_id=INST["py_bridge"], **_mixed_fleet_options(aut))
    publisher = await aut.new(instance_id=INST["py_caller"])
    event_name = VECTORS["ts_event"]["message"]["eventName"]
    subscriber = ["pyService", "1.0.0", "onSignUp"]
    seen = _Deliveries()
    peer = await peer_for(transport, member, INST["ts_peer"])
    try:
        # PURISTA's member first: its declaration is the one already there when ours comes
        await peer.serve_subscription(
            address(*subscriber), event_name, seen.ts_on, durable=durable, typed=typed
        )
        try:
            await member.register_subscription(
                Subscription(
                    subscriber=_addr(subscriber),
                    message_type=MessageType.CUSTOM_MESSAGE if typed else None,
                    event_name=event_name,
                    durable=durable,
                    shared=True,
                    autoacknowledge=not durable,
                ),
                seen.on,
            )
        except Exception as exc:
            raise AssertionError(
                f"joining PURISTA's shared subscription failed: {type(exc).__name__}: {exc}"
            ) from exc
        await _each_event_reaches_one_member(aut, peer, publisher, event_name, seen.got)
    finally:
        await peer.close()


class _Deliveries:
    """Each delivery of a mixed-fleet group as (runtime, message id): ``py`` for the
    adapter's member, ``ts`` for PURISTA's."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str]] = []

    async def on(self, message: Any) -> None:
        self.got.append(("py", message.id))

    async def ts_on(self, body: dict[str, Any]) -> None:
        self.got.append(("ts", body["id"]))


async def _each_event_reaches_one_member(
    aut: AdapterUnderTest,
    peer: Any,
    publisher: Any,
    event_name: str,
    got: list[tuple[str, str]],
) -> None:
    """Both runtimes publish; every event reaches exactly one member of the group (``got``:
    (runtime, id) per delivery), and members of both runtimes get some."""

    def by_runtime() -> dict[str, int]:
        return {k: sum(1 for r, _ in got if r == k) for k in ("py", "ts")}

    sent: list[str] = []
    for _ in range(GROUP_ROUNDS):
        sent.extend(await _emit_from_both(aut.n(40, minimum=10), peer, publisher, event_name))
        await wait_for(lambda: {i for _, i in got} >= set(sent), TTL_S)
        if all(by_runtime().values()):
            break
    await wait_quiet(lambda: len(got), quiet_s=0.5)  # a second copy would show by now
    n, ids = len(sent), [i for _, i in got]
    missing = set(sent) - set(ids)
    assert not missing, f"{len(missing)} of {n} events reached no member of the group"
    assert len(ids) == len(set(ids)), (
        f"{n} events were delivered {len(ids)} times ({len(ids) - len(set(ids))} "
        "duplicates): the PURISTA member and the adapter's are not in one group"
    )
    by = by_runtime()
    aut.metric("deliveries_by_runtime", by)
    assert by["py"] and by["ts"], f"not one group: deliveries by runtime {by}"


@check(
    "event_bridge.wire.purista.mixed_fleet_durable_peer_first",
    kinds=EB,
    needs=(*NEEDS, "purista_durable_wire"),
)
async def test_mixed_fleet_durable_peer_first(aut: AdapterUnderTest) -> None:
    """PURISTA's member starts before any bridge of the adapter's (NATS: it creates its
    per-filter stream and the consumer; the adapter's own stream would overlap): the
    adapter's bridges still start, the adapter's member joins the same shared durable
    subscription, and each event, whichever runtime published it, reaches one member."""
    transport = _transport(aut)
    member = aut.build(instance_id=INST["py_bridge"], **_mixed_fleet_options(aut))
    event_name = VECTORS["ts_event"]["message"]["eventName"]
    subscriber = ["pyService", "1.0.0", "onSignUp"]
    seen = _Deliveries()
    peer = await peer_for(transport, member, INST["ts_peer"])
    try:
        await peer.serve_subscription(address(*subscriber), event_name, seen.ts_on, durable=True)
        try:
            await member.start()
            publisher = await aut.new(instance_id=INST["py_caller"])
            await member.register_subscription(
                Subscription(
                    subscriber=_addr(subscriber),
                    message_type=MessageType.CUSTOM_MESSAGE,
                    event_name=event_name,
                    durable=True,
                    shared=True,
                    autoacknowledge=False,
                ),
                seen.on,
            )
        except Exception as exc:
            raise AssertionError(
                f"after PURISTA's member, the adapter's cannot start or join: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        await _each_event_reaches_one_member(aut, peer, publisher, event_name, seen.got)
    finally:
        await peer.close()


REDELIVERY_ACK_WAIT_S = 2.0


@check(
    "event_bridge.wire.purista.mixed_fleet_durable_redelivery",
    kinds=EB,
    needs=(*NEEDS, "purista_durable_wire"),
)
async def test_mixed_fleet_durable_redelivery(aut: AdapterUnderTest) -> None:
    """The adapter's member first: the JetStream consumer it creates for a shared durable
    subscription is the one PURISTA creates (name, stream, push with PURISTA's deliver
    group, filter, explicit ack, deliver new, max ack pending, max deliver = attempts + 1,
    no heartbeats or flow control), so a PURISTA member attaches to it by nats.js's rules.
    The PURISTA member then hangs on what it gets and dies without acknowledging: those
    events are redelivered, after the ack wait, to the adapter's member, each handled once."""
    import asyncio

    transport = _transport(aut)
    if transport != "nats":
        pytest.skip(
            f"PURISTA's {transport} bridge has no ack wait to redeliver after "
            "(AMQP: the broker requeues at once; MQTT: no durable subscriptions)"
        )
    facts = VECTORS["nats_jetstream_subscription"]["value"]
    member = await aut.new(instance_id=INST["py_bridge"], ack_wait_s=REDELIVERY_ACK_WAIT_S)
    publisher = await aut.new(instance_id=INST["py_caller"])
    event_name = VECTORS["ts_event"]["message"]["eventName"]
    subscriber = ["pyService", "1.0.0", "onSignUp"]
    handled: list[str] = []

    async def on(message: Any) -> None:
        handled.append(message.id)

    await member.register_subscription(
        Subscription(
            subscriber=_addr(subscriber),
            message_type=MessageType.CUSTOM_MESSAGE,
            event_name=event_name,
            durable=True,
            shared=True,
            autoacknowledge=False,
            failure=FailureHandling(max_attempts=5, retry_delay_ms=1000),
        ),
        on,
    )
    peer = await peer_for(transport, member, INST["ts_peer"])
    hang = asyncio.Event()
    try:
        flt = peer.subscription_filter(peer.prefix, event_name)
        stream = await peer._find_stream(flt)
        assert stream is not None, f"no single stream holds {flt} (PURISTA's streams.find)"
        name = "subscription_pyService_1_0_0_onSignUp"
        info = await peer.consumer_info(stream, name)
        assert info is not None, f"no consumer {name} on stream {stream} (PURISTA's name)"
        cfg = info["config"]
        group = f"{peer.prefix}_queue_pyService_1.0.0_onSignUp".upper()  # raw values
        want = {
            "durable_name": name,
            "deliver_group": group,
            "filter_subject": flt,
            "ack_policy": facts["ack_policy"],
            "deliver_policy": facts["deliver_policy"],
            "max_ack_pending": facts["max_ack_pending"],
            "max_deliver": 5 + 1,
            "idle_heartbeat": None,
            "flow_control": None,
            "ack_wait_s": REDELIVERY_ACK_WAIT_S,
        }
        got = {k: cfg.get(k) for k in want}
        got["flow_control"] = cfg.get("flow_control") or None
        got["ack_wait_s"] = round(cfg.get("ack_wait", 0) / 1e9, 3)
        assert got == want, f"consumer {name} is not PURISTA's: {got} != {want}"
        assert cfg.get("deliver_subject"), f"consumer {name} is a pull consumer"

        async def ts_on(_body: dict[str, Any]) -> None:
            await hang.wait()  # a PURISTA instance stuck on the message, then killed

        try:
            await peer.serve_subscription(address(*subscriber), event_name, ts_on, durable=True)
        except Exception as exc:
            raise AssertionError(
                f"PURISTA's member cannot attach to the adapter's consumer: {exc}"
            ) from exc
        sent: list[str] = []
        for _ in range(GROUP_ROUNDS):
            sent.extend(await _emit_from_both(aut.n(20, minimum=6), peer, publisher, event_name))
            await wait_for(
                lambda: set(handled) | {i for i, _ in peer.deliveries} >= set(sent), TTL_S
            )
            if peer.deliveries:
                break
        n = len(sent)
        assert peer.deliveries, (
            f"PURISTA's member got none of {n} events: not in the adapter's deliver group"
        )
        took = {i for i, _ in peer.deliveries}
        await peer.close()  # dies holding its deliveries, none acknowledged
        await wait_for(lambda: set(handled) >= set(sent), TTL_S + 3 * REDELIVERY_ACK_WAIT_S)
        missing = set(sent) - set(handled)
        assert not missing, (
            f"{len(missing)} of {n} events never reached the adapter's member (PURISTA's "
            f"member took {len(took)} and died without acknowledging)"
        )
        await wait_quiet(lambda: len(handled), quiet_s=0.5)
        assert len(handled) == len(set(handled)), (
            f"{n} events were handled {len(handled)} times by the adapter's member"
        )
        aut.metric("redelivered_from_purista", len(took))
    finally:
        hang.set()
        await peer.close()


@check("event_bridge.wire.purista.dead_letter_out", kinds=EB, needs=(*NEEDS, "dead_letter"))
async def test_dead_letter_out(aut: AdapterUnderTest) -> None:
    """A message the adapter gives up on is published where PURISTA publishes dead
    letters, as PURISTA does (NATS: ``<filter>.dead-letter``, body unchanged,
    ``x-purista-dead-letter-{reason,attempt,original-subject,subscriber}``), so a reader
    of a PURISTA fleet's dead letters sees both runtimes'."""
    transport = _transport(aut)
    if transport != "nats":
        pytest.skip(
            f"PURISTA's {transport} bridge publishes dead letters nowhere by default"
            " (AMQP: only to a configured queue; MQTT: none)"
        )
    bridge = await _bridge(aut)
    event_name = VECTORS["ts_event"]["message"]["eventName"]
    subscriber = ["pyService", "1.0.0", "onSignUp"]

    async def failing(_message: Any) -> None:
        raise RuntimeError("cannot handle it")

    await bridge.register_subscription(
        Subscription(
            subscriber=_addr(subscriber),
            message_type=MessageType.CUSTOM_MESSAGE,
            event_name=event_name,
            failure=FailureHandling(max_attempts=2, retry_delay_ms=10),
        ),
        failing,
    )
    peer = await peer_for(transport, bridge, INST["ts_peer"])
    try:
        flt = peer.subscription_filter(bridge.prefix, event_name)
        letters = await peer.watch_dead_letters(flt)
        spec = VECTORS["ts_event"]["message"]
        body = purista_event(address(*spec["sender"]), event_name, {"user": "ada"})
        await peer.publish_event(body)
        assert await wait_for(lambda: letters, TTL_S), (
            f"no dead letter on {flt}.dead-letter, where PURISTA publishes them"
        )
        got = letters[0]
        problems = [] if got.json().get("id") == body["id"] else ["the body is not the message"]
        want = {
            "x-purista-dead-letter-attempt": "2",
            "x-purista-dead-letter-original-subject": flt,
            "x-purista-dead-letter-subscriber": "/".join(subscriber),
        }
        for key, value in want.items():
            if got.headers.get(key) != value:
                problems.append(f"header {key}={got.headers.get(key)!r}, PURISTA: {value!r}")
        if not got.headers.get("x-purista-dead-letter-reason"):
            problems.append("no x-purista-dead-letter-reason header")
        assert not problems, "; ".join(problems)
    finally:
        await peer.close()


@check("event_bridge.wire.purista.name_collision_rejected", kinds=EB, needs=NEEDS)
async def test_name_collision_rejected(aut: AdapterUnderTest) -> None:
    """Two commands (or subscriptions) whose names snake-case alike (``getUser`` and
    ``get_user``) share one PURISTA subject/topic: registering the second fails, naming
    both; the first keeps being served."""
    transport = _transport(aut)
    if transport == "amqp":
        pytest.skip("PURISTA's AMQP names (queues, headers) are not snake-cased: no collision")
    bridge = await _bridge(aut)
    first = _addr(["pyService", "1.0.0", "getUser"])
    await bridge.register_command(first, lambda cmd: _echo(cmd))
    with pytest.raises(ValueError, match=r"getUser.*get_user|get_user.*getUser"):
        await bridge.register_command(_addr(["py_service", "1.0.0", "get_user"]), _echo)
    with pytest.raises(ValueError, match=r"onSignUp.*on_sign_up|on_sign_up.*onSignUp"):
        await bridge.register_subscription(
            Subscription(subscriber=_addr(["pyService", "1.0.0", "onSignUp"])), _ignore
        )
        await bridge.register_subscription(
            Subscription(subscriber=_addr(["pyService", "1.0.0", "on_sign_up"])), _ignore
        )
    cmd = Command(
        sender=_sender(["caller", "1", "run", INST["py_caller"]]),
        receiver=first,
        payload=CommandPayload(payload="still"),
    )
    assert await bridge.invoke(cmd, TTL_S) == "still"


async def _echo(cmd: Command) -> Any:
    return success_response(cmd, cmd.payload.payload)


async def _ignore(_message: Any) -> None:
    return None
