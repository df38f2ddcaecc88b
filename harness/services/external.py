"""External provider: services already running elsewhere, given by *_URL variables."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from harness.errors import ServiceUnavailable
from harness.services.base import Provider, ServiceHandle
from harness.services.spec import SERVICE_NAMES, ServiceSpec, get_spec

DEFAULT_PORTS = {"amqp": 5672, "nats": 4222, "redis": 6379, "mqtt": 1883, "http": 8474}


def env_url(spec: ServiceSpec) -> str | None:
    """The first non-empty URL variable for a service (RABBITMQ_URL before AMQP_URL)."""
    for var in spec.env_vars:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return None


class ExternalHandle(ServiceHandle):
    """A service whose lifecycle we do not control: no restart, pause or kill."""

    supports_lifecycle_faults = False

    def __init__(self, spec: ServiceSpec, url: str) -> None:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.split("+")[0], 0)
        super().__init__(spec, parts.hostname or "127.0.0.1", port, "unknown", "external")
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def restart(self, kill: bool = True) -> None:
        raise self._unsupported("restart")

    def pause(self) -> None:
        raise self._unsupported("pause")

    def resume(self) -> None:
        raise self._unsupported("resume")

    def kill(self) -> None:
        raise self._unsupported("kill")

    def stop(self) -> None:
        """Nothing to stop: the service belongs to someone else."""


class ExternalProvider(Provider):
    """Hands out the URLs of RABBITMQ_URL/AMQP_URL, NATS_URL, REDIS_URL, MQTT_URL, TOXIPROXY_URL."""

    name = "external"
    supports_lifecycle_faults = False

    def unavailable_reason(self, service_name: str) -> str | None:
        spec = get_spec(service_name)
        if env_url(spec) is None:
            return f"no {' or '.join(spec.env_vars)} set"
        return None

    def start(self, service_name: str) -> ExternalHandle:
        spec = get_spec(service_name)
        url = env_url(spec)
        if url is None:
            why = self.unavailable_reason(service_name)
            raise ServiceUnavailable(service_name, f"external provider: {why}")
        return ExternalHandle(spec, url)


def any_external_url() -> bool:
    """True when at least one service URL variable is set."""
    return any(env_url(get_spec(n)) for n in SERVICE_NAMES)
