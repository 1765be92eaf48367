"""`quantian-testnet`: a local QuantIAN network on 127.0.0.1 (nodes, MQTT broker, simulator).

Cheap at import: nothing here imports libp2p; commands that talk to nodes import the control
client when they run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from testnet import network, render
from testnet.mesh import stderr_progress
from testnet.plan import PIPELINE_ROLES, MIN_NODES, PlanError
from testnet.state import TestnetError, load_state, resolve_dir

REFRESH_S = 3.0


def _dir_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dir", default=None, help="testnet directory (default ./.testnet, or $QUANTIAN_TESTNET_DIR)")
    return p


def _up_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=MIN_NODES, help=f"number of nodes, >= {MIN_NODES} (extra ones get pipeline roles round-robin)")
    p.add_argument("--heartbeat", type=float, default=None, help="node heartbeat in seconds (passed to every node)")
    p.add_argument("--log-format", choices=("text", "json"), default=None)
    p.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto", help="MQTT broker: mosquitto if on PATH, else embedded (auto)")
    p.add_argument("--no-broker", action="store_true", help="start no MQTT broker (and so no simulator)")
    p.add_argument("--no-sim", action="store_true", help="start no market simulator")
    p.add_argument("--sim-rate", type=float, default=network.DEFAULT_SIM_RATE, help="simulator ticks per second (default %(default)s)")
    p.add_argument("--sim-seed", type=int, default=network.DEFAULT_SIM_SEED)
    p.add_argument("--sim-count", type=int, default=None, help="ticks the simulator sends before it stops (default: until the testnet stops)")
    p.add_argument("--timeout", type=float, default=network.DEFAULT_TIMEOUT_S, help="seconds to wait for the mesh (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantian-testnet", description="Run a local QuantIAN network on 127.0.0.1.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = _dir_parent()

    p = sub.add_parser("up", parents=[d], help="start a testnet in the background; return when every node sees every other")
    _up_options(p)
    p.add_argument("--json", action="store_true", help="print the status object when up")
    p.add_argument("--keep-on-failure", action="store_true", help="leave processes running if start-up fails (to debug)")

    p = sub.add_parser("run", parents=[d], help="start a testnet in the foreground with a live summary; Ctrl-C stops it")
    _up_options(p)
    p.add_argument("--refresh", type=float, default=REFRESH_S, help="seconds between summary refreshes")

    p = sub.add_parser("status", parents=[d], help="show the nodes, their pids and what each sees")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--no-query", action="store_true", help="do not ask the nodes (fast: no libp2p import)")

    sub.add_parser("down", parents=[d], help="stop every process of the testnet")

    p = sub.add_parser("kill", parents=[d], help="SIGKILL one node, or the broker (kill -9)")
    p.add_argument("name")

    p = sub.add_parser("restart", parents=[d], help="start a node (or the broker) again with the same data dir, port and flags")
    p.add_argument("name")
    p.add_argument("--no-wait", action="store_true", help="return once it listens, without waiting for the mesh")
    p.add_argument("--timeout", type=float, default=network.DEFAULT_TIMEOUT_S)

    p = sub.add_parser("add", parents=[d], help="start one more node with ROLE and wait until it has joined")
    p.add_argument("role", choices=PIPELINE_ROLES + ("bootstrap",))
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--timeout", type=float, default=network.DEFAULT_TIMEOUT_S)

    p = sub.add_parser("wait", parents=[d], help="wait until every live node sees every other live node")
    p.add_argument("--timeout", type=float, default=network.DEFAULT_TIMEOUT_S)

    p = sub.add_parser("logs", parents=[d], help="print a node's log (or 'broker', 'sim')")
    p.add_argument("name")
    p.add_argument("-n", "--lines", type=int, default=200, help="last N lines (0 = all)")
    p.add_argument("-f", "--follow", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    directory = resolve_dir(args.dir)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so `up` and `run` stop what they started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        return COMMANDS[args.command](args, directory)
    except (TestnetError, PlanError) as exc:
        print(f"quantian-testnet {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"quantian-testnet {args.command}: interrupted", file=sys.stderr)
        return 130


def _up_kwargs(args) -> dict:
    return dict(
        nodes=args.nodes,
        heartbeat=args.heartbeat,
        log_format=args.log_format,
        broker=None if args.no_broker else args.broker,
        sim=not args.no_sim,
        sim_rate=args.sim_rate,
        sim_seed=args.sim_seed,
        sim_count=args.sim_count,
        timeout=args.timeout,
        progress=stderr_progress,
    )


def cmd_up(args, directory: Path) -> int:
    t0 = time.monotonic()
    network.up(directory, keep_on_failure=args.keep_on_failure, **_up_kwargs(args))
    stderr_progress(f"testnet up in {time.monotonic() - t0:.1f}s: {directory}")
    summary = network.status(directory)
    print(json.dumps(summary, indent=2) if args.json else render.status_table(summary))
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_run(args, directory: Path) -> int:
    from testnet.mesh import open_client

    shell = importlib.util.find_spec("shell.app") is not None
    try:
        network.up(directory, **_up_kwargs(args))
        banner = render.attach_help(str(directory), shell)
        tty = sys.stdout.isatty()
        with open_client(directory / "operator") as client:
            while True:
                if load_state(directory).stopped_at:
                    print("the testnet was stopped (quantian-testnet down)")
                    return 0
                table = render.status_table(network.status(directory, client))
                stamp = time.strftime("%H:%M:%S")
                if tty:
                    sys.stdout.write("\x1b[H\x1b[2J")
                print(f"QuantIAN testnet in {directory}   {stamp}   (refresh {args.refresh:g}s)\n\n{table}\n\n{banner}\n", flush=True)
                time.sleep(args.refresh)
    except KeyboardInterrupt:
        print("\nstopping the testnet...", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan anything
        left = network.down(directory, stderr_progress) if (directory / "testnet.json").exists() else []
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if left:
            print(f"could not stop pids {left}", file=sys.stderr)


def cmd_status(args, directory: Path) -> int:
    if args.no_query or not network.is_running(load_state(directory)):
        summary = network.status(directory)
    else:
        from testnet.mesh import open_client

        with open_client(directory / "operator") as client:
            summary = network.status(directory, client)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"testnet in {summary['dir']}: {'running' if summary['running'] else 'not running'}")
        print(render.status_table(summary))
    return 0


def cmd_down(args, directory: Path) -> int:
    left = network.down(directory, stderr_progress)
    return 1 if left else 0


def cmd_kill(args, directory: Path) -> int:
    target = network.kill(directory, args.name)
    stderr_progress(f"killed {args.name} (pid {target.pid}, SIGKILL)")
    return 0


def cmd_restart(args, directory: Path) -> int:
    network.restart(directory, args.name, wait=not args.no_wait, timeout=args.timeout, progress=stderr_progress)
    return 0


def cmd_add(args, directory: Path) -> int:
    node = network.add(directory, args.role, wait=not args.no_wait, timeout=args.timeout, progress=stderr_progress)
    print(node.name)
    return 0


def cmd_wait(args, directory: Path) -> int:
    network.wait_for_mesh(directory, deadline=time.monotonic() + args.timeout, progress=stderr_progress)
    stderr_progress("mesh complete")
    return 0


def cmd_logs(args, directory: Path) -> int:
    state = load_state(directory)
    if args.name == "broker" and state.broker:
        path = Path(state.broker.log_path)
    elif args.name == "sim" and state.sim:
        path = Path(state.sim.log_path)
    else:
        path = state.node(args.name).log_path
    if not path.exists():
        raise TestnetError(f"no log yet at {path}")
    if args.follow:
        cmd = ["tail", "-n", str(args.lines or "+1"), "-F", str(path)]
        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:
            return 0
    lines = path.read_text(errors="replace").splitlines()
    print("\n".join(lines[-args.lines:] if args.lines else lines))
    return 0


COMMANDS = {
    "up": cmd_up,
    "run": cmd_run,
    "status": cmd_status,
    "down": cmd_down,
    "kill": cmd_kill,
    "restart": cmd_restart,
    "add": cmd_add,
    "wait": cmd_wait,
    "logs": cmd_logs,
}

if __name__ == "__main__":
    sys.exit(main())
