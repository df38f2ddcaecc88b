"""The handle and provider interfaces every provider implements."""

from __future__ import annotations

import abc
import socket
from pathlib import Path

from harness.errors import LifecycleFaultsUnavailable
from harness.services.spec import ServiceSpec
from reference_services.runtime.redact import redact_url

START_ATTEMPTS = 3  # a first start on fresh ports, again when another process took one
PORT_TAKEN_MARKERS = ("address already in use", "eaddrinuse", "dist_port_already_used",
                      "address in use", "port is already allocated")


def port_taken(text: str) -> str | None:
    """The marker in a broker's output (or an engine's error) saying that a port it was
    given is taken: rabbitmq ``eaddrinuse`` (``dist_port_already_used`` for its
    distribution port), nats/redis/mosquitto/toxiproxy ``address already in use``, docker
    ``port is already allocated``; None when there is none."""
    low = text.lower()
    return next((m for m in PORT_TAKEN_MARKERS if m in low), None)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServiceHandle(abc.ABC):
    """A running service: where to reach it and how to hurt it."""

    supports_lifecycle_faults: bool = True

    def __init__(self, spec: ServiceSpec, host: str, port: int, version: str,
                 provider: str, log_path: Path | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.host = host
        self.port = port
        self.version = version
        self.provider = provider
        self.log_path = log_path

    @property
    def url(self) -> str:
        """Client URL (amqp://, nats://, redis://, mqtt:// or http://)."""
        return self.spec.url_for(self.host, self.port)

    @property
    def address(self) -> str:
        """host:port, e.g. as a Toxiproxy upstream."""
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """URL environment variables for child processes (e.g. RABBITMQ_URL, AMQP_URL)."""
        return {var: self.url for var in self.spec.env_vars}

    def _unsupported(self, operation: str) -> LifecycleFaultsUnavailable:
        return LifecycleFaultsUnavailable(self.name, operation, self.provider)

    @abc.abstractmethod
    def restart(self, kill: bool = True) -> None:
        """Stop (SIGKILL when kill, else gracefully) and start again: same port, same data."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze the service (SIGSTOP of its process group, or docker pause)."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Undo pause()."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop gracefully and release everything (idempotent)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL the service without restarting it."""

    def start(self) -> None:
        """Start again after stop() or kill(), on the same port with the same data."""
        raise self._unsupported("start")

    def is_running(self) -> bool:
        """True when the service accepts TCP connections."""
        return tcp_open(self.host, self.port)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {redact_url(self.url)} v{self.version}>"

    def __enter__(self) -> ServiceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Provider(abc.ABC):
    """Something that can start services: local processes, containers or given URLs."""

    name: str = "?"
    supports_lifecycle_faults: bool = True

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    @abc.abstractmethod
    def unavailable_reason(self, service_name: str) -> str | None:
        """None when the service can be started, else why not."""

    @abc.abstractmethod
    def start(self, service_name: str) -> ServiceHandle:
        """Start a new instance (raise ServiceUnavailable when impossible)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.reason}>"
