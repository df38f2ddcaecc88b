"""AMQP 0-9-1 (RabbitMQ) adapters: the event bridge, its connection and topology."""

from __future__ import annotations

from reference_services.runtime.spi.descriptor import AdapterDescriptor

DESCRIPTORS: tuple[AdapterDescriptor, ...] = (
    AdapterDescriptor(
        "amqp",
        "event_bridge",
        "reference_services.adapters.amqp.event_bridge:AmqpBridge",
        service="rabbitmq",
        url_var="AMQP_URL",
        deployable=True,
        protocol="amqp",
        fault_options={
            "heartbeat_s": 1,
            "reconnect_interval_s": 0.2,
            "max_reconnect_interval_s": 1.0,
            "connect_timeout_s": 3.0,
            "publish_timeout_s": 3.0,
        },
    ),
)
