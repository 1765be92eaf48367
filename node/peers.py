"""The peer table: who is out there, what they can do, and whether they are alive.

Liveness comes from signed capability adverts, not TCP: a hung peer (SIGSTOP) keeps its socket
open but stops advertising, so it turns stale after `stale_after_beats` missed heartbeats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

ONLINE = "online"
STALE = "stale"
GONE = "gone"


@dataclass
class PeerEntry:
    peer_id: str
    name: str = ""
    roles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    addrs: tuple[str, ...] = ()
    version: str = ""
    load: dict = field(default_factory=dict)
    heartbeat_s: float = 5.0
    seq: int = 0
    last_seen: float = 0.0  # monotonic clock
    first_seen: float = 0.0


class PeerTable:
    """peer -> roles, capabilities, addresses, last seen, state (online / stale / gone)."""

    def __init__(self, *, stale_after_beats: float = 3.0, gone_after_beats: float = 12.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, PeerEntry] = {}
        self._stale_after = stale_after_beats
        self._gone_after = gone_after_beats
        self._clock = clock

    def observe(self, peer_id: str, *, name: str, roles, capabilities, addrs, version: str, load: dict,
                heartbeat_s: float, seq: int) -> bool:
        """Record a verified advert. Returns True when the peer was not online before."""
        now = self._clock()
        entry = self._entries.get(peer_id)
        was_online = entry is not None and self.state_of(entry, now) == ONLINE
        if entry is None:
            entry = self._entries[peer_id] = PeerEntry(peer_id, first_seen=now)
        entry.name = name
        entry.roles = tuple(roles)
        entry.capabilities = tuple(capabilities)
        entry.addrs = tuple(addrs)
        entry.version = version
        entry.load = dict(load)
        entry.heartbeat_s = heartbeat_s
        entry.seq = seq
        entry.last_seen = now
        return not was_online

    def last_seq(self, peer_id: str) -> int:
        entry = self._entries.get(peer_id)
        return entry.seq if entry else -1

    def state_of(self, entry: PeerEntry, now: float | None = None) -> str:
        age = (self._clock() if now is None else now) - entry.last_seen
        if age <= self._stale_after * entry.heartbeat_s:
            return ONLINE
        if age <= self._gone_after * entry.heartbeat_s:
            return STALE
        return GONE

    def silence_s(self, entry: PeerEntry) -> float:
        """Seconds since the peer's last advert."""
        return self._clock() - entry.last_seen

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._entries.get(peer_id)

    def entries(self) -> list[PeerEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.name, e.peer_id))

    def online(self) -> list[PeerEntry]:
        now = self._clock()
        return [e for e in self.entries() if self.state_of(e, now) == ONLINE]

    def providers(self, capability: str) -> list[PeerEntry]:
        """Live peers that advertise `capability` ("who can X")."""
        return [e for e in self.online() if capability in e.capabilities]

    def counts(self) -> dict[str, int]:
        now = self._clock()
        out = {ONLINE: 0, STALE: 0, GONE: 0}
        for entry in self._entries.values():
            out[self.state_of(entry, now)] += 1
        return out

    def to_json(self) -> list[dict]:
        now = self._clock()
        return [
            {
                "peer_id": e.peer_id,
                "name": e.name,
                "roles": list(e.roles),
                "capabilities": list(e.capabilities),
                "addrs": list(e.addrs),
                "version": e.version,
                "load": e.load,
                "state": self.state_of(e, now),
                "last_seen_s": round(now - e.last_seen, 3),
            }
            for e in self.entries()
        ]
