"""The faults suite catches broken adapters: retries switched off, backoff ignored, no
idempotency helper. Each case runs ``conformance run --suite faults`` for real (brokers from
the harness) and reads the JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROKEN = "tests.faults.broken_adapters"

pytestmark = pytest.mark.slow


def run_faults(
    report_dir: Path, adapter: str, keyword: str, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run the faults suite on one adapter and return the result rows."""
    cmd = [
        sys.executable,
        "-m",
        "conformance",
        "run",
        "--suite",
        "faults",
        "--adapter",
        adapter,
        "-k",
        keyword,
        "--report-dir",
        str(report_dir),
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
        capture_output=True,
        text=True,
        check=False,
    )
    report = report_dir / "report.json"
    assert report.exists(), f"no report; exit {proc.returncode}\n{proc.stdout[-3000:]}"
    rows = json.loads(report.read_text())["results"]
    assert rows, f"no result rows\n{proc.stdout[-3000:]}"
    return rows


def only(rows: list[dict[str, Any]], check: str) -> dict[str, Any]:
    """The single row of ``check``."""
    found = [r for r in rows if r["check"] == check]
    assert len(found) == 1, [(r["check"], r["status"]) for r in rows]
    return found[0]


def test_event_bridge_with_retries_switched_off_is_caught(tmp_path: Path) -> None:
    """A bridge that dead-letters on the first failure fails the retry check: transient
    messages get 1 attempt instead of 3 and end up dead-lettered."""
    rows = run_faults(tmp_path, f"noretry={BROKEN}:nats_without_retries", "event_backoff")
    row = only(rows, "faults.retries.event_backoff_dead_letter")
    assert row["suite"] == "faults"
    assert row["status"] == "failed", row
    assert "attempt(s), expected 3" in row["message"], row["message"]
    assert "dead letters" in row["message"], row["message"]


def test_queue_bridge_ignoring_backoff_is_caught(tmp_path: Path) -> None:
    """A queue bridge whose nack retries at once breaks the policy's delay bounds."""
    rows = run_faults(tmp_path, f"nodelay={BROKEN}:redis_queue_ignoring_delays", "queue_backoff")
    row = only(rows, "faults.retries.queue_backoff_dead_letter")
    assert row["status"] == "failed", row
    assert "ms not in [" in row["message"], row["message"]


def test_service_without_idempotency_helper_is_caught(tmp_path: Path) -> None:
    """SIGKILL after the side effect, before the ack: without the idempotency helper the
    redelivered job repeats the effect, and the check reports the duplicate effect."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    rows = run_faults(
        tmp_path,
        "queue_bridge:redis",
        "sigkill_redelivery",
        env={"CF_FAULTS_IDEMPOTENT": "0", "TMPDIR": str(tmpdir)},
    )
    row = only(rows, "faults.service.sigkill_redelivery")
    assert row["status"] == "failed", row
    assert row["metrics"]["effects_duplicated"] >= 1, row["metrics"]
    assert "side effect(s) happened more than once" in row["message"], row["message"]
    # the failing check's service logs are kept under the report dir, and named
    kept = [Path(k) for k in row.get("kept", [])]
    assert kept and all(k.is_relative_to((tmp_path / "kept").resolve()) for k in kept), row
    assert any((k / "svc0.jsonl").is_file() for k in kept), [list(k.iterdir()) for k in kept]
    assert f"(logs: {kept[0]})" in row["message"], row["message"]
    assert not list(tmpdir.iterdir()), f"left in TMPDIR: {list(tmpdir.iterdir())}"


def test_same_checks_pass_on_the_real_adapters(tmp_path: Path) -> None:
    """Control: the unbroken adapters pass the very checks used above."""
    rows = run_faults(tmp_path, "event_bridge:nats", "event_backoff")
    assert only(rows, "faults.retries.event_backoff_dead_letter")["status"] == "passed"
    rows = run_faults(tmp_path / "q", "queue_bridge:redis", "queue_backoff or sigkill_redelivery")
    for check in ("faults.retries.queue_backoff_dead_letter", "faults.service.sigkill_redelivery"):
        row = only(rows, check)
        assert row["status"] == "passed", f"{check}: {row['message']}"


@pytest.mark.parametrize("store", ["redis", "nats-kv"])
def test_effect_outside_the_atomic_commit_is_caught(tmp_path: Path, store: str) -> None:
    """The owner SIGKILLed between effect and done record: with the atomic commit every
    counter is 1; with the write made inside the effect (external, at least once) the
    check sees the counters at 2."""
    rows = run_faults(tmp_path / "ok", f"state_store:{store}", "sigkill_inside_effect_window")
    row = only(rows, "faults.service.sigkill_inside_effect_window")
    assert row["status"] == "passed", row["message"]
    assert set(row["metrics"]["committed"].values()) == {1}, row["metrics"]
    assert row["metrics"]["effect_attempts"] == 2 * row["metrics"]["keys"], row["metrics"]
    rows = run_faults(
        tmp_path / "broken",
        f"state_store:{store}",
        "sigkill_inside_effect_window",
        env={"CF_EFFECT_MODE": "external"},
    )
    row = only(rows, "faults.service.sigkill_inside_effect_window")
    assert row["status"] == "failed", row
    assert "effects committed other than once" in row["message"], row["message"]
