"""Registering the same address again on one instance replaces its handler."""

from __future__ import annotations

import asyncio
from typing import Any

from conformance.kit import addr, command, event, invoke_status, responder, subscription
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for, wait_quiet

EB = ("event_bridge",)


@check("event_bridge.subscriptions.reregister_replaces", kinds=EB)
async def test_reregister_replaces(aut: AdapterUnderTest) -> None:
    """A subscription or command registered again on the same instance replaces the first
    handler: later events reach only the new one, once each; invokes get its answer."""
    seen: dict[str, list[int]] = {"first": [], "second": []}

    def recorder(label: str) -> Any:
        async def handle(msg: Any) -> None:
            seen[label].append(msg.payload["id"])

        return handle

    server = await aut.new()
    sub = subscription("again", event_name="again")
    await server.register_subscription(sub, recorder("first"))
    await server.register_subscription(sub, recorder("second"))
    await server.register_command(addr("again-cmd"), responder(_answer("first")))
    await server.register_command(addr("again-cmd"), responder(_answer("second")))
    client = await aut.new()
    for i in range(5):
        await client.emit_message(event(client, "again", {"id": i}))
    answers = await asyncio.gather(
        *(invoke_status(client, command(client, addr("again-cmd"), i), 10) for i in range(3))
    )
    await wait_for(lambda: len(seen["second"]) >= 5, 10)
    await wait_quiet(lambda: (len(seen["first"]), len(seen["second"])), quiet_s=0.5, timeout_s=5)
    assert seen["first"] == [], f"the replaced handler still got events {seen['first']}"
    assert sorted(seen["second"]) == list(range(5)), (
        f"the new handler got {sorted(seen['second'])} (expected each of 0-4 once)"
    )
    assert [a[:2] for a in answers] == [("ok", "second")] * 3, f"invokes answered {answers}"


def _answer(label: str) -> Any:
    async def answer(cmd: Any) -> Any:
        return label

    return answer
