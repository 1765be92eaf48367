"""Network-wide operator views on real libp2p hosts (127.0.0.1, one process).

Alerts and risk snapshots written by the pipeline node are answered by the bootstrap from its
replicated ledger; a review or a portfolio set on one node is seen by the other.
"""

from __future__ import annotations

import pytest
import trio

from node.config import load_config
from node.membership import OPERATOR_CERT_FILE, install_credentials
from node.node import Node
from node.protocols import ticks
from node.protocols.control import CommandError
from test_anomaly_role import batches, make_events, random_walk
from test_node_admission_net import network_dir  # noqa: F401

WAIT_S = 60.0
SEND_TIMEOUT_S = 60.0  # a loaded 2-core box may take long to score a batch


def config(base, authority, name, roles, *, bootstrap=(), extra=None):
    """A node's config; `extra` ({role: {setting: number}}) goes through a TOML file, as in production."""
    data_dir = base / name
    install_credentials(data_dir, authority, roles, 3600)
    toml = data_dir / "node.toml"
    toml.write_text("".join(f"[{section}]\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
                            for section, values in (extra or {}).items()))
    return load_config({"roles": roles, "data_dir": str(data_dir), "name": name, "heartbeat_s": 0.5,
                        "handshake_timeout_s": 2.0, "bootstrap": list(bootstrap)}, config_file=str(toml), environ={})


def role(node: Node, name: str):
    return next(r for r in node.roles if r.name == name)


async def command(node: Node, name: str, args: dict | None = None, operator: str = "12D3KooWoperator") -> dict:
    return await node.control.get(name)(args or {}, operator)


async def eventually(fn, what: str, timeout: float = WAIT_S):
    """Poll an async function until it returns something truthy (bounded); return that."""
    with trio.move_on_after(timeout):
        while True:
            try:
                value = await fn()
            except CommandError:
                value = None
            if value:
                return value
            await trio.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


async def test_alerts_reviews_and_risk_are_seen_network_wide(network_dir):
    """A bootstrap and one anomaly+risk node (two hosts keep a loaded box responsive): every view
    is asked of the node that did not write the records."""
    base, authority = network_dir
    boot = Node(config(base, authority, "boot", ["bootstrap"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(boot.run)
        addr = boot.announce_addrs()[0]
        pipeline = Node(config(base, authority, "pipeline", ["anomaly", "risk"], bootstrap=[addr],
                               extra={"risk": {"snapshot_interval_s": 0.1, "record_interval_s": 0.2}}))
        await nursery.start(pipeline.run)
        assert role(pipeline, "risk").settings["record_interval_s"] == 0.2
        to_pipeline = ticks.Sender(boot.host, pipeline.peer_id)  # from another admitted member
        await eventually(lambda: _async(boot.peers.providers("detect_anomalies")), "the bootstrap sees the pipeline node")

        # parts that do not exist yet say so
        for name in ("risk latest", "risk portfolio"):
            with pytest.raises(CommandError) as err:
                await command(boot, name)
            assert err.value.code == "unavailable"
        assert await command(boot, "alerts") == {"alerts": [], "count": 0}

        # anomaly: a jump in a random walk, sent as score batches from another member
        prices, volumes = random_walk(300, seed=1)
        prices[250:] *= 1.05
        events = make_events("BTCUSD", prices, volumes)
        acks = [await to_pipeline.send(b, timeout=SEND_TIMEOUT_S) for b in batches("score", events, size=150)]
        assert sum(a["scored"] for a in acks) == 300 and sum(a["alerts"] for a in acks) == 1
        again = await to_pipeline.send(batches("score", events, size=150)[-1], timeout=SEND_TIMEOUT_S)
        assert again["scored"] == 0 and again["duplicates"] == 150

        listed = await eventually(lambda: _items(command(boot, "alerts", {"symbol": "BTCUSD"}), "alerts"),
                                  "the alert replicated to the bootstrap")
        (alert,) = listed
        assert alert["event_id"] == events[250].event_id and alert["status"] == "pending_review"
        assert alert["recorded_by"] == pipeline.peer_id and alert["reviews"] == []
        assert (await command(boot, "alerts", {"symbol": "ETHUSD"}))["alerts"] == []

        # review on the bootstrap; the decision reaches the node that raised the alert
        with pytest.raises(CommandError) as err:
            await command(boot, "review", {"alert_id": "al-000000000000", "status": "confirmed"})
        assert err.value.code == "not_found"
        with pytest.raises(CommandError) as err:
            await command(boot, "review", {"alert_id": alert["alert_id"], "status": "maybe"})
        assert err.value.code == "bad_request" and "usage" in str(err.value)
        reviewed = (await command(boot, "review", {"alert_id": alert["alert_id"], "status": "confirmed",
                                                   "notes": "flash move"}, operator="12D3KooWalice"))["alert"]
        assert reviewed["status"] == "confirmed"
        assert [(r["decision"], r["operator"], r["notes"], r["recorded_by"]) for r in reviewed["reviews"]] == [
            ("confirmed", "12D3KooWalice", "flash move", boot.peer_id)]
        await eventually(lambda: _items(command(pipeline, "alerts", {"status": "confirmed"}), "alerts"),
                         "the review replicated to the pipeline node")
        assert (await command(pipeline, "alerts", {"status": "pending_review"}))["alerts"] == []

        # portfolio set on the bootstrap reaches the risk node through the ledger
        with pytest.raises(CommandError) as err:
            await command(boot, "risk portfolio set", {"weights": {"BTCUSD": 0.7, "ETHUSD": 0.7}})
        assert err.value.code == "invalid_weights" and "sum" in str(err.value)
        weights = {"BTCUSD": 0.5, "ETHUSD": 0.5}
        await command(boot, "risk portfolio set", {"weights": weights}, operator="12D3KooWalice")
        await eventually(lambda: _async(role(pipeline, "risk").weights() == weights), "the risk node adopts the portfolio")
        assert (await command(pipeline, "risk portfolio"))["set_by"] == "12D3KooWalice"

        # risk: prices for both symbols; snapshots show up on the bootstrap
        for seed, symbol in ((2, "BTCUSD"), (3, "ETHUSD")):
            sym_events = make_events(symbol, *random_walk(120, seed), step_us=1_000_000)
            for b in batches("risk", sym_events, size=60):
                assert (await to_pipeline.send(b, timeout=SEND_TIMEOUT_S))["applied"] == 60

        async def full_snapshot():
            latest = await command(boot, "risk latest")
            port = latest["portfolios"].get(pipeline.peer_id, {}).get("portfolio") or {}
            ready = {"BTCUSD", "ETHUSD"} <= set(latest["symbols"]) and port.get("coverage") == 1.0
            return ready and latest

        latest = await eventually(full_snapshot, "risk snapshot of both symbols on the bootstrap")
        assert latest["symbols"]["BTCUSD"]["n_prices"] == 120 and latest["symbols"]["BTCUSD"]["var95"] > 0
        assert latest["symbols"]["ETHUSD"]["computed_by"] == pipeline.peer_id
        assert "owned by this node" in latest["portfolios"][pipeline.peer_id]["scope"]
        history = await command(boot, "risk history", {"symbol": "BTCUSD", "limit": 3})
        assert 1 <= history["count"] <= 3 and all(s["symbol"] == "BTCUSD" for s in history["snapshots"])
        nursery.cancel_scope.cancel()


async def test_review_over_the_control_protocol_names_the_operator(network_dir):
    base, authority = network_dir
    node = Node(config(base, authority, "boot", ["bootstrap", "anomaly"]))
    operator_id = install_credentials(base / "operator", authority, ["operator"], 3600, cert_file=OPERATOR_CERT_FILE)
    from node.control_client import ControlClient, OperatorCredentials

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        await node.ledger.record("anomaly_alert_created", {"alert_id": "al-0123456789ab", "symbol": "BTCUSD",
                                                           "status": "pending_review"}, node.peer_id)
        creds = OperatorCredentials.find_for_data_dir(base / "boot")

        def review():
            with ControlClient(creds) as client:
                return client.request(node.announce_addrs()[0], "review",
                                      {"alert_id": "al-0123456789ab", "status": "false_positive"})

        result = await trio.to_thread.run_sync(review)
        assert result["alert"]["status"] == "false_positive"
        assert result["alert"]["reviews"][0]["operator"] == operator_id
        nursery.cancel_scope.cancel()


async def _async(value):
    return value


async def _items(awaitable, key: str):
    return (await awaitable)[key]
