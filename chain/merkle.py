"""Merkle tree over record hashes, with O(log n) inclusion proofs.

Leaves and inner nodes are hashed under different domain tags, so a leaf can never pass for a
node (the second-preimage trick). An odd node at the end of a level is carried up unchanged,
which gives the same tree shape as RFC 6962.
"""

from __future__ import annotations

from .codec import digest, domain_hasher

LEAF_DOMAIN = "ledger/merkle-leaf/v1"
NODE_DOMAIN = "ledger/merkle-node/v1"
EMPTY_ROOT = digest("ledger/merkle-empty/v1", b"")


def leaf_hash(item_hash: bytes) -> bytes:
    return digest(LEAF_DOMAIN, item_hash)


def node_hash(left: bytes, right: bytes) -> bytes:
    return digest(NODE_DOMAIN, left + right)


def _next_level(level: list[bytes]) -> list[bytes]:
    nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        nxt.append(level[-1])
    return nxt


def merkle_root(item_hashes: list[bytes]) -> bytes:
    """The same hashes as leaf_hash / node_hash, inlined: ingestion roots ~3 trees per tick (its
    rolled-up records), and the per-call overhead was most of their cost (bench/micro.py evidence)."""
    if not item_hashes:
        return EMPTY_ROOT
    leaf, node = domain_hasher(LEAF_DOMAIN), domain_hasher(NODE_DOMAIN)
    level = []
    for item in item_hashes:
        h = leaf.copy()
        h.update(item)
        level.append(h.digest())
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level) - 1, 2):
            h = node.copy()
            h.update(level[i])
            h.update(level[i + 1])
            nxt.append(h.digest())
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_path(item_hashes: list[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf `index` up to the root (carried-up levels contribute none)."""
    if not 0 <= index < len(item_hashes):
        raise IndexError(f"leaf {index} out of range for {len(item_hashes)} leaves")
    level = [leaf_hash(h) for h in item_hashes]
    path = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        level = _next_level(level)
        index //= 2
    return path


def root_from_path(item_hash: bytes, index: int, count: int, path: list[bytes]) -> bytes | None:
    """The root implied by a path, or None when the path's length does not fit (index, count)."""
    if not 0 <= index < count:
        return None
    node = leaf_hash(item_hash)
    steps = iter(path)
    size = count
    while size > 1:
        if index % 2:
            sibling = next(steps, None)
            if sibling is None:
                return None
            node = node_hash(sibling, node)
        elif index + 1 < size:
            sibling = next(steps, None)
            if sibling is None:
                return None
            node = node_hash(node, sibling)
        index //= 2
        size = (size + 1) // 2
    if next(steps, None) is not None:
        return None
    return node
