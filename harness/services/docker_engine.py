"""The Docker engine as the harness sees it: client, ping, run labels and the stale-run reaper.

Every container the harness starts carries labels naming the run that owns it
(:mod:`harness.run`: one `conformance run`, `harness up|doctor` or pytest session, its
xdist workers included) and the process that started it. At a process's first container start,
containers of runs that are provably dead on this host (same hostname, and another boot or no
live process with the recorded pid and start time) are removed: what testcontainers' Ryuk
reaper does, without its image, and also after SIGKILL of the runner.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
from typing import Any

LABEL_RUN = "org.purista-harness.run"
LABEL_PID = "org.purista-harness.pid"
LABEL_PID_START = "org.purista-harness.pid-start"
LABEL_HOST = "org.purista-harness.host"
LABEL_BOOT = "org.purista-harness.boot"
LABEL_SERVICE = "org.purista-harness.service"
LABEL_INSTANCE = "org.purista-harness.instance"
KEPT_PREFIX = "purista-harness-kept-"


def docker_client(timeout: float = 60.0) -> Any:
    """A docker-py client from the environment (DOCKER_HOST or the default socket)."""
    import docker

    return docker.from_env(timeout=int(max(timeout, 1)))


def docker_ping(timeout: float = 3.0) -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        client = docker_client(timeout)
        try:
            client.ping()
        finally:
            client.close()
        return None
    except Exception as exc:
        text = str(exc)
        where = os.environ.get("DOCKER_HOST") or "/var/run/docker.sock"
        if "FileNotFoundError" in text or "No such file" in text or "ConnectionRefused" in text:
            return f"no Docker engine answers at {where}"
        return f"no Docker engine at {where} ({type(exc).__name__}: {text[:100]})"


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return open("/proc/sys/kernel/random/boot_id").read().strip()
    return "unknown"


def process_start(pid: int) -> str | None:
    """The start time of a live process (clock ticks since boot), None when it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


class RunIdentity:
    """This process as the owner of containers: the run's id (:mod:`harness.run`, shared
    by xdist workers) plus this process's pid and start time, hostname and boot id."""

    def __init__(self) -> None:
        from harness import run

        self.run_id = run.current().id
        self.pid = os.getpid()
        self.labels = {
            LABEL_RUN: self.run_id,
            LABEL_PID: str(self.pid),
            LABEL_PID_START: process_start(self.pid) or "unknown",
            LABEL_HOST: socket.gethostname(),
            LABEL_BOOT: _boot_id(),
        }
        self.reaped = False
        self.lock = threading.Lock()
        # the run's end, its signal handler, its reaper process (runner SIGKILLed) and
        # `harness down` remove the run's containers; at exit this process removes its own
        run.register_reap_hook(f"{__name__}:remove_run_containers")
        atexit.register(remove_owned_containers, self.run_id, self.pid)


_IDENTITY: RunIdentity | None = None
_IDENTITY_LOCK = threading.Lock()


def run_identity() -> RunIdentity:
    """The identity of this process (a new one after fork)."""
    global _IDENTITY
    with _IDENTITY_LOCK:
        if _IDENTITY is None or _IDENTITY.pid != os.getpid():
            _IDENTITY = RunIdentity()
        return _IDENTITY


def owner_alive(labels: dict[str, str]) -> bool | None:
    """True/False when the owning run's liveness is known on this host, None otherwise."""
    if labels.get(LABEL_HOST) != socket.gethostname():
        return None  # another machine sharing this engine: not ours to judge
    if labels.get(LABEL_BOOT) != _boot_id():
        return False
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return False
    started = process_start(pid)
    return started is not None and started == labels.get(LABEL_PID_START)


def _remove(container: Any) -> bool:
    try:
        container.remove(force=True, v=True)
        return True
    except Exception:
        return False


def reap_stale(client: Any) -> list[str]:
    """Remove labelled containers of dead runs on this host; the names removed."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN}):
        if container.name.startswith(KEPT_PREFIX):
            continue  # left running on purpose (--keep / --keep-services)
        if owner_alive(container.labels) is False and _remove(container):
            removed.append(container.name)
    return removed


def reap_once(client: Any) -> list[str]:
    """reap_stale() the first time this process starts a container."""
    identity = run_identity()
    with identity.lock:
        if identity.reaped:
            return []
        identity.reaped = True
        return reap_stale(client)


def _remove_labelled(labels: list[str], keep_kept: bool) -> int:
    count = 0
    with contextlib.suppress(Exception):
        client = docker_client(10.0)
        try:
            for container in client.containers.list(all=True, filters={"label": labels}):
                if keep_kept and container.name.startswith(KEPT_PREFIX):
                    continue
                count += _remove(container)
        finally:
            client.close()
    return count


def remove_run_containers(run_id: str) -> int:
    """Remove every container of a run, kept ones included (the run's reap hook); how many."""
    if docker_ping(3.0) is not None:
        return 0
    return _remove_labelled([f"{LABEL_RUN}={run_id}"], keep_kept=False)


def remove_owned_containers(run_id: str, pid: int) -> int:
    """Remove the containers this process started for the run, except kept ones."""
    if docker_ping(3.0) is not None:
        return 0
    return _remove_labelled([f"{LABEL_RUN}={run_id}", f"{LABEL_PID}={pid}"], keep_kept=True)


def bridge_url(url: str) -> str:
    """The URL of a harness container's service as other containers on the engine's bridge
    network reach it: ``scheme://user@127.0.0.1:<published port>/x`` becomes
    ``scheme://user@<container ip>:<container port>/x``. ValueError when no running
    harness container publishes that port (e.g. the service is a local process)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
        raise ValueError(f"not a loopback URL of a published port: {parts.scheme}://"
                         f"{parts.hostname}:{parts.port}")
    client = docker_client(10.0)
    try:
        for container in client.containers.list(filters={"label": LABEL_RUN}):
            settings = container.attrs.get("NetworkSettings", {})
            for cport, binds in (settings.get("Ports") or {}).items():
                if any(b.get("HostPort") == str(parts.port) for b in binds or []):
                    ip = settings.get("IPAddress") or next(
                        (n.get("IPAddress") for n in settings.get("Networks", {}).values()
                         if n.get("IPAddress")), "")
                    if not ip:
                        break
                    netloc = parts.netloc.rsplit("@", 1)
                    host = f"{ip}:{cport.split('/')[0]}"
                    netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
                    return urlunsplit(parts._replace(netloc=netloc))
    finally:
        client.close()
    raise ValueError(f"no harness container publishes 127.0.0.1:{parts.port}")
