"""Asking running nodes what they see, over the control protocol, as the testnet's operator.

`node.control_client` imports libp2p (~3 s), so it is imported here lazily, only by commands
that talk to nodes; `quantian-testnet --help`, `down`, `kill` and `logs` never pay for it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from testnet.procs import probe, tail
from testnet.state import NodeState, TestnetError, read_node_json

STATUS_TIMEOUT_S = 10.0


class NotReady(TestnetError):
    code = "not_ready"


@contextlib.contextmanager
def open_client(operator_dir: Path) -> Iterator[object]:
    """A started ControlClient holding the operator's credentials; TestnetError if it cannot be had."""
    from node.control_client import ControlClient, ControlError, OperatorCredentials
    from node.identity import IdentityError

    try:
        client = ControlClient(OperatorCredentials.load(operator_dir))
        client.__enter__()
    except (ControlError, IdentityError) as exc:
        raise TestnetError(f"cannot act as the testnet operator ({operator_dir}): {exc}") from None
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


def control_error_type() -> type[Exception]:
    from node.control_client import ControlError

    return ControlError


def node_addr(node: NodeState) -> str:
    """Where to reach the node: the address it announced in node.json, else its fixed port."""
    info = read_node_json(node.data_dir)
    if info and info.get("listen"):
        return info["listen"][0]
    return node.multiaddr


def query_status(client, node: NodeState, timeout: float = STATUS_TIMEOUT_S) -> tuple[dict | None, str | None]:
    """(status, None) or (None, reason) for one node."""
    try:
        return client.request(node_addr(node), "status", None, timeout=timeout), None
    except control_error_type() as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _poll(step: Callable[[], str | None], deadline: float, progress: Callable[[str], None], interval: float, what: str,
          hint: Callable[[], str] = lambda: "") -> None:
    """Call `step` until it returns None (done); it returns what is still missing otherwise,
    which is reported when it changes and named in the NotReady raised at the deadline."""
    last = ""
    while (missing := step()) is not None:
        if missing != last:
            progress(missing)
            last = missing
        if time.monotonic() >= deadline:
            raise NotReady(f"timed out {what}: {missing}{hint()}")
        time.sleep(interval)


def query_many(client, nodes: list[NodeState], timeout: float = STATUS_TIMEOUT_S) -> dict[str, tuple[dict | None, str | None]]:
    """query_status for several nodes at once (the client serves concurrent callers)."""
    if not nodes:
        return {}
    with ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="testnet-status") as pool:
        futures = {n.name: pool.submit(query_status, client, n, timeout) for n in nodes}
        return {name: f.result() for name, f in futures.items()}


def wait_node_json(nodes: list[NodeState], deadline: float, progress: Callable[[str], None]) -> None:
    """Wait until each node has written a node.json for *this* process (pid matches)."""
    pending = {n.name: n for n in nodes}

    def step() -> str | None:
        for name, node in list(pending.items()):
            info = read_node_json(node.data_dir)
            if info and info.get("pid") == node.pid:
                pending.pop(name)
            elif not probe(node.pid, node.proc_start).alive:
                raise NotReady(f"node {name} exited before it was ready; last lines of {node.log_path}:\n{tail(node.log_path)}")
        if not pending:
            return None
        return f"{len(pending)} node(s) not listening yet: {', '.join(sorted(pending))}"

    def logs() -> str:
        return "; see " + ", ".join(str(pending[n].log_path) for n in sorted(pending))

    _poll(step, deadline, progress, 0.2, "waiting for node.json", logs)


@dataclass
class MeshReport:
    complete: bool
    missing: dict[str, list[str]]  # node name -> names of peers it has not seen online with caps
    errors: dict[str, str]  # node name -> why its status could not be read


class MeshWatch:
    """Which nodes have seen which peers online, with their capabilities, since the watch began.

    "Seen" accumulates over polls: on a loaded box a heartbeat can be late and a peer flicker to
    stale and back, which must not keep `up` from ever finding one instant where all pairs agree.
    An advert counts only if it arrived after the peer's current process started (node.json's
    `started_at`), so a restarted node is not taken as back on the strength of its old adverts."""

    def __init__(self, nodes: list[NodeState]) -> None:
        self.nodes = nodes
        self.seen: set[tuple[str, str]] = set()  # (observer peer id, peer id)

    def poll(self, client) -> MeshReport:
        info = {n.peer_id: read_node_json(n.data_dir) or {} for n in self.nodes}
        caps = {pid: set(i.get("capabilities") or []) for pid, i in info.items()}
        replies = query_many(client, self.nodes)
        now = time.time()  # after the replies: an upper bound for when each was written
        errors: dict[str, str] = {}
        for node in self.nodes:
            status, err = replies[node.name]
            if status is None:
                errors[node.name] = err or "no answer"
                continue
            for p in status.get("peers", []):
                pid = p.get("peer_id")
                if pid not in caps or p.get("state") != "online" or not set(p.get("capabilities") or []) >= caps[pid]:
                    continue
                started = info[pid].get("started_at")
                if started is not None and p.get("last_seen_s") is not None and now - p["last_seen_s"] < started:
                    continue  # an advert from before this process started
                self.seen.add((node.peer_id, pid))
        missing: dict[str, list[str]] = {}
        for node in self.nodes:
            lacking = sorted(o.name for o in self.nodes if o is not node and (node.peer_id, o.peer_id) not in self.seen)
            if lacking:
                missing[node.name] = lacking
        return MeshReport(not missing, missing, {k: v for k, v in errors.items() if k in missing})


def check_mesh(client, nodes: list[NodeState]) -> MeshReport:
    """Does every node in `nodes` list every other one as online, with its capabilities, now?"""
    return MeshWatch(nodes).poll(client)


def describe(report: MeshReport) -> str:
    parts = [f"{name} misses {', '.join(peers)}" for name, peers in sorted(report.missing.items())]
    parts += [f"{name}: {err}" for name, err in sorted(report.errors.items())]
    return "; ".join(parts) or "complete"


def wait_mesh(client, nodes: list[NodeState], deadline: float, progress: Callable[[str], None], poll_s: float = 0.5) -> None:
    """Poll until every node among `nodes` has seen every other one online with its capabilities;
    NotReady naming who misses whom on timeout."""

    watch = MeshWatch(nodes)

    def step() -> str | None:
        dead = [n.name for n in nodes if not probe(n.pid, n.proc_start).alive]
        if dead:
            raise NotReady(f"node(s) died while joining: {', '.join(dead)}; see their node.log")
        report = watch.poll(client)
        return None if report.complete else f"mesh incomplete: {describe(report)}"

    _poll(step, deadline, progress, poll_s, "before every node saw every other node")


def stderr_progress(msg: str) -> None:
    try:
        print(f"[testnet] {msg}", file=sys.stderr, flush=True)
    except OSError:  # stderr piped into something that died with the same Ctrl-C: keep tearing down
        pass
