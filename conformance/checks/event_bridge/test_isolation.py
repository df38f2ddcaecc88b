"""What crosses the bridge: the message, nothing of the sending task."""

from __future__ import annotations

import contextvars
from typing import Any

from conformance.kit import addr, collect, command, event, responder, subscription
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for

EB = ("event_bridge",)

# a request-scoped value of the caller (a user, a DB session, a span): set in the sending
# task only, after every bridge of the check has started
REQUEST_SCOPED: contextvars.ContextVar[str] = contextvars.ContextVar(
    "conformance_request_scoped", default="unset"
)


@check("event_bridge.isolation.no_ambient_context", kinds=EB)
async def test_no_ambient_context(aut: AdapterUnderTest) -> None:
    """A command handler and a subscriber see nothing of the invoker's or emitter's task
    context (its context variables): only what the message carries crosses, as over a
    wire, so a handler behaves alike in a monolith and across processes."""
    server = await aut.new()
    seen_by_command: list[str] = []

    async def report(cmd: Any) -> Any:
        seen_by_command.append(REQUEST_SCOPED.get())
        return {"seen": REQUEST_SCOPED.get()}

    await server.register_command(addr("isolated"), responder(report))
    delivered: list[Any] = []
    seen_by_subscriber: list[str] = []

    async def keep(msg: Any) -> None:
        seen_by_subscriber.append(REQUEST_SCOPED.get())
        await collect(delivered)(msg)

    await server.register_subscription(subscription("isolated-sub", event_name="isolated"), keep)
    client = await aut.new()

    token = REQUEST_SCOPED.set("the invoker's")
    try:
        answer = await client.invoke(command(client, addr("isolated"), "x"), 10)
        await client.emit_message(event(client, "isolated", {"id": 1}))
    finally:
        REQUEST_SCOPED.reset(token)
    assert await wait_for(lambda: bool(delivered), 10), "the event was not delivered in 10 s"

    assert seen_by_command == ["unset"] and answer == {"seen": "unset"}, (
        f"the command handler saw the invoker's context variable: {seen_by_command}"
    )
    assert seen_by_subscriber == ["unset"], (
        f"the subscriber saw the emitter's context variable: {seen_by_subscriber}"
    )
