"""NATS (JetStream) adapters: event bridge, queue bridge and KV stores on one connect path."""

from __future__ import annotations

from reference_services.runtime.spi.descriptor import AdapterDescriptor, store_descriptors

_PKG = "reference_services.adapters.nats"
_FAST_TIMINGS = {
    "connect_timeout_s": 1.0,
    "ping_interval_s": 1.0,
    "max_outstanding_pings": 2,
    "reconnect_wait_s": 0.2,
    "op_timeout_s": 5.0,
}

DESCRIPTORS: tuple[AdapterDescriptor, ...] = (
    AdapterDescriptor(
        "nats",
        "event_bridge",
        f"{_PKG}.event_bridge:NatsBridge",
        service="nats",
        url_var="NATS_URL",
        deployable=True,
        protocol="nats",
        fault_options={
            "ping_interval_s": 1.0,
            "max_outstanding_pings": 2,
            "reconnect_time_wait_s": 0.2,
            "ack_wait_s": 3.0,
            "publish_timeout_s": 2.0,
        },
    ),
    AdapterDescriptor(
        "nats",
        "queue_bridge",
        f"{_PKG}.queue_bridge:NatsQueueBridge",
        service="nats",
        url_var="NATS_URL",
        deployable=True,
        fault_options={"ack_wait_s": 3.0, "timings": _FAST_TIMINGS},
    ),
    *store_descriptors(
        "nats-kv",
        f"{_PKG}.kv_stores:NatsKV{{kind}}Store",
        service="nats",
        url_var="NATS_URL",
        deployable=True,
    ),
)
