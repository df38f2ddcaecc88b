"""The pytest plugin: skip or fail when services are missing, markers, --keep-services."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TEST_FILE = '''
import pytest

def test_needs_redis(harness_redis):
    assert harness_redis.url

@pytest.mark.requires_services("nats")
def test_marked():
    pass

def test_plain(namespace, history):
    assert namespace and len(history) == 0
'''


def _run(tmp_path: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(TEST_FILE)
    env = {k: v for k, v in os.environ.items()
           if not k.endswith("_URL") and k not in ("HARNESS_PROVIDER", "CI")}
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), str(tmp_path / "test_sample.py"), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)


def test_missing_services_skip_with_reason(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--provider", "external", "-rs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 2 skipped" in proc.stdout
    assert "REDIS_URL" in proc.stdout and "NATS_URL" in proc.stdout


def test_require_services_turns_skips_into_failures(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--provider", "external", "--require-services")
    assert proc.returncode == 1
    assert "1 passed, 2 errors" in proc.stdout  # a failure in setup is an error
    assert "--require-services" in proc.stdout


@pytest.mark.skipif(not os.path.exists("/usr/bin/redis-server"), reason="needs redis-server")
def test_keep_services_leaves_them_running_and_prints_urls(tmp_path: Path) -> None:
    (tmp_path / "test_keep.py").write_text(
        "def test_it(harness_redis):\n    assert harness_redis.url\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), str(tmp_path / "test_keep.py"), "--provider", "local",
         "--keep-services"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("redis: redis://"))
    url, pid = line.split()[1], int(line.split("(pid ")[1].split(",")[0])
    down = next(ln for ln in proc.stdout.splitlines() if "harness down" in ln)
    run_id = down.split()[-1]
    from harness import procs
    from harness.faults.process import terminate
    from harness.probes import probe

    try:
        assert probe("redis", url)
    finally:
        stopped = subprocess.run([sys.executable, "-m", "harness", "down", run_id],
                                 capture_output=True, text=True, timeout=60, check=False)
        if procs.is_alive(pid):
            terminate(pid)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"run {run_id}: stopped" in stopped.stdout
    assert not procs.is_alive(pid)
    assert not list(Path(tempfile.gettempdir()).glob(f"harness-run-{run_id}"))


SESSION_FILE = '''
def test_all(harness_rabbitmq, harness_nats, harness_redis, harness_mosquitto, harness_toxiproxy,
             fresh_service, proxied):
    proxy = proxied(harness_redis)
    assert proxy.port and fresh_service("redis").port != harness_redis.port
'''


def test_no_service_process_outlives_the_session(tmp_path: Path) -> None:
    import uuid

    from harness import procs

    (tmp_path / "test_session.py").write_text(SESSION_FILE)
    marker = uuid.uuid4().hex
    env = {**os.environ, "HARNESS_SESSION_MARKER": marker}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), str(tmp_path / "test_session.py"), "--require-services"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = procs.pids_with_env("HARNESS_SESSION_MARKER", marker)
    assert not left, f"outlived the session: {left}"


def test_missing_services_fail_when_ci_is_set(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--provider", "external", CI="true")
    assert proc.returncode == 1
    assert "1 passed, 2 errors" in proc.stdout
    assert "CI is set" in proc.stdout
    proc = _run(tmp_path, "--provider", "external", "--skip-missing-services", CI="true")
    assert proc.returncode == 0 and "1 passed, 2 skipped" in proc.stdout, proc.stdout


def test_prefixed_fixtures_and_deprecated_aliases(tmp_path: Path) -> None:
    (tmp_path / "test_names.py").write_text(
        "def test_new(harness_redis):\n    pass\n\n"
        "def test_old(redis):\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CI")}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # given, not probed: both resolve to it
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), str(tmp_path / "test_names.py"), "--provider", "external"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)
    assert "2 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "HarnessFixtureDeprecation" in proc.stdout
    assert "use 'harness_redis'" in proc.stdout
    assert proc.stdout.count("is deprecated") == 1  # the new name does not warn


def test_ini_settings_choose_the_provider_and_require_services(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nharness_provider = external\nharness_require_services = true\n"
        "harness_executables =\n    redis-server=/nonexistent/redis-server\n"
    )
    proc = _run(tmp_path, "-c", str(tmp_path / "pytest.ini"))
    assert proc.returncode == 1, proc.stdout
    assert "1 passed, 2 errors" in proc.stdout
    assert "REDIS_URL" in proc.stdout  # the external provider's reason: the ini chose it


def test_executables_setting_points_the_local_provider_at_a_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from harness.services.local_recipes import executable_variable, which

    monkeypatch.setenv(executable_variable("redis-server"), "/nonexistent/redis-server")
    assert which("redis-server") is None  # the setting wins over the PATH, and is checked
    monkeypatch.setenv(executable_variable("redis-server"), sys.executable)
    assert which("redis-server") == sys.executable
