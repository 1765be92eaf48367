"""Which nodes a testnet of N nodes has: names and roles. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

MIN_NODES = 6
PIPELINE_ROLES = ("iot", "ingestion", "anomaly", "risk")
# Extra nodes (beyond the first six) take pipeline roles in this order, round-robin: the
# analytics roles first, since they are the ones that share work by rendezvous hashing.
EXTRA_ROLE_ORDER = ("anomaly", "risk", "ingestion", "iot")


class PlanError(ValueError):
    """A testnet of that shape cannot be built."""


@dataclass(frozen=True)
class NodePlan:
    name: str
    roles: tuple[str, ...]

    @property
    def is_bootstrap(self) -> bool:
        return "bootstrap" in self.roles


def plan_nodes(count: int) -> list[NodePlan]:
    """bootstrap-1, bootstrap-2, iot-1, ingestion-1, anomaly-1, risk-1, then anomaly-2, risk-2, ..."""
    if count < MIN_NODES:
        raise PlanError(f"a testnet needs at least {MIN_NODES} nodes (2 bootstrap + iot + ingestion + anomaly + risk), got {count}")
    plans = [NodePlan("bootstrap-1", ("bootstrap",)), NodePlan("bootstrap-2", ("bootstrap",))]
    plans += [NodePlan(f"{role}-1", (role,)) for role in PIPELINE_ROLES]
    for i in range(count - MIN_NODES):
        plans.append(next_node(plans, EXTRA_ROLE_ORDER[i % len(EXTRA_ROLE_ORDER)]))
    return plans


def next_node(existing: list[NodePlan], role: str) -> NodePlan:
    """The next free name for one more node of `role` (e.g. risk-3)."""
    if role not in PIPELINE_ROLES + ("bootstrap",):
        raise PlanError(f"unknown role {role!r} (known: bootstrap, {', '.join(PIPELINE_ROLES)})")
    taken = {p.name for p in existing}
    n = 1
    while f"{role}-{n}" in taken:
        n += 1
    return NodePlan(f"{role}-{n}", (role,))
