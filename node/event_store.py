"""Ingestion's durable store of market events: de-duplication, outbox and recent-ticks view.

An event is acknowledged to the iot bridge only once it is committed here, so a crash after the
ack loses nothing: unrouted events stay `pending` for each downstream kind (scoring, risk) and
are sent again after a restart. The event id is the primary key, so duplicates (QoS 1
redelivery, two bridges) are dropped durably, across restarts too. Blocking SQLite calls: run
them in a worker thread. Delivered events older than the newest `keep_delivered` are pruned.

`counts` is kept in memory, updated by each committed change: counting 200,000 kept rows with
SQL took 26-50 ms, under the store's lock, on every `status` request (the shell, the testnet's
live summary and the bench poll it).

The outbox reads events back within milliseconds of storing them, once per downstream kind, so
the wire lists of the newest `recent_wires` events stay in memory and `pending` decodes the
stored CBOR only for older ones (after a restart or an outage): py-spy put ~9 % of ingestion's
GIL time in that decoding. The lists are shared, so callers must not modify them.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cbor2

log = logging.getLogger("quantian.event_store")

STORE_FILE_NAME = "events.sqlite"
DOWNSTREAM_KINDS = ("score", "risk")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    symbol TEXT NOT NULL,
    event_time_us INTEGER NOT NULL,
    wire BLOB NOT NULL,
    pending_score INTEGER NOT NULL DEFAULT 1,
    pending_risk INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS events_pending_score ON events(pending_score, seq);
CREATE INDEX IF NOT EXISTS events_pending_risk ON events(pending_risk, seq);
CREATE INDEX IF NOT EXISTS events_symbol ON events(symbol, seq);
CREATE TABLE IF NOT EXISTS totals(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class EventStore:
    def __init__(self, data_dir: Path, *, keep_delivered: int = 200_000, recent_wires: int = 8_000) -> None:
        self.path = Path(data_dir) / STORE_FILE_NAME
        self._keep = keep_delivered
        self._recent_cap = recent_wires
        self._recent: dict[str, list[Any]] = {}  # event_id -> wire of the newest stored events
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            #: seq of the newest stored event (ingestion tells from it which rows a batch added)
            self.last_seq: int = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            # events ever stored (rows are pruned; seq is no count: an ignored duplicate uses one up);
            # a store from before this counter starts it at the rows it holds
            self._conn.execute("INSERT OR IGNORE INTO totals VALUES ('stored', (SELECT COUNT(*) FROM events))")
            self._stored_total: int = self._conn.execute("SELECT value FROM totals WHERE name = 'stored'").fetchone()[0]
            # one scan at open; from then on every committed change updates these (see counts)
            self._rows_by_symbol: dict[str, int] = {}
            self._pending = {kind: 0 for kind in DOWNSTREAM_KINDS}
            for symbol, n, score, risk in self._conn.execute(
                    "SELECT symbol, COUNT(*), SUM(pending_score), SUM(pending_risk) FROM events GROUP BY symbol"):
                self._rows_by_symbol[symbol] = n
                self._pending["score"] += score
                self._pending["risk"] += risk
        self._inserted_since_prune = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def known(self, event_ids: list[str]) -> set[str]:
        """Which of `event_ids` are already stored."""
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(event_ids), 500):
                chunk = event_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(r[0] for r in self._conn.execute(
                    f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk))
        return found

    def add(self, rows: list[tuple[str, str, int, list[Any]]]) -> int:
        """Commit (event_id, symbol, event_time_us, wire) rows durably; returns how many were new."""
        with self._transaction() as on_commit:
            before = self._conn.total_changes
            self._conn.executemany(
                "INSERT OR IGNORE INTO events(event_id, symbol, event_time_us, wire) VALUES (?,?,?,?)",
                [(eid, sym, t, cbor2.dumps(wire)) for eid, sym, t, wire in rows])
            added = self._conn.total_changes - before
            if added:
                last_seq = self._conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
                self._conn.execute("UPDATE totals SET value = value + ? WHERE name = 'stored'", (added,))
                if added == len(rows):
                    new_by_symbol = Counter(sym for _, sym, _, _ in rows)
                else:  # some were duplicates: the rows this transaction added, per symbol
                    new_by_symbol = Counter(dict(self._conn.execute(
                        "SELECT symbol, COUNT(*) FROM events WHERE seq > ? GROUP BY symbol", (self.last_seq,))))
                on_commit.append(lambda: self._count_added(last_seq, new_by_symbol))
        if added == len(rows):  # all new (a duplicate's stored wire may differ from the one given)
            self._remember(rows)
        self._inserted_since_prune += added
        if self._inserted_since_prune > 10_000:
            try:
                self.prune()
                self._inserted_since_prune = 0
            except sqlite3.Error as exc:  # the rows above are committed: report them, prune later
                log.warning("cannot prune delivered events yet: %s", exc)
        return added

    def pending(self, kind: str, limit: int) -> list[tuple[int, str, str, int, list[Any]]]:
        """Oldest undelivered events for `kind`: (seq, event_id, symbol, event_time_us, wire)."""
        column = _column(kind)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT seq, event_id, symbol, event_time_us, wire FROM events WHERE {column} = 1 ORDER BY seq LIMIT ?",
                (limit,)).fetchall()
        recent = self._recent
        return [(seq, eid, sym, t, recent.get(eid) or cbor2.loads(wire)) for seq, eid, sym, t, wire in rows]

    def _remember(self, rows: list[tuple[str, str, int, list[Any]]]) -> None:
        recent = self._recent
        with self._lock:
            for eid, _sym, _t, wire in rows[-self._recent_cap:]:
                recent[eid] = wire
            excess = len(recent) - self._recent_cap
            if excess > 0:  # oldest first: dicts keep insertion order
                for eid in list(itertools.islice(recent, excess)):
                    del recent[eid]

    def mark_delivered(self, kind: str, seqs: list[int]) -> None:
        """Clear `kind`'s pending flag. Committed without fsync: a mark lost in a power cut only
        sends those events again, and downstream drops what it already has; the next `add`'s
        fsync makes it durable anyway (WAL frames are synced in order)."""
        column = _column(kind)
        with self._transaction(durable=False) as on_commit:
            before = self._conn.total_changes
            self._conn.executemany(f"UPDATE events SET {column} = 0 WHERE seq = ? AND {column} = 1",
                                   [(s,) for s in seqs])
            cleared = self._conn.total_changes - before
            on_commit.append(lambda: self._count_cleared(kind, cleared))

    def _count_added(self, last_seq: int, new_by_symbol: Counter[str]) -> None:
        self.last_seq = last_seq
        self._stored_total += new_by_symbol.total()
        for sym, n in new_by_symbol.items():
            self._rows_by_symbol[sym] = self._rows_by_symbol.get(sym, 0) + n
        for kind in DOWNSTREAM_KINDS:
            self._pending[kind] += new_by_symbol.total()

    def _count_cleared(self, kind: str, cleared: int) -> None:
        self._pending[kind] -= cleared

    def _count_pruned(self, by_symbol: list[tuple[str, int]]) -> None:
        for sym, n in by_symbol:
            left = self._rows_by_symbol.get(sym, 0) - n
            if left > 0:
                self._rows_by_symbol[sym] = left
            else:
                self._rows_by_symbol.pop(sym, None)

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[list[Callable[[], None]]]:
        """BEGIN IMMEDIATE ... COMMIT under the lock, fsynced when `durable`. A failed COMMIT (disk
        full) may already have rolled back on its own; then a ROLLBACK would fail and hide the
        real error, so it is only sent while a transaction is open. The body appends to the
        yielded list what the in-memory figures must do once COMMIT succeeded (still under the
        lock, so no other change runs in between)."""
        with self._lock:
            if not durable:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                on_commit: list[Callable[[], None]] = []
                try:
                    yield on_commit
                    self._conn.execute("COMMIT")
                    for apply in on_commit:
                        apply()
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous=FULL")

    def recent(self, symbol: str | None, limit: int) -> list[list[Any]]:
        with self._lock:
            if symbol is None:
                rows = self._conn.execute("SELECT wire FROM events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._conn.execute("SELECT wire FROM events WHERE symbol = ? ORDER BY seq DESC LIMIT ?",
                                          (symbol, limit)).fetchall()
        return [cbor2.loads(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        """Rows held (`stored`, bounded by pruning), rows still pending per kind, symbols held, and
        `stored_total`: events ever stored here (durable, across restarts and pruning: the figure
        to compare with what was sent). O(1): kept in memory."""
        with self._lock:
            return {"stored": sum(self._rows_by_symbol.values()), "pending_score": self._pending["score"],
                    "pending_risk": self._pending["risk"], "symbols": len(self._rows_by_symbol),
                    "stored_total": self._stored_total}

    def prune(self) -> int:
        """Drop fully delivered events older than the newest `keep_delivered` (bounded disk).
        The cutoff is seq arithmetic, one index lookup; counting `keep_delivered` delivered rows
        back from the newest walked them all on every prune (~9 % of ingestion's CPU under load).
        Events still pending for a kind are never dropped, however old."""
        doomed = "seq <= ? AND pending_score = 0 AND pending_risk = 0"
        if self.last_seq <= self._keep:  # the newest seq: rows that new are never pruned
            return 0
        with self._transaction(durable=False) as on_commit:  # a prune lost in a power cut only keeps rows longer
            cutoff = (self.last_seq - self._keep,)
            by_symbol = self._conn.execute(
                f"SELECT symbol, COUNT(*) FROM events WHERE {doomed} GROUP BY symbol", cutoff).fetchall()
            deleted = self._conn.execute(f"DELETE FROM events WHERE {doomed}", cutoff).rowcount
            on_commit.append(lambda: self._count_pruned(by_symbol))
        return deleted


def _column(kind: str) -> str:
    if kind not in DOWNSTREAM_KINDS:
        raise ValueError(f"unknown downstream kind {kind!r}")
    return f"pending_{kind}"
