"""Read-only ledger queries returning JSON-able dicts: one implementation for the offline CLI
and the node's control channel (`ledger heads|tail|show|find|verify|prove`).

Every function takes an open `Store`; bytes are rendered as hex.
"""

from __future__ import annotations

from typing import Any

from . import codec
from .audit import verify_store
from .block import Block, decode_block
from .errors import LedgerError, NotFound
from .records import decode_record
from .store import IndexRow, Store
from .verify import FORK_PROOF_TAG, make_inclusion_proof, verify_fork_proof, verify_inclusion_proof


def jsonable(value: Any) -> Any:
    """Bytes become hex, tuples lists; everything else is already JSON."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def _block(store: Store, author: str, height: int) -> Block:
    data = store.block_bytes(author, height)
    if data is None:
        raise NotFound("no such block", author=author, height=height)
    return decode_block(data)


def _record_dict(block: Block, index: int, author: str) -> dict:
    record = decode_record(block.records[index])
    return {"author": author, "height": block.height, "index": index, "type": record.type,
            "actor": record.actor, "timestamp_ms": record.timestamp_ms,
            "record_hash": block.record_hashes[index].hex(), "payload": jsonable(record.payload)}


def _rows_with_payload(store: Store, rows: list[IndexRow]) -> list[dict]:
    cache: dict[tuple[str, int], Block] = {}
    out = []
    for row in rows:
        key = (row.author, row.height)
        if key not in cache:
            cache[key] = _block(store, row.author, row.height)
        out.append(_record_dict(cache[key], row.index, row.author))
    return out


def heads(store: Store) -> dict:
    return {"heads": [h.to_dict() for h in store.heads()],
            "forks": [{"author": a, "height": h} for a, h, _ in store.fork_proofs()]}


def show(store: Store, author: str, height: int) -> dict:
    block = _block(store, author, height)
    h = block.header
    return {"author": author, "height": h.height, "hash": h.hash.hex(), "version": h.version,
            "prev_hash": h.prev_hash.hex(), "timestamp_ms": h.timestamp_ms, "record_count": h.record_count,
            "merkle_root": h.merkle_root.hex(), "signature": block.signature.hex(),
            "size": len(block.encode()),
            "records": [_record_dict(block, i, author) for i in range(len(block.records))]}


def tail(store: Store, author: str | None = None, n: int = 10) -> dict:
    """The newest `n` records (of one author, or of all chains)."""
    return {"records": _rows_with_payload(store, store.find(author=author, limit=n))}


def find(store: Store, *, record_type: str | None = None, actor: str | None = None,
         author: str | None = None, record_hash: str | None = None, limit: int = 50) -> dict:
    rows = store.find(record_type=record_type, actor=actor, author=author,
                      record_hash=None if record_hash is None else bytes.fromhex(record_hash), limit=limit)
    return {"records": _rows_with_payload(store, rows)}


def verify(store: Store, *, now_ms: int | None = None) -> dict:
    """Verify every chain; `first_failure` names author, height and reason of the first problem."""
    try:
        reports = verify_store(store, now_ms=now_ms)
    except LedgerError as exc:
        return {"ok": False, "chains": [], "first_failure": exc.to_dict()}
    failures = [r.error.to_dict() for r in reports if r.error is not None]
    for author, height, proof in store.fork_proofs():
        failures.append({"code": "fork_detected", "author": author, "height": height,
                         "reason": "author signed two different blocks at one height"})
    return {"ok": not failures, "chains": [r.to_dict() for r in reports],
            "first_failure": failures[0] if failures else None}


def prove(store: Store, author: str, height: int, index: int) -> dict:
    block = _block(store, author, height)
    if not 0 <= index < len(block.records):
        raise NotFound(f"block has no record {index}", author=author, height=height)
    proof = make_inclusion_proof(block, index)
    return {**_record_dict(block, index, author), "proof": proof.hex()}


def prove_hash(store: Store, record_hash: str) -> dict:
    rows = store.find(record_hash=bytes.fromhex(record_hash), limit=1)
    if not rows:
        raise NotFound(f"no record with hash {record_hash}")
    return prove(store, rows[0].author, rows[0].height, rows[0].index)


def verify_proof(proof: bytes) -> dict:
    """Pure: check an inclusion proof or a fork proof, whichever `proof` is."""
    try:
        if proof[1:].startswith(codec.encode(FORK_PROOF_TAG)):
            fork = verify_fork_proof(proof)
            return {"ok": True, "kind": "fork", "author": fork.author, "height": fork.height,
                    "hashes": [fork.first.header.hash.hex(), fork.second.header.hash.hex()]}
        checked = verify_inclusion_proof(proof)
    except LedgerError as exc:
        return {"ok": False, "error": exc.to_dict()}
    h, r = checked.header, checked.record
    return {"ok": True, "kind": "inclusion", "author": h.author_id, "height": h.height,
            "block_hash": h.hash.hex(), "index": checked.index, "record_hash": checked.record_hash.hex(),
            "record": {"type": r.type, "actor": r.actor, "timestamp_ms": r.timestamp_ms,
                       "payload": jsonable(r.payload)}}
