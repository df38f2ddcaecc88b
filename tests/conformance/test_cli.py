"""The conformance command line: exit codes, reports, listing, empty suites."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from conformance_cli import conformance_cli

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return conformance_cli(*args, timeout=timeout)


def test_memory_run_writes_three_reports(tmp_path: Path) -> None:
    proc = cli(
        "run",
        "--adapter",
        "memory",
        "--suite",
        "contract",
        "--quick",
        "-k",
        "commands or stores.crud",
        "--report-dir",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "conformance matrix" in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == 2
    assert isinstance(report["duration_s"], float) and report["provider"]
    kinds = {r["kind"] for r in report["results"]}
    assert kinds == {"event_bridge", "state_store", "config_store", "secret_store"}
    for row in report["results"]:
        assert set(row) >= {
            "adapter",
            "kind",
            "check",
            "suite",
            "status",
            "duration_s",
            "message",
            "metrics",
        }
        assert row["adapter"] == "memory" and row["suite"] == "contract"
        assert row["status"] == "passed", row
    ids = {r["check"] for r in report["results"]}
    assert "event_bridge.commands.timeout" in ids and "stores.crud" in ids
    assert any(a["capabilities"] for a in report["adapters"])
    html = (tmp_path / "report.html").read_text()
    assert "event_bridge.commands.round_trip" in html and "<table>" in html
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.get("name") == "conformance"
    cases = {(c.get("classname"), c.get("name")) for c in root.iter("testcase")}
    assert ("event_bridge:memory", "event_bridge.commands.timeout") in cases
    assert ("state_store:memory", "stores.crud") in cases
    assert len(cases) == len(report["results"])


def test_unknown_adapter_is_a_usage_error() -> None:
    proc = cli("run", "--adapter", "no-such-adapter")
    assert proc.returncode == 2
    assert "unknown adapter" in proc.stderr


def test_bad_factory_reference_is_a_usage_error() -> None:
    proc = cli("run", "--adapter", "no_such_module_xyz:factory")
    assert proc.returncode == 2


def test_bad_option_is_a_usage_error() -> None:
    assert cli("run", "--suite", "nonsense").returncode == 2


def test_empty_selection_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli(
        "run", "--adapter", "memory", "-k", "no_such_check_anywhere", "--report-dir", str(tmp_path)
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert "matches no check: -k 'no_such_check_anywhere'" in proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["results"] == [] and report["verdict"]["exit_code"] == 2


def test_list_json_names_checks_and_adapters() -> None:
    proc = cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    ids = {c["check"] for c in data["checks"]}
    assert {
        "event_bridge.commands.round_trip",
        "queue_bridge.concurrent_workers",
        "stores.set_if_absent_atomic",
        "event_bridge.model.agrees_with_reference",
    } <= ids
    labels = {f"{a['kind']}:{a['adapter']}" for a in data["adapters"]}
    assert {
        "event_bridge:memory",
        "event_bridge:amqp",
        "queue_bridge:redis",
        "state_store:nats-kv",
    } <= labels
    assert all(c["summary"] for c in data["checks"]), "every check has a docstring"


def test_better_than_declared_is_reported(tmp_path: Path) -> None:
    proc = conformance_cli(
        "run",
        "--adapter",
        "broken_adapters:modest",
        "-k",
        "shared_exactly_once or unknown_fails_fast",
        "--quick",
        "--report-dir",
        str(tmp_path),
        paths=[ROOT / "tests" / "conformance"],
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    rows = {r["check"]: r for r in json.loads((tmp_path / "report.json").read_text())["results"]}
    row = rows["event_bridge.commands.shared_exactly_once"]
    assert row["status"] == "unsupported"
    assert "better than declared" in row["message"] and "we did not test it" in row["message"]
    assert rows["event_bridge.commands.unknown_fails_fast"]["status"] == "passed"


def test_reports_go_to_reports_conformance_by_default(tmp_path: Path) -> None:
    proc = conformance_cli(
        "run", "--adapter", "event_bridge:memory", "-k", "event_bridge.commands.round_trip",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    out = tmp_path / "reports" / "conformance"
    assert {p.name for p in out.iterdir()} >= {"junit.xml", "report.json", "report.html"}
    assert json.loads((out / "report.json").read_text())["verdict"]["exit_code"] == 0
