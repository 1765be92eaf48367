"""SQLite storage of every chain this node holds (its own and replicas).

Blocks are stored as the exact bytes that were signed; the `records` table is only an index
(author, height, index, type, actor, time, record hash) for find/prove and is checked against
the blocks on every verification. WAL with synchronous=FULL: a committed block survives kill -9
and power loss, and each batch of blocks is one transaction, so a crash leaves a prefix.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cbor2

from .block import Block
from .errors import CorruptStore, UnreadableStore

STORE_FILE_NAME = "ledger.sqlite"
SCHEMA_VERSION = "1"  # bump with a migration and a new fixture when tables change

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chains(id INTEGER PRIMARY KEY, author TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS blocks(
    chain INTEGER NOT NULL, height INTEGER NOT NULL, hash BLOB NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY(chain, height));
CREATE TABLE IF NOT EXISTS names(id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS records(
    chain INTEGER NOT NULL, height INTEGER NOT NULL, idx INTEGER NOT NULL,
    type INTEGER NOT NULL, actor INTEGER NOT NULL,  -- ids in `names`: peer ids are long
    timestamp INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY(chain, height, idx)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_hash ON records(hash);
CREATE INDEX IF NOT EXISTS records_by_type ON records(type);
CREATE INDEX IF NOT EXISTS records_by_actor ON records(actor);
CREATE TABLE IF NOT EXISTS forks(
    author TEXT NOT NULL, height INTEGER NOT NULL, proof BLOB NOT NULL, PRIMARY KEY(author, height));
CREATE TABLE IF NOT EXISTS quarantine(
    author TEXT NOT NULL, height INTEGER NOT NULL, data BLOB NOT NULL, code TEXT NOT NULL,
    reason TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Head:
    author: str
    height: int
    hash: bytes

    def to_dict(self) -> dict:
        return {"author": self.author, "height": self.height, "hash": self.hash.hex()}


@dataclass(frozen=True)
class IndexRow:
    author: str
    height: int
    index: int
    type: str
    actor: str
    timestamp_ms: int
    record_hash: bytes


def index_rows(block: Block) -> list[tuple[int, str, str, int, bytes]]:
    """(index, type, actor, timestamp, hash) of each record; the block is already verified."""
    hashes = block.record_hashes
    rows = []
    for i, data in enumerate(block.records):
        rtype, actor, ts, _ = cbor2.loads(data)
        rows.append((i, rtype, actor, ts, hashes[i]))
    return rows


class Store:
    """One SQLite connection, safe to share between trio worker threads (one at a time)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.readonly = readonly
        self._chain_ids: dict[str, int] = {}
        self._name_ids: dict[str, int] = {}

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> "Store":
        """Open (creating unless `readonly`) the store at `path`; raises CorruptStore if unusable."""
        path = Path(path)
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                       check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta VALUES('schema_version', ?)", (SCHEMA_VERSION,))
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            # A row whose type was changed to TEXT must fail verification by name, not crash reads.
            conn.text_factory = lambda raw: raw.decode("utf-8", "replace")
        except sqlite3.Error as exc:
            raise UnreadableStore(f"cannot open {path}: {exc}") from None
        if version is None or version[0] != SCHEMA_VERSION:
            conn.close()
            raise CorruptStore(f"{path} has schema version {version and version[0]}, expected {SCHEMA_VERSION}")
        return cls(conn, path, readonly)

    @contextmanager
    def snapshot(self) -> Iterator["Store"]:
        """Read everything inside one transaction: a consistent view while writers go on."""
        with self._lock:
            self._conn.execute("BEGIN")
        try:
            yield self
        finally:
            with self._lock:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise UnreadableStore(f"read failed: {exc}") from None

    # ---- chains and heads --------------------------------------------------------------

    def authors(self) -> list[str]:
        return [r[0] for r in self._query("SELECT author FROM chains ORDER BY author")]

    def heads(self) -> list[Head]:
        rows = self._query(
            "SELECT c.author, b.height, b.hash FROM chains c JOIN blocks b ON b.chain = c.id "
            "WHERE b.height = (SELECT MAX(height) FROM blocks WHERE chain = c.id) ORDER BY c.author")
        return [Head(*r) for r in rows]

    def head(self, author: str) -> Head | None:
        rows = self._query(
            "SELECT b.height, b.hash FROM blocks b JOIN chains c ON b.chain = c.id WHERE c.author = ? "
            "ORDER BY b.height DESC LIMIT 1", (author,))
        return Head(author, *rows[0]) if rows else None

    def block_bytes(self, author: str, height: int) -> bytes | None:
        rows = self._query("SELECT b.data FROM blocks b JOIN chains c ON b.chain = c.id "
                           "WHERE c.author = ? AND b.height = ?", (author, height))
        return rows[0][0] if rows else None

    def get_blocks(self, author: str, start_height: int, max_count: int, max_bytes: int) -> list[bytes]:
        """Consecutive encoded blocks from `start_height`; always at least one if it exists.

        Read in small pages, so a peer asking for a huge count never makes us load the chain."""
        out: list[bytes] = []
        total = 0
        for height, _, data in self.iter_chain(author, start_height, page=min(64, max(1, max_count))):
            if len(out) >= max_count or (out and total + len(data) > max_bytes) or height != start_height + len(out):
                break
            out.append(data)
            total += len(data)
        return out

    def iter_chain(self, author: str, start_height: int = 0, page: int = 512) -> Iterator[tuple[int, bytes, bytes]]:
        """(height, stored hash, data) in height order, paged so the lock is never held long."""
        height = start_height
        while True:
            rows = self._query("SELECT b.height, b.hash, b.data FROM blocks b JOIN chains c ON b.chain = c.id "
                               "WHERE c.author = ? AND b.height >= ? ORDER BY b.height LIMIT ?",
                               (author, height, page))
            yield from rows
            if len(rows) < page:
                return
            height = rows[-1][0] + 1

    def index_of(self, author: str, height: int) -> list[tuple[int, str, str, int, bytes]]:
        return self._query("SELECT r.idx, t.text, a.text, r.timestamp, r.hash FROM records r "
                           "JOIN chains c ON r.chain = c.id JOIN names t ON t.id = r.type "
                           "JOIN names a ON a.id = r.actor WHERE c.author = ? AND r.height = ? ORDER BY r.idx",
                           (author, height))

    def index_count(self, author: str) -> int:
        return self._query("SELECT COUNT(*) FROM records r JOIN chains c ON r.chain = c.id WHERE c.author = ?",
                           (author,))[0][0]

    # ---- records -------------------------------------------------------------------------

    def find(self, *, record_type: str | None = None, actor: str | None = None, author: str | None = None,
             record_hash: bytes | None = None, limit: int = 50) -> list[IndexRow]:
        """Index rows matching every given filter, newest first."""
        where, params = [], []
        for column, value in (("t.text", record_type), ("a.text", actor), ("c.author", author),
                              ("r.hash", record_hash)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = ("SELECT c.author, r.height, r.idx, t.text, a.text, r.timestamp, r.hash FROM records r "
               "JOIN chains c ON r.chain = c.id JOIN names t ON t.id = r.type JOIN names a ON a.id = r.actor" + (" WHERE " + " AND ".join(where) if where else "") +
               " ORDER BY r.timestamp DESC, r.height DESC, r.idx DESC LIMIT ?")
        return [IndexRow(*r) for r in self._query(sql, (*params, limit))]

    def counts(self) -> dict[str, int]:
        (chains,), = self._query("SELECT COUNT(*) FROM chains")
        (blocks,), = self._query("SELECT COUNT(*) FROM blocks")
        (records,), = self._query("SELECT COUNT(*) FROM records")
        return {"chains": chains, "blocks": blocks, "records": records}

    # ---- writes ----------------------------------------------------------------------------

    def _write(self, fn) -> object:
        if self.readonly:
            raise CorruptStore("store is open read-only")
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._conn)
                except BaseException:
                    self._chain_ids.clear()
                    self._name_ids.clear()
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return result
            except sqlite3.IntegrityError as exc:
                raise CorruptStore(f"conflicting write: {exc}") from None
            except sqlite3.DatabaseError as exc:
                raise UnreadableStore(f"write failed: {exc}") from None

    def _chain_id(self, conn: sqlite3.Connection, author: str) -> int:
        if author not in self._chain_ids:
            conn.execute("INSERT OR IGNORE INTO chains(author) VALUES(?)", (author,))
            self._chain_ids[author] = conn.execute("SELECT id FROM chains WHERE author = ?", (author,)).fetchone()[0]
        return self._chain_ids[author]

    def _name_id(self, conn: sqlite3.Connection, text: str) -> int:
        if text not in self._name_ids:
            conn.execute("INSERT OR IGNORE INTO names(text) VALUES(?)", (text,))
            self._name_ids[text] = conn.execute("SELECT id FROM names WHERE text = ?", (text,)).fetchone()[0]
        return self._name_ids[text]

    def append_blocks(self, author: str, blocks: list[tuple[Block, bytes]]) -> None:
        """Store already-verified (block, encoded bytes) pairs atomically, durable on return."""
        def write(conn: sqlite3.Connection) -> None:
            chain = self._chain_id(conn, author)
            for block, data in blocks:
                conn.execute("INSERT INTO blocks VALUES(?, ?, ?, ?)", (chain, block.height, block.hash, data))
                conn.executemany("INSERT INTO records VALUES(?, ?, ?, ?, ?, ?, ?)",
                                 [(chain, block.height, i, self._name_id(conn, rtype), self._name_id(conn, actor),
                                   ts, rhash) for i, rtype, actor, ts, rhash in index_rows(block)])
        self._write(write)

    def quarantine_from(self, author: str, height: int, code: str, reason: str) -> int:
        """Move blocks `height`.. of `author` aside (kept as evidence, no longer served)."""
        def write(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT id FROM chains WHERE author = ?", (author,)).fetchone()
            if row is None:
                return 0
            conn.execute("INSERT INTO quarantine SELECT ?, height, data, ?, ? FROM blocks "
                         "WHERE chain = ? AND height >= ?", (author, code, reason, row[0], height))
            moved = conn.execute("DELETE FROM blocks WHERE chain = ? AND height >= ?", (row[0], height)).rowcount
            conn.execute("DELETE FROM records WHERE chain = ? AND height >= ?", (row[0], height))
            return moved
        return self._write(write)

    def add_fork_proof(self, author: str, height: int, proof: bytes) -> bool:
        """Remember a fork proof; True when it is the first one for that (author, height)."""
        return bool(self._write(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO forks VALUES(?, ?, ?)", (author, height, proof)).rowcount))

    def fork_proofs(self) -> list[tuple[str, int, bytes]]:
        return self._query("SELECT author, height, proof FROM forks ORDER BY author, height")

    def quarantined(self) -> list[tuple[str, int, str, str]]:
        return self._query("SELECT author, height, code, reason FROM quarantine ORDER BY rowid")
