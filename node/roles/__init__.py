"""The registry of roles: the one place that lists what a node can be."""

from node.roles.anomaly import AnomalyRole
from node.roles.base import Role, RoleContext
from node.roles.bootstrap import BootstrapRole
from node.roles.ingestion import IngestionRole
from node.roles.iot import IotRole
from node.roles.risk import RiskRole

ROLES: dict[str, type[Role]] = {cls.name: cls for cls in (BootstrapRole, IotRole, IngestionRole, AnomalyRole, RiskRole)}


def capabilities_of(role_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    caps: list[str] = []
    for name in role_names:
        for cap in ROLES[name].capabilities:
            if cap not in caps:
                caps.append(cap)
    return tuple(caps)


__all__ = ["ROLES", "Role", "RoleContext", "capabilities_of"]
