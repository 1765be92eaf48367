"""`quantian-node`: start a node, manage identities and certificates, talk to a running node.

Only `start` and `ctl` import libp2p (~3 s); `id` and `network` stay instant.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from node.errors import ConfigError, NodeError
from node.identity import IdentityError, load_or_create_identity
from node.membership import (
    ALL_ROLES,
    NODE_ROLES,
    CertificateError,
    create_authority,
    issue_certificate,
    load_authority,
    write_certificate,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_UNAUTHORISED = 0, 1, 2, 3, 4
CTL_COMMANDS = ("status", "peers", "caps", "metrics", "commands")


def _roles(value: str) -> list[str]:
    roles = [r.strip() for r in value.split(",") if r.strip()]
    if not roles:
        raise argparse.ArgumentTypeError("give at least one role")
    return roles


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantian-node",
        description="QuantIAN peer node: every node runs this program; its roles decide what it does.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings for `start` come from a TOML file < QUANTIAN_* environment variables < flags.\n"
               "Example: quantian-node start --role anomaly --data-dir ./n1 --bootstrap /ip4/1.2.3.4/tcp/4001/p2p/12D3KooW...",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    start = sub.add_parser("start", help="run a node in the foreground until SIGTERM/Ctrl-C",
                           description="Run a node. It needs DATA_DIR/identity.key (created if absent), a membership "
                                       "certificate (DATA_DIR/node.cert) and the network authority's public key "
                                       "(DATA_DIR/authority.pub).")
    start.add_argument("--role", dest="roles", type=_roles, metavar="ROLE[,ROLE...]",
                       help=f"roles to enable: {', '.join(NODE_ROLES)} (env QUANTIAN_ROLES)")
    start.add_argument("--data-dir", type=Path, help="where the key, certificate, ledger and logs live (env QUANTIAN_DATA_DIR)")
    start.add_argument("--listen", action="append", metavar="MULTIADDR",
                       help="address to listen on, repeatable (default /ip4/127.0.0.1/tcp/0)")
    start.add_argument("--announce", action="append", metavar="MULTIADDR",
                       help="address to advertise instead of the listen address (NAT, public IP), repeatable")
    start.add_argument("--bootstrap", action="append", metavar="MULTIADDR",
                       help="bootstrap node to dial, with /p2p/PEER_ID; repeatable (env QUANTIAN_BOOTSTRAP, comma-separated)")
    start.add_argument("--name", help="human-readable node name shown to peers (default: roles + peer ID suffix)")
    start.add_argument("--config", metavar="FILE.toml", help="TOML settings file (keys as in the flags, e.g. heartbeat_s)")
    start.add_argument("--authority", metavar="HEX|FILE", help="network authority public key (default DATA_DIR/authority.pub)")
    start.add_argument("--cert", metavar="FILE", help="this node's membership certificate (default DATA_DIR/node.cert)")
    start.add_argument("--heartbeat", dest="heartbeat_s", type=float, metavar="SECONDS",
                       help="capability advert interval; peers are stale after 3 missed (default 5)")
    start.add_argument("--mqtt-url", help="MQTT broker for the iot role, mqtt://host:1883 or mqtts://host:8883")
    start.add_argument("--handshake-timeout", dest="handshake_timeout_s", type=float, metavar="SECONDS",
                       help="how long a new connection may take to present a valid certificate (default 5)")
    start.add_argument("--health-file", metavar="FILE", help="JSON file rewritten every heartbeat, for supervisors")
    start.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON")
    start.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default info")

    ident = sub.add_parser("id", help="print this node's peer ID (creates the key on first use)")
    ident.add_argument("--data-dir", type=Path, required=True)

    network = sub.add_parser("network", help="network authority: create it, admit peers")
    net_sub = network.add_subparsers(dest="network_command", metavar="ACTION", required=True)
    init = net_sub.add_parser("init", help="create a network authority key in DIR")
    init.add_argument("--dir", type=Path, required=True, help="folder for authority.key (0600) and authority.pub")
    admit = net_sub.add_parser("admit", help="issue a membership certificate for PEER_ID")
    admit.add_argument("peer_id", metavar="PEER_ID")
    admit.add_argument("--roles", type=_roles, required=True, metavar="ROLE[,ROLE...]",
                       help=f"roles the peer may take: {', '.join(ALL_ROLES)}")
    admit.add_argument("--authority-dir", type=Path, required=True, help="folder holding authority.key")
    admit.add_argument("--days", type=float, default=365.0, help="validity in days (default 365)")
    admit.add_argument("--out", type=Path, required=True, help="certificate file to write (e.g. DATA_DIR/node.cert)")

    ctl = sub.add_parser("ctl", help="query a running node over the control protocol",
                         description="Ask a node (local via --data-dir, or any via --connect) for its status. "
                                     "Needs an operator certificate: found automatically next to a testnet node, "
                                     "else pass --key/--cert or keep them in ~/.config/quantian/operator/.")
    ctl.add_argument("ctl_command", choices=CTL_COMMANDS, metavar="COMMAND", help=" | ".join(CTL_COMMANDS))
    ctl.add_argument("capability", nargs="?", help="for `caps`: only this capability")
    target = ctl.add_mutually_exclusive_group(required=True)
    target.add_argument("--data-dir", type=Path, help="a local node's data dir (address read from node.json)")
    target.add_argument("--connect", metavar="MULTIADDR", help="a node's address, with /p2p/PEER_ID")
    ctl.add_argument("--key", type=Path, help="operator key file")
    ctl.add_argument("--cert", type=Path, help="operator certificate file")
    ctl.add_argument("--authority", metavar="HEX|FILE", help="network authority public key (with --key/--cert)")
    ctl.add_argument("--json", action="store_true", help="print the raw JSON result")
    ctl.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the node (default 20)")

    try:
        from chain import cli as chain_cli
    except ImportError:
        chain_cli = None
    if chain_cli is not None and hasattr(chain_cli, "register"):
        chain_cli.register(sub)
    from shell.app import register as register_shell

    register_shell(sub)
    return parser


def _leaves(error: BaseException) -> list[str]:
    """The messages of the innermost exceptions of a (nested) exception group."""
    if isinstance(error, BaseExceptionGroup):
        return [m for sub in error.exceptions for m in _leaves(sub)]
    return [str(error)]


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"quantian-node: error: {message}", file=sys.stderr)
    return code


# --- start -------------------------------------------------------------------------------------


class _NoPandas:
    """A sys.meta_path finder that makes ``import pandas`` fail as if pandas were absent."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is kept out of QuantIAN nodes", name=name)
        return None


def keep_pandas_out() -> None:
    """scikit-learn imports pandas whenever it is installed (the test extras install it), and a
    node never uses it: ~30 MB of the anomaly node's RSS. sklearn looks pandas up in sys.modules
    and treats a failed import as "not installed", so a finder that refuses it is enough."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())


def cmd_start(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.logs import configure_logging

    flags = {k: getattr(args, k) for k in ("roles", "data_dir", "listen", "announce", "bootstrap", "name", "authority",
                                            "cert", "heartbeat_s", "mqtt_url", "handshake_timeout_s", "health_file",
                                            "log_format", "log_level")}
    try:
        config = load_config(flags, config_file=args.config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    configure_logging(config.log_format, config.log_level, config.name)

    import trio

    keep_pandas_out()
    from node.node import Node

    configure_logging(config.log_format, config.log_level, config.name)  # again: importing libp2p reset its loggers

    try:
        node = Node(config)
    except (ConfigError, IdentityError) as exc:
        return _fail(str(exc), EXIT_USAGE)

    async def main() -> None:
        import logging

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:  # also during a slow start-up
                    async for sig in signals:
                        logging.getLogger("quantian.node").info("received %s, shutting down", signal.Signals(sig).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(node.run)

    failure: list[str] = []
    try:
        trio.run(main)
    except* OSError as group:  # e.g. the listen port is taken: a clear line, not a traceback
        failure.extend(_leaves(group))
    if failure:
        return _fail(f"could not start the node: {'; '.join(failure)}")
    return EXIT_OK


# --- identity and network ----------------------------------------------------------------------


def cmd_id(args: argparse.Namespace) -> int:
    print(load_or_create_identity(args.data_dir).peer_id)
    return EXIT_OK


def cmd_network(args: argparse.Namespace) -> int:
    if args.network_command == "init":
        authority = create_authority(args.dir)
        print(f"network authority created in {args.dir}")
        print(f"public key: {authority.public_key.hex()}")
        return EXIT_OK
    authority = load_authority(args.authority_dir)
    cert = issue_certificate(authority, args.peer_id, args.roles, args.days * 86400)
    write_certificate(cert, args.out)
    print(f"admitted {cert.peer_id} as {','.join(cert.roles)} until "
          f"{__import__('time').strftime('%Y-%m-%dT%H:%M:%SZ', __import__('time').gmtime(cert.expires))}: {args.out}")
    return EXIT_OK


# --- ctl ---------------------------------------------------------------------------------------


def _print_status(result: dict[str, Any]) -> None:
    print(f"{result['name']}  {result['peer_id']}")
    print(f"  roles:        {', '.join(result['roles'])}")
    print(f"  capabilities: {', '.join(result['capabilities'])}")
    print(f"  listen:       {' '.join(result['listen'])}")
    print(f"  uptime:       {result['uptime_s']:.0f} s    version {result['version']}")
    print(f"  peers:        {result['peers_online']} online, {result['peers_stale']} stale, {result['peers_gone']} gone")
    _print_peers(result["peers"])


def _print_peers(peers: list[dict[str, Any]]) -> None:
    if not peers:
        print("  (no peers known yet)")
        return
    width = max(len(p["name"]) for p in peers)
    for p in peers:
        print(f"  {p['name']:<{width}}  {p['state']:<6}  {p['last_seen_s']:>6.1f}s  {','.join(p['roles']):<20}  {p['peer_id']}")


def cmd_ctl(args: argparse.Namespace) -> int:
    from node.control_client import ControlClient, OperatorCredentials, node_address
    from node.errors import NotAuthorised, PeerUnreachable, RequestTimeout

    try:
        if args.key or args.cert:
            if not (args.key and args.cert):
                return _fail("--key and --cert go together", EXIT_USAGE)
            authority = args.authority or str(Path(args.cert).parent / "authority.pub")
            creds = OperatorCredentials.from_files(args.key, args.cert, authority)
        else:
            creds = OperatorCredentials.find_for_data_dir(args.data_dir)
        address = args.connect or node_address(args.data_dir)
        call_args = {"capability": args.capability} if args.ctl_command == "caps" and args.capability else {}
        with ControlClient(creds) as client:
            result = client.request(address, args.ctl_command, call_args, timeout=args.timeout)
    except NotAuthorised as exc:
        return _fail(str(exc), EXIT_UNAUTHORISED)
    except (PeerUnreachable, RequestTimeout) as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except NodeError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.ctl_command == "status":
        _print_status(result)
    elif args.ctl_command == "peers":
        _print_peers(result["peers"])
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"start": cmd_start, "id": cmd_id, "network": cmd_network, "ctl": cmd_ctl}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        if args.command == "shell":
            from shell.app import run as run_shell

            return run_shell(args)
        from chain import cli as chain_cli

        return chain_cli.run(args)
    except (CertificateError, IdentityError, ConfigError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
