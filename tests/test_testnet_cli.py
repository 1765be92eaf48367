"""quantian-testnet without a real network: naming, state, process handling, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from testnet import procs
from testnet.ports import LOWEST_PORT, free_ports, listen_range
from testnet.plan import PlanError, next_node, plan_nodes
from testnet.state import NodeState, ServiceState, State, load_state, save_state


def test_six_nodes_are_two_bootstraps_and_one_of_each_pipeline_role():
    names = [(p.name, p.roles) for p in plan_nodes(6)]
    assert names == [
        ("bootstrap-1", ("bootstrap",)), ("bootstrap-2", ("bootstrap",)), ("iot-1", ("iot",)),
        ("ingestion-1", ("ingestion",)), ("anomaly-1", ("anomaly",)), ("risk-1", ("risk",)),
    ]


def test_extra_nodes_take_pipeline_roles_round_robin():
    extra = [p.name for p in plan_nodes(11)[6:]]
    assert extra == ["anomaly-2", "risk-2", "ingestion-2", "iot-2", "anomaly-3"]
    assert next_node(plan_nodes(6), "risk").name == "risk-2"


def test_fewer_than_six_nodes_is_refused():
    with pytest.raises(PlanError, match="at least 6"):
        plan_nodes(5)


def test_state_round_trips_through_json(tmp_path):
    node = NodeState("iot-1", ["iot"], 4001, str(tmp_path / "n"), "12D3KooWtest", ["start"], pid=42, proc_start=7, started_at=1.5)
    state = State(dir=str(tmp_path), nodes=[node], broker=ServiceState(pid=9, log_path="b.log", url="mqtt://127.0.0.1:1883", kind="mosquitto"))
    save_state(state)
    again = load_state(tmp_path)
    assert again.to_json() == state.to_json()
    assert again.node("iot-1").multiaddr == "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWtest"


def test_free_ports_are_distinct_and_below_the_ephemeral_range():
    """Outgoing connections take local ports from the ephemeral range; a listener's port picked
    there could be taken before the node binds it ("address in use" seen in a bench run)."""
    ephemeral_low = listen_range().stop
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(LOWEST_PORT <= p < ephemeral_low for p in ports), ports


def test_port_range_follows_the_kernel_setting_and_falls_back_to_the_os_choice(tmp_path):
    (tmp_path / "range").write_text("40000\t60999\n")
    assert listen_range(tmp_path / "range") == range(LOWEST_PORT, 40000)
    assert listen_range(tmp_path / "missing") == range(LOWEST_PORT, 32768)  # the Linux default
    ports = free_ports(3, candidates=range(LOWEST_PORT, LOWEST_PORT + 10))  # too little room to pick at random
    assert len(set(ports)) == 3 and all(p > 0 for p in ports)


def _sleeper(tmp_path, name="sleep"):
    pid, start = procs.spawn([sys.executable, "-c", "import time; time.sleep(120)"], tmp_path / f"{name}.log")
    return pid, start


def test_probe_tells_running_stopped_dead_and_reused_pids_apart(tmp_path):
    pid, start = _sleeper(tmp_path)
    try:
        assert procs.probe(pid, start).alive
        assert not procs.probe(pid, start + 1).alive  # same pid, other process
        procs.send(pid, signal.SIGSTOP)
        assert procs.wait_dead([], 0) == []
        info = procs.probe(pid, start)
        for _ in range(50):
            if info.stopped:
                break
            time.sleep(0.05)
            info = procs.probe(pid, start)
        assert info.alive and info.stopped
    finally:
        procs.kill9(pid, start)
    assert not procs.probe(pid, start).alive


def test_stop_terminates_even_a_sigstopped_process(tmp_path, make_testnet):
    pid, start = _sleeper(tmp_path)
    procs.send(pid, signal.SIGSTOP)
    assert procs.stop([(pid, start)], grace=10) == []
    assert not make_testnet.pid_alive(pid)


def test_status_without_a_testnet_fails_clearly(tmp_path, make_testnet):
    proc = make_testnet(tmp_path / "none").cli("status", check=False)
    assert proc.returncode == 1
    assert "no testnet" in proc.stderr


def _fake_running_testnet(tmp_path, Testnet):
    """A state file whose one 'node' is a live sleeper: enough for the CLI's bad-input paths."""
    pid, start = _sleeper(tmp_path)
    node = NodeState("iot-1", ["iot"], free_ports(1)[0], str(tmp_path / "nodes" / "iot-1"), "12D3KooWtest", ["start"], pid=pid, proc_start=start)
    save_state(State(dir=str(tmp_path), nodes=[node]))
    return Testnet(tmp_path), pid


def test_unknown_node_name_lists_the_names(tmp_path, make_testnet):
    net, pid = _fake_running_testnet(tmp_path, make_testnet)
    try:
        for command in ("kill", "restart", "logs"):
            proc = net.cli(command, "nosuch", check=False)
            assert proc.returncode == 1, command
            assert "no node named 'nosuch'" in proc.stderr and "iot-1" in proc.stderr
    finally:
        net.cli("down")
    assert not make_testnet.pid_alive(pid)


def test_up_refuses_a_directory_with_a_running_testnet(tmp_path, make_testnet):
    net, pid = _fake_running_testnet(tmp_path, make_testnet)
    try:
        proc = net.cli("up", "--no-broker", check=False)
        assert proc.returncode == 1
        assert "already running" in proc.stderr
        assert make_testnet.pid_alive(pid)  # the running one is left alone
    finally:
        net.cli("down")


def test_kill_is_sigkill_and_status_reports_the_node_dead(tmp_path, make_testnet):
    net, pid = _fake_running_testnet(tmp_path, make_testnet)
    try:
        net.cli("kill", "iot-1")
        assert not make_testnet.pid_alive(pid)
        status = net.status()
        assert status["running"] is False
        (row,) = status["nodes"]
        assert row["alive"] is False and row["pid"] == pid
    finally:
        net.cli("down")


def test_down_stops_the_whole_process_group(tmp_path, make_testnet):
    # A node that forks a helper: down must not orphan the helper.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
    pid, start = procs.spawn([sys.executable, "-c", script], tmp_path / "n.log")
    node = NodeState("iot-1", ["iot"], 1, str(tmp_path / "n"), "12D3KooWtest", [], pid=pid, proc_start=start)
    save_state(State(dir=str(tmp_path), nodes=[node]))
    time.sleep(0.5)  # the behaviour under test needs the helper to exist; there is no signal for it
    children = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    make_testnet(tmp_path).cli("down")
    assert all(not make_testnet.pid_alive(int(c)) for c in children)
    assert json.loads((tmp_path / "testnet.json").read_text())["stopped_at"]


class _FakeClient:
    """Answers `status` from a table: node multiaddr -> list of (peer_id, state, capabilities)."""

    def __init__(self, table):
        self.table = table

    def request(self, multiaddr, command, args=None, timeout=20.0):
        assert command == "status"
        peers = [{"peer_id": p, "state": s, "capabilities": c, "last_seen_s": 0.5} for p, s, c in self.table[multiaddr]]
        return {"peers": peers}


def test_mesh_check_names_which_node_misses_which_peers(tmp_path):
    from testnet.mesh import check_mesh, describe

    nodes = []
    for i, name in enumerate(("bootstrap-1", "iot-1", "risk-1")):
        data_dir = tmp_path / name
        data_dir.mkdir()
        (data_dir / "node.json").write_text(json.dumps({"capabilities": [f"cap-{name}"], "listen": [f"/ip4/127.0.0.1/tcp/{4000 + i}/p2p/P{i}"]}))
        nodes.append(NodeState(name, [name.split("-")[0]], 4000 + i, str(data_dir), f"P{i}", []))
    caps = {n.peer_id: [f"cap-{n.name}"] for n in nodes}
    full = {n.multiaddr: [(p, "online", caps[p]) for p in caps if p != n.peer_id] for n in nodes}
    assert check_mesh(_FakeClient(full), nodes).complete

    partial = dict(full)
    partial[nodes[1].multiaddr] = [("P0", "online", caps["P0"]), ("P2", "stale", caps["P2"])]  # iot-1: risk-1 stale
    partial[nodes[2].multiaddr] = [("P0", "online", []), ("P1", "online", caps["P1"])]  # risk-1: no caps of bootstrap-1 yet
    report = check_mesh(_FakeClient(partial), nodes)
    assert not report.complete
    assert report.missing == {"iot-1": ["risk-1"], "risk-1": ["bootstrap-1"]}
    assert describe(report) == "iot-1 misses risk-1; risk-1 misses bootstrap-1"


def test_mesh_watch_accumulates_sightings_but_not_adverts_older_than_the_process(tmp_path):
    from testnet.mesh import MeshWatch

    nodes = []
    for i, name in enumerate(("bootstrap-1", "iot-1")):
        data_dir = tmp_path / name
        data_dir.mkdir()
        (data_dir / "node.json").write_text(json.dumps({"capabilities": [], "started_at": time.time() - 60}))
        nodes.append(NodeState(name, [name.split("-")[0]], 4000 + i, str(data_dir), f"P{i}", []))
    a, b = nodes[0].multiaddr, nodes[1].multiaddr
    watch = MeshWatch(nodes)
    assert watch.poll(_FakeClient({a: [("P1", "online", [])], b: [("P0", "stale", [])]})).missing == {"iot-1": ["bootstrap-1"]}
    # iot-1 now sees bootstrap-1; bootstrap-1 reporting iot-1 stale meanwhile does not undo its sighting
    assert watch.poll(_FakeClient({a: [("P1", "stale", [])], b: [("P0", "online", [])]})).complete
    # bootstrap-1's process "started" after the advert iot-1 reports (0.5 s old): an advert of the
    # previous process, which must not count.
    (tmp_path / "bootstrap-1" / "node.json").write_text(json.dumps({"capabilities": [], "started_at": time.time() + 5}))
    fresh = MeshWatch(nodes)
    assert fresh.poll(_FakeClient({a: [("P1", "online", [])], b: [("P0", "online", [])]})).missing == {"iot-1": ["bootstrap-1"]}
