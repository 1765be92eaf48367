"""`quantian-node start` as a service, run with the unit's command line and a rendered node.toml,
on 127.0.0.1: readiness (node.json, ctl status), the health file, JSON log lines, an announced
address distinct from the listen address, clean exit 0 on SIGTERM, exit 2 on a config error
(the unit's RestartPreventExitStatus)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bootstrap import health, render
from bootstrap.local import OfflineAuthority, log_tail, quantian_node, wait_ready
from testnet.ports import free_port

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
ANNOUNCE = "/ip4/127.0.0.2/tcp/4001"  # deliberately not where it listens


def split_log(path: Path) -> tuple[list[dict], list[str]]:
    """(JSON entries, lines that are not JSON)."""
    entries, other = [], []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
        elif line.strip():
            other.append(line)
    return entries, other


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    """The operator's offline steps, through the real CLI (`network init`, `id`, `network admit`)."""
    return OfflineAuthority.create(tmp_path_factory.mktemp("offline"))


@pytest.fixture
def rehearsal(authority, tmp_path):
    data_dir = tmp_path / "aws-1"
    peer_id = authority.admit(data_dir, ["bootstrap"])
    return authority, data_dir, peer_id


def start_service(tmp_path: Path, settings: render.Settings) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "node.toml"
    config.write_text(render.render_config(settings))
    log = tmp_path / "journal.log"  # what journald would collect: stdout + stderr
    with open(log, "wb") as out:
        proc = subprocess.Popen(render.service_argv(program=quantian_node(), config=str(config)), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def test_service_readiness_health_json_logs_announce_and_sigterm(rehearsal, tmp_path):
    net, data_dir, peer_id = rehearsal
    port = free_port()
    settings = render.Settings(name="aws-1", authority=net.public_key_hex, announce=(ANNOUNCE,),
                               listen=(f"/ip4/127.0.0.1/tcp/{port}",), cert=str(data_dir / "node.cert"),
                               data_dir=str(data_dir), health_file=str(tmp_path / "run" / "health.json"), heartbeat_s=1.0)
    (tmp_path / "run").mkdir()
    proc, log = start_service(tmp_path, settings)
    try:
        ready = wait_ready(data_dir, proc.pid, READY_TIMEOUT_S, alive=lambda: proc.poll() is None, log=log)
        announced = f"{ANNOUNCE}/p2p/{peer_id}"
        assert ready["peer_id"] == peer_id and ready["roles"] == ["bootstrap"]
        assert ready["listen"] == [announced], "node.json lists the announced address, not the listen one"

        # The operator reaches it on the real listen address; it reports the announced one.
        ctl = subprocess.run([quantian_node(), "ctl", "status", "--json", "--connect",
                              f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}", *net.ctl_args(), "--timeout", "60"],
                             capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert ctl.returncode == 0, ctl.stderr
        status = json.loads(ctl.stdout)
        assert status["peer_id"] == peer_id and status["name"] == "aws-1"
        assert status["listen"] == [announced]
        assert status["heartbeat_s"] == 1.0

        # The health file is rewritten every heartbeat.
        seen: set[float] = set()

        def two_beats() -> bool:
            ok, _ = health.check(settings.health_file, max_age_s=30)
            if ok:
                seen.add(json.loads(Path(settings.health_file).read_text())["ts"])
            return len(seen) >= 2

        wait_for(two_beats, 60, "two health-file heartbeats")
        beat = json.loads(Path(settings.health_file).read_text())
        assert beat["ok"] is True and beat["peer_id"] == peer_id and beat["peers_online"] == 0

        proc.send_signal(signal.SIGTERM)
        code = proc.wait(STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert code == 0, f"exit {code} after SIGTERM:\n{log_tail(log)}"
    entries, other = split_log(log)
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    messages = [e["msg"] for e in entries]
    assert any(m.startswith("node aws-1 ready") and announced in m for m in messages), messages
    assert "received SIGTERM, shutting down" in messages
    assert not [e for e in entries if e["level"] in ("error", "critical")], entries
    assert not other, f"{len(other)} non-JSON log lines, e.g. {other[0]!r}"


def test_config_error_exits_2_so_systemd_does_not_restart(rehearsal, tmp_path):
    net, data_dir, peer_id = rehearsal
    settings = render.Settings(name="aws-1", authority=net.public_key_hex, announce=(), listen=("/ip4/127.0.0.1/tcp/0",),
                               cert=str(tmp_path / "not-installed-yet.cert"), data_dir=str(data_dir),
                               health_file=str(tmp_path / "health.json"))
    proc, log = start_service(tmp_path, settings)
    try:
        code = proc.wait(READY_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 2, log_tail(log)
    text = log.read_text()
    assert f"quantian-node network admit {peer_id} --roles bootstrap" in text
    assert not (data_dir / "node.json").exists()
