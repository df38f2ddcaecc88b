"""The robustness suite catches broken adapters: each fails the check in EXPECTED_ROBUSTNESS,
for the reason named there (one run for all of them: one start of the brokers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from broken_adapters import EXPECTED_ROBUSTNESS  # noqa: E402
from test_broken_adapters import run_conformance  # noqa: E402


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    # a contract check first (the whole suite runs contract before robustness): the
    # adapters that keep the first URL they got must have got one before a check isolates
    checks = sorted({check for check, _ in EXPECTED_ROBUSTNESS.values()})
    args = ["--suite", "all", "-k", " or ".join(["event_bridge.subscriptions.fan_out", *checks])]
    for name in EXPECTED_ROBUSTNESS:
        args += ["--adapter", f"{name}=broken_adapters:{name}"]
    return run_conformance(args, tmp_path_factory.mktemp("broken-robustness"), timeout=300)


@pytest.mark.parametrize("name", sorted(EXPECTED_ROBUSTNESS))
def test_broken_adapter_fails_named_robustness_check(
    broken_run: tuple[int, dict], name: str
) -> None:
    code, report = broken_run
    assert code == 1, f"exit code {code} with summary {report['summary']}"
    check_id, says = EXPECTED_ROBUSTNESS[name]
    rows = {r["check"]: r for r in report["results"] if r["adapter"] == name}
    assert check_id in rows, f"{check_id} did not run for {name}: {sorted(rows)}"
    row = rows[check_id]
    assert row["status"] == "failed", f"{name}: {check_id} was {row['status']}: {row['message']}"
    assert says in row["message"], f"{name}: {check_id} failed for another reason: {row['message']}"
