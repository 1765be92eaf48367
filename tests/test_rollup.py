"""Rolled-up ledger records (node/rollup.py): one record per group per interval, every tick counted."""

from __future__ import annotations

import pytest
import trio

from node.protocols.ticks import batch_root
from node.rollup import Rollup


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict, str]] = []

    def __call__(self, record_type: str, payload: dict, actor: str) -> None:
        self.records.append((record_type, payload, actor))


def test_batches_of_one_group_become_one_record_with_the_root_over_all_ids():
    rec = Recorder()
    rollup = Rollup(rec, "batch_routed", "me")
    rollup.add({"to": "p1", "kind": "score"}, ["a", "b"], symbols={"BTC"})
    rollup.add({"kind": "score", "to": "p1"}, ["c"], symbols={"ETH", "BTC"})  # same group, other key order
    rollup.add({"to": "p2", "kind": "score"}, ["d"])
    assert rollup.pending() == 4 and rec.records == []
    assert rollup.flush() == 2 and rollup.pending() == 0
    by_peer = {payload["to"]: payload for _, payload, _ in rec.records}
    assert by_peer["p1"] == {"to": "p1", "kind": "score", "ticks": 3, "batches": 2,
                             "merkle_root": batch_root(["a", "b", "c"]), "symbols": ["BTC", "ETH"]}
    assert by_peer["p2"]["ticks"] == 1 and "symbols" not in by_peer["p2"]
    assert {(t, a) for t, _, a in rec.records} == {("batch_routed", "me")}
    assert rollup.flush() == 0  # nothing new: no empty records


def test_counts_add_up_and_a_full_group_is_flushed_early():
    rec = Recorder()
    rollup = Rollup(rec, "market_batch_ingested", "me", max_ticks=5)
    rollup.add({"from": "iot"}, ["1", "2", "3"], counts={"duplicates": 2})
    assert rec.records == []
    rollup.add({"from": "iot"}, ["4", "5"], counts={"duplicates": 1})
    assert len(rec.records) == 1  # bounded memory: 5 ids reached
    payload = rec.records[0][1]
    assert payload["ticks"] == 5 and payload["duplicates"] == 3 and payload["batches"] == 2
    assert rollup.pending() == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Rollup(Recorder(), "batch_routed", "me", interval_s=0)
    with pytest.raises(ValueError):
        Rollup(Recorder(), "batch_routed", "me", max_ticks=0)


async def test_run_flushes_every_interval_and_once_more_when_stopped(autojump_clock):
    rec = Recorder()
    rollup = Rollup(rec, "batch_routed", "me", interval_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(rollup.run)
        rollup.add({"to": "p"}, ["a"])
        await trio.sleep(1.5)
        assert [p["ticks"] for _, p, _ in rec.records] == [1]
        rollup.add({"to": "p"}, ["b", "c"])
        nursery.cancel_scope.cancel()
    assert [p["ticks"] for _, p, _ in rec.records] == [1, 2]


async def test_record_soon_after_the_ledger_stopped_is_counted_not_raised(tmp_path):
    """A rollup's last flush can land after the ledger service's nursery closed (node stopping)."""
    from node.ledger_service import LedgerService
    from node.metrics import Metrics

    metrics = Metrics()
    service = LedgerService.__new__(LedgerService)  # only record_soon's bookkeeping is under test
    service._metrics = metrics
    async with trio.open_nursery() as nursery:
        service._nursery = nursery
    service.record_soon("batch_routed", {"to": "p", "ticks": 1, "merkle_root": b"x" * 32}, "me")
    assert metrics.get("ledger.record_dropped_stopping") == 1
