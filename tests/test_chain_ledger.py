"""The trio ledger service: batching, durability receipts, restart, forks, background verifier."""

import json
import math
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from contextlib import asynccontextmanager

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
import trio
import trio.testing

from chain import BadProof, LedgerClosed, UnknownRecordType
from chain.audit import verify_store
from chain.ledger import Ledger, LedgerConfig
from chain.records import RECORD_TYPES
from chain.store import Store
from chain.testing import build_chain
from chain.verify import encode_fork_proof
from node.identity import Identity

@asynccontextmanager
async def running(ledger: Ledger) -> AsyncIterator[Ledger]:
    """The ledger service running in the background for the body of the block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(ledger.run)
        yield ledger
        nursery.cancel_scope.cancel()


FAST = LedgerConfig(max_batch_records=200, max_batch_delay=0.05, verify_interval=math.inf)


async def records_of(ledger: Ledger, record_type: str) -> list[dict]:
    from chain import queries
    return (await ledger.query(queries.find, record_type=record_type, author=ledger.author))["records"]


async def test_concurrent_appends_are_batched_and_receipts_point_to_stored_records(tmp_path):
    ident = Identity.generate()
    ledger = Ledger(tmp_path, ident, FAST)
    receipts = {}
    async with running(ledger):

        async def one(i: int) -> None:
            receipts[i] = await ledger.append("market_batch_ingested", {"ticks": i, "source": "test"}, ident.peer_id)

        async with trio.open_nursery() as appenders:
            for i in range(1000):
                appenders.start_soon(one, i)
        status = ledger.status()
        json.dumps(status)
        assert status["counts"]["records"] == 1000
        assert status["height"] + 1 <= 50, "1000 records should need only a handful of blocks"
    store = Store.open(tmp_path / "ledger.sqlite", readonly=True)
    try:
        assert all(r.error is None for r in verify_store(store))
        for i, receipt in receipts.items():
            (row,) = store.find(record_hash=receipt.record_hash, limit=2)
            assert (row.author, row.height, row.index) == (receipt.author, receipt.height, receipt.index)
        from chain import queries
        shown = queries.show(store, ident.peer_id, receipts[7].height)["records"][receipts[7].index]
        assert shown["payload"] == {"ticks": 7, "source": "test"}
    finally:
        store.close()


async def test_restart_continues_own_chain_and_rejects_bad_records(tmp_path):
    ident = Identity.generate()
    for run in range(3):
        ledger = Ledger(tmp_path, ident, FAST)
        async with running(ledger):
            assert ledger.height == (None if run == 0 else run - 1)
            with pytest.raises(UnknownRecordType):
                await ledger.append("heartbeat", {}, ident.peer_id)
            receipt = await ledger.append("peer_joined", {"peer": f"p{run}"}, ident.peer_id)
            assert receipt.height == run and ledger.height == run
    with pytest.raises(LedgerClosed):
        await ledger.append("peer_joined", {"peer": "late"}, ident.peer_id)


async def test_replication_fork_is_recorded_once_per_author(tmp_path):
    alice = Identity.generate()
    chain = build_chain(alice, 5)
    ledger = Ledger(tmp_path, Identity.generate(), FAST)
    async with running(ledger):
        result = await ledger.ingest_blocks(alice.peer_id, [b.encode() for b in chain])
        assert result.error is None and result.added == 5
        assert [(h.author, h.height) for h in await ledger.heads()] == [(alice.peer_id, 4)]
        assert await ledger.signed_head(alice.peer_id) == chain[-1].signed_header.encode()
        twin = build_chain(alice, 1, records_per_block=1, prev=chain[2].header)[0]
        result = await ledger.ingest_blocks(alice.peer_id, [twin.encode()])
        assert result.error.code == "fork_detected" and result.fork_proof
        other_twin = build_chain(alice, 1, records_per_block=2, prev=chain[1].header)[0]
        assert await ledger.offer_header(other_twin.signed_header.encode()) is not None
        assert len(await ledger.fork_proofs()) == 2
        assert ledger.status()["forks"] == [alice.peer_id]
        await trio.testing.wait_all_tasks_blocked()
        await ledger.append("portfolio_set", {"weights": {"BTC": 1.0}}, ledger.author)  # after any fork record
        forks = await records_of(ledger, "fork_detected")
        assert len(forks) == 1 and forks[0]["payload"]["author"] == alice.peer_id


async def test_fork_proof_from_gossip_is_verified_stored_and_flags_the_author(tmp_path):
    bob = Identity.generate()
    a, b = build_chain(bob, 1, 1)[0], build_chain(bob, 1, 2)[0]
    async with running(Ledger(tmp_path, Identity.generate(), FAST)) as ledger:
        with pytest.raises(BadProof):
            await ledger.accept_fork_proof(encode_fork_proof(a.signed_header, a.signed_header))
        assert ledger.status()["forks"] == []
        proof = encode_fork_proof(a.signed_header, b.signed_header)
        fork = await ledger.accept_fork_proof(proof)
        assert (fork.author, fork.height) == (bob.peer_id, 0)
        assert await ledger.fork_proofs() == [proof] and ledger.status()["forks"] == [bob.peer_id]
        await ledger.wait_height(0)
        assert len(await records_of(ledger, "fork_detected")) == 1


async def test_background_verifier_quarantines_and_reports_each_failure_once(tmp_path):
    alice = Identity.generate()
    chain = build_chain(alice, 6)
    config = LedgerConfig(max_batch_delay=0.01, verify_interval=0.01)
    ledger = Ledger(tmp_path, Identity.generate(), config)
    async with running(ledger):
        assert (await ledger.ingest_blocks(alice.peer_id, [b.encode() for b in chain])).added == 6
        await ledger.wait_verification_pass()
        assert ledger.status()["verified"]
        conn = sqlite3.connect(tmp_path / "ledger.sqlite")
        conn.execute("UPDATE records SET actor = 'forged' WHERE height = 4 AND idx = 1")
        conn.commit()
        conn.close()
        for _ in range(3):
            await ledger.wait_verification_pass()
        status = ledger.status()
        assert [(f["author"], f["height"], f["code"]) for f in status["failures"]] == \
            [(alice.peer_id, 4, "corrupt_store")]
        await trio.testing.wait_all_tasks_blocked()
        await ledger.append("portfolio_set", {}, ledger.author)
        failures = await records_of(ledger, "ledger_verification_failed")
        assert [(f["payload"]["author"], f["payload"]["height"]) for f in failures] == [(alice.peer_id, 4)]
        assert [(h.author, h.height) for h in await ledger.heads() if h.author == alice.peer_id] == \
            [(alice.peer_id, 3)]
        again = await ledger.ingest_blocks(alice.peer_id, [b.encode() for b in chain])
        assert again.error is None and again.added == 2  # repaired from a peer
        await ledger.wait_verification_pass()
        assert ledger.status()["verified"]


async def test_report_failure_deduplicates(tmp_path):
    from chain.errors import BrokenChain
    ledger = Ledger(tmp_path, Identity.generate(), FAST)
    async with running(ledger):
        for _ in range(3):
            await ledger.report_failure(BrokenChain("bad link", author="peerX", height=9), sender="peerY")
        await trio.testing.wait_all_tasks_blocked()
        await ledger.append("portfolio_set", {}, ledger.author)
        failures = await records_of(ledger, "ledger_verification_failed")
        assert len(failures) == 1 and failures[0]["payload"]["sender"] == "peerY"


async def test_lost_own_tail_is_taken_back_from_a_peer_copy(tmp_path):
    ident = Identity.generate()
    first = Ledger(tmp_path / "before", ident, FAST)
    async with running(first):
        for i in range(4):
            await first.append("peer_joined", {"peer": f"p{i}"}, ident.peer_id)
        copy = await first.get_blocks(ident.peer_id, 0, 100, 10**7)
    fresh = Ledger(tmp_path / "after", ident, FAST)  # the data dir was lost
    async with running(fresh):
        assert fresh.height is None
        result = await fresh.ingest_blocks(ident.peer_id, copy)
        assert result.error is None and fresh.height == 3
        assert (await fresh.append("peer_left", {"peer": "p0"}, ident.peer_id)).height == 4


async def test_opening_a_tampered_store_reports_and_keeps_the_verified_prefix(tmp_path):
    alice = Identity.generate()
    chain = build_chain(alice, 5)
    ledger = Ledger(tmp_path, Identity.generate(), FAST)
    async with running(ledger):
        await ledger.ingest_blocks(alice.peer_id, [b.encode() for b in chain])
    conn = sqlite3.connect(tmp_path / "ledger.sqlite")
    conn.execute("UPDATE blocks SET data = substr(data, 1, length(data) - 1) || x'00' WHERE height = 2")
    conn.commit()
    conn.close()
    ledger = Ledger(tmp_path, ledger.identity, FAST)
    async with running(ledger):
        status = ledger.status()
        assert not status["verified"]
        assert [(f["author"], f["height"]) for f in status["failures"]] == [(alice.peer_id, 2)]
        assert [(h.author, h.height) for h in await ledger.heads()] == [(alice.peer_id, 1)]
        await ledger.wait_height(0)  # the failure is recorded in this node's own chain


async def test_stopping_the_ledger_fails_outstanding_appends_instead_of_hanging(tmp_path):
    ident = Identity.generate()
    ledger = Ledger(tmp_path, ident, LedgerConfig(max_batch_delay=3600, queue_size=4, verify_interval=math.inf))
    outcomes = []

    async def one(i: int) -> None:
        try:
            await ledger.append("peer_joined", {"peer": f"p{i}"}, ident.peer_id)
            outcomes.append("stored")
        except LedgerClosed:
            outcomes.append("closed")

    async with trio.open_nursery() as appenders:
        async with trio.open_nursery() as service:
            await service.start(ledger.run)
            for i in range(12):  # more than the queue holds: some wait in send()
                appenders.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            service.cancel_scope.cancel()
    assert outcomes == ["closed"] * 12


record_types = st.sampled_from(sorted(RECORD_TYPES))
small_values = st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.text(max_size=12) | st.binary(max_size=16)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.tuples(record_types, st.dictionaries(st.text(max_size=6), small_values, max_size=3)),
                         min_size=1, max_size=8), min_size=1, max_size=6),
       st.integers(1, 5))
async def test_any_sequence_of_appends_verifies(rounds, batch_records):
    ident = Identity.generate()
    with tempfile.TemporaryDirectory() as tmp:
        config = LedgerConfig(max_batch_records=batch_records, max_batch_delay=0.001, verify_interval=math.inf)
        async with running(Ledger(Path(tmp), ident, config)) as ledger:
            receipts = []
            for items in rounds:
                batch = [(t, {**{f: 0 for f in RECORD_TYPES[t][0]}, **p}, ident.peer_id) for t, p in items]
                receipts += await ledger.append_many(batch)
            reports = await ledger.verify_now()
            assert [r.error for r in reports] == [None]
            assert reports[0].records == len(receipts) == len({(r.height, r.index) for r in receipts})
