"""Each service starts, answers a real client round trip, stops, and leaves no process."""

from __future__ import annotations

import time

import pytest
from harness_helpers import alive, wait_until

from harness import procs
from harness.probes import probe
from harness.services import SERVICE_NAMES, ServiceSet


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_start_round_trip_stop_leaves_no_process(harness_services: ServiceSet, name: str) -> None:
    if not harness_services.provider.supports_lifecycle_faults:
        pytest.skip("external provider: nothing to start or stop")
    started = time.monotonic()
    handle = harness_services.provider.start(name)
    elapsed = time.monotonic() - started
    try:
        assert handle.is_running()
        assert handle.url.startswith(handle.spec.scheme + "://")
        assert handle.version not in ("", "unknown")
        assert probe(name, handle.url, 10.0)
        pids = handle.process_ids() if hasattr(handle, "process_ids") else set()
        assert pids or handle.provider != "local"
    finally:
        handle.stop()
    assert not handle.is_running()
    assert wait_until(lambda: not alive(pids), 10.0), f"outlived: {alive(pids)}"
    if hasattr(handle, "process_ids"):
        assert handle.process_ids() == set()
    print(f"{name} started in {elapsed:.2f} s")


def test_session_fixtures_share_one_instance(harness_redis, harness_services: ServiceSet) -> None:
    assert harness_services.get("redis") is harness_redis
    assert probe("redis", harness_redis.url)


def test_env_gives_url_variables(harness_rabbitmq) -> None:
    env = harness_rabbitmq.env()
    assert env["RABBITMQ_URL"] == env["AMQP_URL"] == harness_rabbitmq.url
    assert harness_rabbitmq.url == f"amqp://guest:guest@127.0.0.1:{harness_rabbitmq.port}/"


def test_namespace_is_short_unique_and_valid(namespace: str) -> None:
    assert namespace.isalnum() and namespace.islower() and namespace[0].isalpha()
    assert len(namespace) == 8


def test_local_handle_processes_are_in_their_own_group(harness_services: ServiceSet) -> None:
    if harness_services.provider.name != "local":
        pytest.skip("local provider only")
    handle = harness_services.get("nats")
    assert handle.pid is not None
    assert handle.pid in procs.pids_in_group(handle.pid)
    assert handle.log_path is not None and handle.log_path.exists()
