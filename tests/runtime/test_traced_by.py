"""telemetry.traced_by: the runtime's spans go to the given provider inside the block only."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from reference_services.runtime import telemetry


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_spans_go_to_the_provider_inside_the_block_only() -> None:
    outer, outer_spans = _provider()
    inner, inner_spans = _provider()
    with telemetry.traced_by(outer):
        assert telemetry.tracing_configured()
        with telemetry.span("first"):
            pass
        with telemetry.traced_by(inner):
            with telemetry.span("nested"):
                pass
        with telemetry.span("second"):
            pass
    with telemetry.span("after"):
        pass
    assert [s.name for s in outer_spans.get_finished_spans()] == ["first", "second"]
    assert [s.name for s in inner_spans.get_finished_spans()] == ["nested"]
