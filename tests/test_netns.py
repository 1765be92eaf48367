"""testnet/netns.py: namespaces on one switch, commands inside, cut / heal / partition, teardown.

Reachability is probed with a tiny TCP echo server per member (no ping needed). Where namespaces
cannot be created the tests say why and only the error path is checked; under CI=true that is a
failure, since CI runs as root with iproute2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from testnet import netns

ON_CI = os.environ.get("CI", "").lower() == "true"
NETNS_OK, NETNS_REASON = netns.availability()
PROBE_PORT = 7000
SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PROBE_PORT})); s.listen(); print('listening', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'hi'); c.close()\n"
)
PROBE = (
    "import socket, sys\n"
    "try:\n"
    f"    socket.create_connection((sys.argv[1], {PROBE_PORT}), timeout=float(sys.argv[2])).recv(2); print('ok')\n"
    "except OSError as exc:\n"
    "    print('fail', exc)\n"
)


@pytest.fixture
def need_netns():
    if not NETNS_OK:
        if ON_CI:
            pytest.fail(f"CI must be able to create network namespaces: {NETNS_REASON}")
        pytest.skip(f"network namespaces unavailable here: {NETNS_REASON} (test_unavailable_is_explained still ran)")


def serve_all(net: netns.Network) -> None:
    for name in net.names:
        proc = net.popen(name, [sys.executable, "-u", "-c", SERVER], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "listening"


def reaches(net: netns.Network, src: str, dst: str, timeout: float = 5.0) -> bool:
    out = net.run(src, [sys.executable, "-c", PROBE, net.address(dst), str(timeout)], timeout=60).stdout.strip()
    return out == "ok"


def eventually_reaches(net: netns.Network, src: str, dst: str, deadline_s: float = 30.0) -> bool:
    """A freshly (re)attached port may need a moment (neighbour discovery): retry until the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        if reaches(net, src, dst):
            return True
        if time.monotonic() >= end:
            return False


def test_members_reach_each_other_and_the_host(need_netns):
    with netns.Network(["a", "b", "c"], host_link=True) as net:
        assert len({m.address for m in net.members.values()}) == 3
        assert all(net.address(n).startswith("10.211.") for n in net.names)
        serve_all(net)
        assert eventually_reaches(net, "a", "b") and eventually_reaches(net, "c", "a")
        # Each member is its own machine: its own address only, its own loopback.
        out = net.run("b", ["ip", "-4", "-o", "addr"], check=True).stdout
        assert net.address("b") in out and net.address("a") not in out
        # The host link lets this process talk to members directly.
        import socket

        with socket.create_connection((net.address("c"), PROBE_PORT), timeout=10) as s:
            assert s.recv(2) == b"hi"
        assert net.run("a", ["true"]).returncode == 0


def test_cut_heal_and_partition(need_netns):
    with netns.Network(["a", "b", "c", "d"]) as net:
        serve_all(net)
        assert eventually_reaches(net, "a", "b")
        net.cut("b")
        assert net.attached("b") is None
        assert not reaches(net, "a", "b", timeout=2) and not reaches(net, "b", "c", timeout=2)
        net.heal("b")
        assert net.attached("b") == netns.MAIN_BRIDGE
        assert eventually_reaches(net, "a", "b")

        net.partition(["a", "b"], ["c"])  # d stays on the main bridge, alone
        assert eventually_reaches(net, "a", "b")
        assert not reaches(net, "a", "c", timeout=2) and not reaches(net, "c", "d", timeout=2)
        net.heal()
        assert {net.attached(n) for n in net.names} == {netns.MAIN_BRIDGE}
        assert eventually_reaches(net, "a", "c") and eventually_reaches(net, "d", "b")


def test_teardown_is_complete_and_idempotent(need_netns):
    net = netns.Network(2, host_link=True)
    with net:
        sleeper = net.popen("n1", ["sleep", "600"])
        created = [m.netns for m in net.members.values()] + [net.hub]
        assert set(created) <= set(netns.list_namespaces())
    assert sleeper.poll() is not None, "processes inside are stopped"
    assert not set(created) & set(netns.list_namespaces())
    assert net.host_iface not in netns.ip("-o", "link").stdout
    net.teardown()  # again: nothing left, no error


def test_teardown_on_error_inside_the_block(need_netns):
    with pytest.raises(RuntimeError, match="boom"):
        with netns.Network(["x"]) as net:
            name = net.netns("x")
            raise RuntimeError("boom")
    assert name not in netns.list_namespaces()


def test_sweep_removes_namespaces_of_dead_creators(need_netns):
    stale = f"{netns.PREFIX}999999999-deadbe-x"  # above pid_max: its creator cannot be alive
    netns.ip("netns", "add", stale)
    try:
        assert stale in netns.sweep_stale()
        assert stale not in netns.list_namespaces()
    finally:
        netns.ip("netns", "delete", stale, check=False)


def test_member_names_are_checked():
    with pytest.raises(ValueError, match="distinct"):
        netns.Network(["a", "a"])
    with pytest.raises(ValueError, match="letters"):
        netns.Network(["a b"])
    net = netns.Network(["a"])
    with pytest.raises(netns.NetnsError, match="no member 'z'"):
        net.address("z")


def test_unavailable_is_explained(tmp_path, monkeypatch):
    """Without root or iproute2 the error says which, instead of a bare CalledProcessError."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with monkeypatch.context() as m:
        m.setattr(netns.os, "access", lambda *_: False)
        with pytest.raises(netns.NetnsUnavailable, match="iproute2"):
            netns.check_available()
    fake_ip = tmp_path / "ip"
    fake_ip.write_text("#!/bin/sh\necho 'mount --make-shared /run/netns failed: Operation not permitted' >&2\nexit 1\n")
    fake_ip.chmod(0o755)
    with pytest.raises(netns.NetnsUnavailable, match="Operation not permitted.*needs root"):
        netns.check_available()
    ok, reason = netns.availability()
    assert not ok and "cannot create a network namespace" in reason
