"""Tracing: the spans an invoke, the command it serves and a delivery make, with a tracer
provider set (OpenTelemetry's SDK, routed to the runtime for this check only)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conformance.checks.robustness.hooks import raw_command_hook
from conformance.kit import addr, collect, command, event, responder, subscription
from conformance.kit.marks import check
from conformance.kit.under_test import AdapterUnderTest
from conformance.kit.waits import wait_for
from reference_services.runtime import telemetry
from reference_services.runtime.codec import encode

EB = ("event_bridge",)


def _recording() -> tuple[Any, Any]:
    """A provider exporting to memory, and its exporter."""
    sdk = pytest.importorskip(
        "opentelemetry.sdk.trace", reason="the tracing check needs opentelemetry-sdk"
    )
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@check("event_bridge.tracing.spans", kinds=EB)
async def test_spans(aut: AdapterUnderTest) -> None:
    """With a tracer provider set: an invoke makes a CLIENT span ``invoke <receiver>``
    (attribute ``purista.correlation_id``) and the serving instance a SERVER span
    ``command <receiver>``, its child in the same trace; an event emitted with a trace
    context (``otp``) makes a CONSUMER span ``subscription <subscriber>`` whose parent is
    that context (attributes ``purista.message_id`` and ``purista.attempt``, 1 on a first
    delivery)."""
    from opentelemetry.trace import SpanKind

    provider, exporter = _recording()
    target = addr("traced")
    subscriber = subscription("traced-sub", event_name="traced-event")
    with telemetry.traced_by(provider):
        server = await aut.new()
        await server.register_command(target, responder(_echo))
        delivered: list[Any] = []
        await server.register_subscription(subscriber, collect(delivered))
        client = await aut.new()
        cmd = command(client, target, "traced")
        assert await client.invoke(cmd, 10) == {"echo": "traced"}
        with provider.get_tracer("conformance").start_as_current_span("emitter") as emitter:
            otp = telemetry.inject_otp()
        assert otp is not None, "no trace context to put on the event"
        message = event(client, "traced-event", {"id": "traced"}, otp=otp)
        await client.emit_message(message)
        await wait_for(lambda: delivered, 10)
        await wait_for(lambda: _named(exporter, f"subscription {subscriber.subscriber}"), 5)
    spans = exporter.get_finished_spans()
    clients = _named(exporter, f"invoke {target}")
    servers = _named(exporter, f"command {target}")
    assert len(clients) == 1 and len(servers) == 1, (
        f"expected one 'invoke {target}' and one 'command {target}' span, got "
        f"{sorted(s.name for s in spans)}"
    )
    (out,), (served,) = clients, servers
    assert out.kind == SpanKind.CLIENT, f"invoke span kind {out.kind}"
    assert served.kind == SpanKind.SERVER, f"command span kind {served.kind}"
    assert out.attributes.get("purista.correlation_id") == cmd.correlation_id, (
        f"invoke span attributes {dict(out.attributes)}"
    )
    assert served.attributes.get("purista.correlation_id") == cmd.correlation_id, (
        f"command span attributes {dict(served.attributes)}"
    )
    assert served.context.trace_id == out.context.trace_id, "command span in another trace"
    assert served.parent is not None and served.parent.span_id == out.context.span_id, (
        "the command span is not the invoke span's child"
    )
    consumers = _named(exporter, f"subscription {subscriber.subscriber}")
    assert len(consumers) == 1, (
        f"expected one 'subscription {subscriber.subscriber}' span, got "
        f"{sorted(s.name for s in spans)}"
    )
    (consumed,) = consumers
    assert consumed.kind == SpanKind.CONSUMER, f"subscription span kind {consumed.kind}"
    assert consumed.context.trace_id == emitter.get_span_context().trace_id, (
        "the subscription span is not in the emitter's trace"
    )
    assert consumed.parent is not None and (
        consumed.parent.span_id == emitter.get_span_context().span_id
    ), "the subscription span is not the emitter's child"
    want = {"purista.message_id": message.id, "purista.attempt": 1}
    got = {k: consumed.attributes.get(k) for k in want}
    assert got == want, f"subscription span attributes {dict(consumed.attributes)}"
    assert json.loads(otp).get("traceparent"), f"otp without a traceparent: {otp}"


@check("event_bridge.tracing.untraced_caller", kinds=EB)
async def test_untraced_caller(aut: AdapterUnderTest) -> None:
    """A command from a peer that does not trace (no ``otp``) reaching a traced server starts
    a trace there: one SERVER span ``command <receiver>`` with no parent, and the command its
    handler gets carries that span's context (``otp``), so what the handler invokes and
    emits continues the trace. The command goes through the raw-command hook: every invoke
    of ours puts an otp on what it sends."""
    provider, exporter = _recording()
    target = addr("untraced")
    seen: list[Any] = []

    async def run(cmd: Any) -> Any:
        seen.append(cmd.otp)
        return {"ok": True}

    with telemetry.traced_by(provider):
        server = await aut.new()
        await server.register_command(target, responder(run))
        publish = raw_command_hook(server)
        client = await aut.new()
        bare = command(client, target, "bare")
        assert bare.otp is None
        await publish(encode(bare), target)
        await wait_for(lambda: seen, 10)
        await wait_for(lambda: _named(exporter, f"command {target}"), 5)
    servers = _named(exporter, f"command {target}")
    assert len(servers) == 1, f"expected one 'command {target}' span, got {len(servers)}"
    (served,) = servers
    assert served.parent is None, f"an untraced command's span has a parent: {served.parent}"
    assert seen[0] is not None, "the handler's command carries no trace context (otp)"
    parent = json.loads(seen[0]).get("traceparent", "")
    parts = parent.split("-")
    assert len(parts) == 4 and parts[1] == f"{served.context.trace_id:032x}", (
        f"the handler's otp {seen[0]} is not in the server span's trace "
        f"{served.context.trace_id:032x}"
    )
    assert parts[2] == f"{served.context.span_id:016x}", (
        f"the handler's otp {seen[0]} does not name the server span as its parent"
    )


async def _echo(cmd: Any) -> Any:
    return {"echo": cmd.payload.payload}


def _named(exporter: Any, name: str) -> list[Any]:
    """Finished spans named ``name`` (a subscriber's name may go on with ``@instance``)."""
    return [
        s for s in exporter.get_finished_spans() if s.name == name or s.name.startswith(name + "@")
    ]
