"""risk role: per-symbol series, portfolio and risk snapshots. Pipeline not wired yet: idle."""

from node.roles.base import Role


class RiskRole(Role):
    name = "risk"
    capabilities = ("compute_risk",)
