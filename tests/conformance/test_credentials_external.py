"""The contract against brokers this test starts itself, given as URLs with passwords.

``--provider external``: the run exits 0, the checks that need to restart a broker
are skipped with "provider external cannot restart brokers" (and do not make the
run "not tested"), and the password appears in no report, log or output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from auth_brokers import brokers_with_password, new_password, urls  # noqa: E402

from harness.services.local import LocalProvider  # noqa: E402

LIFECYCLE_REASON = "provider external cannot restart brokers"


@pytest.fixture(scope="module")
def external_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    missing = [n for n in ("rabbitmq", "nats") if LocalProvider().unavailable_reason(n)]
    if missing:
        pytest.fail(f"cannot start {', '.join(missing)} for this test (make services)")
    password = new_password()
    out = tmp_path_factory.mktemp("external")
    reports = out / "reports"
    log_file = out / "run.log"
    with brokers_with_password(password) as handles:
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_URL")},
            **urls(handles, password),
            "PYTHONPATH": str(ROOT),
        }
        proc = subprocess.run(
            [
                sys.executable, "-m", "conformance", "run", "--provider", "external",
                "--suite", "contract", "--quick", "--adapter", "amqp", "--adapter", "nats",
                "--report-dir", str(reports), "--",
                f"--log-file={log_file}", "--log-file-level=DEBUG",
            ],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    yield {
        "proc": proc,
        "password": password,
        "reports": reports,
        "log_file": log_file,
        "report": json.loads((reports / "report.json").read_text()),
    }


def test_external_run_exits_0(external_run: dict[str, Any]) -> None:
    proc, report = external_run["proc"], external_run["report"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert report["provider"] == "external"
    assert report["verdict"]["status"] == "passed" and report["verdict"]["not_tested"] == []
    assert {a["adapter"] for a in report["adapters"]} == {"amqp", "nats"}
    assert report["summary"].get("failed", 0) == 0 and report["summary"]["passed"] > 50


def test_lifecycle_checks_are_skipped_with_their_reason(external_run: dict[str, Any]) -> None:
    rows = [r for r in external_run["report"]["results"] if r["status"] == "skipped"]
    reconnect = {r["adapter"]: r for r in rows if r["check"] == "event_bridge.lifecycle.reconnect"}
    assert set(reconnect) == {"amqp", "nats"}, rows
    for row in reconnect.values():
        assert row["message"] == LIFECYCLE_REASON
        assert row["skip"] == "no_lifecycle"
    # no skip counts as "not tested"; the only other skips are checks that do not apply to
    # the adapter at all, each with its reason (AMQP names are not snake-cased)
    assert all(r["skip"] in ("no_lifecycle", "skipped") and r["message"] for r in rows), rows
    assert not [r for r in rows if r["skip"] == "skipped" and "lifecycle" in r["check"]], rows


def test_the_password_appears_nowhere(external_run: dict[str, Any]) -> None:
    password = external_run["password"]
    texts = {
        "stdout": external_run["proc"].stdout,
        "stderr": external_run["proc"].stderr,
        external_run["log_file"].name: external_run["log_file"].read_text(errors="replace"),
    }
    for path in sorted(external_run["reports"].rglob("*")):
        if path.is_file():
            texts[path.name] = path.read_text(errors="replace")
    assert {"junit.xml", "report.json", "report.html", "run.log"} <= set(texts)
    assert len(texts["run.log"]) > 10_000, "the debug log should have captured the run"
    hits = {name: text.count(password) for name, text in texts.items() if password in text}
    assert hits == {}, f"password found in {hits}"
    assert ":***@127.0.0.1" in texts["run.log"] + texts["stdout"] + texts["junit.xml"]
