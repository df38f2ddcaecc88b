"""Static descriptions of the services the harness can provide."""

from __future__ import annotations

from dataclasses import dataclass

SERVICE_NAMES: tuple[str, ...] = (
    "rabbitmq", "nats", "redis", "mosquitto", "toxiproxy", "moto", "dapr",
)
MOTO_VERSION = "5.2.5"
DAPR_VERSION = "1.14.0"


@dataclass(frozen=True)
class ServiceSpec:
    """What a service is called, how it is reached and where it comes from."""

    name: str
    scheme: str
    url_template: str
    binary: str
    env_vars: tuple[str, ...]
    image: str  # built locally by `harness images build` (docker/images/<name>)
    container_port: int
    debian_package: str | None

    def url_for(self, host: str, port: int) -> str:
        """The client URL of this service at host:port."""
        return self.url_template.format(host=host, port=port)


SPECS: dict[str, ServiceSpec] = {
    "rabbitmq": ServiceSpec(
        name="rabbitmq",
        scheme="amqp",
        url_template="amqp://guest:guest@{host}:{port}/",
        binary="/usr/lib/rabbitmq/bin/rabbitmq-server",
        env_vars=("RABBITMQ_URL", "AMQP_URL"),
        image="purista-harness/rabbitmq:3.10.8",
        container_port=5672,
        debian_package="rabbitmq-server",
    ),
    "nats": ServiceSpec(
        name="nats",
        scheme="nats",
        url_template="nats://{host}:{port}",
        binary="nats-server",
        env_vars=("NATS_URL",),
        image="purista-harness/nats:2.9.10",
        container_port=4222,
        debian_package="nats-server",
    ),
    "redis": ServiceSpec(
        name="redis",
        scheme="redis",
        url_template="redis://{host}:{port}/0",
        binary="redis-server",
        env_vars=("REDIS_URL",),
        image="purista-harness/redis:7.0.15",
        container_port=6379,
        debian_package="redis-server",
    ),
    "mosquitto": ServiceSpec(
        name="mosquitto",
        scheme="mqtt",
        url_template="mqtt://{host}:{port}",
        binary="mosquitto",
        env_vars=("MQTT_URL",),
        image="purista-harness/mosquitto:2.0.11",
        container_port=1883,
        debian_package="mosquitto",
    ),
    "toxiproxy": ServiceSpec(
        name="toxiproxy",
        scheme="http",
        url_template="http://{host}:{port}",
        binary="toxiproxy-server",
        env_vars=("TOXIPROXY_URL",),
        image="purista-harness/toxiproxy:2.12.0",
        container_port=8474,
        debian_package=None,
    ),
    # moto's server answers the AWS HTTP APIs (Secrets Manager, SSM) on loopback
    "moto": ServiceSpec(
        name="moto",
        scheme="http",
        url_template="http://{host}:{port}",
        binary="moto_server",
        env_vars=("MOTO_URL", "AWS_ENDPOINT_URL"),
        image=f"purista-harness/moto:{MOTO_VERSION}",
        container_port=5000,
        debian_package=None,
    ),
    # daprd (built from source by the installer) as a sidecar whose state store
    # "statestore" is a state.redis component on a redis-server of its own
    "dapr": ServiceSpec(
        name="dapr",
        scheme="http",
        url_template="http://{host}:{port}",
        binary="daprd",
        env_vars=("DAPR_URL",),
        image=f"purista-harness/dapr:{DAPR_VERSION}",
        container_port=3500,
        debian_package=None,
    ),
}


def get_spec(name: str) -> ServiceSpec:
    """The spec of a service by name; ValueError for unknown names."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}") from None
