"""`harness doctor --json` reports all five services ok on this machine."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.services import SERVICE_NAMES, ServiceSet


def test_doctor_json_reports_all_five_ok(harness_services: ServiceSet) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "doctor", "--json",
         "--provider", harness_services.provider.name],
        capture_output=True, text=True, timeout=180, check=False)
    report = json.loads(proc.stdout)
    assert report["provider"] == harness_services.provider.name
    assert set(report["services"]) == set(SERVICE_NAMES)
    for name, result in report["services"].items():
        assert set(result) >= {"ok", "version", "start_s", "error"}
        assert result["ok"], f"{name}: {result['error']}"
        assert result["error"] is None and result["version"] and result["start_s"] > 0
    assert proc.returncode == 0, proc.stderr


def test_doctor_exits_1_when_a_service_is_not_ok() -> None:
    env = {"PATH": "/usr/bin:/bin", "HARNESS_PROVIDER": "external"}
    proc = subprocess.run([sys.executable, "-m", "harness", "doctor", "--json", "redis"],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert report["provider"] == "external"
    assert report["services"]["redis"]["ok"] is False
    assert "REDIS_URL" in report["services"]["redis"]["error"]
