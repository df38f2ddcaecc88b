"""OpenTelemetry: the ``otp`` carrier and spans for invoke and handlers."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    INVALID_SPAN,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
)

TRACER_NAME = "reference_services"
#: what :func:`span` returns when nothing would record it (reusable, costs no allocation)
NO_SPAN: contextlib.AbstractContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)
_NO_SPAN = NO_SPAN


#: a tracer provider, once set, stays (the API sets one once): then the check is skipped
_configured = False
#: the API's global, read directly while it is unset (its getter looks the environment up on
#: each call, ~2 us); without it (another API version) the getter decides every time. A
#: provider named in the environment is loaded by the API's getter: then it decides.
_UNSET = object()
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


#: the provider :func:`traced_by` routes the runtime's spans to while its block runs
_override: trace.TracerProvider | None = None


@contextlib.contextmanager
def traced_by(provider: trace.TracerProvider) -> Iterator[None]:
    """Route the runtime's spans to ``provider`` while the block runs, whatever the global
    provider is (the API sets that one once per process); for tests that judge spans
    without turning tracing on for the rest of the process."""
    global _override
    previous, _override = _override, provider
    try:
        yield
    finally:
        _override = previous


def tracing_configured() -> bool:
    """Whether a tracer provider is set (the API's default proxy and no-op ones are not)."""
    global _configured
    if _configured or _override is not None:
        return True
    if getattr(trace, "_TRACER_PROVIDER", _UNSET) is None and not _PROVIDER_FROM_ENV:
        return False
    _configured = not isinstance(
        trace.get_tracer_provider(), (ProxyTracerProvider, NoOpTracerProvider)
    )
    return _configured


def tracer() -> trace.Tracer:
    """The runtime's tracer (resolved each time, so a provider set later is used)."""
    if _override is not None:
        return _override.get_tracer(TRACER_NAME)
    return trace.get_tracer(TRACER_NAME)


def inject_otp() -> str | None:
    """The current trace context as PURISTA's ``otp`` JSON string, or None."""
    if not otel_context.get_current() and not tracing_configured():
        return None  # no span, no baggage, no provider: there is nothing to carry
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add W3C trace headers (``traceparent``/``tracestate``) to broker headers."""
    if not otel_context.get_current() and not tracing_configured():
        return headers
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


def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    *,
    otp: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """A span, parented on ``otp`` when given, recording exceptions.

    Without a tracer provider and without an incoming trace context it is a shared no-op
    (no span, no context switch): tracing that is off costs nothing. An incoming ``otp``
    is still made current then, so that the handler's own invocations carry it on.
    """
    if not otp and not tracing_configured():
        return _NO_SPAN
    return _span(name, kind, otp=otp, attributes=attributes)


@contextlib.contextmanager
def _span(
    name: str,
    kind: SpanKind,
    *,
    otp: str | None,
    attributes: dict[str, Any] | None,
) -> Iterator[Span]:
    parent = extract_otp(otp)
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, record_exception=True
    ) as current:
        try:
            yield current
        except BaseException as exc:
            current.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
