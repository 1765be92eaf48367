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


async def test_batches_of_two_bridges_interleaved_in_event_time_reach_the_detector_in_order(network_dir, monkeypatch):
    """Bridge A's batch of a moment is stored before bridge B's of the same moment: the forwarder
    holds A's events newer than B's newest (the watermark) until B's batch lands, then sends
    both, merged in event-time order. Without the watermark A's events would go out first and the
    detector would see B's older ones after them."""
    import node.roles.ingestion as ingestion_module

    # A's ticks must still be held when B's batch lands, on a loaded box too
    from node.watermark import Watermark

    monkeypatch.setattr(ingestion_module, "REORDER_MAX_HOLD_S", 3.0)
    base, authority = network_dir
    boot = Node(config(base, authority, "boot", ["bootstrap", "ingestion"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        pipeline = Node(config(base, authority, "pipeline", ["anomaly"], bootstrap=[boot.announce_addrs()[0]]))
        await nursery.start(pipeline.run)

        async def pipeline_seen():
            return boot.peers.providers("detect_anomalies")

        await eventually(pipeline_seen, "the ingestion node sees the anomaly node")
        anomaly, ing = role(pipeline, "anomaly"), role(boot, "ingestion")
        ing.watermark = Watermark(active_s=10.0)  # a bridge stays "active" across the test's steps
        received: list[int] = []  # event times in the order the anomaly role got them
        original = anomaly.on_batch

        async def recording(sender, batch):
            received.extend(item[8] for item in batch.items)  # MarketEvent wire: event_time_us
            return await original(sender, batch)

        anomaly.ctx.services["batch_handlers"][ticks.KIND_SCORE] = recording
        start_us = int(time.time() * 1e6) - 1_000_000_000
        prices, volumes = random_walk(302, seed=3)
        stream = make_ticks("BTCUSD", prices, volumes, start_us)  # 1 s apart
        ingest = ing.on_batch

        async def send(sender: str, items: list[Tick]) -> None:
            ack = await ingest(sender, ticks.new_batch("ingest", [ticks.tick_to_wire(t) for t in items],
                                                       [t.event_id for t in items]))
            assert ack["accepted"] == len(items)

        async def scored(n: int):
            return anomaly.status()["scored"] >= n

        # both bridges known before their batches interleave: B sends tick 0, then A tick 1 (which
        # waits for B until the hold bound: nothing newer from B comes)
        await send("bridge-b", stream[:1])
        await eventually(lambda: scored(1), "tick 0 scored")
        await send("bridge-a", stream[1:2])
        await eventually(lambda: scored(2), "tick 1 scored")
        for lo in (2, 102, 202):  # A's half of a moment first, B's half of the same moment after it
            a, b = stream[lo:lo + 100:2], stream[lo + 1:lo + 100:2]
            await send("bridge-a", a)

            async def a_held(a=a):  # the forwarder has looked and holds A's ticks newer than B's newest
                return ing.counts["held_back"] == len(a)

            await eventually(a_held, "bridge A's newer ticks held for the watermark")
            await send("bridge-b", b)
            await eventually(lambda lo=lo: scored(lo + 99), "both halves scored")
        await eventually(lambda: scored(302), "the stream's last tick scored (the hold bound)")
        steps = [(i, (b - a) // 1_000_000) for i, (a, b) in enumerate(zip(received, received[1:])) if b < a]
        assert received == sorted(received) and len(received) == 302, steps
        assert anomaly.status()["duplicates"] == 0
        # ticks 1 and 301 (the newest of a burst: nothing newer came from the other bridge) went out
        # on the hold bound
        assert ing.counts["reorder_hold_releases"] == 2
        nursery.cancel_scope.cancel()
