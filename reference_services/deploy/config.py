"""Deployment configuration from environment variables (nothing hard-coded in services)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

STORE_VARS = {
    "state_store": "STATE_STORE",
    "config_store": "CONFIG_STORE",
    "secret_store": "SECRET_STORE",
}


@dataclass(frozen=True)
class DeploymentConfig:
    """Which adapters to use and how to reach them.

    Environment: ``EVENT_BRIDGE``, ``QUEUE_BRIDGE`` and ``STORE`` name a registered
    adapter (built-in: memory|amqp|nats|mqtt, memory|redis|nats|mqtt,
    memory|redis|nats-kv, plus aws for the secret and config stores and dapr for state)
    or reference a descriptor as ``module:ATTRIBUTE``; ``STATE_STORE``, ``CONFIG_STORE``
    and ``SECRET_STORE`` override ``STORE`` for one kind (e.g. ``SECRET_STORE=aws``,
    ``STATE_STORE=dapr``); every ``*_URL`` variable
    (``AMQP_URL``, ``NATS_URL``, ...) is passed on; ``PURISTA_PREFIX``,
    ``SERVICES`` (comma-separated), ``HEALTH_PORT``, ``HEALTH_HOST`` (default 127.0.0.1;
    0.0.0.0 in a container), ``SHUTDOWN_TIMEOUT_S``, ``QUEUE_LEASE_TTL_MS`` (how long a
    job's lease lasts unless renewed, default the queue bridge's 30 s: a serverless
    platform sets it to about its function timeout, so that a job whose invocation it cut
    is delivered again soon after), ``SERVICE_CONFIG_*`` (passed to services as config).
    """

    event_bridge: str = "memory"
    queue_bridge: str = "memory"
    store: str = "memory"
    store_overrides: dict[str, str] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    prefix: str = "purista"
    services: tuple[str, ...] = ("user", "email", "sensor", "billing")
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    shutdown_timeout_s: float = 30.0
    queue_lease_ttl_ms: int | None = None
    service_config: dict[str, str] = field(default_factory=dict)

    def store_for(self, kind: str) -> str:
        """The store adapter of ``kind`` (its override, else ``STORE``)."""
        return self.store_overrides.get(kind, self.store)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DeploymentConfig:
        """Read the configuration; unknown adapter names fail with the allowed ones listed."""
        env = os.environ if env is None else env
        cfg = cls(
            event_bridge=env.get("EVENT_BRIDGE", "memory"),
            queue_bridge=env.get("QUEUE_BRIDGE", "memory"),
            store=env.get("STORE", "memory"),
            store_overrides={
                kind: env[var]
                for kind, var in STORE_VARS.items()
                if env.get(var)
            },
            urls={k: v for k, v in env.items() if k.endswith("_URL") and v},
            prefix=env.get("PURISTA_PREFIX", "purista"),
            services=tuple(
                s for s in env.get("SERVICES", "user,email,sensor,billing").split(",") if s
            ),
            health_port=int(env["HEALTH_PORT"]) if env.get("HEALTH_PORT") else None,
            health_host=env.get("HEALTH_HOST") or "127.0.0.1",
            shutdown_timeout_s=float(env.get("SHUTDOWN_TIMEOUT_S", "30")),
            queue_lease_ttl_ms=_positive_int(env, "QUEUE_LEASE_TTL_MS"),
            service_config={
                k.removeprefix("SERVICE_CONFIG_").lower(): v
                for k, v in env.items()
                if k.startswith("SERVICE_CONFIG_")
            },
        )
        from reference_services.adapters import registry

        known = registry.every()
        for value, kinds, var in (
            (cfg.event_bridge, ("event_bridge",), "EVENT_BRIDGE"),
            (cfg.queue_bridge, ("queue_bridge",), "QUEUE_BRIDGE"),
            *(
                (cfg.store_for(kind), (kind,), STORE_VARS[kind] if kind in
                 cfg.store_overrides else "STORE")
                for kind in STORE_VARS
            ),
        ):
            for kind in kinds:
                try:
                    registry.resolve(kind, value, known=known)
                except (registry.UnknownAdapter, ImportError, AttributeError, ValueError) as exc:
                    raise ValueError(f"{var}={value!r}: {exc}") from exc
        return cfg


def _positive_int(env: Mapping[str, str], var: str) -> int | None:
    """``env[var]`` as an int > 0, None when unset; a clear error otherwise."""
    text = env.get(var)
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{var} must be a whole number > 0, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{var} must be > 0, got {value}")
    return value
