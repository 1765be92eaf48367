"""Testnet operations: up, down, kill, restart, add, wait, status. The CLI is a thin layer on top."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit
from typing import Callable

from testnet import mesh
from testnet.plan import NodePlan, next_node, plan_nodes
from testnet.ports import free_ports
from testnet.procs import kill9, probe, proc_start_time, spawn, stop
from testnet.state import (
    NodeState,
    ServiceState,
    State,
    TestnetError,
    load_state,
    locked,
    read_node_json,
    save_state,
    STATE_FILE,
)

CERT_VALID_FOR_S = 30 * 24 * 3600.0
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_SIM_RATE = 20.0
DEFAULT_SIM_SEED = 7

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --- commands we run -------------------------------------------------------------------------


def _script(name: str, module: str) -> list[str]:
    """Our own console script next to this interpreter (the venv), else on PATH, else `python -m`."""
    override = os.environ.get(f"QUANTIAN_{name.split('-')[1].upper()}_CMD")
    if override:
        return shlex.split(override)
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


def node_command() -> list[str]:
    if not os.environ.get("QUANTIAN_NODE_CMD") and importlib.util.find_spec("node.cli") is None:
        raise TestnetError("the node program is not installed (node/cli.py missing): nothing to start")
    return _script("quantian-node", "node.cli")


def sim_available() -> bool:
    return bool(os.environ.get("QUANTIAN_SIM_CMD")) or importlib.util.find_spec("sim.cli") is not None


def node_args(node: NodeState, bootstraps: list[NodeState], options: dict, mqtt_url: str | None) -> list[str]:
    args = [
        "start",
        "--role", ",".join(node.roles),
        "--data-dir", node.data_dir,
        "--listen", f"/ip4/127.0.0.1/tcp/{node.port}",
        "--name", node.name,
    ]
    if options.get("authority"):
        # Given as hex, not left to default to DATA_DIR/authority.pub: the node reads a 64-character
        # *path* as if it were the hex key (node/membership.py parse_authority_public_key).
        args += ["--authority", options["authority"]]
    for boot in bootstraps:
        if boot.name != node.name:
            args += ["--bootstrap", boot.multiaddr]
    if options.get("heartbeat"):
        args += ["--heartbeat", str(options["heartbeat"])]
    if options.get("log_format"):
        args += ["--log-format", options["log_format"]]
    if mqtt_url and "iot" in node.roles:
        args += ["--mqtt-url", mqtt_url]
    return args


# --- state helpers ---------------------------------------------------------------------------


def is_running(state: State) -> bool:
    procs = [(n.pid, n.proc_start) for n in state.nodes]
    procs += [(s.pid, s.proc_start) for s in (state.broker, state.sim) if s]
    return any(probe(pid, start).alive for pid, start in procs)


def members(state: State) -> list[NodeState]:
    """Nodes that are alive and not stopped: the ones that should all see each other."""
    out = []
    for node in state.nodes:
        info = probe(node.pid, node.proc_start)
        if info.alive and not info.stopped:
            out.append(node)
    return out


def _credentials(directory: Path):
    from node.membership import AUTHORITY_KEY_FILE, create_authority, install_credentials, load_authority

    auth_dir = directory / "authority"
    auth_dir.mkdir(parents=True, exist_ok=True)
    authority = load_authority(auth_dir) if (auth_dir / AUTHORITY_KEY_FILE).exists() else create_authority(auth_dir)
    install_credentials(directory / "operator", authority, ["operator"], CERT_VALID_FOR_S, cert_file="operator.cert")
    return authority, install_credentials


def _new_node(directory: Path, plan: NodePlan, port: int, authority, install) -> NodeState:
    data_dir = directory / "nodes" / plan.name
    data_dir.mkdir(parents=True, exist_ok=True)
    peer_id = install(data_dir, authority, list(plan.roles), CERT_VALID_FOR_S)
    return NodeState(name=plan.name, roles=list(plan.roles), port=port, data_dir=str(data_dir), peer_id=peer_id, args=[])


def _start_node(node: NodeState) -> None:
    (Path(node.data_dir) / "node.json").unlink(missing_ok=True)  # a stale one must not look ready
    node.pid, node.proc_start = spawn(node_command() + node.args, node.log_path)
    node.started_at = time.time()


def _start_broker(directory: Path, kind: str, progress: Progress, port: int | None = None) -> ServiceState | None:
    if importlib.util.find_spec("testnet.broker") is None:
        if kind != "auto":
            raise TestnetError(f"--broker {kind}: the broker launcher (testnet/broker.py) is not available")
        progress("no MQTT broker launcher (testnet/broker.py) yet: starting without a broker or simulator")
        return None
    from testnet.broker import BrokerError, start_broker

    try:
        broker = start_broker(directory / "broker", kind=kind, port=port)
    except BrokerError as exc:
        raise TestnetError(f"the MQTT broker did not start: {exc}") from None
    progress(f"MQTT broker ({broker.kind}) at {broker.url}, pid {broker.pid}")
    return ServiceState(pid=broker.pid, log_path=str(broker.log_path), proc_start=proc_start_time(broker.pid), url=broker.url, kind=broker.kind)


def _start_sim(directory: Path, url: str, rate: float, seed: int, count: int | None, progress: Progress) -> ServiceState:
    log_path = directory / "sim.log"
    argv = _script("quantian-sim", "sim.cli") + ["--mqtt-url", url, "--rate", str(rate), "--seed", str(seed)]
    argv += ["--count", str(count)] if count else ["--forever"]
    # occasional injected anomalies, so a newcomer sees alerts within a minute; ground truth kept
    argv += ["--inject", "spike:p=0.004:mag=0.2", "--inject", "volume:p=0.002:mag=8",
             "--ground-truth", str(directory / "ground_truth.jsonl")]
    pid, start = spawn(argv, log_path)
    progress(f"simulator publishing {rate:g} ticks/s to {url} with injected anomalies "
             f"(ground truth: {directory / 'ground_truth.jsonl'}), pid {pid}")
    return ServiceState(pid=pid, log_path=str(log_path), proc_start=start)


# --- operations ------------------------------------------------------------------------------


def up(
    directory: Path,
    *,
    nodes: int = 6,
    heartbeat: float | None = None,
    log_format: str | None = None,
    broker: str | None = "auto",
    sim: bool = True,
    sim_rate: float = DEFAULT_SIM_RATE,
    sim_seed: int = DEFAULT_SIM_SEED,
    sim_count: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    keep_on_failure: bool = False,
    progress: Progress = _quiet,
) -> State:
    """Start a testnet in `directory` and return once every node sees every other one.

    On failure (timeout, a node dying, Ctrl-C) everything started is stopped again, unless
    keep_on_failure, and the error says which node misses which peers."""
    directory = Path(directory)
    plans = plan_nodes(nodes)
    command = node_command()  # fail before creating anything if there is no node program
    deadline = time.monotonic() + timeout
    with locked(directory):
        if (directory / STATE_FILE).exists():
            old = load_state(directory)
            if is_running(old):
                raise TestnetError(f"a testnet is already running in {directory}; stop it with `quantian-testnet down --dir {directory}`")
        authority, install = _credentials(directory)
        state = State(
            dir=str(directory),
            options={"authority": authority.public_key.hex(), "nodes": nodes, "heartbeat": heartbeat, "log_format": log_format, "broker": broker, "sim": sim, "sim_rate": sim_rate},
        )
        for plan, port in zip(plans, free_ports(len(plans))):
            state.nodes.append(_new_node(directory, plan, port, authority, install))
        save_state(state)
    try:
        if broker:
            state.broker = _start_broker(directory, broker, progress)
            save_state(state)
        url = state.broker.url if state.broker else None
        for node in state.nodes:
            node.args = node_args(node, state.bootstraps, state.options, url)
            _start_node(node)
            save_state(state)  # after each spawn: `down` must always find what was started
        progress(f"started {len(state.nodes)} nodes ({' '.join(command)}), waiting for them to listen")
        mesh.wait_node_json(state.nodes, deadline, progress)
        progress("all nodes listening; waiting until every node sees every other node's capabilities")
        with mesh.open_client(directory / "operator") as client:
            mesh.wait_mesh(client, state.nodes, deadline, progress)
        progress(f"mesh complete: {len(state.nodes)} nodes see each other")
        if sim and url:
            if sim_available():
                state.sim = _start_sim(directory, url, sim_rate, sim_seed, sim_count, progress)
                save_state(state)
            else:
                progress("no simulator (sim/cli.py) yet: the network runs without market data")
        return state
    except BaseException:
        if not keep_on_failure:
            progress("start-up failed: stopping everything that was started")
            down(directory)
        raise


def down(directory: Path, progress: Progress = _quiet) -> list[int]:
    """Stop every process of the testnet (SIGTERM, then SIGKILL). Returns pids that survived."""
    with locked(directory):
        state = load_state(directory)
        state.stopped_at = time.time()
        save_state(state)
    procs = [(s.pid, s.proc_start) for s in (state.sim,) if s]  # producer first
    procs += [(n.pid, n.proc_start) for n in state.nodes]
    left = stop(procs)
    if state.broker:
        left += stop([(state.broker.pid, state.broker.proc_start)])
    stopped = sum(1 for pid, _ in procs if pid) + (1 if state.broker else 0)
    progress(f"stopped the testnet in {directory} ({stopped} processes)" + (f"; still alive: {left}" if left else ""))
    return left


def kill(directory: Path, name: str) -> NodeState | ServiceState:
    """SIGKILL one node, or the broker (as `kill -9` would); it stays in the state for `restart`."""
    state = load_state(directory)
    target = _broker_of(state) if name == "broker" else state.node(name)
    kill9(target.pid, target.proc_start)
    return target


def _broker_of(state: State) -> ServiceState:
    if state.broker is None:
        raise TestnetError(f"the testnet in {state.dir} has no MQTT broker")
    return state.broker


def restart_broker(directory: Path, progress: Progress = _quiet) -> ServiceState:
    """Stop the MQTT broker and start it again on the same port (clients reconnect to the same URL)."""
    with locked(directory):
        state = load_state(directory)
        old = _broker_of(state)
        stop([(old.pid, old.proc_start)])
        state.broker = _start_broker(directory, old.kind or "auto", progress, port=urlsplit(old.url).port)
        save_state(state)
    return state.broker


def restart(
    directory: Path, name: str, *, wait: bool = True, timeout: float = DEFAULT_TIMEOUT_S, progress: Progress = _quiet
) -> NodeState | ServiceState:
    """Start NAME again, same data dir, port and flags (stopping it first if it still runs)."""
    if name == "broker":
        return restart_broker(directory, progress)
    deadline = time.monotonic() + timeout
    with locked(directory):
        state = load_state(directory)
        node = state.node(name)
        stop([(node.pid, node.proc_start)])
        _start_node(node)
        state.stopped_at = None
        save_state(state)
    progress(f"restarted {name} (pid {node.pid}) on port {node.port}")
    _wait_joined(directory, [node], deadline, wait, progress)
    return node


def add(directory: Path, role: str, *, wait: bool = True, timeout: float = DEFAULT_TIMEOUT_S, progress: Progress = _quiet) -> NodeState:
    """Start one more node with `role`, dialling the same bootstraps, and wait for it to join."""
    deadline = time.monotonic() + timeout
    with locked(directory):
        state = load_state(directory)
        plan = next_node([NodePlan(n.name, tuple(n.roles)) for n in state.nodes], role)
        authority, install = _credentials(directory)
        node = _new_node(directory, plan, free_ports(1)[0], authority, install)
        node.args = node_args(node, state.bootstraps, state.options, state.broker.url if state.broker else None)
        _start_node(node)
        state.nodes.append(node)
        save_state(state)
    progress(f"added {node.name} (pid {node.pid}) on port {node.port}")
    _wait_joined(directory, [node], deadline, wait, progress)
    return node


def _wait_joined(directory: Path, started: list[NodeState], deadline: float, wait: bool, progress: Progress) -> None:
    mesh.wait_node_json(started, deadline, progress)
    if wait:
        wait_for_mesh(directory, deadline=deadline, progress=progress)


def wait_for_mesh(directory: Path, *, deadline: float, progress: Progress = _quiet) -> None:
    """Until every live node (alive, not SIGSTOPped) sees every other live node online."""
    state = load_state(directory)
    with mesh.open_client(directory / "operator") as client:
        mesh.wait_mesh(client, members(state), deadline, progress)


def _fresh(node: NodeState, info: dict | None) -> bool:
    """`info` (node.json) was written by the process we started, not left over from an earlier one."""
    return bool(info) and info.get("pid") == node.pid


def status(directory: Path, client=None) -> dict:
    """The testnet as scripts see it (`status --json`). With a control client, each live node is
    asked for its peer counts; without, those are None."""
    state = load_state(directory)
    rows = []
    live = [n for n in members(state) if _fresh(n, read_node_json(n.data_dir))]
    replies = mesh.query_many(client, live, timeout=5.0) if client is not None else {}
    for node in state.nodes:
        proc = probe(node.pid, node.proc_start)
        info = read_node_json(node.data_dir) if proc.alive else None
        fresh = _fresh(node, info)
        row = {
            "name": node.name,
            "peer_id": node.peer_id,
            "roles": node.roles,
            "pid": node.pid,  # last known; "alive" says whether it still runs
            "alive": proc.alive,
            "stopped": proc.stopped,
            "ready": fresh,
            "listen": info["listen"] if fresh and info.get("listen") else [node.multiaddr],
            "port": node.port,
            "data_dir": node.data_dir,
            "log": str(node.log_path),
            "capabilities": info.get("capabilities", []) if fresh else [],
            "peers_online": None,
            "peers_stale": None,
            "peers_gone": None,
            "peers_total": None,
            "uptime_s": None,
            "error": None,
        }
        if not proc.alive:
            row["error"] = "not running"
        elif proc.stopped:
            row["error"] = "stopped (SIGSTOP)"
        elif not fresh:
            row["error"] = "starting"
        elif node.name in replies:
            reply, err = replies[node.name]
            if reply is None:
                row["error"] = err
            else:
                for key in ("peers_online", "peers_stale", "peers_gone", "peers_total", "uptime_s"):
                    row[key] = reply.get(key)
        rows.append(row)
    svc = lambda s: None if s is None else {"pid": s.pid, "alive": probe(s.pid, s.proc_start).alive, "log": s.log_path, **({"url": s.url, "kind": s.kind} if s.url else {})}  # noqa: E731
    return {
        "dir": state.dir,
        "running": is_running(state),
        "broker_url": state.broker.url if state.broker else None,
        "broker": svc(state.broker),
        "sim": svc(state.sim),
        "operator_dir": str(Path(state.dir) / "operator"),
        "nodes": rows,
    }
