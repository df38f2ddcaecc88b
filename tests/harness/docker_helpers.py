"""Helpers for the docker provider tests: the engine fixture, a recording socket proxy."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from harness.services.docker_engine import LABEL_PID, LABEL_RUN, docker_client, docker_ping
from harness.services.spec import SERVICE_NAMES


def engine_or_skip(config: pytest.Config) -> Any:
    """A client of the engine with every image built; skip (fail when the run requires the
    docker provider: --provider docker --require-services) when there is none."""
    from harness.images import images_missing

    reason = docker_ping()
    if reason is None:
        client = docker_client()
        missing = images_missing(client, SERVICE_NAMES)
        if not missing:
            return client
        client.close()
        reason = f"images missing: {', '.join(missing)} (harness images build)"
    skip_or_fail(config, f"no usable Docker engine: {reason}")


def skip_or_fail(config: pytest.Config, reason: str) -> NoReturn:
    """Skip, or fail when the run requires the docker provider."""
    wanted = config.getoption("harness_provider") or os.environ.get("HARNESS_PROVIDER")
    if config.getoption("require_services") and wanted == "docker":
        pytest.fail(f"docker provider required: {reason}", pytrace=False)
    pytest.skip(reason)


def containers_of(client: Any, pid: int | None = None, run: str | None = None) -> list[Any]:
    """Every harness container (of one owner pid or run id), in any state."""
    label = LABEL_RUN
    if pid is not None:
        label = f"{LABEL_PID}={pid}"
    elif run is not None:
        label = f"{LABEL_RUN}={run}"
    return list(client.containers.list(all=True, filters={"label": label}))


def engine_socket() -> str:
    """The unix socket path of the engine the environment points at."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.skip(f"the recording proxy needs a unix socket engine, not {host}")
    return host.removeprefix("unix://")


REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")


INSPECT = re.compile(rb"GET /v[\d.]+/containers/([0-9a-f]{64})/json HTTP/1\.1\r\n")
START = re.compile(rb"POST /v[\d.]+/containers/([0-9a-f]{64})/start HTTP/1\.1\r\n")


def _not_found(container_id: bytes) -> bytes:
    """The engine's own answer to an inspect of a container it does not know."""
    body = b'{"message":"No such container: ' + container_id + b'"}\n'
    return (
        b"HTTP/1.1 404 Not Found\r\nApi-Version: 1.41\r\nContent-Type: application/json"
        b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class RecordingProxy:
    """A unix socket forwarding to the engine and recording every API request line.

    With ``not_found = N`` it answers the first N inspects of each container after its
    start with the engine's "No such container" 404 (as a busy engine was seen to)."""

    def __init__(self, path: Path, upstream: str) -> None:
        self.path, self.upstream = path, upstream
        self.requests: list[str] = []
        self.not_found = 0
        self.refused: list[str] = []
        self._started: dict[bytes, int] = {}
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(self.upstream)
            threading.Thread(target=self._pipe, args=(client, engine, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(engine, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                if record and self._refuse(chunk, src):
                    continue
                if record:
                    data = tail + chunk
                    with self._lock:
                        self.requests += [
                            f"{m[1].decode()} {m[2].decode()}" for m in REQUEST_LINE.finditer(data)
                        ]
                    tail = data[-200:] if not REQUEST_LINE.search(data[-200:]) else b""
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _refuse(self, chunk: bytes, client: socket.socket) -> bool:
        """Answer an inspect of a just-started container with a 404 instead of the engine."""
        if started := START.match(chunk):
            with self._lock:
                self._started[started[1]] = self.not_found
            return False
        inspect = INSPECT.match(chunk)
        if not inspect or not chunk.endswith(b"\r\n\r\n"):
            return False
        with self._lock:
            left = self._started.get(inspect[1], 0)
            if left <= 0:
                return False
            self._started[inspect[1]] = left - 1
            self.refused.append(inspect[1].decode())
        client.sendall(_not_found(inspect[1]))
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._server.close()


@contextlib.contextmanager
def recording_proxy(tmp_path: Path) -> Iterator[RecordingProxy]:
    """A RecordingProxy in front of the engine; DOCKER_HOST must be pointed at it by the test."""
    proxy = RecordingProxy(tmp_path / "engine.sock", engine_socket())
    try:
        yield proxy
    finally:
        proxy.close()
