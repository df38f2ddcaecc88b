"""docker/compose.yaml with Debian's docker-compose against the real engine: every example
service in its own container answers /readyz, one invoice is processed end to end (the
seed step put billing's gateway token into the secret store; the token is in no
container's environment, labels or logs), and `down` leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker_helpers import engine_or_skip, skip_or_fail
from harness_helpers import wait_until

from conformance.checks.deployment.scenario import bridge_invoker
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
from reference_services.adapters import registry
from reference_services.services.billing import INVOICE_QUEUE

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"
SERVICES = ("user", "email", "sensor", "billing")
PORT_VARS = ("AMQP", "NATS", "NATS_MONITOR", "REDIS", "MQTT", "TOXIPROXY", *map(str.upper,
                                                                               SERVICES))
LABEL_VARS = {LABEL_RUN: "RUN", LABEL_PID: "PID", LABEL_PID_START: "PID_START",
              LABEL_HOST: "HOST", LABEL_BOOT: "BOOT"}


@pytest.fixture
def compose(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[list[str], dict[str, str], Any]]:
    client = engine_or_skip(request.config)
    binary = shutil.which("docker-compose")
    if binary is None:
        skip_or_fail(request.config, "docker-compose is not installed (make docker-engine)")
    stale = service_image_stale(client)
    if stale:
        skip_or_fail(request.config, stale)
    ports = {f"HARNESS_COMPOSE_{v}_PORT": str(free_port()) for v in PORT_VARS}
    labels = {f"HARNESS_LABEL_{LABEL_VARS[k]}": v for k, v in run_identity().labels.items()}
    token_file = tmp_path / "payment_gateway_token"
    token_file.write_text(f"tok-{secrets.token_hex(12)}\n")
    token_file.chmod(0o644)  # the seed container runs as nobody
    tmp_path.chmod(0o755)
    env = {**os.environ, **ports, **labels, "HARNESS_COMPOSE_GATEWAY_TOKEN_FILE": str(token_file)}
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
    invoice = asyncio.run(_one_invoice(env))
    assert invoice.get("status") == "issued", f"the invoice was not processed: {invoice}"
    project = cmd[2]
    token = Path(env["HARNESS_COMPOSE_GATEWAY_TOKEN_FILE"]).read_text().strip()
    for container in client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project}"}):
        where = container.labels["com.docker.compose.service"]
        config = container.attrs["Config"]
        assert not any(token in v for v in config.get("Env") or []), f"token in {where}'s env"
        assert not any(token in v for v in (config.get("Labels") or {}).values()), where
        assert token.encode() not in container.logs(), f"token in {where}'s logs"
    mine = client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    declared = subprocess.run([*cmd, "config", "--services"], env=env, capture_output=True,
                              text=True, timeout=60, check=True).stdout.split()
    assert set(SERVICES) <= set(declared)
    # every declared service runs, but the one-shot seed step, which exited 0
    assert sorted(c.labels["com.docker.compose.service"] for c in mine) == sorted(
        set(declared) - {"seed"})
    seeds = client.containers.list(all=True, filters={
        "label": [f"com.docker.compose.project={project}", "com.docker.compose.service=seed"]})
    assert [(c.status, c.attrs["State"]["ExitCode"]) for c in seeds] == [("exited", 0)]
    assert all(c.labels.get(LABEL_RUN) == run_identity().run_id for c in mine)
    down = subprocess.run([*cmd, "down", "-v", "-t", "10"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert not client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"})


async def _one_invoice(env: dict[str, str], timeout_s: float = 60.0) -> dict[str, Any]:
    """Request one invoice over the stack's AMQP; its record once billing's worker issued
    it, or what stands instead (a dead letter's reason) when the deadline passes."""
    urls = {
        "AMQP_URL": f"amqp://guest:guest@127.0.0.1:{env['HARNESS_COMPOSE_AMQP_PORT']}/",
        "REDIS_URL": f"redis://127.0.0.1:{env['HARNESS_COMPOSE_REDIS_PORT']}/0",
    }
    client = registry.resolve("event_bridge", "amqp").build_from_urls(urls, "compose")
    state = registry.resolve("state_store", "redis").build_from_urls(urls, "compose")
    queue = registry.resolve("queue_bridge", "redis").build_from_urls(urls, "compose")
    invoice_id = f"compose-{uuid.uuid4().hex[:8]}"
    parts = [client, state, queue]
    for part in parts:
        await part.start()
    try:
        payload = {"invoice_id": invoice_id, "customer": "bob", "amount_cents": 100}
        status, body = await bridge_invoker(client, 30)("billing", "requestInvoice", payload, None)
        assert status == 200, f"requestInvoice answered {status}: {body}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        key = f"invoice:{invoice_id}"
        while loop.time() < deadline:
            value = (await state.get(key)).get(key)
            if isinstance(value, dict) and value.get("status") == "issued":
                return value
            await asyncio.sleep(0.2)
        dead = [d.reason for d in await queue.peek_dead_letter(INVOICE_QUEUE)
                if d.payload.get("invoice_id") == invoice_id]
        return {"status": None, "dead_letters": dead}
    finally:
        for part in reversed(parts):
            await part.destroy()
