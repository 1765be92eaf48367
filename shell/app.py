"""`quantian-node shell`: attach to a node (local --data-dir or any --connect) as an operator.

`register` adds the subcommand to quantian-node's parser; `run` finds the operator credentials,
starts one ControlClient, attaches, then either runs one `-c` command (exit status non-zero on
failure, `--json` for scripts) or the interactive prompt. Every expected failure ends as one
clear line and an exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from shell.errors import EXIT_INTERRUPTED, EXIT_OK, ShellError, Unauthorised, Unreachable, UsageError

HISTORY_NAME = "shell_history"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "shell", help="interactive operator shell attached to a node (or -c COMMAND for scripts)",
        description="Attach to a node as an operator: the local one (--data-dir) or any (--connect), then run "
                    "commands (`help` lists them). The operator key and certificate are found next to a testnet "
                    "node's data dir or in ~/.config/quantian/operator/, else pass --key/--cert.",
        epilog='Examples: quantian-node shell --data-dir .testnet/nodes/bootstrap-1\n'
               '          quantian-node shell --data-dir .testnet/nodes/bootstrap-1 -c "alerts --status pending_review" --json',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, help="a local node's data dir (address read from node.json)")
    p.add_argument("--connect", metavar="MULTIADDR", help="a node's address, with /p2p/PEER_ID (overrides --data-dir's node)")
    p.add_argument("--key", type=Path, help="operator key file")
    p.add_argument("--cert", type=Path, help="operator certificate file")
    p.add_argument("--authority", metavar="HEX|FILE", help="network authority public key (with --key/--cert)")
    p.add_argument("-c", "--command", dest="shell_command", metavar="COMMAND", help="run one command and exit")
    p.add_argument("--json", action="store_true", help="with -c: print the result as JSON")
    p.add_argument("--mqtt-url", help="MQTT broker for `sim inject` (default: the testnet's broker)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for a node (default 20)")
    p.add_argument("--history", type=Path, help=f"history file (default ~/.local/state/quantian/{HISTORY_NAME})")


def default_history(data_dir: Path | None) -> Path | None:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path("~/.local/state").expanduser())
    for folder in (state / "quantian", data_dir):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder / HISTORY_NAME
    return None


def credentials(args: argparse.Namespace) -> Any:
    from node.control_client import OperatorCredentials
    from node.errors import NotAuthorised

    try:
        if args.key or args.cert:
            if not (args.key and args.cert):
                raise UsageError("--key and --cert go together")
            authority = args.authority or str(Path(args.cert).parent / "authority.pub")
            return OperatorCredentials.from_files(args.key, args.cert, authority)
        return OperatorCredentials.find_for_data_dir(args.data_dir)
    except NotAuthorised as exc:
        raise Unauthorised(f"operator not authorised: {exc}") from None


def address_of(args: argparse.Namespace) -> str:
    from node.control_client import node_address
    from node.errors import PeerUnreachable

    if args.connect:
        return args.connect
    try:
        return node_address(args.data_dir)
    except PeerUnreachable as exc:
        raise Unreachable(str(exc)) from None


def report_failure(exc: ShellError, as_json: bool) -> int:
    from shell import render as r

    if as_json:
        print(json.dumps({"ok": False, "error": {"code": exc.code, "message": str(exc)}}, indent=2))
    r.emit(r.line(("class:err", "quantian-node shell: error: "), str(exc)), sys.stderr)
    return exc.exit_status


def attached(session: Any, args: argparse.Namespace) -> int:
    """Attach to the node, then run the one command or the prompt."""
    from shell.commands import TABLE
    from shell.context import Context, ExitShell
    from shell import render as r
    from shell.dispatch import execute

    session.attach(session.target.address)
    ctx = Context(session, TABLE, interactive=not args.shell_command)
    if not args.shell_command:
        import asyncio

        from shell.interactive import interact

        return asyncio.run(interact(ctx, args.history or default_history(args.data_dir)))
    try:
        result = execute(ctx, args.shell_command)
    except ExitShell:
        return EXIT_OK
    if args.json:
        print(json.dumps(result.data, indent=2, sort_keys=True, default=str))
    else:
        r.emit(result.view)
    return EXIT_OK


def quiet_logging() -> None:
    """The shell reports failures itself; library log lines (libp2p's dial errors, ...) would
    only garble the prompt, so without a configured handler they go nowhere. Called once the
    control client has started, because importing libp2p resets its logger's handlers."""
    for name in ("", "libp2p"):  # libp2p's logger does not propagate to the root
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def run(args: argparse.Namespace) -> int:
    """Entry point from `quantian-node shell`; returns the exit status."""
    from shell.commands import TABLE
    from shell.context import Context
    from shell.dispatch import prepare
    from shell.session import Session, Target

    as_json = bool(args.json)
    try:
        if args.data_dir is None and args.connect is None:
            raise UsageError("give --data-dir DIR (a local node) or --connect MULTIADDR")
        if args.json and not args.shell_command:
            raise UsageError("--json goes with -c COMMAND")
        creds = credentials(args)
        address = address_of(args)
        if args.shell_command:  # check the line before the ~3 s of starting a libp2p host
            prepare(Context(Session(None, Target(address)), TABLE), args.shell_command)
        from node.control_client import ControlClient
        from node.errors import NodeError

        try:
            with ControlClient(creds) as client:
                quiet_logging()
                session = Session(client, Target(address), data_dir=args.data_dir, mqtt_url=args.mqtt_url,
                                  timeout=args.timeout)
                return attached(session, args)
        except NodeError as exc:  # the client's own host could not start
            raise Unreachable(str(exc)) from None
    except ShellError as exc:
        return report_failure(exc, as_json)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
