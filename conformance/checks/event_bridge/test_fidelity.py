"""Fidelity: any JSON payload and every envelope field arrive unchanged."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from conformance.kit import addr, command, event, responder, subscription
from conformance.kit.hyp import (
    envelope_ids,
    json_values_for,
    otps,
    session,
    settings_for,
    trace_ids,
)
from conformance.kit.marks import check
from conformance.kit.numbers import expect_numbers
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for

EB = ("event_bridge",)
ENVELOPE = ("principal_id", "tenant_id", "trace_id", "correlation_id", "otp")
TRICKY = [
    "grüße, ça va? ñ ß ø å",
    "中文字符 日本語 한국어",
    "emoji 🙂👩‍👩‍👧‍👦🏳️‍🌈 and astral 𝄞 𐍈",
    "RTL עברית العربية and combining é = é",
    'escapes " \\ / \b \f \n \r \t and nul \u0000 and \u2028\u2029',
    "\ufeffbom and \uffff noncharacter",
]


def canon(value: Any) -> str:
    """Canonical JSON text: distinguishes 1, 1.0 and true."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class Inbox:
    """Messages received by a subscriber, by message id."""

    def __init__(self) -> None:
        self.by_id: dict[str, Any] = {}

    async def __call__(self, msg: Any) -> None:
        self.by_id[msg.id] = msg


async def _pair(aut: AdapterUnderTest) -> tuple[Any, Any, Inbox]:
    consumer = await aut.new()
    inbox = Inbox()
    await consumer.register_subscription(subscription("fidelity", event_name="fid"), inbox)

    async def echo(cmd: Any) -> Any:
        return {
            "payload": cmd.payload.payload,
            "parameter": cmd.payload.parameter,
            **{f: getattr(cmd, f) for f in ENVELOPE},
        }

    await consumer.register_command(addr("echo"), responder(echo))
    return await aut.new(), consumer, inbox


async def _event_round_trip(producer: Any, inbox: Inbox, payload: Any, **env: Any) -> Any:
    msg = event(producer, "fid", payload, **env)
    await producer.emit_message(msg)
    if not await wait_for(lambda: msg.id in inbox.by_id, 10):
        raise AssertionError(f"message {msg.id} never arrived (payload {payload!r:.200})")
    return msg, inbox.by_id.pop(msg.id)


@check("event_bridge.fidelity.payload", kinds=EB)
def test_payload(cf_aut: AdapterUnderTest) -> None:
    """Property: any JSON payload survives an event and a command (payload, parameter, result)."""
    with session(cf_aut) as runner:
        producer, _, inbox = runner.run(_pair(cf_aut))

        @settings_for(cf_aut)
        @given(payload=json_values_for(cf_aut), parameter=json_values_for(cf_aut))
        def prop(payload: Any, parameter: Any) -> None:
            _, got = runner.run(_event_round_trip(producer, inbox, payload))
            assert canon(got.payload) == canon(payload), "event payload changed"
            result = runner.run(
                producer.invoke(command(producer, addr("echo"), payload, parameter), 10)
            )
            assert canon(result["payload"]) == canon(payload), "command payload changed"
            assert canon(result["parameter"]) == canon(parameter), "command parameter changed"

        prop()


@check("event_bridge.fidelity.envelope", kinds=EB)
def test_envelope(cf_aut: AdapterUnderTest) -> None:
    """Property: principal, tenant, trace, correlation and otp arrive unchanged, for events
    and commands."""
    with session(cf_aut) as runner:
        producer, _, inbox = runner.run(_pair(cf_aut))

        @settings_for(cf_aut)
        @given(
            principal_id=envelope_ids,
            tenant_id=envelope_ids,
            trace_id=trace_ids,
            correlation_id=st.none() | envelope_ids,
            otp=otps,
        )
        def prop(**env: Any) -> None:
            sent, got = runner.run(_event_round_trip(producer, inbox, {"x": 1}, **env))
            diff = {
                f: (getattr(sent, f), getattr(got, f))
                for f in ENVELOPE
                if getattr(sent, f) != getattr(got, f)
            }
            diff.update(
                {
                    f: (getattr(sent, f), getattr(got, f))
                    for f in ("id", "sender")
                    if getattr(sent, f) != getattr(got, f)
                }
            )
            assert not diff, f"event envelope changed (sent, got): {diff}"
            cmd_env = {k: v for k, v in env.items() if k != "correlation_id"}
            if cmd_env.get("otp") is None:
                cmd_env.pop("otp", None)
            cmd = command(producer, addr("echo"), None, **cmd_env)
            seen = runner.run(producer.invoke(cmd, 10))
            diff = {f: (getattr(cmd, f), seen[f]) for f in ENVELOPE if getattr(cmd, f) != seen[f]}
            assert not diff, f"command envelope changed (sent, seen by handler): {diff}"

        prop()


@check("event_bridge.fidelity.unicode", kinds=EB)
async def test_unicode(aut: AdapterUnderTest) -> None:
    """Non-ASCII text (accents, CJK, emoji, RTL, escapes, NUL) survives in values and keys."""
    producer, _, inbox = await _pair(aut)
    payload = {"texts": TRICKY, **{t[:12]: t for t in TRICKY}}
    _, got = await _event_round_trip(
        producer, inbox, payload, principal_id="ünï-😀", tenant_id="租户"
    )
    bad = [t for t in TRICKY if t not in got.payload.get("texts", [])]
    assert canon(got.payload) == canon(payload), f"event payload mangled; lost: {bad}"
    assert (got.principal_id, got.tenant_id) == ("ünï-😀", "租户"), "envelope text mangled"
    result = await producer.invoke(command(producer, addr("echo"), payload, TRICKY), 10)
    assert canon(result["payload"]) == canon(payload), "command payload mangled"
    assert canon(result["parameter"]) == canon(TRICKY), "command parameter mangled"


LARGE_FLOOR = 256 * 1024
LARGE_FULL = 512 * 1024
SMALLEST_LIMIT = 64 * 1024
ENVELOPE_ROOM = 4 * 1024  # envelope fields and the command response around the payload


def large_payload_size(limit: int | None, quick: bool) -> int:
    """Bytes of the large payload: 512 KiB (256 KiB quick), never shrunk below 256 KiB for a
    declared limit that allows it; a declared limit under 256 KiB is filled to the limit.

    A declared limit under 64 KiB fails: PURISTA messages of that size are ordinary.
    """
    size = LARGE_FLOOR if quick else LARGE_FULL
    if not limit:
        return size
    if limit < SMALLEST_LIMIT:
        raise AssertionError(
            f"declares max_message_bytes={limit}: under the 64 KiB every adapter must carry"
        )
    return min(size, limit - ENVELOPE_ROOM)


def sized_payload(size: int) -> dict[str, Any]:
    """Mixed text and nested rows whose canonical JSON is ``size`` bytes (within a few)."""
    rows = [{"i": i, "v": [i, str(i), i / 7]} for i in range(200)]
    chunk = "abcdefghij-ü-中-🙂-" * 8
    room = size - len(canon({"blob": "", "rows": rows}).encode())
    per = len(chunk.encode())
    blob = chunk * (max(room, 0) // per)
    blob += "x" * (room - len(blob.encode()))
    return {"blob": blob, "rows": rows}


@check("event_bridge.fidelity.large_payload", kinds=EB)
async def test_large_payload(aut: AdapterUnderTest) -> None:
    """A large payload (512 KiB of mixed text, nested; at least 256 KiB or the declared
    limit; a declared limit under 64 KiB fails) survives events and commands."""
    limit = aut.spec.capabilities.max_message_bytes
    size = large_payload_size(limit, aut.quick)
    producer, _, inbox = await _pair(aut)
    payload = sized_payload(size)
    _, got = await _event_round_trip(producer, inbox, payload)
    assert canon(got.payload) == canon(payload), "large event payload changed"
    result = await producer.invoke(command(producer, addr("echo"), payload), 15)
    assert canon(result["payload"]) == canon(payload), "large command payload changed"
    aut.metric("payload_bytes", len(canon(payload).encode()))


@check("event_bridge.fidelity.numbers", kinds=EB)
async def test_numbers(aut: AdapterUnderTest) -> None:
    """Integers beyond 2**53 and doubles at full precision (subnormals, the largest finite,
    -0.0) survive events and commands, or are refused at encode as the adapter declares
    (``numbers``: exact, or safe_integers with MessageEncodeError naming the field)."""
    producer, _, inbox = await _pair(aut)
    mode = aut.spec.capabilities.numbers

    async def by_event(value: Any) -> Any:
        _, got = await _event_round_trip(producer, inbox, value)
        return got.payload

    async def by_command(value: Any) -> Any:
        result = await producer.invoke(command(producer, addr("echo"), value), 10)
        return result["payload"]

    await expect_numbers(mode, by_event)
    await expect_numbers(mode, by_command)
