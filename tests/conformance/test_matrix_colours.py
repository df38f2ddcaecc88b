"""The terminal matrix shows a not-tested adapter in its own colour, never as green."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

from conformance.report import print_matrix
from conformance.report.verdict import EXIT_NOT_TESTED, EXIT_PASSED, Verdict

GREEN, NOT_TESTED = "\x1b[32m", "\x1b[1;35m"


class _Reporter:
    """The part of pytest's terminal reporter print_matrix writes to (a colour terminal)."""

    def __init__(self) -> None:
        self._tw = SimpleNamespace(hasmarkup=True, fullwidth=160)
        self.out = io.StringIO()

    def write_sep(self, sep: str, title: str) -> None:
        self.out.write(f"{sep * 3} {title}\n")

    def write(self, text: str) -> None:
        self.out.write(text)


def _row(adapter: str, status: str, skip: str | None = None) -> dict[str, Any]:
    return {"kind": "event_bridge", "adapter": adapter, "check": "event_bridge.x",
            "status": status, "skip": skip, "duration_s": 0.1,
            "message": "nats: connection refused at 127.0.0.1:1" if skip else ""}


def _line(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if label in line and "│" in line)


def test_a_not_tested_adapter_is_never_green_in_the_summary() -> None:
    reason = "nats: connection refused at 127.0.0.1:1"
    for code, allowed in ((EXIT_NOT_TESTED, False), (EXIT_PASSED, True)):
        tr = _Reporter()
        verdict = Verdict(code, "x", {"event_bridge:nats": reason}, allowed_missing=allowed)
        print_matrix([_row("memory", "passed"), _row("nats", "skipped", "not_tested")], tr,
                     verdict)
        text = tr.out.getvalue()
        per_adapter = text[text.index("per adapter"):]
        nats = _line(per_adapter, "event_bridge:nats")
        assert NOT_TESTED in nats and "NOT TESTED" in nats and GREEN not in nats, repr(nats)
        assert GREEN in _line(per_adapter, "event_bridge:memory")  # the control: green works
        cell = _line(text[: text.index("per adapter")], "event_bridge.x")
        assert f"{NOT_TESTED}n/t" in cell, repr(cell)
