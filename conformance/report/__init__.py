"""report.json (described by conformance.report.model), report.html and the terminal matrix."""

from __future__ import annotations

import functools
import io
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from conformance.adapters import KINDS, AdapterSpec
from conformance.report.verdict import Verdict
from reference_services.runtime.redact import redact_text

SCHEMA = 2  # conformance.report.model.SCHEMA_VERSION
STATUSES = ("passed", "failed", "unsupported", "skipped")
GLYPH = {"passed": "✔", "failed": "✘", "unsupported": "~", "skipped": "-"}
STYLE = {"passed": "green", "failed": "bold red", "unsupported": "yellow", "skipped": "dim"}
NOT_TESTED_STYLE = "bold magenta"  # never green: the adapter was not exercised


def declared_not_exercised(spec: AdapterSpec, results: list[dict[str, Any]]) -> list[str]:
    """Capabilities ``spec`` declares supported that no check of this run exercised.

    A check exercises the capabilities it ``needs`` when it ran (passed, failed, or
    failed as declared); a skipped check exercised nothing. Empty when nothing ran.
    """
    rows = [r for r in results if r["adapter"] == spec.name and r["kind"] == spec.kind]
    if not any(r["status"] != "skipped" for r in rows):
        return []
    exercised = {c for r in rows if r["status"] != "skipped" for c in r.get("exercises", [])}
    declared = [
        name
        for name, value in (spec.capabilities_dict() or {}).items()
        if isinstance(value, dict) and value.get("supported")
    ]
    return sorted(c for c in declared if c not in exercised)


def suites_exercising(kind: str, capability: str) -> list[str]:
    """The suites holding a check that exercises ``capability`` on adapters of ``kind``
    (empty: no check exists for it)."""
    return sorted(_suites_by_capability().get((kind, capability), set()))


@functools.cache
def _suites_by_capability() -> dict[tuple[str, str], set[str]]:
    from conformance.kit.marks import all_checks

    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for info in all_checks("all"):
        for kind in info.kinds:
            for cap in (*info.needs_for(kind), *info.exercises):
                found[(kind, cap)].add(info.suite)
    return dict(found)


def annotate_unexercised(kind: str, capabilities: list[str]) -> list[str]:
    """``declared_not_exercised`` names with where each would be exercised, for people:
    ``publisher_confirms (checked in the faults suite)`` or
    ``native_dead_lettering (no check exists)``."""
    out = []
    for cap in capabilities:
        suites = suites_exercising(kind, cap)
        plural = "s" if len(suites) > 1 else ""
        where = f"checked in the {', '.join(suites)} suite{plural}" if suites else "no check exists"
        out.append(f"{cap} ({where})")
    return out


def build(
    *,
    results: list[dict[str, Any]],
    specs: list[AdapterSpec],
    provider: str,
    duration_s: float,
    suite: str,
    quick: bool,
    verdict: Verdict | None = None,
    preflight: dict[str, str] | None = None,
    environment: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report document (what report.json holds; validated by the Report model)."""
    per_adapter: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        per_adapter[f"{r['kind']}:{r['adapter']}"][r["status"]] += 1
    not_tested = verdict.not_tested if verdict else {}
    return {
        "schema": SCHEMA,
        "tool": "purista-conformance",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provider": provider,
        "suite": suite,
        "quick": quick,
        "duration_s": round(duration_s, 3),
        "summary": dict(Counter(r["status"] for r in results)),
        "verdict": verdict.as_dict() if verdict else None,
        "preflight": dict(sorted((preflight or {}).items())),
        "environment": environment,
        "adapters": [
            {
                **s.describe(),
                "summary": dict(per_adapter.get(s.label, Counter())),
                "not_tested": not_tested.get(s.label),
                "declared_not_exercised": declared_not_exercised(s, results),
            }
            for s in specs
        ],
        "results": [
            {
                k: r[k]
                for k in (
                    "adapter",
                    "kind",
                    "check",
                    "suite",
                    "status",
                    "duration_s",
                    "message",
                    "metrics",
                    "observations",
                    "nodeid",
                    "skip",
                    "kept",
                )
                if k in r
            }
            for r in results
        ],
        "observations": [
            {
                "adapter": r["adapter"],
                "kind": r["kind"],
                "check": r["check"],
                "observations": r["observations"],
            }
            for r in results
            if r.get("observations")
        ],
    }


def load_baseline(path: Path | str) -> dict[str, Any]:
    """A previous report.json to compare with (ValueError naming the file if it is not one)."""
    from conformance.report.model import Report

    return Report.load(path).model_dump(by_alias=True, mode="json")


def write(doc: dict[str, Any], report_dir: Path, baseline: dict[str, Any] | None = None) -> None:
    """Write report.json, report.html (compared with ``baseline`` if given) and junit.xml."""
    from conformance.report.model import Report

    report_dir.mkdir(parents=True, exist_ok=True)
    Report.model_validate(json.loads(json.dumps(doc, default=str)))  # the schema holds
    text = json.dumps(doc, indent=2, default=str) + "\n"
    (report_dir / "report.json").write_text(redact_text(text))
    from conformance.report import junit
    from conformance.report.html import render

    (report_dir / "report.html").write_text(redact_text(render(doc, baseline)), encoding="utf-8")
    (report_dir / "junit.xml").write_text(junit.render(doc), encoding="utf-8")


def _columns(results: list[dict[str, Any]], kind: str) -> list[str]:
    return sorted({r["adapter"] for r in results if r["kind"] == kind})


CHECKLIST_GLYPH = {
    "ok": "[green]✔[/]",
    "failed": "[red]✘[/]",
    "not checked": "[dim]·[/]",
    "n/a": "[dim]n/a[/]",
}


def checklist_rows(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    """``(pattern (adapter), {item: ok|failed|not checked|n/a})`` of every result that carries a
    production-checklist metric (the deployment suite's pattern checks)."""
    rows = []
    for r in sorted(results, key=lambda r: (r["check"], r["adapter"])):
        checklist = (r.get("metrics") or {}).get("checklist")
        if not isinstance(checklist, dict):
            continue
        pattern = r["check"].removeprefix("deployment.")
        verdicts = {item: str(v).split(":", 1)[0] for item, v in checklist.items()}
        rows.append((f"{pattern} ({r['adapter']})", verdicts))
    return rows


def matrix(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``{kind: {check: {adapter: row}}}``."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for r in results:
        out.setdefault(r["kind"], {}).setdefault(r["check"], {})[r["adapter"]] = r
    return out


def print_matrix(
    results: list[dict[str, Any]], terminalreporter: Any, verdict: Verdict | None = None
) -> None:
    """Print the adapters x checks matrix with rich, then per-adapter counts."""
    from rich.console import Console
    from rich.table import Table

    markup = bool(getattr(getattr(terminalreporter, "_tw", None), "hasmarkup", False))
    buf = io.StringIO()
    console = Console(
        file=buf,
        force_terminal=markup,
        width=max(140, _width(terminalreporter)),
        color_system="standard" if markup else None,
    )
    grid = matrix(results)
    for kind in KINDS:
        if kind not in grid:
            continue
        adapters = _columns(results, kind)
        table = Table(title=f"{kind}", title_justify="left", show_lines=False)
        table.add_column("check", no_wrap=True)
        for a in adapters:
            table.add_column(a, justify="center", no_wrap=True)
        for check_id in sorted(grid[kind]):
            cells = []
            for a in adapters:
                row = grid[kind][check_id].get(a)
                if row is None:
                    cells.append("")
                    continue
                st = row["status"]
                if st == "skipped" and row.get("skip") == "not_tested":
                    cells.append(f"[{NOT_TESTED_STYLE}]n/t[/]")
                    continue
                cells.append(
                    f"[{STYLE[st]}]{GLYPH[st]} {row['duration_s']:.2f}s[/]"
                    if st != "skipped"
                    else f"[{STYLE[st]}]{GLYPH[st]}[/]"
                )
            table.add_row(check_id, *cells)
        console.print(table)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        counts[f"{r['kind']}:{r['adapter']}"][r["status"]] += 1
    not_tested = verdict.not_tested if verdict else {}
    summary = Table(title="per adapter", title_justify="left")
    summary.add_column("adapter")
    for st in STATUSES:
        summary.add_column(st, justify="right")
    summary.add_column("tested")
    for label in sorted(set(counts) | set(not_tested)):
        tested = (
            f"[{NOT_TESTED_STYLE}]NOT TESTED: {not_tested[label]}[/]"
            if label in not_tested
            else "yes"
        )
        summary.add_row(
            f"[{NOT_TESTED_STYLE}]{label}[/]" if label in not_tested else label,
            *[
                f"[{STYLE[st]}]{counts[label][st]}[/]" if counts[label][st] else "0"
                for st in STATUSES
            ],
            tested,
        )
    console.print(summary)
    rows = checklist_rows(results)
    if rows:
        from conformance.checks.deployment.checklist import ITEMS

        table = Table(title="production checklist (pattern x item)", title_justify="left")
        table.add_column("pattern", no_wrap=True)
        for item in ITEMS:
            table.add_column(item, justify="center", no_wrap=True)
        for label, items in rows:
            table.add_row(label, *(CHECKLIST_GLYPH.get(items.get(i, ""), "") for i in ITEMS))
        console.print(table)
        console.print(
            "checklist: ✔ ok  ✘ failed  · not checked  n/a does not apply to the pattern "
            "(reasons in report.json metrics)"
        )
    if verdict is not None:
        console.print(f"verdict: {verdict.status} (exit {verdict.code}): {verdict.reason}")
    console.print(
        f"legend: {GLYPH['passed']} passed  {GLYPH['failed']} failed  "
        f"{GLYPH['unsupported']} unsupported (declared)  {GLYPH['skipped']} skipped  "
        "n/t not tested (service unavailable)"
    )
    terminalreporter.write_sep("=", "conformance matrix")
    terminalreporter.write(buf.getvalue())


def _width(terminalreporter: Any) -> int:
    tw = getattr(terminalreporter, "_tw", None)
    return int(getattr(tw, "fullwidth", 120) or 120)
