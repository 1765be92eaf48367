"""Checking a whole store against the signed blocks, and bringing a damaged one back to its
verified prefix. Opening must never crash on a damaged file: it reports and keeps what verifies.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .block import BlockHeader, decode_block
from .errors import CorruptStore, HeightGap, LedgerError, UnreadableStore
from .store import Store, index_rows
from .verify import verify_block

SALVAGE_BATCH = 256


@dataclass
class ChainReport:
    author: str
    blocks: int = 0  # length of the verified prefix
    records: int = 0
    head: BlockHeader | None = None
    error: LedgerError | None = None

    def to_dict(self) -> dict:
        return {"author": self.author, "blocks": self.blocks, "records": self.records,
                "height": None if self.head is None else self.head.height,
                "hash": None if self.head is None else self.head.hash.hex(),
                "ok": self.error is None, "error": None if self.error is None else self.error.to_dict()}


def verify_stored_chain(store: Store, author: str, *, now_ms: int | None = None) -> ChainReport:
    """Re-verify every stored block of one chain and its record index; stop at the first failure."""
    report = ChainReport(author)
    try:
        for height, stored_hash, data in store.iter_chain(author):
            if height != report.blocks:
                raise HeightGap(f"block {report.blocks} is missing (next stored is {height})")
            block = decode_block(data)
            verify_block(block, report.head, author=author, now_ms=now_ms, claimed_hash=stored_hash)
            if [tuple(r) for r in store.index_of(author, height)] != index_rows(block):
                raise CorruptStore("record index rows disagree with the signed block")
            report.head = block.header
            report.blocks += 1
            report.records += len(block.records)
        if store.index_count(author) != report.records:
            raise CorruptStore("record index holds rows for blocks that are not stored")
    except UnreadableStore:
        raise
    except LedgerError as exc:
        report.error = exc.located(author=author, height=report.blocks)
    return report


def verify_store(store: Store, *, now_ms: int | None = None) -> list[ChainReport]:
    return [verify_stored_chain(store, author, now_ms=now_ms) for author in store.authors()]


def repair(store: Store, reports: list[ChainReport]) -> list[LedgerError]:
    """Quarantine each failing chain's suffix so only verified blocks are served or extended."""
    errors = []
    for report in reports:
        if report.error is not None:
            store.quarantine_from(report.author, report.blocks, report.error.code, report.error.reason)
            errors.append(report.error)
    return errors


def open_verified(path: Path, *, now_ms: int | None = None) -> tuple[Store, list[LedgerError]]:
    """Open the store, verify it, drop what does not verify. Returns the store and what was wrong."""
    try:
        store = Store.open(path)
    except UnreadableStore as exc:
        return salvage(path, exc, now_ms=now_ms)
    try:
        return store, repair(store, verify_store(store, now_ms=now_ms))
    except UnreadableStore as exc:
        store.close()
        return salvage(path, exc, now_ms=now_ms)


def _move_aside(path: Path) -> Path:
    n = 1
    while Path(f"{path}.corrupt-{n}").exists():
        n += 1
    target = Path(f"{path}.corrupt-{n}")
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    return target


def salvage(path: Path, cause: LedgerError, *, now_ms: int | None = None) -> tuple[Store, list[LedgerError]]:
    """Copy every block that is still readable and verifies into a fresh store.

    The damaged file is kept beside it as `<name>.corrupt-N` for inspection.
    """
    errors: list[LedgerError] = [cause]
    damaged = _move_aside(path)
    store = Store.open(path)
    try:
        old = sqlite3.connect(damaged, isolation_level=None)
    except sqlite3.Error:
        return store, errors
    try:
        try:
            authors = [r[0] for r in old.execute("SELECT author FROM chains")]
        except sqlite3.DatabaseError as exc:
            errors.append(UnreadableStore(f"chain list unreadable: {exc}"))
            authors = []
        for author in authors:
            error = _copy_chain(old, store, author, now_ms)
            if error is not None:
                errors.append(error)
        try:
            for author, height, proof in old.execute("SELECT author, height, proof FROM forks"):
                store.add_fork_proof(author, height, proof)
        except sqlite3.DatabaseError as exc:
            errors.append(UnreadableStore(f"fork proofs unreadable: {exc}"))
    finally:
        old.close()
    return store, errors


def _copy_chain(old: sqlite3.Connection, store: Store, author: str, now_ms: int | None) -> LedgerError | None:
    prev, batch, height = None, [], 0
    error: LedgerError | None = None
    while True:
        try:
            row = old.execute("SELECT b.data FROM blocks b JOIN chains c ON b.chain = c.id "
                              "WHERE c.author = ? AND b.height = ?", (author, height)).fetchone()
        except sqlite3.DatabaseError as exc:
            error = UnreadableStore(f"block unreadable: {exc}", author=author, height=height)
            break
        if row is None:
            break
        try:
            block = decode_block(row[0])
            verify_block(block, prev, author=author, now_ms=now_ms)
        except LedgerError as exc:
            error = exc.at(author=author, height=height)
            break
        batch.append((block, row[0]))
        if len(batch) >= SALVAGE_BATCH:
            store.append_blocks(author, batch)
            batch = []
        prev, height = block.header, height + 1
    if batch:
        store.append_blocks(author, batch)
    return error
