"""CI runs the out-of-tree example adapter through the suite: honest declarations pass."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_broken_adapters import run_conformance

# checks whose capabilities the example declares unsupported: they must say so, not fail
DECLARED_UNSUPPORTED = {
    "event_bridge.commands.shared_exactly_once",
    "event_bridge.subscriptions.shared_one_per_group",
    "event_bridge.subscriptions.durable_restart",
}


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    return run_conformance(
        ["--adapter", "examples.redis_pubsub_bridge:DESCRIPTOR", "--suite", "contract", "--quick"],
        tmp_path_factory.mktemp("example"),
    )


def test_example_passes(example_run: tuple[int, dict]) -> None:
    code, report = example_run
    failed = [
        (r["check"], r["message"][:300]) for r in report["results"] if r["status"] == "failed"
    ]
    assert code == 0 and not failed, f"exit {code}; failed: {failed}"


def test_example_report(example_run: tuple[int, dict]) -> None:
    _, report = example_run
    assert report["schema"] == 2
    rows = {r["check"]: r for r in report["results"]}
    assert {r["adapter"] for r in rows.values()} == {"redis-pubsub"}
    assert {r["kind"] for r in rows.values()} == {"event_bridge"}
    assert rows["event_bridge.commands.round_trip"]["status"] == "passed"
    for check_id in DECLARED_UNSUPPORTED:
        assert rows[check_id]["status"] == "unsupported", rows[check_id]
    caps = next(a["capabilities"] for a in report["adapters"] if a["adapter"] == "redis-pubsub")
    assert caps["durable_subscriptions"]["supported"] is False
    assert "stores nothing" in caps["durable_subscriptions"]["reason"]
    for key in ("provider", "duration_s", "results"):
        assert key in report
