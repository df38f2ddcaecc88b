"""docker/compose.yaml with Debian's docker-compose against the real engine: every example
service in its own container answers /readyz, and `down` leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import engine_or_skip, skip_or_fail
from harness_helpers import wait_until

from harness.images import service_image_stale
from harness.services.docker_engine import (
    LABEL_BOOT,
    LABEL_HOST,
    LABEL_PID,
    LABEL_PID_START,
    LABEL_RUN,
    run_identity,
)
from harness.services.local import free_port
from harness.services.local_recipes import http_ok

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
SERVICES = ("user", "email", "sensor", "billing")
PORT_VARS = ("AMQP", "NATS", "NATS_MONITOR", "REDIS", "MQTT", "TOXIPROXY", *map(str.upper,
                                                                               SERVICES))
LABEL_VARS = {LABEL_RUN: "RUN", LABEL_PID: "PID", LABEL_PID_START: "PID_START",
              LABEL_HOST: "HOST", LABEL_BOOT: "BOOT"}


@pytest.fixture
def compose(request: pytest.FixtureRequest) -> Iterator[tuple[list[str], dict[str, str], Any]]:
    client = engine_or_skip(request.config)
    binary = shutil.which("docker-compose")
    if binary is None:
        skip_or_fail(request.config, "docker-compose is not installed (make docker-engine)")
    stale = service_image_stale(client)
    if stale:
        skip_or_fail(request.config, stale)
    ports = {f"HARNESS_COMPOSE_{v}_PORT": str(free_port()) for v in PORT_VARS}
    labels = {f"HARNESS_LABEL_{LABEL_VARS[k]}": v for k, v in run_identity().labels.items()}
    env = {**os.environ, **ports, **labels}
    cmd = [binary, "-p", f"harness{uuid.uuid4().hex[:8]}", "-f", str(COMPOSE)]
    try:
        yield cmd, env, client
    finally:
        subprocess.run([*cmd, "down", "-v", "--remove-orphans", "-t", "10"], env=env,
                       capture_output=True, timeout=120, check=False)
        client.close()


def test_compose_brings_up_every_service_ready(
        compose: tuple[list[str], dict[str, str], Any]) -> None:
    cmd, env, client = compose
    up = subprocess.run([*cmd, "up", "-d"], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
    assert up.returncode == 0, up.stderr
    for name in SERVICES:
        url = f"http://127.0.0.1:{env[f'HARNESS_COMPOSE_{name.upper()}_PORT']}/readyz"
        if not wait_until(lambda url=url: http_ok(url), 90, 0.5):
            logs = subprocess.run([*cmd, "logs", "--no-color", "--tail", "40", name], env=env,
                                  capture_output=True, text=True, timeout=60, check=False)
            pytest.fail(f"{name}: {url} not ready in 90 s; its last log lines:\n{logs.stdout}")
    project = cmd[2]
    mine = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    declared = subprocess.run([*cmd, "config", "--services"], env=env, capture_output=True,
                              text=True, timeout=60, check=True).stdout.split()
    assert set(SERVICES) <= set(declared)
    assert sorted(c.labels["com.docker.compose.service"] for c in mine) == sorted(declared)
    assert all(c.labels.get(LABEL_RUN) == run_identity().run_id for c in mine)
    down = subprocess.run([*cmd, "down", "-v", "-t", "10"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert not client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"})
