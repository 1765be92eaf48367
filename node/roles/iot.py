"""iot role: the MQTT bridge (paho -> trio -> ingestion). The pipeline is not wired yet: idle."""

from node.roles.base import Role


class IotRole(Role):
    name = "iot"
    capabilities = ("collect_edge_telemetry", "mqtt_bridge", "publish_events")
