"""A testnet for fault injection: every node in its own network namespace (or all on 127.0.0.1).

    with FaultNet(tmp / "net", namespaces=True, small_disks={"ingestion-1": 256 << 20}) as net:
        net.up()                             # broker + 8 nodes, returns once every node sees every other
        net.partition(["anomaly-2", "risk-2"]); net.heal()
        net.kill("bootstrap-1"); net.restart("bootstrap-1")
        net.pause("risk-2"); net.resume("risk-2")
        net.restart_broker()
        net.fill_disk("ingestion-1"); net.free_disk("ingestion-1")
        net.ask("ingestion-1", "status")

The nodes, their roles, certificates and command lines are those of `quantian-testnet`
(testnet.plan, testnet.network), readiness and mesh waits are testnet.mesh's. In namespaces
(testnet.netns, with a host link) each node listens on its own address, port 4001, and the MQTT
broker runs in the root namespace on the host link's address, so a partition can also cut a
node off from the broker and from the operator. On loopback a partition is emulated by
SIGSTOPping the cut-off group (a hung peer looks the same from outside).

`small_disks` gives a node a size-limited tmpfs as its data dir (root only): `fill_disk` takes
all its free space (the node's SQLite writes then fail with "database or disk is full"),
`free_disk` gives it back. Node logs live outside the data dirs, so a full disk cannot silence
them. `stop()` stops every process (the data dirs stay, for offline `ledger verify`), `close()`
(or the context exit) also unmounts the tmpfs data dirs and deletes the namespaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

from testnet import broker as mqtt_broker
from testnet import mesh, netns
from testnet.network import _credentials, _new_node, node_args, node_command
from testnet.plan import plan_nodes
from testnet.ports import free_ports
from testnet.procs import kill9, probe, send, spawn, stop
from testnet.state import NodeState, TestnetError

NODE_PORT = 4001  # every namespace has its own address, so every node can use the same port
FILLER = ".disk-filler"


class FaultNetError(TestnetError):
    code = "faultnet_error"


@dataclass
class FaultNode(NodeState):
    host: str = "127.0.0.1"
    log_file: str = ""

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def log_path(self) -> Path:
        return Path(self.log_file) if self.log_file else Path(self.data_dir) / "node.log"


@dataclass
class FaultNet:
    directory: Path
    namespaces: bool
    nodes_count: int = 8
    heartbeat: float = 3.0
    broker_kind: str = "auto"
    small_disks: dict[str, int] = field(default_factory=dict)  # node name -> tmpfs size in bytes
    progress: Any = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.net: netns.Network | None = None
        self.nodes: dict[str, FaultNode] = {}
        self.broker: mqtt_broker.Broker | None = None
        self.paused: set[str] = set()
        self.partitioned: list[str] = []
        self._mounts: list[Path] = []
        self._client_cm = None
        self.client = None

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "FaultNet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def up(self, timeout: float = 240.0) -> None:
        """Broker, then every node; returns once every node sees every other one online."""
        deadline = time.monotonic() + timeout
        plans = plan_nodes(self.nodes_count)
        if self.namespaces:
            self.net = netns.Network([p.name for p in plans], host_link=True).create()
            hosts = {p.name: self.net.address(p.name) for p in plans}
            ports = dict.fromkeys(hosts, NODE_PORT)
            broker_host = self.net.host_address
        else:
            hosts = {p.name: "127.0.0.1" for p in plans}
            ports = dict(zip(hosts, free_ports(len(plans))))
            broker_host = "127.0.0.1"
        for name, size in self.small_disks.items():
            self._mount_tmpfs(self.directory / "nodes" / name, size)
        authority, install = _credentials(self.directory)
        options = {"authority": authority.public_key.hex(), "heartbeat": self.heartbeat}
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)
        for plan in plans:
            base = _new_node(self.directory, plan, ports[plan.name], authority, install)
            self.nodes[plan.name] = FaultNode(**{f.name: getattr(base, f.name) for f in fields(NodeState)},
                                              host=hosts[plan.name],
                                              log_file=str(self.directory / "logs" / f"{plan.name}.log"))
        self.broker = self._start_broker(broker_host)
        bootstraps = [n for n in self.nodes.values() if "bootstrap" in n.roles]
        for node in self.nodes.values():
            node.args = node_args(node, bootstraps, options, self.broker.url)
            node.args[node.args.index("--listen") + 1] = f"/ip4/{node.host}/tcp/{node.port}"
            self._start(node)
        mesh.wait_node_json(list(self.nodes.values()), deadline, self._say)
        self._client_cm = mesh.open_client(self.directory / "operator")
        self.client = self._client_cm.__enter__()
        mesh.wait_mesh(self.client, list(self.nodes.values()), deadline, self._say)

    def stop(self) -> list[int]:
        """Stop every node (SIGTERM, then SIGKILL) and the broker; returns pids that survived."""
        for name in list(self.paused):
            self.resume(name)
        left = stop([(n.pid, n.proc_start) for n in self.nodes.values()])
        if self.broker is not None:
            self.broker.stop()
        if self._client_cm is not None:
            self._client_cm.__exit__(None, None, None)
            self._client_cm = self.client = None
        return left

    def close(self) -> None:
        """stop(), unmount the tmpfs data dirs, delete the namespaces; idempotent."""
        try:
            self.stop()
        finally:
            for mount in reversed(self._mounts):
                subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=60)
            self._mounts.clear()
            if self.net is not None:
                self.net.teardown()

    # --- processes ---------------------------------------------------------------------------

    def node(self, name: str) -> FaultNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise FaultNetError(f"no node {name!r} (nodes: {', '.join(self.nodes)})") from None

    def _start(self, node: FaultNode) -> None:
        (Path(node.data_dir) / "node.json").unlink(missing_ok=True)  # a stale one must not look ready
        argv = node_command() + node.args
        if self.net is not None:
            argv = self.net.exec_argv(node.name, argv)  # `ip netns exec` execs: the pid is the node's
        node.pid, node.proc_start = spawn(argv, node.log_path)
        node.started_at = time.time()

    def alive(self, name: str) -> bool:
        node = self.node(name)
        return probe(node.pid, node.proc_start).alive

    def live(self) -> list[FaultNode]:
        """Nodes running and not paused (the ones that must all see each other)."""
        return [n for n in self.nodes.values() if n.name not in self.paused and probe(n.pid, n.proc_start).alive]

    def kill(self, name: str) -> None:
        """kill -9."""
        node = self.node(name)
        kill9(node.pid, node.proc_start)
        self.paused.discard(name)

    def restart(self, name: str, *, timeout: float = 240.0, wait_mesh: bool = True) -> None:
        """Start NAME again (stopping it first if it runs): same data dir, address and flags."""
        deadline = time.monotonic() + timeout
        node = self.node(name)
        if name in self.paused:
            self.resume(name)
        stop([(node.pid, node.proc_start)])
        self._start(node)
        mesh.wait_node_json([node], deadline, self._say)
        if wait_mesh:
            self.wait_mesh(deadline - time.monotonic())

    def pause(self, name: str) -> None:
        """SIGSTOP: a hung peer, its sockets open."""
        send(self.node(name).pid, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        send(self.node(name).pid, signal.SIGCONT)
        self.paused.discard(name)

    @contextmanager
    def pausing(self, name: str) -> Iterator[None]:
        """SIGSTOP for the block, SIGCONT after it, also when the block fails."""
        self.pause(name)
        try:
            yield
        finally:
            self.resume(name)

    def wait_mesh(self, timeout: float = 240.0) -> None:
        mesh.wait_mesh(self.client, self.live(), time.monotonic() + timeout, self._say)

    def rss_kb(self, name: str) -> int | None:
        """VmRSS of the node's process in kB (None when it is not running)."""
        node = self.node(name)
        try:
            for line in Path(f"/proc/{node.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    # --- network -----------------------------------------------------------------------------

    def partition(self, group: Iterable[str]) -> None:
        """Cut `group` off from everyone else, broker and operator included. On loopback the group
        is SIGSTOPped instead (emulated: from outside a cut-off peer and a hung one look alike)."""
        group = list(group)
        if self.net is not None:
            self.net.partition(group)
        else:
            for name in group:
                self.pause(name)
        self.partitioned = group

    def heal(self) -> None:
        if self.net is not None:
            self.net.heal()
        else:
            for name in self.partitioned:
                self.resume(name)
        self.partitioned = []

    # --- broker ------------------------------------------------------------------------------

    def _start_broker(self, host: str) -> mqtt_broker.Broker:
        """start_broker()'s broker, listening on `host` (the host link's address in namespaces)."""
        return mqtt_broker.start_broker(self.directory / "broker", kind=self.broker_kind, host=host)

    def restart_broker(self) -> None:
        """Stop the broker (SIGTERM: Mosquitto saves its sessions) and start it on the same port."""
        self.broker.restart()

    # --- disks -------------------------------------------------------------------------------

    def _mount_tmpfs(self, path: Path, size: int) -> None:
        if os.geteuid() != 0:
            raise FaultNetError(f"a size-limited data dir (tmpfs) for {path.name} needs root")
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise FaultNetError(f"cannot mount a tmpfs on {path}: {done.stderr.strip()}")
        self._mounts.append(path)

    def disk_free(self, name: str) -> int:
        st = os.statvfs(self.node(name).data_dir)
        return st.f_bavail * st.f_frsize

    def fill_disk(self, name: str) -> int:
        """Take every free byte of the node's (tmpfs) data dir; returns how many were taken."""
        if Path(self.node(name).data_dir) not in self._mounts:
            raise FaultNetError(f"{name} has no size-limited data dir (small_disks)")
        taken = 0
        fd = os.open(Path(self.node(name).data_dir) / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 12):  # MiB chunks until ENOSPC, then pages for the rest
                chunk = b"\0" * size
                for _ in range(1 << 16):  # bounded: 64 GiB at most
                    try:
                        taken += os.write(fd, chunk)
                    except OSError:
                        break
        finally:
            os.close(fd)
        return taken

    def free_disk(self, name: str) -> None:
        (Path(self.node(name).data_dir) / FILLER).unlink(missing_ok=True)

    # --- asking ------------------------------------------------------------------------------

    def ask(self, name: str, command: str, args: dict | None = None, timeout: float = 30.0) -> dict:
        """One control request to the node (ControlError when it does not answer)."""
        return self.client.request(mesh.node_addr(self.node(name)), command, args, timeout=timeout)

    def ask_many(self, names: list[str], command: str, timeout: float = 30.0) -> dict[str, dict | None]:
        """The same request to several nodes at once; None for a node that did not answer."""
        error = mesh.control_error_type()

        def one(name: str) -> dict | None:
            try:
                return self.ask(name, command, timeout=timeout)
            except error:
                return None

        with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="faultnet") as pool:
            return dict(zip(names, pool.map(one, names)))
