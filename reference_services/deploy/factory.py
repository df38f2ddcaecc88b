"""Build adapters by name; broker clients are imported only when chosen."""

from __future__ import annotations

import importlib
from typing import Any

from reference_services.deploy.config import DeploymentConfig
from reference_services.runtime.context import Stores

EVENT_BRIDGES = {
    "memory": ("reference_services.adapters.memory.event_bridge:DefaultEventBridge", None),
    "amqp": ("reference_services.adapters.amqp.event_bridge:AmqpBridge", "AMQP_URL"),
    "nats": ("reference_services.adapters.nats.event_bridge:NatsBridge", "NATS_URL"),
    "mqtt": ("reference_services.adapters.mqtt.event_bridge:MqttBridge", "MQTT_URL"),
}
QUEUE_BRIDGES = {
    "memory": ("reference_services.adapters.memory.queue_bridge:DefaultQueueBridge", None),
    "redis": ("reference_services.adapters.redis.queue_bridge:RedisQueueBridge", "REDIS_URL"),
    "nats": ("reference_services.adapters.nats.queue_bridge:NatsQueueBridge", "NATS_URL"),
}
STORES = {
    "memory": ("reference_services.adapters.memory.stores:Default{kind}Store", None),
    "redis": ("reference_services.adapters.redis.stores:Redis{kind}Store", "REDIS_URL"),
    "nats-kv": ("reference_services.adapters.nats.kv_stores:NatsKV{kind}Store", "NATS_URL"),
}


def load(path: str) -> Any:
    """Import ``module:attribute``."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _kwargs(cfg: DeploymentConfig, url_var: str | None) -> dict[str, Any]:
    if url_var is None:
        return {}
    if url_var not in cfg.urls:
        raise ValueError(f"{url_var} must be set for this adapter")
    return {"url": cfg.urls[url_var], "prefix": cfg.prefix}


def make_event_bridge(cfg: DeploymentConfig, **extra: Any) -> Any:
    """The configured event bridge (not started)."""
    path, url_var = EVENT_BRIDGES[cfg.event_bridge]
    return load(path)(**_kwargs(cfg, url_var), **extra)


def make_queue_bridge(cfg: DeploymentConfig, **extra: Any) -> Any:
    """The configured queue bridge (not started)."""
    path, url_var = QUEUE_BRIDGES[cfg.queue_bridge]
    return load(path)(**_kwargs(cfg, url_var), **extra)


def make_stores(cfg: DeploymentConfig, **extra: Any) -> Stores:
    """State, config and secret stores of the configured kind (not started)."""
    path, url_var = STORES[cfg.store]
    kwargs = _kwargs(cfg, url_var)
    return Stores(
        state=load(path.format(kind="State"))(**kwargs, **extra),
        config=load(path.format(kind="Config"))(**kwargs, **extra),
        secret=load(path.format(kind="Secret"))(**kwargs, **extra),
    )
