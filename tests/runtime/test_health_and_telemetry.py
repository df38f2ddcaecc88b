"""The health endpoint and the trace context carried in ``otp``."""

from __future__ import annotations

import asyncio
import json

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.runtime.health import HealthServer
from reference_services.runtime.messages import success_response

from .helpers import command, wait_for

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))


async def _get(port: int, path: str) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_health_endpoint_follows_the_bridge() -> None:
    bridge = DefaultEventBridge()
    server = HealthServer([bridge])
    await server.start()
    assert (await _get(server.port, "/healthz"))[0] == 503
    await bridge.start()
    status, body = await _get(server.port, "/readyz")
    assert status == 200 and body["ok"] is True
    await bridge.destroy()
    assert (await _get(server.port, "/readyz"))[0] == 503
    assert (await _get(server.port, "/nope"))[0] == 404
    await server.destroy()


async def test_trace_context_travels_in_otp_and_spans_share_the_trace() -> None:
    EXPORTER.clear()
    hub = MemoryHub()
    a, b = DefaultEventBridge(hub), DefaultEventBridge(hub)
    await a.start()
    await b.start()
    seen_otp: list[str | None] = []

    async def handler(cmd):
        seen_otp.append(cmd.otp)
        return success_response(cmd, "ok")

    from reference_services.runtime.messages import Address

    await b.register_command(
        Address(service_name="t", service_version="1", service_target="x"), handler
    )
    assert await a.invoke(command("t", "x")) == "ok"
    await wait_for(lambda: len(EXPORTER.get_finished_spans()) >= 2)
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    client, server = spans["invoke t.1.x"], spans["command t.1.x"]
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert seen_otp[0] is not None and "traceparent" in json.loads(seen_otp[0])
    await a.destroy()
    await b.destroy()


class _Hung:
    name = "hung"

    async def is_ready(self) -> bool:
        await asyncio.Event().wait()
        return True

    async def is_healthy(self) -> bool:
        return await self.is_ready()


async def _raw(port: int, data: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(reply.split()[1])


async def test_a_hung_component_is_a_503_within_its_timeout() -> None:
    bridge = DefaultEventBridge()
    await bridge.start()
    server = HealthServer([bridge, _Hung()], component_timeout_s=0.3)
    await server.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await asyncio.wait_for(_get(server.port, "/healthz"), 5)
    assert status == 503
    assert body["components"] == {"0:memory": True, "1:hung": "timeout"}
    assert loop.time() - started < 2
    await server.destroy()
    await bridge.destroy()


async def test_requests_are_bounded() -> None:
    server = HealthServer([DefaultEventBridge()])
    await server.start()
    many = b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 1000 + b"\r\n"
    assert await _raw(server.port, many) == 431
    long = b"GET /healthz HTTP/1.1\r\nX-A: " + b"b" * 100_000 + b"\r\n\r\n"
    assert await _raw(server.port, long) == 431
    await server.destroy()


def test_host_and_port_come_from_the_environment() -> None:
    server = HealthServer.from_env(
        [], {"HEALTH_HOST": "0.0.0.0", "HEALTH_PORT": "8081", "HEALTH_COMPONENT_TIMEOUT_S": "1.5"}
    )
    assert (server.host, server.port, server.component_timeout_s) == ("0.0.0.0", 8081, 1.5)
    with pytest.raises(ValueError, match="HEALTH_PORT"):
        HealthServer.from_env([], {"HEALTH_PORT": "http"})
