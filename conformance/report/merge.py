"""``conformance merge a.json b.json``: per-job reports as one (one matrix across jobs).

A CI matrix runs one job per adapter; merging their report.json files gives the
report one run over every adapter would have given: the union of the adapters and
results, the summary recounted and the verdict decided again by the same rules
(:func:`conformance.report.verdict.decide`). The same check against the same adapter
in two inputs is an error (naming both files), never silently one of them.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from conformance.report.model import SCHEMA_VERSION, Report
from conformance.report.verdict import decide


class MergeError(ValueError):
    """The inputs cannot be merged (the message names the files and the clash)."""


def merge(paths: list[Path]) -> dict[str, Any]:
    """The merged report document of the report.json files at ``paths``."""
    if not paths:
        raise MergeError("conformance merge needs at least one report.json")
    reports = [(p, Report.load(p)) for p in paths]
    rows: dict[tuple[str, str, str], tuple[Path, dict[str, Any]]] = {}
    adapters: dict[tuple[str, str], dict[str, Any]] = {}
    not_tested: dict[str, str] = {}
    brokers: dict[str, str] = {}
    for path, rep in reports:
        doc = rep.model_dump(by_alias=True, mode="json")
        for row in doc["results"]:
            key = (row["kind"], row["adapter"], row["check"])
            if key in rows:
                raise MergeError(
                    f"{rows[key][0]} and {path} both hold {key[2]} for {key[0]}:{key[1]}; "
                    "merge reports of disjoint runs (one job per adapter)"
                )
            rows[key] = (path, row)
        for entry in doc["adapters"]:
            adapters.setdefault((entry["kind"], entry["adapter"]), entry)
        for item in (doc.get("verdict") or {}).get("not_tested", []):
            not_tested[f"{item['kind']}:{item['adapter']}"] = item["reason"]
        for b in (doc.get("environment") or {}).get("brokers", []):
            brokers.setdefault(b["name"], b.get("version", ""))
    results = [row for _, row in sorted(rows.values(), key=lambda pr: _order(pr[1]))]
    failed = any(r["status"] == "failed" for r in results)
    allowed = all(
        rep.verdict is not None and rep.verdict.allowed_missing_services for _, rep in reports
    )
    verdict = decide(
        1 if failed else 0,
        results,
        selected=len(results) + len(not_tested),
        allow_missing=allowed,
        preflight_missing=not_tested,
        empty_selection="no results in " + ", ".join(str(p) for p in paths),
    )
    per_adapter: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        per_adapter[f"{r['kind']}:{r['adapter']}"][r["status"]] += 1
    for (kind, name), entry in adapters.items():
        entry["summary"] = dict(per_adapter.get(f"{kind}:{name}", Counter()))
        entry["not_tested"] = verdict.not_tested.get(f"{kind}:{name}")
    first = reports[0][1]
    environment = (
        first.environment.model_dump(mode="json") if first.environment is not None else None
    )
    if environment is not None:
        environment["brokers"] = [{"name": n, "version": v} for n, v in sorted(brokers.items())]
    return {
        "schema": SCHEMA_VERSION,
        "tool": "purista-conformance",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provider": _joined(rep.provider for _, rep in reports),
        "suite": _joined(rep.suite for _, rep in reports),
        "quick": any(rep.quick for _, rep in reports),
        "duration_s": round(sum(rep.duration_s for _, rep in reports), 3),
        "summary": dict(Counter(r["status"] for r in results)),
        "verdict": verdict.as_dict(),
        "preflight": {k: v for _, rep in reports for k, v in sorted(rep.preflight.items())},
        "environment": environment,
        "adapters": sorted(adapters.values(), key=lambda a: (a["kind"], a["adapter"])),
        "results": results,
        "observations": [
            {k: r[k] for k in ("adapter", "kind", "check", "observations")}
            for r in results
            if r.get("observations")
        ],
        "merged_from": [str(p) for p in paths],
    }


def _order(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["kind"], row["adapter"], row["check"])


def _joined(values: Any) -> str:
    seen: list[str] = []
    for v in values:
        for part in str(v).split(", "):
            if part not in seen:
                seen.append(part)
    return ", ".join(seen)
