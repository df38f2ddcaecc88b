"""junit.xml: one testcase per check and adapter, figures as properties, failures named."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import conformance

HERE = Path(__file__).resolve().parent


def test_a_failing_check_is_a_failed_testcase_named_by_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    report = conformance.run(
        adapters=["ignores_ttl=broken_adapters:ignores_ttl", "memory"],
        keyword="event_bridge.commands or event_bridge.subscriptions.durable_restart",
        quick=True,
        report_dir=tmp_path,
    )
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.get("name") == "conformance"
    cases = {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}
    assert len(cases) == len(report.results)
    assert {s.get("name") for s in root.iter("testsuite")} == {
        "event_bridge:ignores_ttl",
        "event_bridge:memory",
    }
    failed = {k for k, c in cases.items() if c.find("failure") is not None}
    assert failed == {(f"{r.kind}:{r.adapter}", r.check) for r in report.failed()}
    assert failed and all(label == "event_bridge:ignores_ttl" for label, _ in failed)
    case = cases[next(iter(sorted(failed)))]
    assert case.find("failure").get("message")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["status"] == "failed" and props["kind"] == "event_bridge"
    with_figures = [
        c
        for c in cases.values()
        if any(p.get("name").startswith("metric.") for p in c.iter("property"))
    ]
    assert with_figures, "no testcase carries its figures"
    assert int(root.get("failures")) == len(failed)
