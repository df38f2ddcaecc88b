"""Provider auto-selection: docker engine -> local binaries -> external URLs."""

from __future__ import annotations

import os

from harness.services.base import Provider
from harness.services.docker import DockerProvider, docker_ping
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
    no_docker = docker_ping()
    if no_docker is None:
        return DockerProvider(reason="a Docker engine answers ping")
    local = LocalProvider()
    present = [s for s in SERVICE_NAMES if local.unavailable_reason(s) is None]
    if present:
        local.reason = f"{no_docker}; local binaries found for {', '.join(present)}"
        return local
    if any_external_url():
        return ExternalProvider(reason=f"{no_docker}; no local binaries; *_URL variables set")
    local.reason = f"{no_docker}; no local binaries; no *_URL variables (nothing can start)"
    return local
