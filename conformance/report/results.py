"""Turning a pytest outcome into a report row (status, message, metrics)."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.kit.marks import CheckInfo
from conformance.kit.skips import skip_kind
from conformance.kit.under_test import AdapterUnderTest
from reference_services.runtime.redact import redact_text


def _first_cause(exc: BaseException) -> BaseException | None:
    """The first real failure inside an exception group (Hypothesis' FlakyFailure...)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def message_of(call: pytest.CallInfo[Any]) -> str:
    if call.excinfo is None:
        return ""
    exc = call.excinfo.value
    if isinstance(exc, BaseExceptionGroup):
        # "produces unreliable results" hides what failed (e.g. lost messages): lead with it
        cause = _first_cause(exc)
        head = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cause is not None and cause is not exc:
            text = f"{type(cause).__name__}: {str(cause).strip()}".strip()
            return f"{text}\n({type(exc).__name__}: {head})"[:4000]
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, AssertionError) or not hasattr(exc, "msg"):
        text = f"{type(exc).__name__}: {text}" if not isinstance(exc, AssertionError) else text
    notes = getattr(exc, "__notes__", None)
    if notes:
        text += "\n" + "\n".join(str(n) for n in notes)
    return text[:4000]


def result_row(
    item: pytest.Item,
    rep: pytest.TestReport,
    call: pytest.CallInfo[Any],
    info: CheckInfo | None,
    aut: AdapterUnderTest | None,
) -> dict[str, Any]:
    """One report row for a check's phase (status from the outcome and declared support)."""
    spec = item.callspec.params["cf_spec"]  # type: ignore[attr-defined]
    wasxfail = getattr(rep, "wasxfail", None)
    skip = ""
    if wasxfail is not None and rep.passed:
        status, message = "unsupported", f"better than declared ({wasxfail})"
    elif wasxfail is not None:
        first = message_of(call).splitlines()[0] if call.excinfo else ""
        status, message = "unsupported", f"{wasxfail}; failed as declared: {first}"
    elif rep.skipped:
        status = "skipped"
        longrepr = rep.longrepr
        exc = call.excinfo.value if call.excinfo else None
        if isinstance(exc, pytest.skip.Exception):
            message = exc.msg
        else:
            message = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
            message = message.removeprefix("Skipped: ")
        skip = skip_kind(call.excinfo.value if call.excinfo else None)
    elif rep.failed:
        status = "failed"
        message = message_of(call)
        if rep.when != "call":
            message = f"{rep.when} failed: {message}"
    else:
        status, message = "passed", ""
    return {
        "adapter": spec.name,
        "kind": spec.kind,
        "check": info.id if info else item.name,
        "suite": info.suite if info else "contract",
        "status": status,
        "duration_s": 0.0,
        "message": redact_text(message),
        "metrics": dict(aut.metrics) if aut else {},
        "observations": dict(aut.observations) if aut else {},
        "nodeid": item.nodeid,
        "when": rep.when,
        "skip": skip,
        "exercises": list(info.exercised) if info else [],
    }
