"""The docker provider against a real Docker engine (`make docker-engine`), no fakes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import containers_of, engine_or_skip, recording_proxy
from harness_helpers import wait_until

from harness import run
from harness.errors import ServiceStartError, ServiceUnavailable
from harness.probes import probe
from harness.services import docker as docker_mod
from harness.services import ready_probes
from harness.services.base import tcp_open
from harness.services.docker import DockerHandle, DockerProvider
from harness.services.docker_engine import LABEL_INSTANCE, LABEL_PID, LABEL_RUN, run_identity
from harness.services.select import select_provider
from harness.services.spec import SERVICE_NAMES, SPECS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Iterator[Any]:
    client = engine_or_skip(request.config)
    yield client
    client.close()


@pytest.fixture
def provider(engine: Any) -> DockerProvider:
    return DockerProvider(reason="test")


def _inspect(engine: Any, handle: DockerHandle) -> dict[str, Any]:
    return engine.api.inspect_container(handle.container.get_wrapped_container().id)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_each_service_answers_on_loopback_and_is_removed_on_stop(
        engine: Any, provider: DockerProvider, name: str) -> None:
    started = time.monotonic()
    handle = provider.start(name)
    start_s = time.monotonic() - started
    try:
        info = _inspect(engine, handle)
        assert info["Config"]["Image"] == SPECS[name].image
        labels = info["Config"]["Labels"]
        assert labels[LABEL_RUN] == run_identity().run_id
        assert labels[LABEL_PID] == str(os.getpid())
        if name == "toxiproxy":
            assert info["HostConfig"]["NetworkMode"] == "host"
        else:
            bindings = info["HostConfig"]["PortBindings"]
            published = [b for binds in bindings.values() for b in binds]
            assert published and all(b["HostIp"] == "127.0.0.1" for b in published), bindings
            assert {"HostIp": "127.0.0.1", "HostPort": str(handle.port)} in published
        reported = probe(name, handle.url, 10.0)
        # toxiproxy-server built by `go install` reports "git"; its image tag was checked
        # against the binary's module version when the image was built
        assert reported == handle.version or (name == "toxiproxy" and reported)
        print(f"{name}: started and ready in {start_s:.2f} s")
    finally:
        handle.stop()
    assert not [c for c in containers_of(engine, run=run_identity().run_id)
                if c.labels.get(LABEL_INSTANCE) == handle.instance]


def test_rabbitmq_is_not_ready_after_kill_until_amqp_answers(
        provider: DockerProvider) -> None:
    handle = provider.start("rabbitmq")
    try:
        wrapped = handle.container.get_wrapped_container()
        before = handle.started_at()
        wrapped.kill()
        wrapped.start()
        restarted = time.monotonic()
        # docker-proxy accepts on the published port while RabbitMQ boots inside
        assert tcp_open(handle.host, handle.port)
        assert not ready_probes.amqp_open(handle.host, handle.port)
        assert not handle.ready()
        handle.wait_ready(after=before)
        ready_s = time.monotonic() - restarted
        # ready means a real client gets through at once, no retries
        assert probe("rabbitmq", handle.url, 5.0) == "3.10.8"
        print(f"rabbitmq kill+restart to AMQP-ready: {ready_s:.2f} s")
        assert ready_s > 0.5  # it did wait for the boot, not for the port
    finally:
        handle.stop()


def test_paused_and_killed_containers_are_not_ready(provider: DockerProvider) -> None:
    handle = provider.start("redis")
    try:
        handle.pause()
        assert tcp_open(handle.host, handle.port)
        assert not handle.ready()
        handle.resume()
        assert wait_until(handle.ready, 10)
        handle.kill()
        assert not handle.ready()
        handle.start()
        assert handle.ready()
        handle.restart(kill=False)
        assert handle.ready() and probe("redis", handle.url, 5.0) == "7.0.15"
    finally:
        handle.stop()


def test_missing_image_is_refused_without_a_pull(
        engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(SPECS["nats"], image="purista-harness/nats:0.0.0-missing")
    monkeypatch.setitem(SPECS, "nats", missing)
    monkeypatch.delenv(docker_mod.PULL_ENV, raising=False)
    with recording_proxy(tmp_path) as proxy:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.path}")
        with pytest.raises(ServiceUnavailable) as err:
            DockerProvider().start("nats")
        message = str(err.value)
        assert "purista-harness/nats:0.0.0-missing" in message
        assert "harness images build" in message and "\n" not in message
        assert any(r.startswith("GET") and "/images/" in r for r in proxy.requests), \
            proxy.requests
        assert not [r for r in proxy.requests if "/images/create" in r], proxy.requests
        assert not [r for r in proxy.requests if "/containers/create" in r], proxy.requests
    assert not engine.containers.list(all=True, filters={"ancestor": missing.image})


def test_a_failed_start_leaves_no_container(
        engine: Any, provider: DockerProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    monkeypatch.setattr(docker_mod, "free_port", lambda: taken)
    before = {c.id for c in containers_of(engine, pid=os.getpid())}
    tmp = Path(tempfile.gettempdir())
    logs_before = set(tmp.glob("harness-redis-*.log"))
    try:
        with pytest.raises(Exception, match=r"address already in use|port is already"):
            provider.start("redis")
    finally:
        holder.close()
    left = [c for c in containers_of(engine, pid=os.getpid()) if c.id not in before]
    assert not left, [(c.name, c.status) for c in left]
    # the failed container's log goes where the run's end removes it, not loose in TMPDIR
    assert set(tmp.glob("harness-redis-*.log")) == logs_before
    assert list(run.current().temp_dir.glob("docker-logs-*/redis-*.log"))


def test_a_host_port_taken_before_the_engine_binds_it_is_picked_again(
        engine: Any, provider: DockerProvider, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    original, handed = docker_mod.free_port, []

    def first_taken() -> int:  # the race: the first pick is bound before the engine binds it
        handed.append(original() if handed else taken)
        return handed[-1]

    monkeypatch.setattr(docker_mod, "free_port", first_taken)
    caplog.set_level("WARNING", logger="harness.services")
    try:
        handle = provider.start("redis")
        try:
            assert handle.port != taken and ready_probes.redis_pong(handle.port)
        finally:
            handle.stop()
    finally:
        holder.close()
    notes = [r.getMessage() for r in caplog.records if "freshly picked" in r.getMessage()]
    assert len(notes) == 1 and f"host port {taken}" in notes[0], notes


def test_an_engine_briefly_not_knowing_a_started_container_does_not_fail_its_start(
        engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CI saw one of twelve containers, started by two workers at once, answer "No such
    # container" on inspect while it ran on: its service was reported not provided
    with recording_proxy(tmp_path) as proxy:
        proxy.not_found = 3
        monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.path}")
        handle = DockerProvider().start("redis")
        try:
            assert len(proxy.refused) == 3, proxy.refused
            assert set(proxy.refused) == {handle.container.get_wrapped_container().id}
            assert probe("redis", handle.url, 5.0) == "7.0.15"
        finally:
            handle.stop()


def test_a_container_removed_behind_the_handle_fails_its_wait_naming_it(
        engine: Any, provider: DockerProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = provider.start("redis")
    wrapped = handle.container.get_wrapped_container()
    before = handle.started_at()
    engine.api.remove_container(wrapped.id, force=True)
    monkeypatch.setattr(docker_mod, "VANISHED_AFTER_S", 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ServiceStartError) as err:
            handle.wait_ready(timeout=30, after=before)
    finally:
        handle.stop()
    waited = time.monotonic() - started
    assert f"container {wrapped.short_id} is no longer in the engine" in str(err.value)
    assert err.value.service == "redis"
    assert 1.0 <= waited < 10.0, waited  # the grace, not the 30 s start timeout
    assert not handle.ready()


def test_auto_selection_needs_engine_and_images(
        engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_PROVIDER", raising=False)
    monkeypatch.delenv(docker_mod.PULL_ENV, raising=False)
    chosen = select_provider()
    assert chosen.name == "docker" and "images present" in chosen.reason
    missing = dataclasses.replace(SPECS["redis"], image="purista-harness/redis:0.0.0-missing")
    monkeypatch.setitem(SPECS, "redis", missing)
    chosen = select_provider()
    assert chosen.name == "local", chosen.reason
    assert "purista-harness/redis:0.0.0-missing" in chosen.reason
    assert "harness images build" in chosen.reason
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    chosen = select_provider()
    assert chosen.name == "local" and "no Docker engine answers" in chosen.reason


def test_doctor_selects_docker_by_itself_and_every_service_is_ok(engine: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_PROVIDER"}
    proc = subprocess.run([sys.executable, "-m", "harness", "doctor", "--json"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(proc.stdout)
    assert report["provider"] == "docker", report["reason"]
    assert all(s["ok"] for s in report["services"].values()), report["services"]
    assert proc.returncode == 0
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"
    proc = subprocess.run([sys.executable, "-m", "harness", "doctor", "--json", "redis"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stdout)
    assert report["provider"] == "local" and "no Docker engine answers" in report["reason"]


OWNER = textwrap.dedent("""
    import sys, time
    from harness.services.docker import DockerProvider
    handle = DockerProvider().start(sys.argv[1])
    print(handle.container_name, flush=True)
    time.sleep(600)
""")


def test_containers_of_a_killed_run_do_not_survive_the_next_runs_start(
        engine: Any, provider: DockerProvider) -> None:
    victim = subprocess.Popen([sys.executable, "-c", OWNER, "redis"], stdout=subprocess.PIPE,
                              text=True)
    mine = provider.start("nats")  # a live run's container: must survive the reaping
    try:
        assert victim.stdout is not None
        name = victim.stdout.readline().strip()
        assert name, "the first run did not start its container"
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert [c.name for c in containers_of(engine, pid=victim.pid)] == [name]
        nxt = subprocess.run([sys.executable, "-c", "from harness.services.docker import "
                              "DockerProvider; DockerProvider().start('toxiproxy')"],
                             capture_output=True, text=True, timeout=120, check=False)
        assert nxt.returncode == 0, nxt.stderr
        assert containers_of(engine, pid=victim.pid) == []
        assert mine.ready(), "a live run's container was reaped"
    finally:
        mine.stop()
        if victim.poll() is None:
            victim.kill()


RUN = textwrap.dedent("""
    def test_uses_brokers(harness_redis, fresh_service):
        fresh_service("nats")
        assert harness_redis.is_running()
        assert {outcome}
""")


@pytest.mark.parametrize("outcome", ["True", "False"])
def test_no_container_remains_after_a_passing_or_failing_run(
        engine: Any, tmp_path: Path, outcome: str) -> None:
    (tmp_path / "test_run.py").write_text(RUN.format(outcome=outcome))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "--provider", "docker", "--require-services",
                             str(tmp_path / "test_run.py")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == (0 if outcome == "True" else 1), out
    assert ("1 passed" if outcome == "True" else "1 failed") in out, out
    assert containers_of(engine, pid=proc.pid) == []


HOLD = textwrap.dedent("""
    import time

    def test_holds_containers(harness_redis, fresh_service):
        fresh_service("nats")
        print("HOLDING", flush=True)
        time.sleep(600)
""")


@pytest.mark.parametrize(("sig", "within"), [(signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)])
def test_a_stopped_or_killed_pytest_run_leaves_no_container(
        engine: Any, tmp_path: Path, sig: signal.Signals, within: float) -> None:
    (tmp_path / "test_hold.py").write_text(HOLD)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p",
                             "no:cacheprovider", "--provider", "docker", "--require-services",
                             str(tmp_path / "test_hold.py")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "HOLDING" in line:
                break
        assert len(containers_of(engine, pid=proc.pid)) == 2
        proc.send_signal(sig)
        code = proc.wait(30)
        gone = wait_until(lambda: not containers_of(engine, pid=proc.pid), within, 0.2)
        assert gone, [c.name for c in containers_of(engine, pid=proc.pid)]
        if sig == signal.SIGTERM:
            assert code == 143
    finally:
        if proc.poll() is None:
            proc.kill()
