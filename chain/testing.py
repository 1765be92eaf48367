"""Helpers for tests and benchmarks: build valid chains without a running ledger."""

from __future__ import annotations

from node.identity import Identity

from .block import GENESIS_PREV, Block, BlockHeader, seal_block
from .records import make_record

BASE_MS = 1_750_000_000_000


def sample_record(n: int, actor: str, timestamp_ms: int) -> bytes:
    """A realistic small record (a routed tick batch)."""
    payload = {"to": actor, "ticks": 50 + n % 50, "merkle_root": bytes([n % 256]) * 32, "symbol": "BTC-USD"}
    return make_record("batch_routed", payload, actor, timestamp_ms)[1]


def build_chain(identity: Identity, blocks: int, records_per_block: int = 3, *,
                prev: BlockHeader | None = None, start_ms: int = BASE_MS) -> list[Block]:
    """`blocks` valid blocks continuing `prev` (or from genesis), one millisecond apart."""
    out = []
    for _ in range(blocks):
        height = 0 if prev is None else prev.height + 1
        ts = start_ms + height
        records = [sample_record(height * records_per_block + i, identity.peer_id, ts)
                   for i in range(records_per_block)]
        block = seal_block(identity, height, GENESIS_PREV if prev is None else prev.hash, ts, records)
        out.append(block)
        prev = block.header
    return out
