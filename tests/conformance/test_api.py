"""conformance.run(): the suite from Python, in this process, returning the Report model."""

from __future__ import annotations

from pathlib import Path

import pytest

import conformance
from conformance.report.model import Report

HERE = Path(__file__).resolve().parent


def test_run_returns_the_report_of_the_selection(tmp_path: Path) -> None:
    report = conformance.run(
        adapters=["memory"], quick=True, keyword="commands or stores.crud", report_dir=tmp_path
    )
    assert isinstance(report, Report)
    assert report.exit_code == 0, [f"{r.check}: {r.message}" for r in report.failed()]
    assert {r.kind for r in report.results} == {
        "event_bridge",
        "state_store",
        "config_store",
        "secret_store",
    }
    timeout = report.result("event_bridge.commands.timeout", "memory")
    assert timeout is not None and timeout.status == "passed"
    assert report.environment is not None and report.environment.tool_version
    # the same document as the report.json it wrote
    assert Report.load(tmp_path / "report.json").results == report.results


def test_a_failing_adapter_gives_exit_1_and_names_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    report = conformance.run(
        adapters=["ignores_ttl=broken_adapters:ignores_ttl", "memory"],
        keyword="event_bridge.commands.timeout",
    )
    assert report.exit_code == 1
    # -k selects both ttl checks (timeout and timeout_range): both must catch it
    assert sorted((r.adapter, r.check) for r in report.failed()) == [
        ("ignores_ttl", "event_bridge.commands.timeout"),
        ("ignores_ttl", "event_bridge.commands.timeout_range"),
    ]
    for check_id in ("event_bridge.commands.timeout", "event_bridge.commands.timeout_range"):
        memory = report.result(check_id, "memory")
        assert memory is not None and memory.status == "passed", check_id


def test_a_usage_error_raises_naming_it() -> None:
    with pytest.raises(conformance.RunError, match="kafka"):
        conformance.run(adapters=["kafka"])
    with pytest.raises(conformance.RunError, match="-k"):
        conformance.run(adapters=["memory"], keyword="and and")
