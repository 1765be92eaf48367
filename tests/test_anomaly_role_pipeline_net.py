"""ingestion -> anomaly + risk over real hosts: events routed by the ingestion role are scored
and sampled once, the alert and the risk snapshot reach the other node's ledger."""

from __future__ import annotations

import hashlib
import time

import trio

from node.market_events import Tick
from node.node import Node
from node.protocols import ticks
from test_anomaly_role import random_walk
from test_node_admission_net import network_dir  # noqa: F401
from test_views_net import command, config, eventually, role

N = 300


def make_ticks(symbol: str, prices, volumes, start_us: int) -> list[Tick]:
    return [Tick(hashlib.sha256(f"{symbol}/{i}".encode()).hexdigest()[:32], "s1", symbol, "crypto", float(p),
                 float(v), "test", start_us + i * 1_000_000, start_us + i * 1_000_000, True)
            for i, (p, v) in enumerate(zip(prices, volumes))]


async def test_ingested_ticks_are_scored_and_sampled_once(network_dir):
    base, authority = network_dir
    boot = Node(config(base, authority, "boot", ["bootstrap", "ingestion"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        pipeline = Node(config(base, authority, "pipeline", ["anomaly", "risk"], bootstrap=[boot.announce_addrs()[0]],
                               extra={"risk": {"snapshot_interval_s": 0.1, "record_interval_s": 0.2}}))
        await nursery.start(pipeline.run)

        async def pipeline_seen():
            return boot.peers.providers("detect_anomalies") and boot.peers.providers("compute_risk")

        await eventually(pipeline_seen, "the ingestion node sees the anomaly/risk node")
        start_us = int(time.time() * 1e6) - 2 * N * 1_000_000
        prices, volumes = random_walk(N, seed=1)
        prices[250:] *= 1.05
        btc = make_ticks("BTCUSD", prices, volumes, start_us)
        eth = make_ticks("ETHUSD", *random_walk(N, seed=2), start_us)
        ingest = role(boot, "ingestion").on_batch
        for chunk in range(0, N, 100):
            items = [t for pair in zip(btc[chunk:chunk + 100], eth[chunk:chunk + 100]) for t in pair]
            ack = await ingest(boot.peer_id, ticks.new_batch("ingest", [ticks.tick_to_wire(t) for t in items],
                                                             [t.event_id for t in items]))
            assert ack["accepted"] == 200

        anomaly, risk = role(pipeline, "anomaly"), role(pipeline, "risk")

        async def all_delivered():
            return anomaly.status()["scored"] == 2 * N and risk.status()["applied"] == 2 * N

        await eventually(all_delivered, "every event scored and sampled")
        assert anomaly.status()["alerts"] == 1 and anomaly.status()["duplicates"] == 0

        async def alert_on_boot():
            return (await command(boot, "alerts"))["alerts"]

        (alert,) = await eventually(alert_on_boot, "the alert on the ingestion node's ledger")
        assert alert["symbol"] == "BTCUSD" and alert["event_id"] == btc[250].event_id

        async def both_symbols():
            latest = await command(boot, "risk latest")
            return all(latest["symbols"].get(s, {}).get("n_prices") == N for s in ("BTCUSD", "ETHUSD")) and latest

        latest = await eventually(both_symbols, "a snapshot of both symbols' bars on the ingestion node")
        assert latest["symbols"]["BTCUSD"]["computed_by"] == pipeline.peer_id
        nursery.cancel_scope.cancel()
