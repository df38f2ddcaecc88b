"""Provider selection, the external provider, and clear errors when nothing can provide."""

from __future__ import annotations

import pytest

from harness.errors import LifecycleFaultsUnavailable, ServiceUnavailable
from harness.services import ServiceSet, select_provider
from harness.services import local as local_mod
from harness.services.external import ExternalProvider
from harness.services.local import LocalProvider

URL_VARS = ("RABBITMQ_URL", "AMQP_URL", "NATS_URL", "REDIS_URL", "MQTT_URL", "TOXIPROXY_URL")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in (*URL_VARS, "HARNESS_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_auto_picks_local_here_and_says_why(clean_env: pytest.MonkeyPatch) -> None:
    provider = select_provider()
    assert provider.name in ("local", "docker")
    assert provider.reason
    if provider.name == "local":
        assert "Docker" in provider.reason and "local binaries" in provider.reason


def test_override_by_env_and_argument(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("HARNESS_PROVIDER", "external")
    assert select_provider().name == "external"
    assert select_provider("local").name == "local"
    with pytest.raises(ValueError, match="unknown provider"):
        select_provider("kubernetes")


def test_external_handles_say_lifecycle_faults_are_unavailable(
        clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AMQP_URL", "amqp://u:p@broker.example:5679/vh")
    clean_env.setenv("REDIS_URL", "redis://cache.example/2")
    provider = ExternalProvider()
    assert not provider.supports_lifecycle_faults
    amqp = provider.start("rabbitmq")
    assert (amqp.url, amqp.host, amqp.port) == ("amqp://u:p@broker.example:5679/vh",
                                                 "broker.example", 5679)
    assert not amqp.supports_lifecycle_faults
    for operation in (amqp.restart, amqp.pause, amqp.resume, amqp.kill):
        with pytest.raises(LifecycleFaultsUnavailable, match="lifecycle faults unavailable"):
            operation()
    amqp.stop()  # a no-op, never an error
    assert provider.start("redis").port == 6379
    with pytest.raises(ServiceUnavailable, match="NATS_URL"):
        provider.start("nats")


def test_missing_binary_error_names_the_install_command(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setattr(local_mod, "which", lambda binary: None)
    provider = LocalProvider()
    assert "not found" in (provider.unavailable_reason("redis") or "")
    with pytest.raises(ServiceUnavailable) as err:
        provider.start("redis")
    assert "make services" in str(err.value)
    assert "docker/install-local-services.sh" in str(err.value)


def test_service_set_remembers_unavailability(clean_env: pytest.MonkeyPatch) -> None:
    services = ServiceSet(ExternalProvider(reason="test"))
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            services.get("mosquitto")
    with pytest.raises(ValueError, match="unknown service"):
        services.get("kafka")
    services.close()


def test_local_start_retries_on_a_port_taken_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    original, blockers = local_mod.free_port, []

    def first_port_taken() -> int:
        port = original()
        if not blockers:
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            blockers.append(sock)
        return port

    monkeypatch.setattr(local_mod, "free_port", first_port_taken)
    handle = LocalProvider().start("redis")
    try:
        assert handle.port != blockers[0].getsockname()[1] and handle.is_running()
    finally:
        handle.stop()
        blockers[0].close()
