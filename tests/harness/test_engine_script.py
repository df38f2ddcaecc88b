"""docker/engine.sh on a private socket: a killed engine is purged as cleanly as a stopped one.

CI purges its engine before building every image from nothing; when the engine of an
earlier run was killed (its session ended) rather than stopped, dockerd had left its data
root bound onto itself and `rm` failed with "Device or resource busy" (CI exit 2).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_helpers import skip_or_fail
from harness_helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "docker" / "engine.sh"


def _mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]


def _links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def private_socket(request: pytest.FixtureRequest) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("docker/engine.sh start needs root")
    if shutil.which("dockerd") is None and not Path("/usr/sbin/dockerd").exists():
        skip_or_fail(request.config, "dockerd is not installed (make docker-engine)")
    folder = Path(tempfile.mkdtemp(prefix="hdk-", dir="/run"))
    socket_path = folder / "docker.sock"
    yield socket_path
    _engine("purge", socket_path)
    shutil.rmtree(folder, ignore_errors=True)


def _engine(command: str, socket_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARNESS_DOCKER_SOCKET": str(socket_path)}
    return subprocess.run(["bash", str(ENGINE), command], capture_output=True, text=True,
                          timeout=120, env=env)


def _data_root(socket_path: Path) -> Path:
    name = "".join(c if c.isalnum() else "_" for c in str(socket_path.parent)).lstrip("_")
    return Path("/var/lib/harness-docker") / name


def test_a_killed_engine_is_purged_with_its_mounts_and_bridge(private_socket: Path) -> None:
    started = _engine("start", private_socket)
    assert started.returncode == 0, started.stderr
    data_root = _data_root(private_socket)
    bridge = next(word for word in started.stderr.split() if word.startswith("hdk-"))
    assert data_root.is_dir(), f"{data_root} not created; engine said: {started.stderr}"
    pid = int((private_socket.parent / "dockerd.pid").read_text())

    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: _engine("status", private_socket).returncode != 0, timeout=20,
                      step=0.2), "the killed engine still answers after 20 s"
    # what the killed daemon left behind: the premise of the test, not a given
    assert str(data_root) in _mounts(), "dockerd no longer binds its data root onto itself"
    assert bridge in _links()

    purged = _engine("purge", private_socket)

    assert purged.returncode == 0, f"purge failed: {purged.stderr}"
    assert not data_root.exists(), f"{data_root} still there after purge: {purged.stderr}"
    left = [m for m in _mounts() if m.startswith((str(data_root), str(private_socket.parent)))]
    assert left == [], f"still mounted after purge: {left}"
    assert bridge not in _links(), f"bridge {bridge} still there after purge"
    assert not private_socket.exists()
