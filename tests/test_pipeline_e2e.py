"""Issue 4 acceptance: the whole pipeline as separate OS processes on 127.0.0.1.

Testnet (2 bootstrap + iot + ingestion + anomaly + risk) + a real MQTT broker + the simulator
publishing 20,000 ticks at 500 ticks/s with injected spikes and duplicates sent on purpose:
every accepted tick is ingested once, scored once and stored once (counts reconcile, duplicates
dropped), injected spikes raise alerts, risk snapshots appear, a review is seen network-wide,
and `ledger verify` passes on every node's data dir afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import UP_TIMEOUT_S, Testnet, pid_alive, wait_until
from mqtt_fixtures import require_kind

TICKS = 20_000
RATE = 500
DUPLICATE_EVERY = 50
SPIKES = [f"spike@{i}:mag=0.25" for i in (4_001, 9_002, 14_003, 18_004)]
BIN = Path(sys.executable).parent


def addr(net: Testnet, name: str) -> str:
    listen = net.node(name).get("listen") or json.loads((Path(net.node(name)["data_dir"]) / "node.json").read_text())["listen"]
    return listen[0] if isinstance(listen, list) else listen


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_pipeline_end_to_end_counts_reconcile(tmp_path, broker):
    require_kind(broker)
    from node.control_client import ControlClient, OperatorCredentials

    net = Testnet(tmp_path / "net")
    net.cli("up", "--broker", broker, "--no-sim", "--heartbeat", "2", "--timeout", str(UP_TIMEOUT_S))
    try:
        url = net.state()["broker"]["url"]
        sim = subprocess.run(
            [str(BIN / "quantian-sim"), "--mqtt-url", url, "--rate", str(RATE), "--count", str(TICKS), "--seed", "11",
             "--duplicate-every", str(DUPLICATE_EVERY), "--ground-truth", str(tmp_path / "truth.jsonl"), "--quiet",
             *[a for spec in SPIKES for a in ("--inject", spec)]],
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert sim.returncode == 0, sim.stderr
        truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
        assert len(truth) == len(SPIKES)

        with ControlClient(OperatorCredentials.load(net.dir / "operator")) as control:
            def roles_status(name: str, role: str) -> dict:
                return control.request(addr(net, name), "status", timeout=60)["roles_status"][role]

            wait_until(lambda: roles_status("ingestion-1", "ingestion")["ingested"] >= TICKS, 300, "ingestion")
            wait_until(lambda: roles_status("anomaly-1", "anomaly")["scored"] >= TICKS, 300, "scoring")
            wait_until(lambda: roles_status("risk-1", "risk")["applied"] >= TICKS, 300, "risk")
            ingestion = roles_status("ingestion-1", "ingestion")
            assert ingestion["ingested"] == TICKS, ingestion
            # duplicates sent on purpose, plus any QoS 1 redelivery: all dropped, none ingested twice
            assert ingestion["duplicates"] >= TICKS // DUPLICATE_EVERY, ingestion
            assert ingestion["received"] == ingestion["ingested"] + ingestion["duplicates"], ingestion
            assert ingestion["pending_score"] == 0 and ingestion["pending_risk"] == 0, ingestion
            assert roles_status("anomaly-1", "anomaly")["scored"] == TICKS
            assert roles_status("risk-1", "risk")["applied"] == TICKS
            iot = control.request(addr(net, "iot-1"), "iot stats", timeout=60)
            assert iot["mqtt"]["inflight"] == 0 and iot["mqtt"]["acked"] >= TICKS + TICKS // DUPLICATE_EVERY, iot

            # injected spikes raise alerts, visible from a node that did not score them
            injected = {(t["symbol"]) for t in truth}
            alerts = wait_until(lambda: control.request(addr(net, "bootstrap-1"), "alerts", {"limit": 200},
                                                        timeout=60)["alerts"] or None, 120, "alerts replicated")
            assert injected & {a["symbol"] for a in alerts}, (injected, alerts[:3])
            first = alerts[0]
            reviewed = control.request(addr(net, "ingestion-1"), "review",
                                       {"alert_id": first["alert_id"], "status": "confirmed", "notes": "e2e"}, timeout=60)
            assert reviewed["alert"]["status"] == "confirmed"
            wait_until(lambda: any(a["alert_id"] == first["alert_id"] and a["status"] == "confirmed"
                                   for a in control.request(addr(net, "risk-1"), "alerts", {"limit": 200},
                                                            timeout=60)["alerts"]), 120, "review replicated")
            latest = wait_until(lambda: control.request(addr(net, "anomaly-1"), "risk latest", timeout=60)
                                .get("symbols") or None, 120, "risk snapshots replicated")
            assert set(latest) >= {"BTCUSD", "ETHUSD", "AAPL", "MSFT"}

            # once the traffic stops, every node holds identical heads for every author
            names = [n["name"] for n in net.state()["nodes"]]

            def identical_heads():
                views = [sorted((h["author"], h["height"], h["hash"]) for h in
                                control.request(addr(net, name), "ledger heads", timeout=60)["heads"]) for name in names]
                return views[0] if views[0] and all(v == views[0] for v in views) else None

            wait_until(identical_heads, 240, "identical chain heads on every node")
    finally:
        pids = net.all_pids()
        net.cli("down", check=False)
        assert not [p for p in pids if pid_alive(p)], "processes left after down"

    for node in net.state()["nodes"]:
        check = subprocess.run([str(BIN / "quantian-node"), "ledger", "verify", "--data-dir", node["data_dir"], "--json"],
                               capture_output=True, text=True, timeout=300)
        assert check.returncode == 0, (node["name"], check.stdout[-2000:], check.stderr[-2000:])
