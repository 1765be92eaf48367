"""iot -> ingestion over real parts: a real MQTT broker, real libp2p hosts on 127.0.0.1.

Every tick the broker accepted is ingested exactly once (duplicates published on purpose are
dropped), malformed payloads are counted by reason and never stop the bridge, and the bridge
acknowledges MQTT messages only once ingestion holds them.
"""

from __future__ import annotations

import time

import pytest
import trio

from chain import queries
from mqtt_fixtures import mqtt_broker  # noqa: F401
from node.config import load_config
from node.node import Node
from sim.market import MarketSim
from sim.publisher import publish_ticks
from test_node_admission_net import network_dir, wait_until  # noqa: F401
from node.membership import install_credentials

TICKS = 2000


def pipeline_config(base, authority, name, roles, *, bootstrap=(), mqtt_url=""):
    data_dir = base / name
    install_credentials(data_dir, authority, roles, 3600)
    return load_config({"roles": roles, "data_dir": str(data_dir), "name": name, "heartbeat_s": 2.0, "handshake_timeout_s": 10.0,
                        "bootstrap": list(bootstrap), "mqtt_url": mqtt_url}, environ={})


def role(node: Node, name: str):
    return next(r for r in node.roles if r.name == name)


@pytest.mark.parametrize("mqtt_broker", ["mosquitto", "embedded"], indirect=True)
async def test_ticks_flow_from_mqtt_to_ingestion_exactly_once(network_dir, mqtt_broker):
    base, authority = network_dir
    boot = Node(pipeline_config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        addr = boot.announce_addrs()[0]
        ingestion = Node(pipeline_config(base, authority, "ingestion", ["ingestion"], bootstrap=[addr]))
        iot = Node(pipeline_config(base, authority, "iot", ["iot"], bootstrap=[addr], mqtt_url=mqtt_broker.url))
        await nursery.start(ingestion.run)
        await nursery.start(iot.run)
        await wait_until(lambda: iot.peers.providers("ingest_market_data"), "iot sees the ingestion peer")
        await wait_until(lambda: role(iot, "iot").bridge is not None and role(iot, "iot").bridge.stats.connected,
                         "bridge connected")

        sim = MarketSim(seed=7, start_time_us=int(time.time() * 1e6) - 60_000_000)
        messages = [(t.topic, t.payload()) for t in sim.ticks(TICKS)]
        malformed = [("quantian/market/crypto/BTCUSD", b"{not json"),
                     ("quantian/market/crypto/BTCUSD", b'{"sensor_id":"s","symbol":"ETHUSD","asset_class":"crypto",'
                                                       b'"price":1,"volume":1,"source":"x"}'),
                     ("quantian/market/crypto/BTCUSD", b'{"sensor_id":"s","symbol":"BTCUSD","asset_class":"crypto",'
                                                       b'"price":-5,"volume":1,"source":"x"}')]
        summary = await trio.to_thread.run_sync(
            lambda: publish_ticks(mqtt_broker.url, messages + malformed, duplicate_every=10, publishers=1))
        assert summary.acked == TICKS + TICKS // 10 + len(malformed), summary

        ing = role(ingestion, "ingestion")
        await wait_until(lambda: ing.counts["ingested"] >= TICKS and role(iot, "iot").bridge.stats.inflight == 0,
                         "all ticks ingested and acked", timeout=300)
        assert ing.counts["ingested"] == TICKS
        assert ing.counts["duplicates"] == TICKS // 10
        stats = role(iot, "iot").status()
        assert stats["rejected"] == {"bad_json": 1, "topic_mismatch": 1, "bad_price": 1}
        assert stats["mqtt"]["acked"] == stats["mqtt"]["received"] == TICKS + TICKS // 10 + len(malformed)
        # the ledger holds batch-level evidence: rolled-up records that account for every tick
        with trio.fail_after(60):
            while True:
                found = (await ingestion.ledger.ledger.query(
                    queries.find, record_type="market_batch_ingested", limit=1000))["records"]
                if sum(r["payload"]["ticks"] for r in found) >= TICKS:
                    break
                await trio.sleep(0.2)  # polling the ledger until the rollup's next flush lands
        assert sum(r["payload"]["ticks"] for r in found) == TICKS
        assert sum(r["payload"]["duplicates"] for r in found) == TICKS // 10
        assert sum(r["payload"]["batches"] for r in found) <= ing.counts["batches"]
        assert len(found) < ing.counts["batches"], (len(found), ing.counts["batches"])  # rolled up, not per batch
        assert {r["payload"]["from"] for r in found} == {iot.peer_id}
        recent = await ingestion.control.get("ticks recent")({"symbol": "BTCUSD", "limit": 5}, "test")
        assert len(recent["ticks"]) == 5 and all(t["symbol"] == "BTCUSD" for t in recent["ticks"])
        # no anomaly/risk node yet: events wait in the outbox, and the outage is on the ledger once
        counts = ing.store.counts()
        assert counts["pending_score"] == TICKS and counts["pending_risk"] == TICKS
        await wait_until(lambda: ingestion.metrics.get("ledger.append_failed") == 0 and ing._outage["score"],
                         "routing outage noted")
        nursery.cancel_scope.cancel()


async def test_two_bridges_sharing_the_subscription_reach_the_detector_in_event_time_order(
        network_dir, mqtt_broker, monkeypatch):
    """Two iot bridges split the stream (a shared subscription) and their batches interleave at
    ingestion; the forwarders hold events above the bridges' watermark, so the anomaly node gets
    every symbol's ticks in event-time order, each exactly once. (Whether the batches interleave
    here depends on timing; tests/test_anomaly_role_pipeline_net.py makes them interleave.)"""
    import node.roles.ingestion as ingestion_module
    from node.market_events import MarketEvent
    from node.protocols import ticks as ticks_protocol
    from node.watermark import Watermark

    # generous bounds: on a loaded box a bridge's batch may be late, and a release by the hold
    # bound (tested in tests/test_watermark.py) would be out of order by design
    monkeypatch.setattr(ingestion_module, "REORDER_MAX_HOLD_S", 10.0)
    base, authority = network_dir
    n, warm = 3000, 300
    boot = Node(pipeline_config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        addr = boot.announce_addrs()[0]
        ingestion = Node(pipeline_config(base, authority, "ingestion", ["ingestion"], bootstrap=[addr]))
        anomaly = Node(pipeline_config(base, authority, "anomaly", ["anomaly"], bootstrap=[addr]))
        bridges = [Node(pipeline_config(base, authority, f"iot{i}", ["iot"], bootstrap=[addr],
                                        mqtt_url=mqtt_broker.url)) for i in (1, 2)]
        ing = role(ingestion, "ingestion")
        ing.watermark = Watermark(active_s=5.0)  # the stream's last ticks wait for this, at most
        received: list[tuple[str, int]] = []  # (symbol, event time) in the order the anomaly role got them
        score = role(anomaly, "anomaly")
        original = score.on_batch
        recording_on = False

        async def recording(sender, batch):
            if recording_on:
                received.extend((e.symbol, e.event_time_us) for e in map(MarketEvent.from_wire, batch.items))
            return await original(sender, batch)

        for node in (ingestion, anomaly, *bridges):
            await nursery.start(node.run)
        score.ctx.services["batch_handlers"][ticks_protocol.KIND_SCORE] = recording  # what ticks.Handler calls
        for bridge in bridges:
            await wait_until(lambda b=bridge: b.peers.providers("ingest_market_data"), "iot sees ingestion")
            await wait_until(lambda b=bridge: role(b, "iot").bridge is not None and role(b, "iot").bridge.stats.connected,
                             "bridge connected")
        await wait_until(lambda: ingestion.peers.providers("detect_anomalies"), "ingestion sees the anomaly node")

        sim = MarketSim(seed=11, start_time_us=int(time.time() * 1e6) - 60_000_000)
        messages = [(t.topic, t.payload()) for t in sim.ticks(n + warm)]
        # a warm-up first, so ingestion knows both bridges when the stream comes (the very first
        # batch of a bridge it has not heard from cannot be waited for); the stream follows at once,
        # well within active_s, and its ticks are newer than the warm-up's
        publish = lambda part: publish_ticks(mqtt_broker.url, part, rate=1500.0, publishers=1)  # noqa: E731
        summary = await trio.to_thread.run_sync(publish, messages[:warm])
        assert summary.acked == warm, summary
        await wait_until(lambda: all(role(b, "iot").counts["forwarded"] for b in bridges), "both bridges forwarding")
        recording_on = True
        summary = await trio.to_thread.run_sync(publish, messages[warm:])
        assert summary.acked == n, summary
        await wait_until(lambda: score.counts["scored"] >= n + warm, "every tick scored", timeout=300)
        assert score.counts["scored"] == n + warm and score.counts["duplicates"] == 0
        shares = [role(b, "iot").counts["forwarded"] for b in bridges]
        assert sum(shares) == n + warm and min(shares) > n // 10, shares  # both bridges carried the stream
        by_symbol: dict[str, list[int]] = {}
        for symbol, event_time in received:
            by_symbol.setdefault(symbol, []).append(event_time)
        assert len(by_symbol) >= 2
        for symbol, times in by_symbol.items():
            late = sum(1 for a, b in zip(times, times[1:]) if b < a)
            assert late == 0, f"{symbol}: {late} ticks reached the detector after a newer one"
        nursery.cancel_scope.cancel()
