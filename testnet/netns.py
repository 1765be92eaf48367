"""Network namespaces for tests: N "machines" on one virtual switch, each with its own address.

    with Network(["b1", "b2", "b3"], host_link=True) as net:
        proc = net.popen("b1", ["quantian-node", "start", ...], stdout=log)
        net.address("b2")                # "10.211.37.12"
        net.cut("b2")                    # b2's cable pulled: its packets vanish, its link stays up
        net.heal()                       # everyone back on the one switch
        net.partition(["b1"], ["b2", "b3"])   # two islands; unnamed members stay with the host link

Layout. One hub namespace holds the switch (a Linux bridge); every member namespace gets a
veth pair, `eth0` inside the member (address 10.211.X.(10+i)/24), the other end a port of the
bridge in the hub. Nothing is created in the root namespace unless `host_link=True`, which adds
one veth from the root namespace to the bridge (address .254) so the calling process can talk
to the members directly. The subnet defaults to a random 10.211.X.0/24 that the root namespace
does not route yet. `cut` detaches a member's port from the bridge (like an upstream outage:
the member's own interface stays up); `partition` moves groups onto extra bridges in the hub
(the kernel need not support VLAN filtering). Namespace names carry the creating pid, and
`sweep_stale()` (run by `create`) removes namespaces whose creator is gone.

Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2; otherwise NetnsUnavailable says
which. Teardown (context exit, `teardown()`, or atexit) kills what runs inside, deletes every
namespace and link it made, and is idempotent. Traffic never leaves the namespaces we create.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

PREFIX = "qn"
SUBNET_POOL = "10.211.0.0/16"
MEMBER_HOST_OFFSET = 10
HOST_LINK_OFFSET = 254
MAIN_BRIDGE = "br0"
IP_TIMEOUT_S = 30.0
KILL_GRACE_S = 5.0

_live: "set[Network]" = set()  # torn down at exit if the caller did not


class NetnsError(Exception):
    """An `ip` command failed while building or changing the namespace network."""

    code = "netns_error"


class NetnsUnavailable(NetnsError):
    """Namespaces cannot be created here (not root, no iproute2, kernel refuses)."""

    code = "netns_unavailable"


def _ip_binary() -> str:
    found = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None)
    if not found:
        raise NetnsUnavailable("iproute2's `ip` is not installed (apt-get install iproute2)")
    return found


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS`; NetnsError with the command and its stderr when it fails and `check`."""
    argv = [_ip_binary(), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def check_available() -> None:
    """Raise NetnsUnavailable with the reason unless namespaces can be created and removed here."""
    _ip_binary()
    probe = f"{PREFIX}{os.getpid()}-probe{secrets.token_hex(2)}"
    proc = ip("netns", "add", probe, check=False)
    if proc.returncode != 0:
        who = "running as root" if os.geteuid() == 0 else f"running as uid {os.geteuid()}, not root"
        raise NetnsUnavailable(f"cannot create a network namespace ({who}): {proc.stderr.strip()}; "
                               "needs root or CAP_SYS_ADMIN + CAP_NET_ADMIN")
    ip("netns", "delete", probe, check=False)


def availability() -> tuple[bool, str]:
    """(True, "") or (False, reason): for tests that choose between namespaces and loopback."""
    try:
        check_available()
    except NetnsError as exc:
        return False, str(exc)
    return True, ""


def list_namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named PREFIX<pid>-... whose creating process no longer exists."""
    removed = []
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    for name in list_namespaces():
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            _kill_inside(name)
            ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


def _kill_inside(netns: str) -> None:
    """SIGKILL every process still running in `netns` (it would keep the namespace alive)."""
    out = ip("netns", "pids", netns, check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class Member:
    name: str
    netns: str
    address: str
    prefixlen: int
    port: str  # the bridge-side veth in the hub namespace
    iface: str = "eth0"


class Network:
    """Namespaces on one switch; see the module docstring. Use as a context manager."""

    def __init__(self, names: Sequence[str] | int, *, subnet: str | None = None, host_link: bool = False,
                 mtu: int | None = None, prefix: str = PREFIX) -> None:
        names = [f"n{i + 1}" for i in range(names)] if isinstance(names, int) else list(names)
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"member names must be distinct and non-empty: {names}")
        if len(names) > HOST_LINK_OFFSET - MEMBER_HOST_OFFSET - 1:
            raise ValueError(f"at most {HOST_LINK_OFFSET - MEMBER_HOST_OFFSET - 1} members per network")
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
                raise ValueError(f"member name {name!r}: use 1-32 letters, digits, '_', '.', '-'")
        self.names = names
        self.host_link = host_link
        self.mtu = mtu
        self._requested_subnet = subnet
        self.tag = f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
        self.hub = f"{self.tag}-hub"
        self.host_iface = f"{prefix}{secrets.token_hex(4)}"[:15] if host_link else None
        self.subnet: ipaddress.IPv4Network | None = None
        self.members: dict[str, Member] = {}
        self.host_address: str | None = None
        self._bridges = [MAIN_BRIDGE]
        self._created: list[str] = []  # namespaces, in creation order
        self._procs: list[subprocess.Popen] = []
        self._prefix = prefix

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "Network":
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        self.teardown()

    def create(self) -> "Network":
        check_available()
        sweep_stale(self._prefix)
        self.subnet = ipaddress.ip_network(self._requested_subnet) if self._requested_subnet else self._pick_subnet()
        hosts = list(self.subnet.hosts())
        _live.add(self)
        try:
            self._add_netns(self.hub)
            ip("-n", self.hub, "link", "add", MAIN_BRIDGE, "type", "bridge")
            ip("-n", self.hub, "link", "set", MAIN_BRIDGE, "up")
            for i, name in enumerate(self.names):
                netns = f"{self.tag}-{name}"
                port = f"p{i}"
                address = str(hosts[MEMBER_HOST_OFFSET + i - 1])
                self._add_netns(netns)
                ip("-n", self.hub, "link", "add", port, *self._mtu_args(), "type", "veth", "peer", "name", "eth0",
                   *self._mtu_args(), "netns", netns)
                ip("-n", self.hub, "link", "set", port, "master", MAIN_BRIDGE, "up")
                ip("-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
                ip("-n", netns, "link", "set", "eth0", "up")
                self.members[name] = Member(name, netns, address, self.subnet.prefixlen, port)
            if self.host_link:
                self.host_address = str(hosts[HOST_LINK_OFFSET - 1])
                ip("link", "add", self.host_iface, *self._mtu_args(), "type", "veth", "peer", "name", "phost",
                   *self._mtu_args(), "netns", self.hub)
                ip("-n", self.hub, "link", "set", "phost", "master", MAIN_BRIDGE, "up")
                ip("addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", self.host_iface)
                ip("link", "set", self.host_iface, "up")
        except BaseException:
            self.teardown()
            raise
        return self

    def _mtu_args(self) -> list[str]:
        return ["mtu", str(self.mtu)] if self.mtu else []

    def _add_netns(self, netns: str) -> None:
        proc = ip("netns", "add", netns, check=False)
        if proc.returncode != 0:
            raise NetnsUnavailable(f"cannot create network namespace {netns}: {proc.stderr.strip()} "
                                   f"(uid {os.geteuid()}; needs root or CAP_SYS_ADMIN + CAP_NET_ADMIN)")
        self._created.append(netns)
        ip("-n", netns, "link", "set", "lo", "up")

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        pool = list(ipaddress.ip_network(SUBNET_POOL).subnets(new_prefix=24))[1:-1]
        if not self.host_link:  # isolated in the hub: any /24 will do
            return random.choice(pool)
        routed = ip("-4", "route", "show", "table", "all", check=False).stdout + ip("-4", "addr", check=False).stdout
        used = {ipaddress.ip_network(m, strict=False) for m in re.findall(r"\b(10\.211\.\d+\.\d+(?:/\d+)?)", routed)}
        free = [net for net in pool if not any(net.overlaps(u) for u in used)]
        if not free:
            raise NetnsError(f"no free /24 left in {SUBNET_POOL} for a host link")
        return random.choice(free)

    def teardown(self) -> None:
        """Stop what runs inside, delete every namespace and link made; safe to call repeatedly."""
        for proc in self._procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(KILL_GRACE_S)
        self._procs.clear()
        for netns in reversed(self._created):
            _kill_inside(netns)
            ip("netns", "delete", netns, check=False)
        if self.host_iface:
            ip("link", "delete", self.host_iface, check=False)
        self._created.clear()
        _live.discard(self)

    # --- looking up --------------------------------------------------------------------------

    def member(self, name: str) -> Member:
        try:
            return self.members[name]
        except KeyError:
            raise NetnsError(f"no member {name!r} (members: {', '.join(self.names)})") from None

    def address(self, name: str) -> str:
        return self.member(name).address

    def netns(self, name: str) -> str:
        return self.member(name).netns

    # --- running commands --------------------------------------------------------------------

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """`ip netns exec NETNS ARGV...`: ARGV runs in the member's namespace, with its own pid."""
        return [_ip_binary(), "netns", "exec", self.netns(name), *argv]

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ARGV inside `name` in its own session; stopped (TERM, then KILL) at teardown."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.exec_argv(name, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, name: str, argv: Sequence[str], *, timeout: float = 60.0, check: bool = False,
            **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ARGV inside `name` to completion (text output captured unless told otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        return subprocess.run(self.exec_argv(name, argv), timeout=timeout, check=check, **kwargs)

    # --- faults ------------------------------------------------------------------------------

    def cut(self, *names: str) -> None:
        """Pull the members' cables: their bridge ports leave every bridge (their eth0 stays up)."""
        for name in names:
            ip("-n", self.hub, "link", "set", self.member(name).port, "nomaster")

    def heal(self, *names: str) -> None:
        """Plug the named members (default: all) back into the main bridge; ends partitions too."""
        for name in names or self.names:
            ip("-n", self.hub, "link", "set", self.member(name).port, "master", MAIN_BRIDGE)

    def partition(self, *groups: Iterable[str]) -> None:
        """Split into islands: each group gets its own bridge; members in no group (and the host
        link) stay on the main bridge. `heal()` joins everything again."""
        seen: set[str] = set()
        for index, group in enumerate(groups, start=1):
            bridge = f"br{index}"
            if bridge not in self._bridges:
                ip("-n", self.hub, "link", "add", bridge, "type", "bridge")
                ip("-n", self.hub, "link", "set", bridge, "up")
                self._bridges.append(bridge)
            for name in group:
                if name in seen:
                    raise ValueError(f"{name} is in two groups")
                seen.add(name)
                ip("-n", self.hub, "link", "set", self.member(name).port, "master", bridge)

    def attached(self, name: str) -> str | None:
        """The bridge the member's port is on now, None when cut."""
        out = ip("-n", self.hub, "-o", "link", "show", self.member(name).port).stdout
        match = re.search(r"\bmaster (\S+)", out)
        return match.group(1) if match else None


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


@atexit.register
def _teardown_all() -> None:
    for network in list(_live):
        network.teardown()
