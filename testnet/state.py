"""The testnet directory: its layout and DIR/testnet.json, the state every command shares.

DIR/testnet.json    this state (nodes, ports, pids, broker, simulator)
DIR/authority/      the network authority key that signs every certificate
DIR/operator/       the operator's key and certificate (used by `quantian-node ctl` and by us)
DIR/nodes/<name>/   each node's data dir: identity.key, node.cert, authority.pub, node.json, node.log
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

STATE_FILE = "testnet.json"
LOCK_FILE = ".testnet.lock"
STATE_VERSION = 1
DEFAULT_DIR = ".testnet"


class TestnetError(Exception):
    """A testnet command cannot do what was asked; the message says why and what to do."""

    __test__ = False  # not a pytest test class
    code = "testnet_error"


class NoTestnet(TestnetError):
    code = "no_testnet"


class UnknownNode(TestnetError):
    code = "unknown_node"


@dataclass
class NodeState:
    name: str
    roles: list[str]
    port: int
    data_dir: str
    peer_id: str
    args: list[str]  # `quantian-node` arguments, reused verbatim by `restart`
    pid: int | None = None
    proc_start: int | None = None  # kernel start time of `pid`, guards against pid reuse
    started_at: float | None = None

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def log_path(self) -> Path:
        return Path(self.data_dir) / "node.log"


@dataclass
class ServiceState:
    """The MQTT broker or the simulator: a process we started and must stop."""

    pid: int | None
    log_path: str
    proc_start: int | None = None
    url: str | None = None
    kind: str | None = None


@dataclass
class State:
    dir: str
    nodes: list[NodeState] = field(default_factory=list)
    broker: ServiceState | None = None
    sim: ServiceState | None = None
    options: dict = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    stopped_at: float | None = None
    version: int = STATE_VERSION

    def node(self, name: str) -> NodeState:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UnknownNode(f"no node named {name!r} in {self.dir}; nodes: {', '.join(n.name for n in self.nodes)}")

    @property
    def bootstraps(self) -> list[NodeState]:
        return [n for n in self.nodes if "bootstrap" in n.roles]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "State":
        svc = lambda v: ServiceState(**v) if v else None  # noqa: E731
        return cls(
            dir=raw["dir"],
            nodes=[NodeState(**n) for n in raw.get("nodes", [])],
            broker=svc(raw.get("broker")),
            sim=svc(raw.get("sim")),
            options=raw.get("options", {}),
            created_at=raw.get("created_at", 0.0),
            stopped_at=raw.get("stopped_at"),
            version=raw.get("version", STATE_VERSION),
        )


def resolve_dir(directory: str | os.PathLike | None) -> Path:
    return Path(directory or os.environ.get("QUANTIAN_TESTNET_DIR") or DEFAULT_DIR).resolve()


def load_state(directory: Path) -> State:
    path = Path(directory) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoTestnet(f"no testnet in {directory} (no {STATE_FILE}); start one with `quantian-testnet up --dir {directory}`") from None
    except json.JSONDecodeError as exc:
        raise TestnetError(f"{path} is corrupt ({exc}); remove {directory} and start again") from None
    return State.from_json(raw)


def save_state(state: State) -> None:
    path = Path(state.dir) / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise read-modify-write of the state between concurrent commands (run + restart...)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    with open(Path(directory) / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_node_json(data_dir: str | Path) -> dict | None:
    """The node's readiness file, or None while it is absent or half-written."""
    try:
        return json.loads((Path(data_dir) / "node.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
