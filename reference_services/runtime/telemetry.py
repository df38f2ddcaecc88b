"""OpenTelemetry: the ``otp`` carrier and spans for invoke and handlers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACER_NAME = "reference_services"


def tracer() -> trace.Tracer:
    """The runtime's tracer (resolved each time, so a provider set later is used)."""
    return trace.get_tracer(TRACER_NAME)


def inject_otp() -> str | None:
    """The current trace context as PURISTA's ``otp`` JSON string, or None."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add W3C trace headers (``traceparent``/``tracestate``) to broker headers."""
    propagate.inject(headers)
    return headers


def extract_otp(otp: str | None) -> otel_context.Context | None:
    """Parse an ``otp`` string into a context; bad input yields None, never an error."""
    if not otp:
        return None
    try:
        carrier = json.loads(otp)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    carrier = {str(k): str(v) for k, v in carrier.items() if isinstance(v, str)}
    return propagate.extract(carrier)


@contextlib.contextmanager
def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    *,
    otp: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span]:
    """A span, parented on ``otp`` when given, recording exceptions."""
    parent = extract_otp(otp)
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, record_exception=True
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
