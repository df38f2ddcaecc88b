"""Docker provider: the brokers as containers through testcontainers, from locally built images.

Images come from `harness images build` (docker/images/*, Debian 12's packages, the versions
the local provider runs); nothing is pulled unless HARNESS_DOCKER_PULL=1. Published ports bind
to 127.0.0.1 only. Readiness is a protocol answer (AMQP open, MQTT CONNACK, NATS /healthz,
Redis PONG, Toxiproxy /version) from a container started after the latest (re)start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from testcontainers.core.wait_strategies import WaitStrategy

from harness import run
from harness.errors import ServiceStartError, ServiceUnavailable
from harness.services import ready_probes
from harness.services.base import START_ATTEMPTS, Provider, ServiceHandle, port_taken
from harness.services.docker_engine import (
    KEPT_PREFIX,
    LABEL_INSTANCE,
    LABEL_SERVICE,
    docker_client,
    docker_ping,
    reap_once,
    run_identity,
)
from harness.services.local import free_port
from harness.services.spec import ServiceSpec, get_spec

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30
# how long the engine may answer "No such container" for a container it has just created
# or (re)started before the harness calls it gone (seen in CI: one of twelve containers that
# two workers started at once, 404 on inspect, while it ran on until the run's end)
VANISHED_AFTER_S = 10.0
HOST = "127.0.0.1"
PULL_ENV = "HARNESS_DOCKER_PULL"
BUILD_HINT = "build the images with `harness images build` (or `make docker-engine`)"

log = logging.getLogger("harness.services")

__all__ = ["DockerHandle", "DockerProvider", "ProtocolReady", "docker_ping", "pull_allowed"]


def pull_allowed() -> bool:
    """True when the user explicitly allows image pulls (HARNESS_DOCKER_PULL=1)."""
    return os.environ.get(PULL_ENV, "").strip().lower() in ("1", "true", "yes")


def _configure_testcontainers() -> None:
    from testcontainers.core.config import testcontainers_config as tc

    # Ryuk's image cannot be pulled here; docker_engine's labels and reaper do its job.
    tc.ryuk_disabled = True
    # /.dockerenv makes testcontainers answer the bridge gateway; ports are on loopback.
    if not tc.tc_host_override:
        tc.tc_host_override = HOST


class ProtocolReady(WaitStrategy):
    """Ready when the container runs, was (re)started after `after`, and check() is true."""

    def __init__(self, check: Callable[[], bool], after: str = "", service: str = "") -> None:
        super().__init__()
        self.check = check
        self.after = after
        self.service = service or "container"
        self._unseen_since = 0.0
        self.with_poll_interval(0.1).with_startup_timeout(int(START_TIMEOUT))

    def started_now(self, container: Any) -> bool:
        """The engine says: running, not paused, started after `after`.

        A "No such container" answer is taken for "not yet" until it has lasted
        VANISHED_AFTER_S; then ServiceStartError says the container is gone."""
        import docker.errors

        wrapped = container.get_wrapped_container()
        try:
            wrapped.reload()
        except docker.errors.NotFound:
            now = time.monotonic()
            self._unseen_since = self._unseen_since or now
            if now - self._unseen_since >= VANISHED_AFTER_S:
                raise ServiceStartError(
                    self.service, f"container {wrapped.short_id} is no longer in the engine "
                    f"(\"No such container\" for {now - self._unseen_since:.0f} s): removed "
                    "by something outside this run's handle") from None
            return False
        self._unseen_since = 0.0
        state = wrapped.attrs.get("State", {})
        return (bool(state.get("Running")) and not state.get("Paused")
                and not state.get("Restarting") and state.get("StartedAt", "") != self.after)

    def wait_until_ready(self, container: Any) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if self.started_now(container) and self.check():
                return
            time.sleep(self._poll_interval)
        raise TimeoutError(f"no protocol answer within {self._startup_timeout:.0f} s")


def _checks(name: str, url: str, port: int, monitor: int) -> Callable[[], bool]:
    if name == "rabbitmq":
        parts = urlsplit(url)
        return lambda: ready_probes.amqp_open(HOST, port, parts.username or "guest",
                                              parts.password or "guest")
    if name == "nats":
        return lambda: ready_probes.http_ok(f"http://{HOST}:{monitor}/healthz")
    if name == "redis":
        return lambda: ready_probes.redis_pong(port)
    if name == "mosquitto":
        return lambda: ready_probes.mqtt_connack(HOST, port)
    if name == "moto":
        return lambda: ready_probes.http_ok(f"http://{HOST}:{port}/moto-api/data.json")
    if name == "dapr":
        return lambda: ready_probes.http_ok(f"http://{HOST}:{port}/v1.0/healthz/outbound")
    return lambda: ready_probes.http_ok(f"http://{HOST}:{port}/version")


class DockerHandle(ServiceHandle):
    """A service in a container, its ports published on 127.0.0.1 at fixed host ports."""

    def __init__(self, spec: ServiceSpec, container: Any, port: int,
                 check: Callable[[], bool], instance: str) -> None:
        super().__init__(spec, HOST, port, spec.image.rsplit(":", 1)[-1], "docker", None)
        self.container = container
        self.check = check
        self.instance = instance
        self._stopped = False
        self._cleanup: int | None = None

    @property
    def _wrapped(self) -> Any:
        return self.container.get_wrapped_container()

    @property
    def container_name(self) -> str:
        """The engine's name of the container (for `docker logs` and the like)."""
        return str(self._wrapped.name)

    def started_at(self) -> str:
        """The engine's StartedAt of the container's latest start."""
        self._wrapped.reload()
        return str(self._wrapped.attrs.get("State", {}).get("StartedAt", ""))

    def ready(self) -> bool:
        """One look: running since its latest start and answering its protocol."""
        return (ProtocolReady(self.check, service=self.name).started_now(self.container)
                and self.check())

    def wait_ready(self, timeout: float = START_TIMEOUT, after: str = "") -> None:
        """Poll until ready (started after `after`, answering) or raise ServiceStartError."""
        strategy = ProtocolReady(self.check, after, self.name).with_startup_timeout(int(timeout))
        try:
            strategy.wait_until_ready(self.container)
        except TimeoutError as exc:
            raise ServiceStartError(self.name, str(exc), self._save_logs()) from None

    def _save_logs(self) -> str | None:
        path = _write_log(self.name, self._wrapped.logs)
        if path:
            self.log_path = Path(path)
        return path

    def restart(self, kill: bool = True) -> None:
        before = self.started_at()
        if kill:
            self._wrapped.kill()
        else:
            self._wrapped.stop(timeout=STOP_TIMEOUT)
        self._wrapped.start()
        self.wait_ready(after=before)

    def start(self) -> None:
        if self._stopped:
            raise ServiceStartError(self.name, "its container was removed by stop()")
        before = self.started_at()
        self._wrapped.start()
        self.wait_ready(after=before)

    def pause(self) -> None:
        self._wrapped.pause()

    def resume(self) -> None:
        self._wrapped.unpause()

    def kill(self) -> None:
        self._wrapped.kill()

    def stop(self) -> None:
        """Remove the container (and its anonymous volumes); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._forget_cleanup()
        with contextlib.suppress(Exception):
            self.container.stop(force=True, delete_volume=True)

    def _forget_cleanup(self) -> None:
        if self._cleanup is not None:
            run.current().cancel_cleanup(self._cleanup)
            self._cleanup = None

    def detach(self) -> None:
        """Leave the container running after this run: renamed so no reaper removes it."""
        with contextlib.suppress(Exception):
            self._wrapped.rename(f"{KEPT_PREFIX}{self.name}-{self.instance[:8]}")
        self._stopped = True
        self._forget_cleanup()

    def is_running(self) -> bool:
        with contextlib.suppress(Exception):
            return self.ready()
        return False


class DockerProvider(Provider):
    """Starts containers from the locally built images the specs name (never pulls by default)."""

    name = "docker"

    def unavailable_reason(self, service_name: str) -> str | None:
        spec = get_spec(service_name)
        reason = docker_ping()
        if reason:
            return reason
        if pull_allowed():
            return None
        client = docker_client(10.0)
        try:
            return None if _has_image(client, spec.image) else _missing(spec.image)
        finally:
            client.close()

    def start(self, service_name: str) -> DockerHandle:
        spec = get_spec(service_name)
        reason = docker_ping()
        if reason:
            raise ServiceUnavailable(service_name, f"docker provider: {reason}")
        client = docker_client()
        try:
            _ensure_image(client, spec)
            reap_once(client)
        finally:
            client.close()
        _configure_testcontainers()
        for attempt in range(1, START_ATTEMPTS + 1):
            instance = uuid.uuid4().hex
            container, port, check = _container(spec, instance)
            try:
                container.start()
                break
            except BaseException as exc:
                log_path = _failed_start_logs(container, service_name)
                _remove_instance(instance)
                taken = _port_taken(exc, log_path)
                if taken is not None and attempt < START_ATTEMPTS:
                    # another process bound a host port between free_port() and the engine
                    log.warning("%s: container start attempt %d of %d failed: a port was "
                                "taken by another process (%s; host port %d); retrying on "
                                "freshly picked ports", service_name, attempt,
                                START_ATTEMPTS, taken, port)
                    continue
                if isinstance(exc, TimeoutError):
                    raise ServiceStartError(service_name, str(exc), log_path) from None
                raise
        handle = DockerHandle(spec, container, port, check, instance)
        # the run's end or a signal removes it even when nobody calls stop()
        handle._cleanup = run.current().on_cleanup(handle.stop, f"docker {service_name}")
        return handle


def _container(spec: ServiceSpec, instance: str) -> tuple[Any, int, Callable[[], bool]]:
    """A container of the spec's image on freshly picked host ports: (container, port,
    readiness check)."""
    from testcontainers.core.container import DockerContainer

    labels = {**run_identity().labels, LABEL_SERVICE: spec.name, LABEL_INSTANCE: instance}
    container = DockerContainer(spec.image).with_kwargs(labels=labels)
    port, monitor = free_port(), 0
    if spec.name == "toxiproxy":
        # host network: its proxies listen on 127.0.0.1 and reach the brokers' published
        # ports there, as with the local provider
        container.with_kwargs(network_mode="host", labels=labels)  # replaces kwargs
        container.with_command(["-host", HOST, "-port", str(port)])
    else:
        container.ports[str(spec.container_port)] = (HOST, port)  # type: ignore[assignment]
    if spec.name == "nats":
        monitor = free_port()
        container.ports["8222"] = (HOST, monitor)  # type: ignore[assignment]
    check = _checks(spec.name, spec.url_for(HOST, port), port, monitor)
    container.waiting_for(ProtocolReady(check, service=spec.name))
    return container, port, check


def _port_taken(exc: BaseException, log_path: str | None) -> str | None:
    """What says a failed container start lost a host port to another process: the
    engine's error (publishing it), or the container's log (toxiproxy's host network)."""
    if not isinstance(exc, Exception):
        return None
    found = port_taken(str(exc))
    if found is None and isinstance(exc, TimeoutError) and log_path:
        with contextlib.suppress(OSError):
            found = port_taken(Path(log_path).read_text(errors="replace"))
    return found


def _has_image(client: Any, image: str) -> bool:
    import docker.errors

    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _missing(image: str) -> str:
    return f"image {image} is not in the engine and pulls are off; {BUILD_HINT}"


def _ensure_image(client: Any, spec: ServiceSpec) -> None:
    if _has_image(client, spec.image):
        return
    if not pull_allowed():
        raise ServiceUnavailable(spec.name, f"docker provider: {_missing(spec.image)}",
                                 hint=f"or set {PULL_ENV}=1 to pull it from your registry")
    client.images.pull(spec.image)


def _failed_start_logs(container: Any, name: str) -> str | None:
    return _write_log(name, lambda: container.get_wrapped_container().logs())


def _write_log(name: str, logs: Callable[[], bytes]) -> str | None:
    """A container's logs in a file inside the run's temp dir (removed with the run, like
    a local service's log), for the error that names it; None if they cannot be read."""
    with contextlib.suppress(Exception):
        data = logs()
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log",
                                    dir=run.current().mkdtemp("docker-logs-"))
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return path
    return None


def _remove_instance(instance: str) -> None:
    # by label, so a container left "Created" by a failed start goes too
    with contextlib.suppress(Exception):
        client = docker_client(30.0)
        try:
            for c in client.containers.list(all=True,
                                            filters={"label": f"{LABEL_INSTANCE}={instance}"}):
                c.remove(force=True, v=True)
        finally:
            client.close()
