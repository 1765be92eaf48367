"""Deliver a batch to the owner of a key for a capability, failing over down the ranking.

Candidates are the live peers advertising the capability, plus this node when one of its own
roles has it (then the batch is handed over in-process, no stream). The ranking is rendezvous
hashing (`node.routing`), so every node agrees on owners without coordination.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from node.host import Host
from node.metrics import Metrics
from node.peers import STALE, PeerTable
from node.protocols import ticks
from node.routing import rank

log = logging.getLogger("quantian.delivery")


@dataclass
class GroupedResult:
    """What `deliver_grouped` achieved: per receiving peer the items and the batch it acked."""

    delivered: list[tuple[str, list[Any], ticks.Batch]] = field(default_factory=list)
    undelivered: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Dispatcher:
    def __init__(self, host: Host, peers: PeerTable, own_capabilities: tuple[str, ...],
                 local_handlers: dict[str, ticks.BatchFn], metrics: Metrics) -> None:
        self._host = host
        self._peers = peers
        self._own_capabilities = own_capabilities
        self._local = local_handlers
        self._metrics = metrics
        self._senders = ticks.Senders(host)

    def candidates(self, capability: str, key: str) -> list[str]:
        """Live peers able to do `capability`, best owner of `key` first (may include this node)."""
        peer_ids = [e.peer_id for e in self._peers.providers(capability)]
        # A peer whose adverts are late (a starved CPU) but whose connection is up still counts:
        # ownership must not flap with gossip delays. A dead peer's connection closes within
        # a second; a hung one is skipped once a delivery to it times out.
        peer_ids += [e.peer_id for e in self._peers.entries()
                     if capability in e.capabilities and self._peers.state_of(e) == STALE
                     and self._host.is_connected(e.peer_id)]
        if capability in self._own_capabilities:
            peer_ids.append(self._host.peer_id)
        return rank(key, peer_ids)

    async def send_to(self, peer_id: str, batch: ticks.Batch) -> dict[str, Any]:
        """Send one batch to one peer (in-process when it is us). Raises DeliveryFailed / BatchRefused."""
        if peer_id == self._host.peer_id:
            handler = self._local.get(batch.kind)
            if handler is None:
                raise ticks.BatchRefused(f"this node has no {batch.kind} handler")
            return await handler(peer_id, batch)
        return await self._senders.to(peer_id).send(batch)

    async def deliver_grouped(self, capability: str, kind: str, entries: list[Any], *, key, wire, item_id
                              ) -> GroupedResult:
        """Send each entry to the owner of `key(entry)`: one batch per owner; when an owner fails,
        its entries are regrouped by their next-ranked live peer, each peer tried once per call."""
        result = GroupedResult()
        excluded: set[str] = set()
        remaining = list(entries)
        while remaining:
            groups: dict[str, list[Any]] = {}
            owner_of: dict[Any, str | None] = {}  # one ranking per key per round, not per entry
            for entry in remaining:
                k = key(entry)
                if k not in owner_of:
                    ranked = [p for p in self.candidates(capability, k) if p not in excluded]
                    owner_of[k] = ranked[0] if ranked else None
                owner = owner_of[k]
                if owner is not None:
                    groups.setdefault(owner, []).append(entry)
                else:
                    result.undelivered.append(entry)
            remaining = []
            for peer_id, group in groups.items():
                batch = ticks.new_batch(kind, [wire(e) for e in group], [item_id(e) for e in group])
                try:
                    await self.send_to(peer_id, batch)
                except (ticks.DeliveryFailed, ticks.BatchRefused) as exc:
                    self._metrics.inc(f"delivery.failed.{kind}")
                    log.warning("%s", exc)
                    result.errors.append(str(exc))
                    excluded.add(peer_id)
                    remaining.extend(group)
                    continue
                self._metrics.inc(f"delivery.batches.{kind}")
                self._metrics.inc(f"delivery.items.{kind}", len(group))
                result.delivered.append((peer_id, group, batch))
        if result.undelivered and not result.errors:
            result.errors.append(f"no live peer can {capability}")
        return result
