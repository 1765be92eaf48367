"""Bootstrap supernode: an ordinary node that others dial first, and the network's auditor.

Every node serves peer exchange in the hello handshake; a bootstrap is simply the node whose
address is configured everywhere, so it learns (and hands out) the whole membership. It also
records membership changes (`peer_joined`, `peer_left`) and periodically a `checkpoint` listing
the heads of every chain it holds: one signed, hash-chained summary of the network's history.
"""

from __future__ import annotations

from typing import Any

import logging

import trio

from chain.errors import LedgerError
from node.peers import ONLINE
from node.roles.base import Role

CHECKPOINT_INTERVAL_S = 10.0

log = logging.getLogger("quantian.bootstrap")


class BootstrapRole(Role):
    name = "bootstrap"
    capabilities = ("peer_exchange", "bootstrap_discovery", "ledger_checkpoint")

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self._states: dict[str, str] = {}
        self._last_checkpoint: tuple | None = None
        self.checkpoints = 0
        interval = ctx.config.extra.get("bootstrap", {}).get("checkpoint_interval_s", CHECKPOINT_INTERVAL_S)
        self._checkpoint_interval = float(interval)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_membership)
            nursery.start_soon(self._checkpoint_loop)
            task_status.started()

    async def _watch_membership(self) -> None:
        ledger = self.ctx.services["ledger"]
        me = self.ctx.identity.peer_id
        while True:
            for entry in self.ctx.peers.entries():
                state = self.ctx.peers.state_of(entry)
                before = self._states.get(entry.peer_id)
                if state == before:
                    continue
                self._states[entry.peer_id] = state
                if state == ONLINE:
                    ledger.record_soon("peer_joined", {"peer": entry.peer_id, "name": entry.name,
                                                       "roles": list(entry.roles),
                                                       "capabilities": list(entry.capabilities)}, me)
                elif before == ONLINE:
                    ledger.record_soon("peer_left", {"peer": entry.peer_id, "name": entry.name,
                                                     "reason": f"{state}: missed heartbeats"}, me)
            await trio.sleep(self.ctx.config.heartbeat_s)

    async def _checkpoint_loop(self) -> None:
        ledger = self.ctx.services["ledger"]
        while True:
            await trio.sleep(self._checkpoint_interval)  # periodic by design
            heads = await ledger.ledger.heads()
            summary = tuple((h.author, h.height, h.hash) for h in heads if h.author != self.ctx.identity.peer_id)
            # Only changes of non-bootstrap chains trigger a checkpoint: two bootstraps recording
            # each other's checkpoints would otherwise append forever on an idle network.
            bootstraps = {e.peer_id for e in self.ctx.peers.entries() if "bootstrap" in e.roles}
            trigger = tuple(h for h in summary if h[0] not in bootstraps)
            if trigger and trigger != self._last_checkpoint:
                try:
                    await ledger.record("checkpoint", {"heads": [list(h) for h in summary]}, self.ctx.identity.peer_id)
                except LedgerError as exc:
                    log.error("checkpoint not recorded: %s", exc)
                    continue
                self._last_checkpoint = trigger
                self.checkpoints += 1

    def status(self) -> dict[str, Any]:
        return {"checkpoints": self.checkpoints}
