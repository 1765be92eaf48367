"""Shared fixtures for multi-process tests: a real testnet (`quantian-testnet up`) in a tmp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).parent / "quantian-testnet"
TESTNET_CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "testnet.cli"]
UP_TIMEOUT_S = 240.0  # 6 libp2p processes on a loaded 2-core box: 5-20 s is normal, allow a lot more


class Testnet:
    """A handle on a testnet directory: run CLI commands, read its status, poll for conditions."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def cli(self, *args: str, check: bool = True, timeout: float = UP_TIMEOUT_S + 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            TESTNET_CLI + list(args) + ["--dir", str(self.dir)],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"quantian-testnet {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def state(self) -> dict:
        return json.loads((self.dir / "testnet.json").read_text())

    def status(self, query: bool = False) -> dict:
        args = ("status", "--json") if query else ("status", "--json", "--no-query")
        return json.loads(self.cli(*args).stdout)

    def node(self, name: str) -> dict:
        return next(n for n in self.state()["nodes"] if n["name"] == name)

    def all_pids(self) -> list[int]:
        st = self.state()
        pids = [n["pid"] for n in st["nodes"]]
        pids += [s["pid"] for s in (st.get("broker"), st.get("sim")) if s]
        return [p for p in pids if p]

    # Helpers for test modules (conftest is not importable as a module; these ride on the fixture).
    @staticmethod
    def pid_alive(pid: int) -> bool:
        return pid_alive(pid)

    @staticmethod
    def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
        return wait_until(predicate, timeout, what, interval)


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns a truthy value; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture
def make_testnet():
    """Testnet(directory) without starting anything: for tests that build their own."""
    return Testnet


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    """A 6-node testnet without broker or simulator, heartbeat 2 s; `down` at teardown."""
    net = Testnet(tmp_path_factory.mktemp("testnet"))
    net.cli("up", "--no-broker", "--no-sim", "--heartbeat", "2", "--timeout", str(UP_TIMEOUT_S))
    try:
        yield net
    finally:
        pids = net.all_pids()
        net.cli("down", check=False)
        leftover = [p for p in pids if pid_alive(p)]
        for p in leftover:
            os.kill(p, 9)
        assert not leftover, f"processes left running after down: {leftover}"


@pytest.fixture(scope="module")
def control(testnet):
    """One control client (the testnet's operator) for fast, in-process status polling."""
    from node.control_client import ControlClient, OperatorCredentials

    with ControlClient(OperatorCredentials.load(testnet.dir / "operator")) as client:
        yield client
