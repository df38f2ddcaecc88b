"""The deployment suite runs every pattern and every pattern matches the monolith."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conformance_cli import conformance_cli


def test_every_pattern_gives_the_monolith_trace(tmp_path: Path) -> None:
    run = conformance_cli(
        "run", "--suite", "deployment", "--report-dir", str(tmp_path), timeout=600
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    passed = {(r["adapter"], r["check"]) for r in report["results"] if r["status"] == "passed"}
    expected = {("memory", "deployment.monolith"), ("memory", "deployment.serverless")} | {
        (bridge, f"deployment.{pattern}")
        for bridge in ("amqp", "nats", "mqtt")
        for pattern in ("microservices", "edge")
    }
    assert expected <= passed, sorted(expected - passed)
    assert all(r["suite"] == "deployment" for r in report["results"])
    # the run's gateway token (tok-<24 hex>, made per run, in the secret store only) shows
    # in none of its reports or its output
    shown = run.stdout + run.stderr + "".join(
        p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
    )
    assert not re.search(r"tok-[0-9a-f]{24}", shown), "the gateway token is in the report"
