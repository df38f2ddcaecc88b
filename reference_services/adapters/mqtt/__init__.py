"""MQTT 5 (Mosquitto) adapters: the event bridge, the MQTT-native queue bridge, their
connection and topic layout."""

from __future__ import annotations

from reference_services.runtime.spi.descriptor import AdapterDescriptor

DESCRIPTORS: tuple[AdapterDescriptor, ...] = (
    AdapterDescriptor(
        "mqtt",
        "event_bridge",
        "reference_services.adapters.mqtt.event_bridge:MqttBridge",
        service="mosquitto",
        url_var="MQTT_URL",
        deployable=True,
        protocol="mqtt",
        fault_options={
            "keepalive_s": 1,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "op_timeout_s": 3.0,
            "publish_timeout_s": 3.0,
        },
    ),
    AdapterDescriptor(
        "mqtt",
        "queue_bridge",
        "reference_services.adapters.mqtt.queue_bridge:MqttQueueBridge",
        service="mosquitto",
        url_var="MQTT_URL",
        deployable=True,
        protocol="mqtt",
    ),
)
