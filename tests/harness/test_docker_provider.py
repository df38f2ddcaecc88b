"""The docker provider's container setup, checked against a fake (no engine here)."""

from __future__ import annotations

from typing import Any

import pytest

from harness.services import SERVICE_NAMES
from harness.services import docker as docker_mod
from harness.services.select import select_provider


class FakeContainer:
    made: list[FakeContainer] = []

    def __init__(self, image: str) -> None:
        self.image, self.ports, self.kwargs, self.command = image, {}, {}, None
        self.calls: list[str] = []
        FakeContainer.made.append(self)

    def with_bind_ports(self, container: int, host: Any) -> FakeContainer:
        self.ports[container] = host
        return self

    def with_kwargs(self, **kw: Any) -> FakeContainer:
        self.kwargs.update(kw)
        return self

    def with_command(self, command: Any) -> FakeContainer:
        self.command = command
        return self

    def start(self) -> FakeContainer:
        self.calls.append("start")
        return self

    def stop(self) -> None:
        self.calls.append("stop")

    def get_logs(self) -> tuple[bytes, bytes]:
        return b"Server startup complete", b""

    def get_wrapped_container(self) -> FakeContainer:
        return self

    def pause(self) -> None:
        self.calls.append("pause")

    def unpause(self) -> None:
        self.calls.append("unpause")

    def kill(self) -> None:
        self.calls.append("kill")


@pytest.fixture
def fake_docker(monkeypatch: pytest.MonkeyPatch) -> type[FakeContainer]:
    import testcontainers.core.container as tc

    FakeContainer.made = []
    monkeypatch.setattr(tc, "DockerContainer", FakeContainer)
    monkeypatch.setattr(docker_mod, "docker_ping", lambda timeout=3.0: None)
    monkeypatch.setattr(docker_mod.DockerHandle, "wait_ready", lambda self, timeout=0: None)
    return FakeContainer


def test_auto_selects_docker_when_an_engine_answers(fake_docker: type[FakeContainer],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARNESS_PROVIDER", raising=False)
    import harness.services.select as select_mod

    monkeypatch.setattr(select_mod, "docker_ping", lambda: None)
    assert select_provider().name == "docker"


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_containers_pin_versions_and_host_ports(fake_docker: type[FakeContainer],
                                                name: str) -> None:
    handle = docker_mod.DockerProvider().start(name)
    container = fake_docker.made[-1]
    assert container.image == handle.spec.image and handle.version in container.image
    if name == "toxiproxy":
        assert container.kwargs["network_mode"] == "host"
        assert container.command == ["-host", "127.0.0.1", "-port", str(handle.port)]
    else:
        assert container.ports[handle.spec.container_port] == ("127.0.0.1", handle.port)
    handle.pause()
    handle.resume()
    handle.restart(kill=True)
    handle.stop()
    assert container.calls == ["start", "pause", "unpause", "kill", "start", "stop"]
    assert handle.url == handle.spec.url_for("127.0.0.1", handle.port)
