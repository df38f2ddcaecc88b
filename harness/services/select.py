"""Provider auto-selection: docker (engine answers and images present) -> local -> external."""

from __future__ import annotations

import os

from harness.services.base import Provider
from harness.services.docker import DockerProvider, docker_ping, pull_allowed
from harness.services.external import ExternalProvider, any_external_url
from harness.services.local import LocalProvider
from harness.services.spec import SERVICE_NAMES

PROVIDERS: dict[str, type[Provider]] = {
    "local": LocalProvider,
    "docker": DockerProvider,
    "external": ExternalProvider,
}


def select_provider(name: str | None = None) -> Provider:
    """The provider to use: name, else $HARNESS_PROVIDER, else the first that works."""
    chosen = (name or os.environ.get("HARNESS_PROVIDER") or "auto").strip().lower()
    if chosen != "auto":
        if chosen not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            raise ValueError(f"unknown provider {chosen!r}; choose from auto, {known}")
        how = "HARNESS_PROVIDER" if name is None else "requested"
        return PROVIDERS[chosen](reason=f"{how}: {chosen}")
    no_docker = docker_ping() or _images_missing()
    if no_docker is None:
        how = "pulls allowed" if pull_allowed() else "all service images present"
        return DockerProvider(reason=f"a Docker engine answers at {_engine()}; {how}")
    local = LocalProvider()
    present = [s for s in SERVICE_NAMES if local.unavailable_reason(s) is None]
    if present:
        local.reason = f"{no_docker}; local binaries found for {', '.join(present)}"
        return local
    if any_external_url():
        return ExternalProvider(reason=f"{no_docker}; no local binaries; *_URL variables set")
    local.reason = f"{no_docker}; no local binaries; no *_URL variables (nothing can start)"
    return local


def _engine() -> str:
    return os.environ.get("DOCKER_HOST") or "/var/run/docker.sock"


def _images_missing() -> str | None:
    """None when every service image is in the engine (or pulls are allowed), else why not."""
    if pull_allowed():
        return None
    from harness.images import images_missing
    from harness.services.docker_engine import docker_client

    try:
        client = docker_client(10.0)
        try:
            missing = images_missing(client)
        finally:
            client.close()
    except Exception as exc:
        return f"Docker engine at {_engine()} answers but listing images failed ({exc!r})"
    if not missing:
        return None
    return (f"a Docker engine answers at {_engine()} but images are missing "
            f"({', '.join(missing)}; build them with `harness images build`)")
