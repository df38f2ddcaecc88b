"""Build the configured adapters from their descriptors; broker clients load only when chosen."""

from __future__ import annotations

import inspect
from typing import Any

from reference_services.adapters import registry
from reference_services.deploy.config import DeploymentConfig
from reference_services.runtime.context import Stores


def make_event_bridge(cfg: DeploymentConfig, **extra: Any) -> Any:
    """The configured event bridge (not started)."""
    d = registry.resolve("event_bridge", cfg.event_bridge)
    return d.build_from_urls(cfg.urls, cfg.prefix, **extra)


def make_queue_bridge(
    cfg: DeploymentConfig, *, instance_id: str | None = None, **extra: Any
) -> Any:
    """The configured queue bridge (not started). ``instance_id`` goes to a queue bridge
    that takes one (it keeps per-instance state on the broker, as the MQTT queue's
    session of leased jobs), so a restarted process with the same id gets it back.
    ``QUEUE_LEASE_TTL_MS`` becomes the bridge's ``default_lease_ttl_ms``."""
    d = registry.resolve("queue_bridge", cfg.queue_bridge)
    takes = inspect.signature(d.load()).parameters
    if instance_id is not None and "instance_id" in takes:
        extra.setdefault("instance_id", instance_id)
    if cfg.queue_lease_ttl_ms is not None:
        if "default_lease_ttl_ms" not in takes:
            raise ValueError(
                f"QUEUE_LEASE_TTL_MS is set but the {cfg.queue_bridge!r} queue bridge takes "
                "no default_lease_ttl_ms"
            )
        extra.setdefault("default_lease_ttl_ms", cfg.queue_lease_ttl_ms)
    return d.build_from_urls(cfg.urls, cfg.prefix, **extra)


def make_stores(cfg: DeploymentConfig, **extra: Any) -> Stores:
    """State, config and secret stores of the configured kind (not started)."""
    built = {
        kind: registry.resolve(kind, cfg.store_for(kind)).build_from_urls(
            cfg.urls, cfg.prefix, **extra
        )
        for kind in ("state_store", "config_store", "secret_store")
    }
    return Stores(
        state=built["state_store"], config=built["config_store"], secret=built["secret_store"]
    )
