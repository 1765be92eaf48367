"""`quantian-node ledger ...`: offline inspection of a node's ledger (safe while it runs:
the store is opened read-only and nothing is repaired).

Contract with node/cli.py: `register(subparsers)` adds the `ledger` command; when
`args.command == "ledger"` the node calls `run(args)` and exits with its return code:
0 all good, 1 verification failed / not found / proof invalid, 2 the store cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import queries
from .errors import CorruptStore, LedgerError, NotFound
from .records import RECORD_TYPES
from .store import STORE_FILE_NAME, Store

EXIT_OK, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


def register(subparsers: Any) -> None:
    """Add `ledger {verify,heads,show,tail,find,prove,verify-proof}` to an argparse subparsers object."""
    ledger = subparsers.add_parser("ledger", help="inspect and verify the signed ledger offline")
    commands = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text)
        # SUPPRESS: never clobber a --data-dir the node's top-level parser may have set.
        parser.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="node data directory")
        parser.add_argument("--json", action="store_true", help="print JSON")
        return parser

    command("verify", "verify every chain; non-zero exit names the first failure")
    command("heads", "head (height, hash) of every chain held")
    show = command("show", "one block with its records")
    show.add_argument("author")
    show.add_argument("height", type=int)
    tail = command("tail", "newest records")
    tail.add_argument("--author")
    tail.add_argument("-n", type=int, default=10)
    find = command("find", "records by type and/or actor")
    find.add_argument("--type", choices=sorted(RECORD_TYPES), dest="record_type")
    find.add_argument("--actor")
    find.add_argument("--author")
    find.add_argument("--limit", type=int, default=50)
    prove = command("prove", "inclusion proof of one record")
    prove.add_argument("author")
    prove.add_argument("height", type=int)
    prove.add_argument("index", type=int)
    prove.add_argument("--out", type=Path, help="also write the raw proof bytes to this file")
    check = command("verify-proof", "check an inclusion or fork proof file (raw, hex or prove's JSON)")
    check.add_argument("file", type=Path)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed `ledger` command, printing to stdout; returns the exit code."""
    try:
        if args.ledger_command == "verify-proof":
            result = queries.verify_proof(_read_proof(args.file))
            return _emit(args, result, EXIT_OK if result["ok"] else EXIT_FAILED)
        data_dir = getattr(args, "data_dir", None)
        if data_dir is None:
            print("ledger: --data-dir is required", file=sys.stderr)
            return EXIT_UNREADABLE
        store = Store.open(Path(data_dir) / STORE_FILE_NAME, readonly=True)
        try:
            return _dispatch(args, store)
        finally:
            store.close()
    except NotFound as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (CorruptStore, OSError, ValueError) as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE


def _dispatch(args: argparse.Namespace, store: Store) -> int:
    cmd = args.ledger_command
    if cmd == "verify":
        result = queries.verify(store)
        return _emit(args, result, EXIT_OK if result["ok"] else EXIT_FAILED)
    if cmd == "heads":
        return _emit(args, queries.heads(store))
    if cmd == "show":
        return _emit(args, queries.show(store, args.author, args.height))
    if cmd == "tail":
        return _emit(args, queries.tail(store, args.author, args.n))
    if cmd == "find":
        return _emit(args, queries.find(store, record_type=args.record_type, actor=args.actor,
                                        author=args.author, limit=args.limit))
    if cmd == "prove":
        result = queries.prove(store, args.author, args.height, args.index)
        if args.out is not None:
            args.out.write_bytes(bytes.fromhex(result["proof"]))
        return _emit(args, result)
    raise LedgerError(f"unknown ledger command {cmd!r}")


def _read_proof(path: Path) -> bytes:
    raw = path.read_bytes()
    text = raw.strip()
    if text.startswith(b"{"):
        return bytes.fromhex(json.loads(text)["proof"])
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return raw


def _emit(args: argparse.Namespace, result: dict, code: int = EXIT_OK) -> int:
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(_text(args.ledger_command, result))
    return code


def _text(cmd: str, result: dict) -> str:
    if cmd == "verify":
        lines = [f"{c['author']}  blocks={c['blocks']} records={c['records']}  {'ok' if c['ok'] else 'FAILED'}"
                 for c in result["chains"]]
        failure = result["first_failure"]
        lines.append("ledger verified" if failure is None else
                     f"FAILED author={failure['author']} height={failure['height']} "
                     f"[{failure['code']}] {failure['reason']}")
        return "\n".join(lines)
    if cmd == "heads":
        lines = [f"{h['author']}  height={h['height']}  {h['hash']}" for h in result["heads"]]
        lines += [f"FORK {f['author']} at height {f['height']}" for f in result["forks"]]
        return "\n".join(lines) or "(no chains)"
    if cmd in ("tail", "find"):
        return "\n".join(_record_line(r) for r in result["records"]) or "(no records)"
    if cmd == "show":
        head = (f"block {result['author']}/{result['height']} hash={result['hash']}\n"
                f"  prev={result['prev_hash']} time={result['timestamp_ms']} records={result['record_count']} "
                f"bytes={result['size']}")
        return "\n".join([head] + ["  " + _record_line(r) for r in result["records"]])
    if cmd == "prove":
        return result["proof"]
    if cmd == "verify-proof":
        if not result["ok"]:
            e = result["error"]
            return f"INVALID [{e['code']}] author={e['author']} height={e['height']}: {e['reason']}"
        return f"valid {result['kind']} proof: author={result['author']} height={result['height']}"
    return json.dumps(result)


def _record_line(r: dict) -> str:
    return (f"{r['author'][-8:]}/{r['height']}/{r['index']}  {r['timestamp_ms']}  {r['type']:<26} "
            f"actor={r['actor'][-8:]}  {json.dumps(r['payload'], sort_keys=True)}")
