"""Rehearse a bootstrap deployment on one machine: what the operator does offline, then the node
started with the unit's own command line and a rendered node.toml.

Used by the tests (loopback and network namespaces) and handy before touching a cloud:

    net = OfflineAuthority.create(Path("rehearsal"))
    peer_id = net.admit(Path("rehearsal/aws-1"), ["bootstrap"])      # key made "on the VM", cert offline
    argv = service_argv(program=quantian_node(), config="rehearsal/aws-1.toml")

Only `quantian-node id` and `network init|admit` are run here (instant, no libp2p import).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bootstrap.render import service_argv
from node.identity import load_or_create_identity
from node.membership import create_authority, issue_certificate, load_authority, write_certificate

__all__ = ["OfflineAuthority", "quantian_node", "node_cli", "wait_ready", "NodeFailed", "service_argv", "log_tail"]

READY_FILE = "node.json"


class NodeFailed(RuntimeError):
    """A node exited or did not get ready in time; the message carries its log tail."""


def quantian_node() -> str:
    """The `quantian-node` script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "quantian-node"
    if beside.exists():
        return str(beside)
    found = shutil.which("quantian-node")
    if not found:
        raise NodeFailed("quantian-node is not installed (pip install -e . in the venv)")
    return found


def node_cli(*args: str, timeout: float = 60.0) -> str:
    """Run a fast `quantian-node` command; its stdout, or NodeFailed with stderr."""
    proc = subprocess.run([quantian_node(), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise NodeFailed(f"quantian-node {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class OfflineAuthority:
    """The operator's offline material: the authority key and an operator certificate for ctl."""

    authority_dir: Path
    operator_dir: Path

    via_cli: bool = True  # False: the same steps through node.membership, without a process each

    @classmethod
    def create(cls, directory: Path, *, via_cli: bool = True) -> "OfflineAuthority":
        directory = Path(directory)
        net = cls(directory / "authority", directory / "operator", via_cli)
        net.authority_dir.mkdir(parents=True, exist_ok=True)
        if via_cli:
            node_cli("network", "init", "--dir", str(net.authority_dir))
        else:
            create_authority(net.authority_dir)
        net.admit(net.operator_dir, ["operator"], cert=net.operator_dir / "operator.cert")
        shutil.copy(net.authority_dir / "authority.pub", net.operator_dir / "authority.pub")
        return net

    @property
    def public_key_hex(self) -> str:
        return (self.authority_dir / "authority.pub").read_text().strip()

    def admit(self, data_dir: Path, roles: list[str], *, cert: Path | None = None) -> str:
        """The documented flow: `quantian-node id` where the key lives, then `network admit` offline."""
        out = cert or Path(data_dir) / "node.cert"
        if not self.via_cli:
            peer_id = load_or_create_identity(Path(data_dir)).peer_id
            write_certificate(issue_certificate(load_authority(self.authority_dir), peer_id, roles, 365 * 86400.0), out)
            return peer_id
        peer_id = node_cli("id", "--data-dir", str(data_dir)).strip()
        node_cli("network", "admit", peer_id, "--roles", ",".join(roles), "--authority-dir", str(self.authority_dir),
                 "--out", str(out))
        return peer_id

    def ctl_args(self) -> list[str]:
        """Operator flags for `quantian-node ctl` (for a node not next to a testnet operator dir)."""
        return ["--key", str(self.operator_dir / "identity.key"), "--cert", str(self.operator_dir / "operator.cert"),
                "--authority", self.public_key_hex]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(data_dir: Path, pid: int, timeout: float, *, alive: Callable[[], bool] = lambda: True,
               log: Path | None = None) -> dict:
    """Until DATA_DIR/node.json was written by process `pid` (the node's readiness signal)."""
    path = Path(data_dir) / READY_FILE
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = json.loads(path.read_text())
            if info.get("pid") == pid:
                return info
        except (FileNotFoundError, ValueError):
            pass
        if not alive():
            raise NodeFailed(f"node in {data_dir} exited before it was ready:\n{log_tail(log) if log else ''}")
        if time.monotonic() >= deadline:
            raise NodeFailed(f"node in {data_dir} not ready after {timeout:.0f} s:\n{log_tail(log) if log else ''}")
        time.sleep(0.2)
