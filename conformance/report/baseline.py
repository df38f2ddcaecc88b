"""Comparing a run with a previous one (``--baseline OLD/report.json``).

New failures (failed now, not failed before), fixed checks (failed before, not now)
and figures that changed (numeric metrics of the same check and adapter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str, str]  # kind, adapter, check


@dataclass
class Comparison:
    """What changed between the baseline and this run."""

    baseline_created: str
    new_failures: list[dict[str, Any]] = field(default_factory=list)
    fixed: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # (now, old)
    changed_figures: list[tuple[dict[str, Any], str, float, float]] = field(default_factory=list)
    new_checks: int = 0
    gone_checks: int = 0


def key(row: dict[str, Any]) -> Key:
    return (row["kind"], row["adapter"], row["check"])


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def compare(doc: dict[str, Any], baseline: dict[str, Any], min_change: float = 0.1) -> Comparison:
    """``doc`` against ``baseline``; figures count as changed beyond ``min_change`` (10%)."""
    old = {key(r): r for r in baseline.get("results", [])}
    now = {key(r): r for r in doc.get("results", [])}
    out = Comparison(baseline_created=str(baseline.get("created", "?")))
    for k, row in sorted(now.items()):
        before = old.get(k)
        if before is None:
            out.new_checks += 1
        if row["status"] == "failed" and (before is None or before["status"] != "failed"):
            out.new_failures.append(row)
        if before is None:
            continue
        if before["status"] == "failed" and row["status"] in ("passed", "unsupported"):
            out.fixed.append((row, before))
        for name, value in sorted((row.get("metrics") or {}).items()):
            a, b = _number((before.get("metrics") or {}).get(name)), _number(value)
            if a is None or b is None or a == b:
                continue
            if abs(b - a) > min_change * max(abs(a), abs(b), 1e-9):
                out.changed_figures.append((row, name, a, b))
    out.gone_checks = len(set(old) - set(now))
    out.changed_figures.sort(key=lambda t: -abs(t[3] - t[2]) / max(abs(t[2]), abs(t[3]), 1e-9))
    return out
