"""Three clouds on one machine: three bootstrap nodes, each in its own network namespace with its
own address (an AWS, an Azure and a GCP "VM"), started with exactly the unit's ExecStart and a
rendered node.toml (listen 0.0.0.0:4001, announce the VM's address, the other two as bootstraps),
plus an anomaly and a risk node in two more namespaces. They must form one network, replicate the
bootstraps' ledgers, and survive one VM being cut off (peers mark it stale) and coming back
(online again, with peer_left / peer_joined recorded on the bootstraps' chains).

Where namespaces cannot be made (not root, no iproute2) the namespace variant says why and the
loopback variant runs the same scenario on 127.0.0.1, the cut emulated with SIGSTOP/SIGCONT.
Under CI=true the namespace variant must run: failing to create namespaces fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootstrap import render
from bootstrap.local import OfflineAuthority, log_tail, quantian_node, wait_ready
from testnet import netns
from testnet.ports import free_ports

pytestmark = pytest.mark.slow

CLOUDS = ("aws", "azure", "gcp")
PIPELINE = {"anomaly": "anomaly", "risk": "risk"}
CUT = "azure"
PORT = 4001
HEARTBEAT_S = 2.0  # stale after 3 missed: 6 s, so a starved process does not flap
READY_TIMEOUT_S = 240.0  # five libp2p processes on a loaded 2-core box
MESH_TIMEOUT_S = 180.0
REPLICATION_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
ON_CI = os.environ.get("CI", "").lower() == "true"
NETNS_OK, NETNS_REASON = netns.availability()
if os.environ.get("QUANTIAN_TEST_NO_NETNS"):  # exercise the loopback variant on a machine that has namespaces
    NETNS_OK, NETNS_REASON = False, "QUANTIAN_TEST_NO_NETNS is set"
DISTINCT_PORTS = False
LISTEN_WILDCARD = True  # in namespaces, listen on 0.0.0.0 as on a VM (announce says where to dial)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last is True or (last and not isinstance(last, str)):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}")
        time.sleep(interval)


@dataclass
class Cloud:
    """Five nodes on either namespaces (`net`) or loopback (`net` None)."""

    base: Path
    net: netns.Network | None
    authority: OfflineAuthority = field(init=False)
    peer_ids: dict[str, str] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)  # name -> multiaddr peers dial, without /p2p/
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.authority = OfflineAuthority.create(self.base)
        names = CLOUDS + tuple(PIPELINE)
        ports = dict(zip(names, free_ports(len(names)))) if self.net is None else dict.fromkeys(names, PORT)
        if self.net is not None and DISTINCT_PORTS:
            ports = {name: PORT + i for i, name in enumerate(names)}
        for name in names:
            self.peer_ids[name] = self.authority.admit(self.base / name, [PIPELINE.get(name, "bootstrap")])
            host = self.net.address(name) if self.net else "127.0.0.1"
            self.addrs[name] = f"/ip4/{host}/tcp/{ports[name]}"

    def full(self, name: str) -> str:
        return f"{self.addrs[name]}/p2p/{self.peer_ids[name]}"

    # --- starting ----------------------------------------------------------------------------

    def bootstrap_argv(self, name: str) -> list[str]:
        """What the VM's unit runs: its ExecStart, with node.toml rendered for this VM."""
        listen = (f"/ip4/0.0.0.0/tcp/{PORT}",) if self.net and LISTEN_WILDCARD else (self.addrs[name],)
        settings = render.Settings(
            name=name, authority=self.authority.public_key_hex, listen=listen, announce=(self.addrs[name],),
            bootstrap=tuple(self.full(other) for other in CLOUDS if other != name),
            cert=str(self.base / name / "node.cert"), data_dir=str(self.base / name),
            health_file=str(self.base / name / "health.json"), heartbeat_s=HEARTBEAT_S)
        config = self.base / f"{name}.toml"
        config.write_text(render.render_config(settings))
        return render.service_argv(program=quantian_node(), config=str(config))

    def pipeline_argv(self, name: str) -> list[str]:
        argv = [quantian_node(), "start", "--role", PIPELINE[name], "--name", name, "--data-dir", str(self.base / name),
                "--authority", self.authority.public_key_hex, "--heartbeat", str(HEARTBEAT_S), "--log-format", "json"]
        if self.net and LISTEN_WILDCARD and name == "anomaly":  # one pipeline node behind a wildcard listener too
            argv += ["--listen", f"/ip4/0.0.0.0/tcp/{PORT}", "--announce", self.addrs[name]]
        else:
            argv += ["--listen", self.addrs[name]]
        for cloud in CLOUDS:
            argv += ["--bootstrap", self.full(cloud)]
        return argv

    def start_all(self) -> None:
        for name in CLOUDS + tuple(PIPELINE):
            argv = self.bootstrap_argv(name) if name in CLOUDS else self.pipeline_argv(name)
            self.logs[name] = self.base / f"{name}.log"
            with open(self.logs[name], "wb") as out:
                kwargs = dict(stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                self.procs[name] = self.net.popen(name, argv, **kwargs) if self.net else subprocess.Popen(argv, **kwargs)
        for name, proc in self.procs.items():
            info = wait_ready(self.base / name, proc.pid, READY_TIMEOUT_S, alive=lambda p=proc: p.poll() is None,
                              log=self.logs[name])
            assert info["listen"] == [self.full(name)], f"{name} announces {info['listen']}"

    def stop_all(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(10)
        return codes

    def logs_tail(self) -> str:
        return "\n".join(f"--- {n}\n{log_tail(p, 15)}" for n, p in self.logs.items())

    # --- faults ------------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        if self.net:
            self.net.cut(name)
        else:
            os.killpg(self.procs[name].pid, signal.SIGSTOP)

    def heal(self, name: str) -> None:
        if self.net:
            self.net.heal(name)
        else:
            os.killpg(self.procs[name].pid, signal.SIGCONT)


class Views:
    """What each node reports over the control protocol (from the host)."""

    def __init__(self, cloud: Cloud, client) -> None:
        self.cloud = cloud
        self.client = client

    def ask(self, name: str, command: str, args: dict | None = None, timeout: float = 15.0) -> dict | None:
        from node.control_client import ControlError

        try:
            return self.client.request(self.cloud.full(name), command, args, timeout=timeout)
        except ControlError:
            return None

    def states(self, name: str) -> dict[str, str] | None:
        """peer name -> online / stale / gone, as `name` sees them."""
        status = self.ask(name, "status")
        if status is None:
            return None
        ids = {v: k for k, v in self.cloud.peer_ids.items()}
        return {ids[p["peer_id"]]: p["state"] for p in status["peers"] if p["peer_id"] in ids}

    def missing_online(self, observers, targets) -> str | bool:
        """True when every observer sees every target (other than itself) online, else what is missing."""
        missing = []
        for name in observers:
            states = self.states(name)
            if states is None:
                missing.append(f"{name}: no answer")
                continue
            lacking = [t for t in targets if t != name and states.get(t) != "online"]
            if lacking:
                missing.append(f"{name} lacks {lacking}")
        return "; ".join(missing) or True

    def heads(self, name: str) -> dict[str, int] | None:
        reply = self.ask(name, "ledger heads")
        return None if reply is None else {h["author"]: h["height"] for h in reply["heads"]}

    def records(self, name: str, record_type: str, author: str) -> list[dict]:
        reply = self.ask(name, "ledger find", {"type": record_type, "author": author, "limit": 200})
        return [] if reply is None else reply["records"]


KNOWN_REPLICATION_GAP = (
    "seen intermittently on a loaded box: ledger range pulls between namespaces time out opening "
    "/quantian/ledger-sync/1.0.0 (ledger_sync.pull_failed grows, some chains stall) while the same nodes on "
    "127.0.0.1 replicate. Suspects: identify replaces a peer's dialled address with its listen address "
    "(0.0.0.0:4001 here, whatever --announce says), so any re-dial goes to the dialer's own machine; and pairs "
    "with two TCP connections, one idle after ~420 bytes ('handshake=False'). Reported to the lead")


def run_scenario(cloud: Cloud) -> str | None:
    """Run everything; returns the replication failure (None if replicated) so the caller decides."""
    from node.control_client import ControlClient, OperatorCredentials

    everyone = CLOUDS + tuple(PIPELINE)
    others = [n for n in everyone if n != CUT]
    cloud.start_all()
    with ControlClient(OperatorCredentials.load(cloud.authority.operator_dir)) as client:
        views = Views(cloud, client)
        wait_for(lambda: views.missing_online(everyone, everyone), MESH_TIMEOUT_S, "one network of five")

        # Adverts carry the announced address, never the wildcard the node listens on.
        seen = {p["peer_id"]: p["addrs"] for p in views.ask("risk", "status")["peers"]}
        for name in CLOUDS + ("anomaly",):
            assert seen[cloud.peer_ids[name]] == [cloud.full(name)], f"{name} advertised {seen[cloud.peer_ids[name]]}"

        # Ledger: every node holds every bootstrap's chain, at least as far as its author had it.
        def replicated() -> str | bool:
            own = {c: (views.heads(c) or {}).get(cloud.peer_ids[c], -1) for c in CLOUDS}
            if min(own.values()) < 0:  # every bootstrap has at least one block (its peer_joined records)
                return f"bootstrap chains not started yet: {own}"
            behind = []
            for name in everyone:
                held = views.heads(name) or {}
                behind += [f"{name} has {c}@{held.get(cloud.peer_ids[c])} < {own[c]}"
                           for c in CLOUDS if held.get(cloud.peer_ids[c], -1) < own[c]]
            return "; ".join(behind) or True

        replication_failure = None
        try:
            wait_for(replicated, REPLICATION_TIMEOUT_S, "bootstrap chains replicated to every node")
        except AssertionError as exc:
            replication_failure = str(exc)
        aws_id, cut_id = cloud.peer_ids["aws"], cloud.peer_ids[CUT]
        joined = views.records("aws", "peer_joined", aws_id)
        assert {r["payload"]["peer"] for r in joined} >= set(cloud.peer_ids.values()) - {aws_id}

        def transitions(record_type: str) -> int:
            return len([r for r in views.records("aws", record_type, aws_id) if r["payload"]["peer"] == cut_id])

        left_before, joined_before = transitions("peer_left"), transitions("peer_joined")

        # One VM cut off: the others mark it stale (or gone), and it sees them go too.
        cloud.cut(CUT)

        def cut_noticed() -> str | bool:
            late = [n for n in others if (views.states(n) or {}).get(CUT, "online") == "online"]
            return f"still online for {late}" if late else True

        wait_for(cut_noticed, MESH_TIMEOUT_S, f"{CUT} marked stale by the others")
        if cloud.net is not None:
            # `ctl status --json` from inside the cut-off VM itself: it is alone. (Retried: on a starved
            # box the operator's hello can miss the node's 5 s handshake deadline and be dropped.)
            attempts: list[str] = []

            def alone_from_inside() -> str | bool:
                ctl = cloud.net.run(CUT, [quantian_node(), "ctl", "status", "--json", "--connect",
                                          f"/ip4/127.0.0.1/tcp/{PORT}/p2p/{cut_id}",
                                          *cloud.authority.ctl_args(), "--timeout", "60"], timeout=240)
                if ctl.returncode != 0:
                    attempts.append(ctl.stderr.strip().splitlines()[-1] if ctl.stderr.strip() else f"exit {ctl.returncode}")
                    return f"ctl failed {len(attempts)}x: {attempts}"
                peers = {p["peer_id"]: p["state"] for p in json.loads(ctl.stdout)["peers"]}
                online = [n for n in others if peers.get(cloud.peer_ids[n]) == "online"]
                return f"{CUT} still sees {online} online" if online else True

            wait_for(alone_from_inside, 300, f"ctl inside {CUT} to report it is alone", interval=1)
        wait_for(lambda: transitions("peer_left") > left_before, 60, f"aws to record peer_left for {CUT}")

        # And back: online again everywhere, both ways, and the bootstraps recorded it.
        cloud.heal(CUT)
        wait_for(lambda: views.missing_online(everyone, everyone), MESH_TIMEOUT_S, f"{CUT} online again")
        wait_for(lambda: transitions("peer_joined") > joined_before, 60, f"aws to record peer_joined for {CUT} again")
    return replication_failure


def _check_clean_stop(cloud: Cloud) -> None:
    codes = cloud.stop_all()
    assert all(code == 0 for code in codes.values()), f"exit codes after SIGTERM: {codes}\n{cloud.logs_tail()}"


def test_three_clouds_in_namespaces(tmp_path):
    if not NETNS_OK:
        if ON_CI:
            pytest.fail(f"CI must run the namespace variant, but namespaces are unavailable: {NETNS_REASON}")
        pytest.skip(f"network namespaces unavailable ({NETNS_REASON}); test_three_clouds_on_loopback ran instead")
    with netns.Network(CLOUDS + tuple(PIPELINE), host_link=True) as net:
        cloud = Cloud(tmp_path, net)
        try:
            replication_failure = run_scenario(cloud)
        except BaseException:
            cloud.stop_all()
            print(cloud.logs_tail())
            raise
        _check_clean_stop(cloud)
    assert not replication_failure, f"{KNOWN_REPLICATION_GAP}. Here: {replication_failure}"


def test_three_clouds_on_loopback(tmp_path):
    if NETNS_OK:
        pytest.skip("network namespaces available: test_three_clouds_in_namespaces covers this")
    print(f"NOTE: network namespaces unavailable ({NETNS_REASON}); running on 127.0.0.1, cut = SIGSTOP")
    cloud = Cloud(tmp_path, None)
    try:
        replication_failure = run_scenario(cloud)
    except BaseException:
        cloud.stop_all()
        print(cloud.logs_tail())
        raise
    _check_clean_stop(cloud)
    assert replication_failure is None, replication_failure
