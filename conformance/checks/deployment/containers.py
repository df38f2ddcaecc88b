"""The deployment suite's container pattern: one example service per container.

Each service runs from the project's own image (``harness images build service``,
docker/service.Dockerfile) and reaches the brokers, themselves containers of the docker
provider, by the engine's bridge network. Containers carry the run's labels, so the
run's end, its signal handler and its reaper remove them like the brokers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from harness import run as harness_run
from harness.services.docker_engine import LABEL_SERVICE, bridge_url, docker_client, run_identity

STOP_TIMEOUT_S = 30


def service_image() -> str:
    """The project's image name (built by `harness images build service`)."""
    from harness.images import SERVICE_IMAGE

    return SERVICE_IMAGE


def bridge_urls(urls: dict[str, str]) -> dict[str, str]:
    """The same URLs as containers on the bridge reach them (ValueError: not containers)."""
    from harness.services.docker_engine import docker_ping

    reason = docker_ping()
    if reason:
        raise ValueError(reason)
    return {var: bridge_url(url) for var, url in urls.items()}


def image_missing() -> str | None:
    """None when the service image is in the engine and built from this source, else why
    not (a stale image would test old code)."""
    from harness.images import service_image_stale

    client = docker_client(10.0)
    try:
        return service_image_stale(client)
    finally:
        client.close()


def container_urls(urls: dict[str, str], no_image: Callable[[str], NoReturn]) -> dict[str, str]:
    """The brokers' URLs as containers on the bridge reach them. Skips when the brokers are
    not containers (not the docker provider); calls ``no_image(why)`` when the service image
    is missing or stale (a check marks that "not tested", a project test skips)."""
    import pytest

    try:
        service_urls = bridge_urls(urls)
    except ValueError as exc:
        pytest.skip(f"needs the brokers as containers (--provider docker): {exc}")
    missing = image_missing()
    if missing:
        no_image(missing)
    return service_urls


class ServiceContainers:
    """Like ServiceProcesses, with containers: start(label, *args) waits for READY on the
    container's stdout, stop() sends SIGTERM (docker stop) and records the exit codes."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.client = docker_client()
        self.containers: list[tuple[str, Any]] = []
        self.exit_codes: dict[str, int | None] = {}
        self._cleanups: list[int] = []
        self.health_ports: dict[str, int] = {}  # label -> the loopback port of its probes
        # the containers' span files land here (the service runs as nobody: world-writable)
        self.spans_dir = workdir / "spans"
        self.spans_dir.mkdir(exist_ok=True)
        self.spans_dir.chmod(0o777)

    async def start(
        self, label: str, *args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
    ) -> None:
        """Start one container (never pulls: the image must exist) and wait for READY.
        ``env``: variables of its own; its ``HEALTH_PORT`` is published on a free port of
        127.0.0.1, and the directory of its ``OTEL_SPANS_FILE`` is ``spans_dir``."""
        labels = {**run_identity().labels, LABEL_SERVICE: f"deploy-{label}"}
        own = dict(env or {})
        ports, volumes = {}, {}
        if own.get("HEALTH_PORT"):
            ports[f"{own['HEALTH_PORT']}/tcp"] = ("127.0.0.1", None)
        if own.get("OTEL_SPANS_FILE"):
            inside = str(Path(own["OTEL_SPANS_FILE"]).parent)
            volumes[str(self.spans_dir)] = {"bind": inside, "mode": "rw"}
        container = await asyncio.to_thread(
            self.client.containers.create,
            service_image(),
            list(args),
            environment={**self.env, **own},
            labels=labels,
            stop_signal="SIGTERM",
            ports=ports,
            volumes=volumes,
        )
        self.containers.append((label, container))
        self._cleanups.append(
            harness_run.current().on_cleanup(
                lambda c=container: c.remove(force=True), f"deploy container {label}"
            )
        )
        await asyncio.to_thread(container.start)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = await asyncio.to_thread(container.logs, stdout=True, stderr=False)
            if b"READY" in out:
                if ports:
                    await asyncio.to_thread(container.reload)
                    bound = container.attrs["NetworkSettings"].get("Ports") or {}
                    published = bound.get(next(iter(ports))) or []
                    if published:  # else no probe answers: the health item fails
                        self.health_ports[label] = int(published[0]["HostPort"])
                return
            await asyncio.to_thread(container.reload)
            if container.status not in ("created", "running"):
                break
            await asyncio.sleep(0.1)
        self._save_logs(label, container)
        raise AssertionError(
            f"{label} container did not report READY within {timeout_s}s "
            f"(status {container.status}); see {self.workdir / label}.log"
        )

    def _save_logs(self, label: str, container: Any) -> None:
        with contextlib.suppress(Exception):
            (self.workdir / f"{label}.log").write_bytes(container.logs())

    def spans_file(self, label: str, env: dict[str, str]) -> Path | None:
        """Where the container ``label`` exported its spans, seen from here (None: none)."""
        path = env.get("OTEL_SPANS_FILE")
        return self.spans_dir / Path(path).name if path else None

    leak_places = "the environment, labels or logs"

    async def secret_leaks(self, secret: str) -> dict[str, bool]:
        """label -> whether ``secret`` shows in that container from outside: its
        environment and labels (``docker inspect``: Config.Env, Config.Labels) or its logs."""

        def leaked(container: Any) -> bool:
            container.reload()
            config = container.attrs.get("Config") or {}
            shown = [*(config.get("Env") or []), *(config.get("Labels") or {}).values()]
            return any(secret in v for v in shown) or secret.encode() in container.logs()

        return {
            label: await asyncio.to_thread(leaked, container)
            for label, container in self.containers
        }

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every container (SIGKILL after timeout_s), record exit codes, remove."""

        async def one(label: str, container: Any) -> None:
            try:
                await asyncio.to_thread(container.stop, timeout=int(timeout_s))
                result = await asyncio.to_thread(container.wait, timeout=timeout_s + 10)
                self.exit_codes[label] = int(result.get("StatusCode", -1))
            except Exception:
                self.exit_codes[label] = None
            self._save_logs(label, container)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(container.remove, force=True)

        await asyncio.gather(*(one(label, c) for label, c in self.containers))
        for token in self._cleanups:
            harness_run.current().cancel_cleanup(token)
        self.client.close()
