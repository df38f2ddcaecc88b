"""The suite catches broken adapters: each one fails the check named in EXPECTED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from broken_adapters import EXPECTED  # noqa: E402


def run_conformance(args: list[str], report_dir: Path, timeout: float = 900) -> tuple[int, dict]:
    """Run ``python -m conformance run ...`` and return (exit code, report.json)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(HERE), str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "conformance", "run", *args, "--report-dir", str(report_dir)],
        env=env,
        cwd=HERE.parent.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = report_dir / "report.json"
    if not report.exists():
        pytest.fail(f"no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr}")
    return proc.returncode, json.loads(report.read_text())


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    # each broken adapter against its own check only (-k matches substrings, so a few
    # neighbours run too): the whole selection for every adapter took ten times as long
    pairs = " or ".join(f"({check} and {name})" for name, check in sorted(EXPECTED.items()))
    args = ["--suite", "contract", "-n", "2", "-k", pairs]
    for name in EXPECTED:
        args += ["--adapter", f"{name}=broken_adapters:{name}"]
    return run_conformance(args, tmp_path_factory.mktemp("broken"))


def test_run_exits_1(broken_run: tuple[int, dict]) -> None:
    code, report = broken_run
    assert code == 1, f"exit code {code} with summary {report['summary']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_adapter_fails_named_check(broken_run: tuple[int, dict], name: str) -> None:
    _, report = broken_run
    check_id = EXPECTED[name]
    rows = {r["check"]: r for r in report["results"] if r["adapter"] == name}
    assert check_id in rows, f"{check_id} did not run for {name}: {sorted(rows)}"
    row = rows[check_id]
    assert row["status"] == "failed", f"{name}: {check_id} was {row['status']}: {row['message']}"
    assert row["message"], "a failure must say what went wrong"
