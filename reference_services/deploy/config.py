"""Deployment configuration from environment variables (nothing hard-coded in services)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DeploymentConfig:
    """Which adapters to use and how to reach them.

    Environment: ``EVENT_BRIDGE`` (memory|amqp|nats|mqtt), ``QUEUE_BRIDGE``
    (memory|redis|nats), ``STORE`` (memory|redis|nats-kv), ``AMQP_URL``,
    ``NATS_URL``, ``MQTT_URL``, ``REDIS_URL``, ``PURISTA_PREFIX``,
    ``SERVICES`` (comma-separated), ``HEALTH_PORT``, ``SHUTDOWN_TIMEOUT_S``,
    ``SERVICE_CONFIG_*`` (passed to services as config).
    """

    event_bridge: str = "memory"
    queue_bridge: str = "memory"
    store: str = "memory"
    urls: dict[str, str] = field(default_factory=dict)
    prefix: str = "purista"
    services: tuple[str, ...] = ("user", "email", "sensor", "billing")
    health_port: int | None = None
    shutdown_timeout_s: float = 30.0
    service_config: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploymentConfig:
        """Read the configuration; unknown adapter names fail with the allowed ones listed."""
        env = os.environ if env is None else env
        cfg = cls(
            event_bridge=env.get("EVENT_BRIDGE", "memory"),
            queue_bridge=env.get("QUEUE_BRIDGE", "memory"),
            store=env.get("STORE", "memory"),
            urls={
                k: env[k] for k in ("AMQP_URL", "NATS_URL", "MQTT_URL", "REDIS_URL") if env.get(k)
            },
            prefix=env.get("PURISTA_PREFIX", "purista"),
            services=tuple(
                s for s in env.get("SERVICES", "user,email,sensor,billing").split(",") if s
            ),
            health_port=int(env["HEALTH_PORT"]) if env.get("HEALTH_PORT") else None,
            shutdown_timeout_s=float(env.get("SHUTDOWN_TIMEOUT_S", "30")),
            service_config={
                k.removeprefix("SERVICE_CONFIG_").lower(): v
                for k, v in env.items()
                if k.startswith("SERVICE_CONFIG_")
            },
        )
        from reference_services.deploy.factory import EVENT_BRIDGES, QUEUE_BRIDGES, STORES

        for value, allowed, var in (
            (cfg.event_bridge, EVENT_BRIDGES, "EVENT_BRIDGE"),
            (cfg.queue_bridge, QUEUE_BRIDGES, "QUEUE_BRIDGE"),
            (cfg.store, STORES, "STORE"),
        ):
            if value not in allowed:
                raise ValueError(f"{var}={value!r} is not one of {', '.join(sorted(allowed))}")
        return cfg
