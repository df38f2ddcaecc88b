"""Every exit code of ``conformance run``, from real runs of the real command.

0 only when every selected adapter was exercised; 1 a check failed; 2 a usage error
(including a selection that matches no check); 3 "not tested": a backing service
could not be provided (``--allow-missing-services`` reports it and exits 0).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conformance_cli import conformance_cli

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = conformance_cli("run", *args, timeout=timeout, paths=[HERE], env=env)
    return proc, time.monotonic() - started


def refused_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def preflight_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("preflight: ")]


def test_a_selection_matching_no_check_is_a_usage_error(tmp_path: Path) -> None:
    proc, _ = run("--adapter", "memory", "-k", "nosuchcheck", "--report-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert "the selection matches no check: -k 'nosuchcheck'" in proc.stderr
    assert "adapters memory" in proc.stderr


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_an_adapter_matching_no_check_is_a_usage_error(tmp_path: Path, workers: list[str]) -> None:
    """Another adapter's checks ran, this one's matched nothing: never exit 0."""
    proc, _ = run(
        "--suite", "contract", "--quick", "-k", "event_bridge.subscriptions.fan_out",
        "--adapter", "event_bridge:memory", "--adapter", "state_store:memory", *workers,
        "--report-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert (
        "the selection matches no check for --adapter 'state_store:memory' "
        "(-k 'event_bridge.subscriptions.fan_out' in suite 'contract')"
    ) in proc.stderr, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"]["exit_code"] == 2
    assert [r["adapter"] for r in report["results"]] == ["memory"]
    assert report["results"][0]["status"] == "passed"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_pass_names_the_adapters_k_left_without_a_check(
    tmp_path: Path, workers: list[str]
) -> None:
    """``--adapter memory`` selects the in-memory bridge, queue and stores; ``-k`` keeping
    only an event bridge check passes, but never as "every selected adapter was tested":
    the others are named as not tested, on the terminal and in report.json."""
    proc, _ = run(
        "--suite", "contract", "--quick", "-k", "event_bridge.subscriptions.fan_out",
        "--adapter", "memory", *workers, "--report-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    left = "config_store:memory, queue_bridge:memory, secret_store:memory, state_store:memory"
    want = f"not tested: -k 'event_bridge.subscriptions.fan_out' keeps no check of {left}"
    assert want in proc.stderr, proc.stderr
    assert "every selected adapter was tested" not in proc.stdout + proc.stderr
    verdict = json.loads((tmp_path / "report.json").read_text())["verdict"]
    assert want in verdict["reason"]
    assert [r["adapter"] for r in json.loads((tmp_path / "report.json").read_text())["results"]
            ] == ["memory"]


def test_an_unknown_provider_is_a_usage_error_without_pytest_noise() -> None:
    proc, _ = run("--provider", "nope")
    assert proc.returncode == 2
    assert "invalid choice: 'nope'" in proc.stderr
    assert "pytest.ini" not in proc.stdout + proc.stderr


def test_an_unknown_harness_provider_variable_is_a_usage_error() -> None:
    proc, _ = run("--adapter", "memory", env={"HARNESS_PROVIDER": "nope"})
    assert proc.returncode == 2
    assert "HARNESS_PROVIDER='nope' is not one of auto, local, docker, external" in proc.stderr


def test_a_bad_keyword_expression_is_a_usage_error() -> None:
    proc, _ = run("--adapter", "memory", "-k", "(unbalanced")
    assert proc.returncode == 2
    assert "-k '(unbalanced' is not a valid expression" in proc.stderr


def test_refused_brokers_end_the_run_fast_with_one_line_per_service(tmp_path: Path) -> None:
    nats_port, amqp_port = refused_port(), refused_port()
    proc, took = run(
        "--provider", "external", "--suite", "contract",
        "--adapter", "event_bridge:nats", "--adapter", "amqp",
        "--report-dir", str(tmp_path),
        env={"NATS_URL": f"nats://127.0.0.1:{nats_port}",
             "AMQP_URL": f"amqp://127.0.0.1:{amqp_port}/"},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr
    # before the preflight: 51 failures in 3 min 20 s; now no check runs (start-up and
    # collection only: about 4 s here, up to 15 s with CI's two halves side by side)
    assert took < 30, f"took {took:.1f}s"
    assert sorted(preflight_lines(proc.stdout)) == [
        f"preflight: nats: connection refused at 127.0.0.1:{nats_port}",
        f"preflight: rabbitmq: connection refused at 127.0.0.1:{amqp_port}",
    ]
    assert " passed" not in proc.stdout.splitlines()[-1]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"]["exit_code"] == 3
    assert {n["adapter"] for n in report["verdict"]["not_tested"]} == {"nats", "amqp"}
    assert report["results"] == []


def test_allow_missing_services_exits_0_and_reports_the_adapter_not_tested(
    tmp_path: Path,
) -> None:
    port = refused_port()
    proc, _took = run(
        "--provider", "external", "--suite", "contract", "--quick",
        "--adapter", "event_bridge:nats", "--adapter", "event_bridge:memory",
        "--allow-missing-services", "--report-dir", str(tmp_path),
        env={"NATS_URL": f"nats://127.0.0.1:{port}"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert preflight_lines(proc.stdout) == [
        f"preflight: nats: connection refused at 127.0.0.1:{port}"
    ]
    assert f"not tested: event_bridge:nats: nats: connection refused at 127.0.0.1:{port}" in (
        proc.stderr
    )
    report = json.loads((tmp_path / "report.json").read_text())
    verdict = report["verdict"]
    assert verdict["exit_code"] == 0 and verdict["allowed_missing_services"] is True
    assert [(n["kind"], n["adapter"]) for n in verdict["not_tested"]] == [("event_bridge", "nats")]
    adapters = {(a["kind"], a["adapter"]): a for a in report["adapters"]}
    assert adapters[("event_bridge", "nats")]["not_tested"].startswith("nats: connection refused")
    assert adapters[("event_bridge", "memory")]["not_tested"] is None
    nats_rows = [r for r in report["results"] if r["adapter"] == "nats"]
    assert nats_rows and all(r["status"] == "skipped" for r in nats_rows)
    assert all(r["skip"] == "not_tested" for r in nats_rows)
    assert any(r["status"] == "passed" for r in report["results"] if r["adapter"] == "memory")
    html = (tmp_path / "report.html").read_text()
    assert '<h2 class="not-tested">Not tested</h2>' in html
    assert 'class="c not-tested"' in html
    assert re.search(r'<tr class="not-tested"><td>event_bridge:nats</td>', html)


def test_a_provider_that_cannot_start_brokers_is_not_tested(tmp_path: Path) -> None:
    """The docker provider against an engine that does not answer: exit 3, never 0."""
    proc, _took = run(
        "--provider", "docker", "--suite", "contract", "--adapter", "event_bridge:nats",
        "--report-dir", str(tmp_path),
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr
    assert [line.split(":")[1] for line in preflight_lines(proc.stdout)] == [" nats"]
    assert "not tested: event_bridge:nats" in proc.stderr


def test_a_failing_adapter_exits_1(tmp_path: Path) -> None:
    proc, _ = run(
        "--suite", "contract", "-k", "event_bridge.subscriptions.fan_out",
        "--adapter", "drops=broken_adapters:drops", "--report-dir", str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr
    assert "conformance: failed (exit 1)" in proc.stderr


def test_refused_broker_with_parallel_workers_is_not_tested(tmp_path: Path) -> None:
    """Under pytest-xdist the workers probe, skip as not tested, and the controller decides."""
    port = refused_port()
    proc, _took = run(
        "--provider", "external", "--suite", "contract", "--adapter", "event_bridge:nats",
        "-n", "2", "--report-dir", str(tmp_path),
        env={"NATS_URL": f"nats://127.0.0.1:{port}"},
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr
    assert f"not tested: event_bridge:nats: nats: connection refused at 127.0.0.1:{port}" in (
        proc.stderr
    )
    rows = json.loads((tmp_path / "report.json").read_text())["results"]
    assert rows and all(r["skip"] == "not_tested" for r in rows)
