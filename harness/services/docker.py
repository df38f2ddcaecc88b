"""Docker provider: the brokers as containers through testcontainers (same versions)."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import ServiceStartError, ServiceUnavailable
from harness.services.base import Provider, ServiceHandle, tcp_open
from harness.services.local import free_port
from harness.services.local_recipes import http_ok, redis_pong
from harness.services.spec import ServiceSpec, get_spec

START_TIMEOUT = 120.0

MOSQUITTO_CONF = (
    "listener 1883\\nallow_anonymous true\\npersistence true\\n"
    "persistence_location /mosquitto/data/\\nautosave_interval 1\\n"
    "autosave_on_changes true\\nlog_dest stdout\\n"
)


def docker_ping(timeout: float = 3.0) -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker

        client = docker.from_env(timeout=int(max(timeout, 1)))
        try:
            client.ping()
        finally:
            client.close()
        return None
    except Exception as exc:
        text = str(exc)
        if "FileNotFoundError" in text or "No such file" in text:
            return "no Docker engine (no socket at DOCKER_HOST or /var/run/docker.sock)"
        return f"no Docker engine ({type(exc).__name__}: {text[:100]})"


class DockerHandle(ServiceHandle):
    """A service in a container with its ports bound to fixed host ports."""

    def __init__(self, spec: ServiceSpec, container: Any, host: str, port: int,
                 ready: Callable[[], bool], log_path: Path) -> None:
        super().__init__(spec, host, port, spec.image.rsplit(":", 1)[-1], "docker", log_path)
        self.container = container
        self._ready = ready

    @property
    def _wrapped(self) -> Any:
        return self.container.get_wrapped_container()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll until the service answers or the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if tcp_open(self.host, self.port) and self._ready():
                return
            time.sleep(0.1)
        self._save_logs()
        raise ServiceStartError(self.name, f"not ready within {timeout:.0f} s", str(self.log_path))

    def _save_logs(self) -> None:
        with contextlib.suppress(Exception):
            out, err = self.container.get_logs()
            if self.log_path:
                self.log_path.write_bytes(out + err)

    def restart(self, kill: bool = True) -> None:
        if kill:
            self._wrapped.kill()
        else:
            self._wrapped.stop(timeout=30)
        self._wrapped.start()
        self.wait_ready()

    def start(self) -> None:
        self._wrapped.start()
        self.wait_ready()

    def pause(self) -> None:
        self._wrapped.pause()

    def resume(self) -> None:
        self._wrapped.unpause()

    def kill(self) -> None:
        self._wrapped.kill()

    def stop(self) -> None:
        self._save_logs()
        with contextlib.suppress(Exception):
            self.container.stop()

    def is_running(self) -> bool:
        with contextlib.suppress(Exception):
            self.container.reload()
            return self.container.status == "running" and tcp_open(self.host, self.port)
        return False


class DockerProvider(Provider):
    """Starts containers from the images in the specs (versions match Debian 12's packages)."""

    name = "docker"

    def unavailable_reason(self, service_name: str) -> str | None:
        get_spec(service_name)
        return docker_ping()

    def start(self, service_name: str) -> DockerHandle:
        from testcontainers.core.container import DockerContainer

        spec = get_spec(service_name)
        reason = self.unavailable_reason(service_name)
        if reason:
            raise ServiceUnavailable(service_name, f"docker provider: {reason}")
        container = DockerContainer(spec.image)
        host = "127.0.0.1"
        port = free_port()
        ready: Callable[[], bool] = lambda: True  # noqa: E731
        if service_name == "toxiproxy":
            # host network: proxies on 127.0.0.1:0 reach the other containers' host ports
            container.with_kwargs(network_mode="host")
            container.with_command(["-host", "127.0.0.1", "-port", str(port)])
            ready = lambda: http_ok(f"http://127.0.0.1:{port}/version")  # noqa: E731
        else:
            container.with_bind_ports(spec.container_port, (host, port))  # type: ignore[arg-type]
        if service_name == "rabbitmq":
            container.with_kwargs(hostname="harness-rabbit")

            def ready() -> bool:
                out, _ = container.get_logs()
                return b"Server startup complete" in out
        elif service_name == "nats":
            monitor = free_port()
            container.with_bind_ports(8222, (host, monitor))  # type: ignore[arg-type]
            container.with_command(["-js", "-sd", "/data", "-m", "8222"])
            ready = lambda: http_ok(f"http://127.0.0.1:{monitor}/healthz")  # noqa: E731
        elif service_name == "redis":
            container.with_command(["redis-server", "--appendonly", "yes", "--appendfsync",
                                    "always", "--save", ""])
            ready = lambda: redis_pong(port)  # noqa: E731
        elif service_name == "mosquitto":
            container.with_command(["sh", "-c", f"printf '{MOSQUITTO_CONF}' > /tmp/m.conf "
                                    "&& exec mosquitto -c /tmp/m.conf"])
        log = Path(tempfile.mkstemp(prefix=f"harness-{service_name}-", suffix=".log")[1])
        container.start()
        handle = DockerHandle(spec, container, host, port, ready, log)
        try:
            handle.wait_ready()
        except BaseException:
            handle.stop()
            raise
        return handle
