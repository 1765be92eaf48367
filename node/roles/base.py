"""What a role is: a name, the capabilities it advertises, and a service that composes protocols.

A role never owns the transport: it gets the node's host, peer table, control registry and
metrics through a RoleContext and registers its stream handlers and control commands there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import trio

if TYPE_CHECKING:
    from node.admission import Admission
    from node.config import NodeConfig
    from node.host import Host
    from node.identity import Identity
    from node.metrics import Metrics
    from node.peers import PeerTable
    from node.protocols.control import CommandRegistry


@dataclass
class RoleContext:
    config: "NodeConfig"
    identity: "Identity"
    host: "Host"
    peers: "PeerTable"
    admission: "Admission"
    control: "CommandRegistry"
    metrics: "Metrics"
    services: dict[str, Any]  # shared node services by name (e.g. "ledger" once it exists)


class Role:
    name: ClassVar[str] = ""
    capabilities: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: RoleContext) -> None:
        self.ctx = ctx

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the role's protocols; call task_status.started() once ready. Default: idle."""
        task_status.started()
        await trio.sleep_forever()

    def status(self) -> dict[str, Any]:
        """Role-specific figures shown in `status`."""
        return {}
