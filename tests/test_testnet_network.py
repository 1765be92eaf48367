"""The testnet with real node processes on 127.0.0.1 (issue 2's acceptance tests).

One 6-node testnet (heartbeat 1 s, no broker) is shared by the tests of this module, in file
order: each test leaves the mesh complete again, except the last two (bootstrap loss, down).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testnet.mesh import query_many
from testnet.state import load_state

pytestmark = pytest.mark.slow

HEARTBEAT_S = 1.0
# Stale must come within 3 missed heartbeats; on top we allow for our own measurement: the time a
# status request takes to come back on a loaded 2-core box.
STALE_WITHIN_S = 3 * HEARTBEAT_S + 2.0


def views(testnet, control, observers: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """observer name -> {peer name -> that peer's entry in the observer's status}."""
    state = load_state(testnet.dir)
    names = {n.peer_id: n.name for n in state.nodes}
    nodes = [n for n in state.nodes if observers is None or n.name in observers]
    out = {}
    for name, (reply, err) in query_many(control, nodes).items():
        assert reply is not None, f"{name} did not answer status: {err}"
        out[name] = {names.get(p["peer_id"], p["peer_id"]): p for p in reply["peers"]}
    return out


def others(testnet, *excluded: str) -> list[str]:
    return [n["name"] for n in testnet.state()["nodes"] if n["name"] not in excluded]


def wait_state(testnet, control, victim: str, observers: list[str], online: bool, timeout: float) -> float:
    """Seconds until every observer reports `victim` online (or not online)."""
    t0 = time.monotonic()

    def done():
        seen = views(testnet, control, observers)
        return all((seen[o].get(victim, {}).get("state") == "online") == online for o in observers)

    testnet.wait_until(done, timeout, f"{victim} {'online' if online else 'stale'} at {', '.join(observers)}", interval=0.1)
    return time.monotonic() - t0


def test_every_node_sees_every_other_nodes_capabilities(testnet, control):
    state = load_state(testnet.dir)
    caps = {n.name: set(json.loads((Path(n.data_dir) / "node.json").read_text())["capabilities"]) for n in state.nodes}
    seen = views(testnet, control)
    assert set(seen) == {"bootstrap-1", "bootstrap-2", "iot-1", "ingestion-1", "anomaly-1", "risk-1"}
    for observer, peers in seen.items():
        for name in caps:
            if name == observer:
                continue
            assert peers[name]["state"] == "online", (observer, name, peers.get(name))
            assert set(peers[name]["capabilities"]) == caps[name], (observer, name)


def test_status_json_schema(testnet):
    status = testnet.status(query=True)
    assert status["dir"] == str(testnet.dir) and status["broker_url"] is None and status["running"] is True
    assert len(status["nodes"]) == 6
    for node in status["nodes"]:
        assert {"name", "peer_id", "roles", "pid", "alive", "listen", "data_dir", "peers_online", "peers_stale"} <= set(node)
        assert node["alive"] is True and isinstance(node["pid"], int) and testnet.pid_alive(node["pid"])
        assert node["peer_id"].startswith("12D3KooW")
        assert node["listen"] and all(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(f"/p2p/{node['peer_id']}") for a in node["listen"])
        assert Path(node["data_dir"], "node.json").exists()
        assert (node["peers_online"], node["peers_stale"]) == (5, 0), node
    assert [n["roles"] for n in status["nodes"]] == [["bootstrap"], ["bootstrap"], ["iot"], ["ingestion"], ["anomaly"], ["risk"]]


def test_kill9_pipeline_node_goes_stale_within_three_heartbeats_then_restart_rejoins(testnet, control):
    victim = "anomaly-1"
    observers = others(testnet, victim)
    old_pid = testnet.node(victim)["pid"]
    t0 = time.monotonic()
    testnet.cli("kill", victim)
    assert not testnet.pid_alive(old_pid)
    wait_state(testnet, control, victim, observers, online=False, timeout=60)
    assert time.monotonic() - t0 <= STALE_WITHIN_S

    testnet.cli("restart", victim)  # returns once the mesh is complete again
    node = testnet.node(victim)
    assert node["pid"] != old_pid and testnet.pid_alive(node["pid"])
    wait_state(testnet, control, victim, observers, online=True, timeout=10)
    seen = views(testnet, control, [victim])[victim]
    assert all(seen[o]["state"] == "online" for o in observers)


def test_sigstopped_node_goes_stale_and_recovers_after_sigcont(testnet, control):
    victim = "risk-1"
    observers = others(testnet, victim)
    pid = testnet.node(victim)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_state(testnet, control, victim, observers, online=False, timeout=60)
        assert time.monotonic() - t0 <= STALE_WITHIN_S
        assert testnet.pid_alive(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_state(testnet, control, victim, observers, online=True, timeout=60)


def test_with_one_bootstrap_dead_a_new_node_joins_through_the_other(testnet, control):
    testnet.cli("kill", "bootstrap-1")
    testnet.cli("add", "ingestion")  # returns once every live node sees every other live node
    new = testnet.node("ingestion-2")
    assert testnet.pid_alive(new["pid"])
    live = others(testnet, "bootstrap-1")
    seen = views(testnet, control, live)
    for observer in live:
        for name in live:
            if name != observer:
                assert seen[observer][name]["state"] == "online", (observer, name)


def test_down_stops_every_process(testnet):
    pids = testnet.all_pids()
    assert pids
    testnet.cli("down")
    assert [p for p in pids if testnet.pid_alive(p)] == []
    status = testnet.status()
    assert status["running"] is False and not any(n["alive"] for n in status["nodes"])


def test_run_in_the_foreground_and_ctrl_c_stops_everything(tmp_path, make_testnet):
    """What `make testnet` does: broker (embedded unless mosquitto is there) + simulator when their
    code exists, a live summary, attach instructions; SIGINT (Ctrl-C) stops every process."""
    net = make_testnet(tmp_path / "run")
    script = Path(sys.executable).parent / "quantian-testnet"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "testnet.cli"]
    proc = subprocess.Popen(
        cmd + ["run", "--dir", str(net.dir), "--heartbeat", "1", "--refresh", "1", "--timeout", "240"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    attached = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if "quantian-node ctl --data-dir" in line:
                attached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert attached.wait(300), "run never printed the attach instructions:\n" + "".join(lines[-40:])
        status = net.status()
        assert all(n["alive"] for n in status["nodes"])
        if status["broker"] is not None:
            assert status["broker"]["alive"] and status["broker_url"].startswith("mqtt://127.0.0.1:")
        pids = net.all_pids()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "".join(lines[-40:])
        assert [p for p in pids if net.pid_alive(p)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            net.cli("down", check=False)
        reader.join(5)


def test_up_that_times_out_says_why_and_leaves_nothing_running(tmp_path, make_testnet):
    net = make_testnet(tmp_path / "short")
    proc = net.cli("up", "--no-broker", "--timeout", "1", check=False)
    assert proc.returncode == 1
    assert "timed out" in proc.stderr and "bootstrap-1" in proc.stderr, proc.stderr
    pids = net.all_pids()
    assert len(pids) == 6 and [p for p in pids if net.pid_alive(p)] == []
