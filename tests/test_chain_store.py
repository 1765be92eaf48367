"""SQLite store: replication ingest, forks, tampering and truncation of the files."""

import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chain.audit import open_verified, verify_store
from chain.block import Block, signing_bytes
from chain.errors import ForkDetected
from chain.replica import check_header, ingest
from chain.store import Store
from chain.testing import BASE_MS, build_chain
from chain.verify import verify_chain, verify_fork_proof
from node.identity import Identity

ALICE = Identity(bytes(range(32)))
MALLORY = Identity(bytes(range(1, 33)))
A = ALICE.peer_id
CHAIN = build_chain(ALICE, 8, records_per_block=3)
ENCODED = [b.encode() for b in CHAIN]
NOW = BASE_MS + 10_000


def fill(path: Path, blocks: list[Block] = CHAIN) -> Store:
    store = Store.open(path)
    result = ingest(store, A, [b.encode() for b in blocks], now_ms=NOW)
    assert result.error is None and result.added == len(blocks)
    return store


def assert_verified_prefix(store: Store) -> int:
    """The store verifies and holds a prefix of CHAIN; returns its length."""
    reports = verify_store(store, now_ms=NOW)
    assert all(r.error is None for r in reports), [r.to_dict() for r in reports]
    held = [data for _, _, data in store.iter_chain(A)]
    assert held == ENCODED[:len(held)]
    return len(held)


def test_ingest_is_idempotent_and_serves_blocks(tmp_path):
    store = fill(tmp_path / "l.sqlite")
    again = ingest(store, A, ENCODED, now_ms=NOW)
    assert (again.added, again.height, again.error) == (0, 7, None)
    assert store.get_blocks(A, 2, 3, 10**6) == ENCODED[2:5]
    assert store.get_blocks(A, 2, 10, 1) == ENCODED[2:3]  # always progress
    assert store.get_blocks(A, 0, 10**9, 10**9) == ENCODED and store.get_blocks(A, 8, 5, 10**6) == []
    assert [h.to_dict()["height"] for h in store.heads()] == [7]
    assert store.counts() == {"chains": 1, "blocks": 8, "records": 24}


def _resign(block: Block, signer: Identity, **changes) -> bytes:
    import dataclasses
    header = dataclasses.replace(block.header, **changes)
    return Block(header, signer.sign(signing_bytes(header.hash)), block.records).encode()


@pytest.mark.parametrize("forged, code", [
    (_resign(CHAIN[5], MALLORY), "invalid_signature"),
    (_resign(CHAIN[5], ALICE, prev_hash=bytes(32)), "broken_chain"),
    (_resign(CHAIN[5], ALICE, height=6), "height_gap"),
    (_resign(CHAIN[5], MALLORY, author=MALLORY.public_key), "author_mismatch"),
    (_resign(CHAIN[5], ALICE, timestamp_ms=NOW + 3_600_000), "timestamp_out_of_range"),
    (ENCODED[5][:-3], "decode_error"),
])
def test_forged_block_in_ingest_is_named_and_prefix_kept(tmp_path, forged, code):
    store = Store.open(tmp_path / "l.sqlite")
    result = ingest(store, A, ENCODED[:5] + [forged] + ENCODED[6:], now_ms=NOW)
    assert result.added == 5 and result.height == 4
    assert (result.error.code, result.error.author, result.error.height) == (code, A, 5)
    assert assert_verified_prefix(store) == 5
    fixed = ingest(store, A, ENCODED[5:], now_ms=NOW)  # the store keeps working
    assert fixed.error is None and assert_verified_prefix(store) == 8


def test_fork_detected_in_ingest_and_from_offered_header(tmp_path):
    store = fill(tmp_path / "l.sqlite", CHAIN[:5])
    twin = build_chain(ALICE, 4, records_per_block=1, prev=CHAIN[2].header)[0]  # another block 3
    result = ingest(store, A, [ENCODED[2], twin.encode()], now_ms=NOW)
    assert isinstance(result.error, ForkDetected) and result.added == 0
    assert (result.error.author, result.error.height) == (A, 3)
    fork = verify_fork_proof(result.fork_proof)
    assert {fork.first.header.hash, fork.second.header.hash} == {twin.hash, CHAIN[3].hash}
    assert store.fork_proofs() == [(A, 3, result.fork_proof)]
    assert assert_verified_prefix(store) == 5  # our copy of the chain is untouched
    other_twin = build_chain(ALICE, 1, records_per_block=2, prev=CHAIN[3].header)[0]
    offered = check_header(store, other_twin.signed_header.encode())
    assert offered is not None and offered.height == 4
    assert verify_fork_proof(offered.proof).height == 4
    assert check_header(store, CHAIN[4].signed_header.encode()) is None
    assert len(store.fork_proofs()) == 2


def test_block_with_bad_signature_at_held_height_is_not_a_fork(tmp_path):
    store = fill(tmp_path / "l.sqlite", CHAIN[:5])
    result = ingest(store, A, [_resign(CHAIN[3], MALLORY, timestamp_ms=1)], now_ms=NOW)
    assert result.error.code == "invalid_signature" and store.fork_proofs() == []


TAMPER_TARGETS = [("blocks", "data"), ("blocks", "hash"), ("records", "hash"), ("records", "type"),
                  ("records", "actor"), ("records", "timestamp")]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TAMPER_TARGETS), st.integers(0, 7), st.data())
def test_any_tampered_row_is_detected_named_and_cut_off(target, height, data):
    table, column = target
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l.sqlite"
        fill(path).close()
        conn = sqlite3.connect(path)
        (value,) = conn.execute(f"SELECT {column} FROM {table} WHERE height = ? LIMIT 1", (height,)).fetchone()
        if isinstance(value, int):
            new = value + data.draw(st.integers(1, 1000))
        else:
            raw = bytearray(value if isinstance(value, bytes) else value.encode())
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
            new = bytes(raw) if isinstance(value, bytes) else raw.decode("latin-1")
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = (SELECT rowid FROM {table} "
                     f"WHERE height = ? LIMIT 1)" if table == "blocks" else
                     f"UPDATE {table} SET {column} = ? WHERE height = ? AND idx = 0", (new, height))
        conn.commit()
        conn.close()
        store, errors = open_verified(path, now_ms=NOW)
        try:
            assert len(errors) == 1
            assert (errors[0].author, errors[0].height) == (A, height), errors[0]
            assert errors[0].code in {"bad_hash", "corrupt_store", "decode_error", "invalid_signature",
                                      "bad_merkle_root", "broken_chain", "height_gap", "unsupported_version",
                                      "author_mismatch", "timestamp_out_of_range", "block_too_large"}
            assert assert_verified_prefix(store) == height
            assert store.quarantined()[0][:2] == (A, height)
            assert ingest(store, A, ENCODED, now_ms=NOW).added == 8 - height  # repaired by replication
        finally:
            store.close()


def test_truncated_wal_reopens_to_a_verified_prefix(tmp_path):
    live = fill(tmp_path / "l.sqlite", CHAIN[:2])
    for block in CHAIN[2:]:  # one transaction per block, so the WAL holds several commits
        assert ingest(live, A, [block.encode()], now_ms=NOW).error is None
    db, wal = (tmp_path / "l.sqlite").read_bytes(), (tmp_path / "l.sqlite-wal").read_bytes()
    live.close()
    lengths = []
    for i, cut in enumerate((len(wal) - 100, len(wal) // 2, 40)):
        copy = tmp_path / f"copy{i}"
        copy.mkdir()
        (copy / "l.sqlite").write_bytes(db)
        (copy / "l.sqlite-wal").write_bytes(wal[:cut])
        store, errors = open_verified(copy / "l.sqlite", now_ms=NOW)
        lengths.append(assert_verified_prefix(store))
        store.close()
    assert lengths == sorted(lengths, reverse=True) and lengths[0] < 8


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.2])
def test_truncated_db_file_is_salvaged_to_a_verified_prefix(tmp_path, keep):
    many = build_chain(ALICE, 60, records_per_block=20)
    path = tmp_path / "l.sqlite"
    store = Store.open(path)
    assert ingest(store, A, [b.encode() for b in many], now_ms=NOW).error is None
    store.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep) // 4096 * 4096)
    store, errors = open_verified(path, now_ms=NOW)
    try:
        assert errors, "damage must be reported"
        reports = verify_store(store, now_ms=NOW)
        assert all(r.error is None for r in reports)
        held = [d for _, _, d in store.iter_chain(A)]
        assert held == [b.encode() for b in many[:len(held)]]
        assert verify_chain(held, author=A) is None or len(held) < 60
        more = ingest(store, A, [b.encode() for b in many], now_ms=NOW)  # keeps working
        assert more.error is None and more.height == 59
    finally:
        store.close()
