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

from testnet.mesh import MeshWatch, query_many, wait_mesh
from testnet.network import members
from testnet.procs import probe
from testnet.state import load_state

pytestmark = pytest.mark.slow

HEARTBEAT_S = 2.0  # the `testnet` fixture's --heartbeat; peers are stale after 3 missed ones
# How much later than the kill an observer may still take in the victim's last advert: one in
# flight, or relayed by gossip, when the kill happens.
ADVERT_SLACK_S = 1.0


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


def all_running(testnet, control) -> None:
    """Undo what an earlier (failed) test left: dead nodes restarted, stopped ones continued, mesh whole."""
    state = load_state(testnet.dir)
    for node in state.nodes:
        info = probe(node.pid, node.proc_start)
        if not info.alive:
            testnet.cli("restart", node.name, "--no-wait")
        elif info.stopped:
            os.kill(node.pid, signal.SIGCONT)
    wait_mesh(control, members(load_state(testnet.dir)), time.monotonic() + 180, lambda _msg: None)


def wait_not_online(testnet, control, victim: str, observers: list[str], timeout: float = 90) -> float:
    """Wait until every observer reports `victim` stale (or gone). Returns an upper bound, on this
    process's monotonic clock, of when the last of them took in the victim's last advert.

    Each reply gives `last_seen_s`, the age of that advert when the reply was written, which is
    before we read it: (time read - last_seen_s) bounds the advert's arrival from above. The
    smallest bound over all polls is the tightest, and does not grow with a slow reply, so the
    check stays exact on a loaded machine."""
    last_advert = {o: float("inf") for o in observers}

    def done():
        seen = views(testnet, control, observers)
        now = time.monotonic()
        for o in observers:
            entry = seen[o].get(victim)
            if entry is not None:
                last_advert[o] = min(last_advert[o], now - entry["last_seen_s"])
        return all(seen[o].get(victim, {}).get("state", "gone") != "online" for o in observers)

    testnet.wait_until(done, timeout, f"{victim} stale at {', '.join(observers)}", interval=0.1)
    return max(last_advert.values())


def wait_seen_online(testnet, control, victim: str, observers: list[str], timeout: float = 120) -> None:
    """Every observer has seen `victim`'s current process online, and `victim` has seen every
    observer online (sightings accumulate): the node is back in both directions."""
    state = load_state(testnet.dir)
    nodes = [state.node(n) for n in observers + [victim]]
    watch = MeshWatch(nodes)
    v = state.node(victim).peer_id

    last: dict = {}

    def done():
        watch.poll(control)
        last["do not see it"] = [o for o in observers if (state.node(o).peer_id, v) not in watch.seen]
        last["it does not see"] = [o for o in observers if (v, state.node(o).peer_id) not in watch.seen]
        return not any(last.values())

    try:
        testnet.wait_until(done, timeout, f"{victim} back online both ways", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still missing: {last}") from None


def assert_stale_within_three_heartbeats(last_advert: float, t_event: float, victim: str) -> None:
    # Stale means no advert for 3 heartbeats; the last one came in no later than the kill/stop.
    late = last_advert - t_event
    assert late <= ADVERT_SLACK_S, f"an observer took in an advert from {victim} {late:.2f}s after it was killed/stopped"


def test_every_node_sees_every_other_nodes_capabilities(testnet, control):
    state = load_state(testnet.dir)
    assert [n.name for n in state.nodes] == ["bootstrap-1", "bootstrap-2", "iot-1", "ingestion-1", "anomaly-1", "risk-1"]
    watch = MeshWatch(state.nodes)
    testnet.wait_until(lambda: watch.poll(control).complete, 120, "every node to see every other online")
    caps = {n.name: json.loads((Path(n.data_dir) / "node.json").read_text())["capabilities"] for n in state.nodes}
    assert all(caps.values())
    for observer, peers in views(testnet, control).items():
        assert set(peers) == set(caps) - {observer}, observer
        for name, entry in peers.items():
            assert sorted(entry["capabilities"]) == sorted(caps[name]), (observer, name)
            assert sorted(entry["roles"]) == [name.split("-")[0]]


def test_status_json_schema(testnet):
    def settled():
        status = testnet.status(query=True)
        return status if all((n["peers_online"], n["peers_stale"]) == (5, 0) for n in status["nodes"]) else None

    status = testnet.wait_until(settled, 120, "status --json to show 5 peers online, 0 stale at every node", interval=1)
    assert status["dir"] == str(testnet.dir) and status["broker_url"] is None and status["running"] is True
    assert len(status["nodes"]) == 6
    for node in status["nodes"]:
        assert {"name", "peer_id", "roles", "pid", "alive", "listen", "data_dir", "peers_online", "peers_stale"} <= set(node)
        assert node["alive"] is True and isinstance(node["pid"], int) and testnet.pid_alive(node["pid"])
        assert node["peer_id"].startswith("12D3KooW")
        assert node["listen"] and all(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(f"/p2p/{node['peer_id']}") for a in node["listen"])
        assert Path(node["data_dir"], "node.json").exists()
    assert [n["roles"] for n in status["nodes"]] == [["bootstrap"], ["bootstrap"], ["iot"], ["ingestion"], ["anomaly"], ["risk"]]


def test_kill9_pipeline_node_goes_stale_within_three_heartbeats_then_restart_rejoins(testnet, control):
    all_running(testnet, control)
    victim = "anomaly-1"
    observers = others(testnet, victim)
    old_pid = testnet.node(victim)["pid"]
    testnet.cli("kill", victim)
    t_kill = time.monotonic()
    assert not testnet.pid_alive(old_pid)
    assert_stale_within_three_heartbeats(wait_not_online(testnet, control, victim, observers), t_kill, victim)

    testnet.cli("restart", victim)  # waits until every live node has seen it again
    node = testnet.node(victim)
    assert node["pid"] != old_pid and testnet.pid_alive(node["pid"])
    wait_seen_online(testnet, control, victim, observers)


def test_sigstopped_node_goes_stale_and_recovers_after_sigcont(testnet, control):
    all_running(testnet, control)
    victim = "risk-1"
    observers = others(testnet, victim)
    pid = testnet.node(victim)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        t_stop = time.monotonic()
        assert_stale_within_three_heartbeats(wait_not_online(testnet, control, victim, observers), t_stop, victim)
        assert testnet.pid_alive(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_seen_online(testnet, control, victim, observers)


def test_with_one_bootstrap_dead_a_new_node_joins_through_the_other(testnet, control):
    all_running(testnet, control)
    testnet.cli("kill", "bootstrap-1")
    testnet.cli("add", "ingestion")  # returns once every live node sees every other live node
    new = testnet.node("ingestion-2")
    assert testnet.pid_alive(new["pid"])
    for name in others(testnet, "bootstrap-1", "ingestion-2"):
        wait_seen_online(testnet, control, name, ["ingestion-2"], timeout=30)


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
        if status["sim"] is not None:
            assert status["sim"]["alive"]
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
