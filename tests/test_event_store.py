"""Ingestion's event store on real SQLite files: de-duplication across restarts, the outbox, and
a full database (SQLITE_FULL, made with max_page_count) that fails clearly and loses nothing."""

from __future__ import annotations

import sqlite3

import pytest

from node.event_store import EventStore


def rows(prefix: str, n: int) -> list[tuple[str, str, int, list]]:
    return [(f"{prefix}{i}", "BTCUSD", i, [i, "x" * 64]) for i in range(n)]


def test_duplicates_are_dropped_across_a_restart_and_the_outbox_survives_it(tmp_path):
    store = EventStore(tmp_path)
    assert store.add(rows("a", 100)) == 100
    store.mark_delivered("score", [seq for seq, *_ in store.pending("score", 40)])
    store.close()

    store = EventStore(tmp_path)
    assert store.add(rows("a", 120)) == 20  # the first 100 are known, durably
    assert store.known(["a0", "a119", "zz"]) == {"a0", "a119"}
    assert store.counts() == {"stored": 120, "pending_score": 80, "pending_risk": 120, "symbols": 1,
                              "stored_total": 120}
    assert [eid for _, eid, *_ in store.pending("score", 3)] == ["a40", "a41", "a42"]
    store.close()


def test_a_full_database_raises_the_real_error_commits_nothing_and_recovers(tmp_path):
    store = EventStore(tmp_path)
    store.add(rows("a", 500))
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is full now

    with pytest.raises(sqlite3.OperationalError, match="full"):  # not "cannot rollback"
        store.add(rows("b", 2000))
    assert store.counts()["stored"] == 500  # all or nothing: no half batch
    assert not store._conn.in_transaction

    store._conn.execute("PRAGMA max_page_count=1073741823")  # space again
    assert store.add(rows("b", 2000)) == 2000
    store.mark_delivered("risk", [seq for seq, *_ in store.pending("risk", 2500)])
    assert store.counts() == {"stored": 2500, "pending_score": 2500, "pending_risk": 0, "symbols": 1,
                              "stored_total": 2500}
    store.close()


def test_unknown_downstream_kind_is_refused(tmp_path):
    store = EventStore(tmp_path)
    with pytest.raises(ValueError, match="unknown downstream kind"):
        store.pending("bogus", 1)
    store.close()


def test_prune_drops_only_delivered_events_older_than_the_newest_kept(tmp_path):
    store = EventStore(tmp_path, keep_delivered=50)
    store.add(rows("a", 200))
    seqs = [seq for seq, *_ in store.pending("score", 200)]
    store.mark_delivered("score", seqs)
    store.mark_delivered("risk", [s for s in seqs if s != seqs[10]])  # a0..a199 but a10 delivered
    assert store.prune() == 149  # seq 1..150 are older than the newest 50; a10 still pending risk
    assert store.counts() == {"stored": 51, "pending_score": 0, "pending_risk": 1, "symbols": 1,
                              "stored_total": 200}
    assert [w[0] for w in store.recent(None, 60)] == list(range(199, 149, -1)) + [10]
    assert store.prune() == 0  # nothing more to drop
    store.mark_delivered("risk", [seqs[10]])
    assert store.prune() == 1  # delivered at last, and old: gone
    store.close()


def test_marks_commit_without_fsync_but_adds_stay_fully_synced(tmp_path):
    store = EventStore(tmp_path)
    store.add(rows("a", 10))
    store.mark_delivered("score", [seq for seq, *_ in store.pending("score", 10)])
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for adds
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the mark fails
    store._conn.execute("PRAGMA busy_timeout=10")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.mark_delivered("risk", [1])
    other.execute("ROLLBACK")
    other.close()
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # restored after a failure too
    store.close()
    store = EventStore(tmp_path)
    assert store.counts()["pending_score"] == 0  # the marks were committed
    store.close()


def test_pending_hands_back_the_newest_wires_from_memory_and_older_ones_from_disk(tmp_path):
    store = EventStore(tmp_path, recent_wires=3)
    given = rows("w", 5)
    assert store.add(given) == 5
    out = store.pending("score", 10)
    assert [w for *_, w in out] == [w for *_, w in given]  # same content either way
    assert [w is g[3] for (*_, w), g in zip(out, given)] == [False, False, True, True, True]
    store.close()
    store = EventStore(tmp_path, recent_wires=3)  # after a restart everything comes from disk
    out = store.pending("risk", 10)
    assert [w for *_, w in out] == [w for *_, w in given]
    assert not any(w is g[3] for (*_, w), g in zip(out, given))
    store.close()


def test_a_duplicate_never_replaces_the_stored_wire_in_memory(tmp_path):
    store = EventStore(tmp_path)
    assert store.add([("d0", "BTCUSD", 0, [0, "first"])]) == 1
    assert store.add([("d0", "BTCUSD", 0, [0, "second"]), ("d1", "BTCUSD", 1, [1, "new"])]) == 1
    assert [w for *_, w in store.pending("score", 10)] == [[0, "first"], [1, "new"]]
    store.close()


def table_counts(store: EventStore) -> dict[str, int]:
    """What `counts` must equal, counted the slow way."""
    total, score, risk = store._conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(pending_score), 0), COALESCE(SUM(pending_risk), 0) FROM events").fetchone()
    symbols = store._conn.execute("SELECT COUNT(DISTINCT symbol) FROM events").fetchone()[0]
    return {"stored": total, "pending_score": score, "pending_risk": risk, "symbols": symbols}


def test_counts_kept_in_memory_match_the_table_through_duplicates_marks_prunes_and_restarts(tmp_path):
    """`counts` is O(1) (the SQL count took 26-50 ms at 200,000 rows on every status request):
    after every kind of change, and after reopening, it equals the table's own count."""
    import random

    rng = random.Random(5)
    symbols = ["BTCUSD", "ETHUSD", "AAPL", "MSFT", "EURUSD"]
    store = EventStore(tmp_path, keep_delivered=300)
    made = 0
    for step in range(120):
        action = rng.random()
        if action < 0.5:  # a batch, some of it already stored (redelivery, a second bridge)
            fresh = [(f"e{made + i}", rng.choice(symbols[: 2 + step // 30]), made + i, [made + i]) for i in range(rng.randint(1, 60))]
            made += len(fresh)
            # ids of the last 50 events: still held (a duplicate of a pruned event is stored again)
            old = [(f"e{rng.randrange(max(0, made - 50), made)}", "BTCUSD", 0, [0]) for _ in range(rng.randint(0, 5))]
            store.add(fresh + old)
        elif action < 0.85:
            kind = rng.choice(["score", "risk"])
            seqs = [seq for seq, *_ in store.pending(kind, rng.randint(1, 80))]
            store.mark_delivered(kind, seqs + seqs[:3])  # a mark sent twice clears once
        else:
            store.prune()
        counts = store.counts()
        assert counts.pop("stored_total") == made, f"after step {step}"  # every fresh event, once
        assert counts == table_counts(store), f"after step {step}"
    assert store.counts()["stored"] < made  # pruning happened
    assert store.counts()["symbols"] >= 2
    expected = store.counts()
    store.close()

    store = EventStore(tmp_path, keep_delivered=300)
    assert store.counts() == expected
    assert {k: v for k, v in expected.items() if k != "stored_total"} == table_counts(store)
    store.close()


def test_a_batch_keeps_its_order_across_symbols(tmp_path):
    store = EventStore(tmp_path)
    batch = [(f"o{i}", ["BTCUSD", "ETHUSD", "AAPL"][i % 3], i, [i]) for i in range(30)]
    store.add(batch[:10])
    store.add(batch[5:] + [batch[0]])  # duplicates included: the SQL path counts the new rows
    assert [eid for _, eid, *_ in store.pending("score", 100)] == [eid for eid, *_ in batch]
    assert store.counts() == {"stored": 30, "pending_score": 30, "pending_risk": 30, "symbols": 3, "stored_total": 30}
    store.close()
