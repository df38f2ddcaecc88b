"""OpenTelemetry for a deployed process: spans exported to a file when ``OTEL_SPANS_FILE`` is set.

The exporter is the SDK's own ``ConsoleSpanExporter`` writing one JSON span per line into
the file (``OTEL_SERVICE_NAME`` names the resource), through a ``SimpleSpanProcessor`` so
a span is on disk when it ends. The SDK (``opentelemetry-sdk``: the ``[telemetry]``
extra, which the service image holds) is imported only when the variable is set; without
it the process refuses to start with a message saying so rather than running without the
exporter it was asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


def configure(env: Mapping[str, str]) -> Callable[[], None] | None:
    """Install a tracer provider exporting to ``OTEL_SPANS_FILE``; returns its shutdown."""
    path = env.get("OTEL_SPANS_FILE")
    if not path:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError as exc:
        raise RuntimeError(
            f"OTEL_SPANS_FILE is set but opentelemetry-sdk is not installed ({exc})"
        ) from None
    out = open(path, "a", encoding="utf-8")  # closed by the shutdown below
    exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
    name = env.get("OTEL_SERVICE_NAME") or "reference_services"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    def shutdown() -> None:
        provider.shutdown()
        out.close()

    return shutdown
