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


# the worked examples for a store and a queue bridge (SQLite, no broker): one run, both
SQLITE_EXAMPLES = {
    "state_store": "examples.sqlite_state_store:DESCRIPTOR",
    "queue_bridge": "examples.sqlite_queue_bridge:DESCRIPTOR",
}
# what would break first in a careless store or queue: fencing, atomic creates, two
# workers on one job, ordering
MUST_PASS = {
    "state_store": (
        "stores.crud",
        "stores.compare_and_set_fences",
        "stores.atomic_effects",
        "stores.set_if_absent_atomic",
        "stores.set_if_absent_ttl",
    ),
    "queue_bridge": (
        "queue_bridge.concurrent_workers",
        "queue_bridge.priorities",
        "queue_bridge.ordering.fifo_within_priority",
        "queue_bridge.lease_expiry",
        "queue_bridge.stale_lease_rejected",
        "queue_bridge.fidelity.payload",
    ),
}


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    args = ["--suite", "contract", "--quick"]
    for ref in SQLITE_EXAMPLES.values():
        args += ["--adapter", ref]
    return run_conformance(args, tmp_path_factory.mktemp("sqlite-examples"))


def test_sqlite_examples_pass_the_contract(sqlite_run: tuple[int, dict]) -> None:
    code, report = sqlite_run
    failed = [
        (r["kind"], r["check"], r["message"][:300])
        for r in report["results"]
        if r["status"] == "failed"
    ]
    assert code == 0 and not failed, f"exit {code}; failed: {failed}"


@pytest.mark.parametrize("kind", sorted(SQLITE_EXAMPLES))
def test_sqlite_example_ran_every_check_of_its_kind(
    sqlite_run: tuple[int, dict], kind: str
) -> None:
    _, report = sqlite_run
    rows = {r["check"]: r for r in report["results"] if r["kind"] == kind}
    assert {r["adapter"] for r in rows.values()} == {"sqlite"}
    for check_id in MUST_PASS[kind]:
        assert rows[check_id]["status"] == "passed", rows.get(check_id)
    skipped = sorted(c for c, r in rows.items() if r["status"] == "skipped")
    # the restart checks need a broker to restart; nothing else may be skipped
    assert all(c.endswith("durable_restart") for c in skipped), skipped
    assert sum(r["status"] == "passed" for r in rows.values()) >= 12, sorted(rows)
