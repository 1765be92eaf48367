"""Who owns a symbol: rendezvous (highest-random-weight) hashing over live capable peers.

Every node computes the same ranking from the same peer table, so per-symbol state (detector,
price series) lives on one node; when the owner dies, only its symbols move (to the next-ranked
peer), and they move back when it returns.
"""

from __future__ import annotations

import hashlib


def weight(peer_id: str, key: str) -> bytes:
    return hashlib.sha256(peer_id.encode() + b"\x00" + key.encode()).digest()


def rank(key: str, peer_ids: list[str] | tuple[str, ...] | set[str]) -> list[str]:
    """Peers ordered by preference for `key` (first = owner)."""
    return sorted(set(peer_ids), key=lambda p: weight(p, key), reverse=True)

