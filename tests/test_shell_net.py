"""The shell against a real testnet (6 nodes, MQTT broker, simulator), one testnet for the module.

`-c ... --json` is the scripts' path and the people's path at once, so every command is run that
way (in-process through `quantian-node`'s main, to pay the libp2p import once; a few through a
real subprocess for exit statuses). An interactive session is driven through a pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest

from node.cli import main as node_main

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TESTNET = [str(BIN / "quantian-testnet")]
NODE = str(BIN / "quantian-node")
UP_TIMEOUT_S = 240
CPR = "\x1b\\[6n"  # prompt-toolkit asks where the cursor is; a terminal answers, so do we


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A testnet with broker and simulator; `down` at teardown."""
    directory = tmp_path_factory.mktemp("shellnet")
    up = subprocess.run(TESTNET + ["up", "--dir", str(directory), "--heartbeat", "1", "--sim-rate", "20",
                                   "--timeout", str(UP_TIMEOUT_S)],
                        capture_output=True, text=True, timeout=UP_TIMEOUT_S + 60, stdin=subprocess.DEVNULL)
    try:
        assert up.returncode == 0, f"testnet up failed:\n{up.stdout}\n{up.stderr}"
        yield directory
    finally:
        subprocess.run(TESTNET + ["down", "--dir", str(directory)], capture_output=True, timeout=120)


def node_dir(net: Path, name: str = "bootstrap-1") -> Path:
    return net / "nodes" / name


@pytest.fixture(scope="module")
def client(net):
    """One operator control client for the in-process `-c` runs (a libp2p host costs seconds here)."""
    from node.control_client import ControlClient, OperatorCredentials

    with ControlClient(OperatorCredentials.load(net / "operator")) as c:
        yield c


def shell_json(net: Path, capsys, command: str, *, node: str = "bootstrap-1", client=None) -> tuple[int, dict]:
    """`quantian-node shell --data-dir NODE -c COMMAND --json` in this process: (exit status, parsed stdout).

    With `client`, the run starts after the credentials and control client are set up (shell.app.attached),
    sharing one host; the subprocess tests below cover that first part."""
    from shell.app import attached, report_failure
    from shell.errors import ShellError
    from shell.session import Session, Target

    capsys.readouterr()
    argv = ["shell", "--data-dir", str(node_dir(net, node)), "-c", command, "--json"]
    if client is None:
        status = node_main(argv)
    else:
        from node.cli import build_parser
        from node.control_client import node_address

        args = build_parser().parse_args(argv)
        session = Session(client, Target(node_address(args.data_dir)), data_dir=args.data_dir)
        try:
            status = attached(session, args)
        except ShellError as exc:
            status = report_failure(exc, True)
    return status, json.loads(capsys.readouterr().out)


def ok(net: Path, capsys, command: str, **kwargs: Any) -> dict:
    status, data = shell_json(net, capsys, command, **kwargs)
    assert status == 0, f"{command}: exit {status}: {data}"
    return data


def run_shell(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([NODE, "shell", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_every_command_with_c_and_json(net, capsys, client):
    state = json.loads((net / "testnet.json").read_text())
    ids = {n["name"]: n["peer_id"] for n in state["nodes"]}

    status = ok(net, capsys, "status")  # the full path: credentials found next to the node, own client
    assert status["name"] == "bootstrap-1" and status["peer_id"] == ids["bootstrap-1"]
    assert status["ledger"]["height"] is not None and "verified" in status["ledger"]
    peers = ok(net, capsys, client=client, command="peers")["peers"]
    assert {p["name"] for p in peers} == set(ids) - {"bootstrap-1"}
    assert "store_market_events" in ok(net, capsys, client=client, command="caps")["capabilities"]
    assert [p["name"] for p in ok(net, capsys, client=client, command="caps mqtt_bridge")["capabilities"]["mqtt_bridge"]] == ["iot-1"]
    routes = ok(net, capsys, client=client, command="route BTCUSD")
    assert routes["symbol"] == "BTCUSD" and "detect_anomalies" in routes["routes"]
    assert ok(net, capsys, client=client, command="metrics adverts.")["counters"]
    assert "sim inject" in ok(net, capsys, client=client, command="help")["commands"]
    assert ok(net, capsys, client=client, command="help sim inject")["usage"].startswith("sim inject SYMBOL --spike PCT")

    # ticks come from the ingestion peer (bootstrap-1 stores none)
    ticks = ok(net, capsys, client=client, command="ticks --limit 5")
    assert ticks["source"] == "ingestion-1" and len(ticks["ticks"]) <= 5
    assert all(t["symbol"] == "BTCUSD" for t in ok(net, capsys, client=client, command="ticks BTCUSD --limit 3")["ticks"])
    iot = ok(net, capsys, client=client, command="iot stats")
    assert iot["source"] == "iot-1" and iot["mqtt"]["connected"] is True

    # a spike published through the real broker (its URL read from the testnet's testnet.json)
    injected = ok(net, capsys, client=client, command="sim inject BTCUSD --spike 40")
    assert injected["acked"] == 1 and injected["broker"] == state["broker"]["url"]
    if injected["base_price"] is not None:  # priced off the newest stored BTCUSD tick
        assert injected["price"] == pytest.approx(injected["base_price"] * 1.4, rel=1e-6)

    prices = ok(net, capsys, client=client, command="watch prices")["prices"]
    assert all(p["sparkline"] and p["points"] >= 1 for p in prices.values())
    assert {p["name"] for p in ok(net, capsys, client=client, command="watch peers")["peers"]} == set(ids) - {"bootstrap-1"}
    assert "alerts" in ok(net, capsys, client=client, command="watch alerts")

    alerts = ok(net, capsys, client=client, command="alerts --limit 5")
    assert alerts["count"] == len(alerts["alerts"])
    assert all(a["status"] == "pending_review" for a in ok(net, capsys, client=client, command="alerts --status pending_review")["alerts"])
    status_code, missing = shell_json(net, capsys, client=client, command="review al-000000000000 confirmed --notes test")
    assert status_code == 1 and missing["error"]["code"] == "not_found"

    assert ok(net, capsys, client=client, command="risk portfolio set BTCUSD=0.6 ETHUSD=0.4")["weights"] == {"BTCUSD": 0.6, "ETHUSD": 0.4}
    assert ok(net, capsys, client=client, command="risk portfolio")["weights"] == {"BTCUSD": 0.6, "ETHUSD": 0.4}
    assert "snapshots" in ok(net, capsys, client=client, command="risk history --limit 3")
    code, latest = shell_json(net, capsys, client=client, command="risk latest")  # needs the risk pipeline to have produced a snapshot
    assert (code == 0 and "symbols" in latest) or (code == 1 and latest["error"]["code"] == "unavailable")

    ledger = ok(net, capsys, client=client, command="ledger status")
    assert ledger["author"] == ids["bootstrap-1"]
    assert ids["bootstrap-1"] in {h["author"] for h in ok(net, capsys, client=client, command="ledger heads")["heads"]}
    tail = ok(net, capsys, client=client, command="ledger tail --n 3")["records"]
    assert tail and len(tail) <= 3
    assert ok(net, capsys, client=client, command=f"ledger show {ids['bootstrap-1']} 0")
    found = ok(net, capsys, client=client, command="ledger find --type portfolio_set --limit 1")["records"]
    assert found and found[0]["payload"]["weights"] == {"BTCUSD": 0.6, "ETHUSD": 0.4}
    assert ok(net, capsys, client=client, command=f"ledger prove --hash {found[0]['record_hash']}")
    assert ok(net, capsys, client=client, command="ledger verify")["ok"] is True

    attached = ok(net, capsys, client=client, command="connect iot-1")
    assert attached["name"] == "iot-1" and attached["peer_id"] == ids["iot-1"]
    assert ok(net, capsys, client=client, command="iot stats", node="iot-1")["source"] == "iot-1"


def pipeline_is_live(net: Path, capsys, client, wait_until, timeout: float) -> bool:
    """True once ingestion-1 holds a tick ingested in the last 10 s (the simulator sends 20/s)."""
    def fresh() -> bool:
        ticks = ok(net, capsys, "ticks --limit 1", client=client)["ticks"]
        return bool(ticks) and time.time() - ticks[0]["ingest_time_us"] / 1e6 < 10
    try:
        wait_until(fresh, timeout, "fresh ticks at ingestion-1", interval=2)
    except AssertionError:
        return False
    return True


def test_injected_spike_reaches_ingestion_and_shows_in_watch_prices(net, capsys, client, make_testnet):
    """Needs iot -> ingestion delivery to work (node/delivery, not the shell)."""
    assert pipeline_is_live(net, capsys, client, make_testnet.wait_until, 180), \
        "ingestion-1 stored no fresh simulated tick (see iot-1's node.log)"
    injected = ok(net, capsys, "sim inject BTCUSD --spike 40", client=client)
    assert injected["price"] == pytest.approx(injected["base_price"] * 1.4, rel=1e-6)
    make_testnet.wait_until(lambda: any(t["event_id"] == injected["event_id"]
                           for t in ok(net, capsys, "ticks BTCUSD --limit 50", client=client)["ticks"]),
               30, "the injected tick in ingestion-1's store", interval=2)
    prices = ok(net, capsys, "watch prices", client=client)["prices"]
    assert prices["BTCUSD"]["sparkline"] and prices["BTCUSD"]["points"] >= 2


def test_connect_flag_exit_statuses_and_clear_errors(net, capsys):
    state = json.loads((net / "testnet.json").read_text())
    ingestion = next(n for n in state["nodes"] if n["name"] == "ingestion-1")
    address = f"/ip4/127.0.0.1/tcp/{ingestion['port']}/p2p/{ingestion['peer_id']}"
    operator = net / "operator"
    creds = ["--key", str(operator / "identity.key"), "--cert", str(operator / "operator.cert")]

    capsys.readouterr()  # in this process: `main` with its own credentials and control client
    assert node_main(["shell", "--connect", address, *creds, "-c", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "ingestion-1"
    dead = f"/ip4/127.0.0.1/tcp/9/p2p/{ingestion['peer_id']}"
    assert node_main(["shell", "--connect", dead, *creds, "-c", "status", "--timeout", "5"]) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and err.count("\n") == 1, err  # one clear line: no traceback, no library noise

    proc = run_shell("--data-dir", str(node_dir(net)), "-c", "statsu")  # real processes for exit statuses
    assert proc.returncode == 2 and "did you mean `status`" in proc.stderr
    proc = run_shell("--data-dir", str(node_dir(net)), "-c", "review al-1")
    assert proc.returncode == 2 and "usage: review ALERT_ID" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_key_without_an_operator_certificate_is_refused(net):
    iot = node_dir(net, "iot-1")  # a real member key and certificate, but with role iot, not operator
    proc = run_shell("--data-dir", str(node_dir(net)), "--key", str(iot / "identity.key"), "--cert",
                     str(iot / "node.cert"), "-c", "status", "--json")
    assert proc.returncode == 4
    assert "not an operator certificate" in proc.stderr and "roles: iot" in proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "not_authorised"
    assert "Traceback" not in proc.stderr


class Terminal:
    """A shell in a pseudo-terminal; answers prompt-toolkit's cursor-position requests."""

    def __init__(self, net: Path, home: Path, node: str = "bootstrap-1") -> None:
        env = dict(os.environ, NO_COLOR="1", XDG_STATE_HOME=str(home))
        self.child = pexpect.spawn(NODE, ["shell", "--data-dir", str(node_dir(net, node))], env=env,
                                   encoding="utf-8", timeout=90, dimensions=(40, 200))
        self.transcript: list[str] = []

    def expect(self, pattern: Any, timeout: float = 90) -> str:
        while True:
            try:
                i = self.child.expect([pattern, CPR], timeout=timeout)
            except pexpect.TIMEOUT:
                seen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", "".join(self.transcript) + str(self.child.before))
                raise AssertionError(f"terminal: no {pattern!r} within {timeout} s; last output:\n"
                                     + "\n".join(l for l in seen.splitlines() if l.strip())[-3000:]) from None
            self.transcript.append(str(self.child.before) + str(self.child.after))
            if i == 1:
                self.child.send("\x1b[1;1R")
                continue
            return self.child.after

    def prompt(self, name: str) -> None:
        self.expect(re.escape(name) + r"\S*>")

    def run(self, line: str, expect: str, name: str = "bootstrap-1") -> None:
        self.child.send(line + "\r")
        self.expect(expect)
        self.prompt(name)


def test_interactive_session_in_a_terminal(net, tmp_path):
    from node.identity import load_or_create_identity

    ghost = load_or_create_identity(tmp_path / "ghost").peer_id  # a peer nobody knows an address for
    term = Terminal(net, tmp_path)
    try:
        term.prompt("bootstrap-1")
        term.expect(r"peers \d+ online.*ledger \d+.*verified")  # the bottom toolbar, filled from `status`
        term.child.send("sta\t")  # tab completes the command
        term.expect("tus")
        term.child.send("\r")
        term.expect("uptime")
        term.prompt("bootstrap-1")
        term.run("help review", "usage: review ALERT_ID")
        term.run("ticks --limit 3", "from ingestion-1")
        term.run("risk portfolio set BTCUSD=0.25 ETHUSD=0.75", "portfolio set")
        term.run("statsu", "did you mean `status`")
        term.run("review al-1", "usage: review ALERT_ID")
        term.child.send("garbage")  # Ctrl-C at the prompt drops the line, the shell stays
        term.child.sendcontrol("c")
        term.run("metrics control.", "control.requests")
        with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers: a hung node
            port = silent.getsockname()[1]
            term.child.send(f"connect /ip4/127.0.0.1/tcp/{port}/p2p/{ghost}\r")
            term.expect("Ctrl-C cancels")
            term.child.sendcontrol("c")  # Ctrl-C while a command runs cancels it
            term.expect("cancelled")
            term.prompt("bootstrap-1")
        term.child.send("watch peers\r")  # live view until a key is pressed
        term.expect("press any key")
        term.expect("ingestion-1")
        term.child.send("q")
        term.prompt("bootstrap-1")
        term.child.send("connect io\t")  # tab completes a peer name fetched from the node
        term.expect("t-1")
        term.child.send("\r")
        term.expect("attached to iot-1")
        term.prompt("iot-1")
        term.run("iot stats", "mqtt.connected", name="iot-1")
        term.child.sendcontrol("d")
        term.expect(pexpect.EOF)
    finally:
        term.child.close(force=True)
    assert term.child.exitstatus == 0
    history = (tmp_path / "quantian" / "shell_history").read_text()
    assert "+help review" in history and "+connect iot-1" in history


def test_interactive_review_changes_the_alert_status(net, capsys, client, make_testnet, tmp_path):
    """Needs the pipeline to raise an alert (iot -> ingestion -> anomaly); spikes are injected to help."""
    assert pipeline_is_live(net, capsys, client, make_testnet.wait_until, 180), "no fresh ticks reach ingestion-1"
    for pct in (60, -50, 80):
        ok(net, capsys, f"sim inject ETHUSD --spike {pct}", client=client)
    alert = make_testnet.wait_until(lambda: ok(net, capsys, "alerts --status pending_review --limit 1", client=client)["alerts"], 180,
                                    "an alert from the anomaly node")[0]
    term = Terminal(net, tmp_path)
    try:
        term.prompt("bootstrap-1")
        term.run("alerts --status pending_review", re.escape(alert["alert_id"]))
        term.child.send(f"review {alert['alert_id'][:9]}\t")  # tab completes the alert ID from the node
        term.expect(re.escape(alert["alert_id"][9:]))
        term.child.send(" confirmed --notes 'checked in the shell test'\r")
        term.expect("is now confirmed")
        term.prompt("bootstrap-1")
        term.run(f"alerts --status confirmed", re.escape(alert["alert_id"]))
        term.child.sendcontrol("d")
        term.expect(pexpect.EOF)
    finally:
        term.child.close(force=True)
    reviewed = ok(net, capsys, "alerts --status confirmed --limit 50", client=client)["alerts"]
    assert alert["alert_id"] in {a["alert_id"] for a in reviewed}
