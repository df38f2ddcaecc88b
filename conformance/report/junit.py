"""junit.xml from the report: one testcase per check and adapter.

``name`` is the check id and ``classname`` the adapter (``event_bridge:memory``), so
CI pages list ``event_bridge.commands.timeout`` under the adapter it failed for;
figures (metrics) are ``metric.*`` properties. A declared-unsupported check is a
skipped testcase whose message says so; an adapter that was not tested is an error
testcase (or skipped under ``--allow-missing-services``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from typing import Any

from reference_services.runtime.redact import redact_text

NOT_TESTED_CASE = "(not tested)"


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:500]


def _testcase(suite: ET.Element, label: str, row: dict[str, Any]) -> ET.Element:
    case = ET.SubElement(
        suite,
        "testcase",
        name=row["check"],
        classname=label,
        time=f"{float(row.get('duration_s') or 0.0):.3f}",
    )
    props = ET.SubElement(case, "properties")
    base = {"check": row["check"], "kind": row["kind"], "suite": row.get("suite", "")}
    base["status"] = row["status"]
    for name, value in base.items():
        ET.SubElement(props, "property", name=name, value=str(value))
    for name, value in sorted((row.get("metrics") or {}).items()):
        ET.SubElement(props, "property", name=f"metric.{name}", value=_value(value))
    for name, value in sorted((row.get("observations") or {}).items()):
        ET.SubElement(props, "property", name=f"observed.{name}", value=_value(value))
    message = row.get("message") or ""
    if row["status"] == "failed":
        el = ET.SubElement(case, "failure", message=_first_line(message))
        el.text = message
    elif row["status"] == "unsupported":
        ET.SubElement(case, "skipped", type="unsupported", message=f"unsupported: {message}")
    elif row["status"] == "skipped":
        kind = row.get("skip") or "skipped"
        ET.SubElement(case, "skipped", type=kind, message=_first_line(message) or kind)
    return case


def render(doc: dict[str, Any]) -> str:
    """The junit.xml text of a report document (passwords in URLs masked)."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in doc.get("results", []):
        by_label[f"{row['kind']}:{row['adapter']}"].append(row)
    verdict = doc.get("verdict") or {}
    not_tested = {f"{n['kind']}:{n['adapter']}": n["reason"] for n in verdict.get("not_tested", [])}
    root = ET.Element("testsuites", name="conformance")
    totals = defaultdict(int)
    for label in sorted(set(by_label) | set(not_tested)):
        rows = sorted(by_label.get(label, []), key=lambda r: r["check"])
        suite = ET.SubElement(root, "testsuite", name=label)
        counts = defaultdict(int)
        for row in rows:
            _testcase(suite, label, row)
            counts["tests"] += 1
            if row["status"] == "failed":
                counts["failures"] += 1
            elif row["status"] != "passed":
                counts["skipped"] += 1
        if label in not_tested and not any(r.get("skip") == "not_tested" for r in rows):
            case = ET.SubElement(suite, "testcase", name=NOT_TESTED_CASE, classname=label, time="0")
            reason = f"not tested: {not_tested[label]}"
            if verdict.get("allowed_missing_services"):
                ET.SubElement(case, "skipped", type="not_tested", message=reason)
                counts["skipped"] += 1
            else:
                ET.SubElement(case, "error", type="not_tested", message=reason)
                counts["errors"] += 1
            counts["tests"] += 1
        time_s = sum(float(r.get("duration_s") or 0.0) for r in rows)
        for key in ("tests", "failures", "errors", "skipped"):
            suite.set(key, str(counts[key]))
            totals[key] += counts[key]
        suite.set("time", f"{time_s:.3f}")
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(totals[key]))
    root.set("time", f"{float(doc.get('duration_s') or 0.0):.3f}")
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return redact_text('<?xml version="1.0" encoding="utf-8"?>\n' + text + "\n")
