"""The shell's only link to the network: one operator ControlClient and the node it is attached to.

Every method here blocks (the ControlClient runs its own trio loop in a thread), so the
prompt-toolkit side calls them through `asyncio.to_thread` and never touches a trio loop.
Node errors are translated to `shell.errors` here and nowhere else. Small caches (the command
list of each node, the peer table) are kept for a few seconds so completion and the toolbar do
not hammer the node.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shell.errors import CommandFailed, NotServed, ShellError, Unauthorised, Unreachable, UsageError

DEFAULT_TIMEOUT_S = 20.0
CACHE_TTL_S = 5.0
TESTNET_STATE = "testnet.json"


@dataclass
class Target:
    """The node commands go to."""

    address: str
    name: str = ""
    peer_id: str = ""
    roles: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.name or self.peer_id or self.address


def with_p2p(addr: str, peer_id: str) -> str:
    return addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"


def find_testnet_state(data_dir: Path | None) -> dict[str, Any] | None:
    """testnet.json in the data dir or up to three parents (a testnet node lives in DIR/nodes/NAME)."""
    if data_dir is None:
        return None
    here = Path(data_dir).resolve()
    for folder in [here, *list(here.parents)[:3]]:
        path = folder / TESTNET_STATE
        if path.exists():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                return None
    return None


def broker_url_near(data_dir: Path | None) -> str | None:
    state = find_testnet_state(data_dir)
    if not state:
        return None
    broker = state.get("broker") or {}
    return state.get("broker_url") or (broker.get("url") if isinstance(broker, dict) else None)


class Session:
    """Blocking, thread-safe facade: `call` on the attached node, `call_at` on another one."""

    def __init__(self, client: Any, target: Target, *, data_dir: Path | None = None, mqtt_url: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._client = client
        self.target = target
        self.data_dir = data_dir
        self.mqtt_url = mqtt_url
        self.timeout = timeout
        self._lock = threading.Lock()
        self._served: dict[str, tuple[float, dict[str, str]]] = {}
        self._peers: tuple[float, str, list[dict]] | None = None

    # --- requests ----------------------------------------------------------------------------

    def call_at(self, address: str, command: str, args: dict[str, Any] | None = None, *,
                timeout: float | None = None, label: str | None = None) -> dict[str, Any]:
        from node.errors import NodeError, NotAuthorised, PeerUnreachable, RemoteError, RequestTimeout

        where = label or address
        try:
            return self._client.request(address, command, args or {}, timeout=timeout or self.timeout)
        except NotAuthorised as exc:
            raise Unauthorised(f"{where}: operator not authorised: {exc}") from None
        except (PeerUnreachable, RequestTimeout) as exc:
            raise Unreachable(f"{where} is unreachable: {exc}") from None
        except RemoteError as exc:
            if exc.remote_code == "unknown_command":
                raise NotServed(f"{where} does not serve `{command}`: that part of the pipeline is not on this "
                                f"node or not built yet") from None
            message = str(exc).split(": ", 1)[-1]
            raise CommandFailed(exc.remote_code, f"{where}: {message}") from None
        except NodeError as exc:
            raise ShellError(f"{where}: {exc}") from None

    def call(self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        return self.call_at(self.target.address, command, args, timeout=timeout, label=self.target.label)

    # --- what nodes serve and who they know -------------------------------------------------

    def served(self, address: str | None = None) -> dict[str, str]:
        """{command: help} a node serves (cached briefly)."""
        address = address or self.target.address
        with self._lock:
            hit = self._served.get(address)
        if hit and time.monotonic() - hit[0] < CACHE_TTL_S * 6:
            return hit[1]
        commands = self.call_at(address, "commands").get("commands", {})
        with self._lock:
            self._served[address] = (time.monotonic(), commands)
        return commands

    def peers(self, *, fresh: bool = False) -> list[dict]:
        with self._lock:
            hit = self._peers
        if not fresh and hit and hit[1] == self.target.address and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[2]
        peers = self.call("peers").get("peers", [])
        with self._lock:
            self._peers = (time.monotonic(), self.target.address, peers)
        return peers

    def attach(self, address: str) -> Target:
        """Switch to the node at `address` (asks it for its status first, so a bad address changes nothing)."""
        status = self.call_at(address, "status", label=address)
        self.target = Target(address, status.get("name", ""), status.get("peer_id", ""), list(status.get("roles", [])))
        with self._lock:
            self._peers = None
        return self.target

    def resolve(self, token: str) -> tuple[str, str]:
        """(address, label) for a multiaddr, a peer ID, a node name, or a unique prefix of either."""
        if token.startswith("/"):
            return token, token
        if token in (self.target.name, self.target.peer_id):
            return self.target.address, self.target.label
        peers = self.peers(fresh=True)
        exact = [p for p in peers if token in (p.get("peer_id"), p.get("name"))]
        matches = exact or [p for p in peers if str(p.get("peer_id", "")).startswith(token)
                            or str(p.get("name", "")).startswith(token)]
        if not matches:
            known = ", ".join(sorted(p.get("name", "") or p.get("peer_id", "") for p in peers)) or "none"
            raise UsageError(f"no peer called {token!r} in {self.target.label}'s peer table (known: {known})")
        if len(matches) > 1:
            raise UsageError(f"{token!r} is ambiguous: " + ", ".join(sorted(p.get("name", "") for p in matches)))
        return self.peer_address(matches[0]), matches[0].get("name") or matches[0]["peer_id"]

    @staticmethod
    def peer_address(peer: dict) -> str:
        addrs = [a for a in peer.get("addrs", []) if a]
        if not addrs:
            raise Unreachable(f"{peer.get('name') or peer.get('peer_id')} advertises no address")
        return with_p2p(addrs[0], peer["peer_id"])

    def capable(self, capability: str, command: str) -> list[tuple[str, str]]:
        """(address, label) of nodes that should answer `command`: the attached one if it serves it,
        else peers advertising `capability`, online ones first (a stale advert may be gossip lag)."""
        if command in self.served():
            return [(self.target.address, self.target.label)]
        rank = {"online": 0, "stale": 1}
        found = sorted((p for p in self.peers() if capability in p.get("capabilities", []) and p.get("addrs")),
                       key=lambda p: (rank.get(p.get("state", ""), 2), p.get("name", "")))
        return [(self.peer_address(p), p.get("name") or p["peer_id"]) for p in found]

    def call_capable(self, capability: str, command: str, args: dict[str, Any] | None = None) -> tuple[dict, str]:
        """Run `command` where it is served (see `capable`); returns (result, label of who answered)."""
        candidates = self.capable(capability, command)
        if not candidates:
            raise NotServed(f"{self.target.label} does not serve `{command}` and knows no peer with capability "
                            f"{capability}")
        failure: ShellError | None = None
        for address, label in candidates:
            try:
                return self.call_at(address, command, args, label=label), label
            except Unreachable as exc:
                failure = exc
        assert failure is not None
        raise failure
