"""`ledger ...`: the node's replicated ledger (every chain it holds), read-only."""

from __future__ import annotations

import json
from typing import Any

from shell import render as r
from shell.context import Context
from shell.errors import UsageError
from shell.table import Command, Param, Result

AUTHOR = Param("--author", "a chain's author (peer ID)", source="peer_ids", metavar="PEER_ID")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _json_view(result: dict[str, Any]) -> r.Fragments:
    return [("", json.dumps(result, indent=2, sort_keys=True) + "\n")]


def records_view(records: list[dict[str, Any]]) -> r.Fragments:
    rows = [{**rec, "author": r.short(rec.get("author")), "when": r.ago(rec.get("timestamp_ms")),
             "hash": str(rec.get("record_hash", ""))[:16]} for rec in records]
    return r.table(rows, [("author", "AUTHOR"), ("height", "HEIGHT"), ("index", "#"), ("type", "TYPE"),
                          ("when", "WHEN"), ("hash", "RECORD HASH")], empty="(no records)")


def _records_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result.get("records") or [rec for block in result.get("blocks", []) for rec in block.get("records", [])]


def status(ctx: Context, args: dict[str, Any]) -> Result:
    from shell.cmd_node import ledger_summary

    result = ctx.session.call("ledger status")
    return Result(result, r.line(ledger_summary(result)) + r.kv([("author", result.get("author")),
                                                                  ("head", result.get("head_hash")),
                                                                  ("failures", result.get("failures"))]))


def heads(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("ledger heads")
    rows = [{**h, "hash": str(h.get("hash", ""))[:16]} for h in result.get("heads", [])]
    view = r.table(rows, [("author", "AUTHOR"), ("height", "HEIGHT"), ("hash", "HEAD HASH")], empty="(no chains)")
    if result.get("forks"):
        view += r.line(("class:err", "forks: "), r.cell(result["forks"]))
    return Result(result, view)


def tail(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("ledger tail", {k: args[k] for k in ("author", "n") if k in args})
    records = _records_of(result)
    return Result(result, records_view(records) if records else _json_view(result))


def show(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("ledger show", {"author": args["author"], "height": args["height"]})
    return Result(result, _json_view(result))


def find(ctx: Context, args: dict[str, Any]) -> Result:
    query = {k: args[k] for k in ("type", "actor", "author", "limit") if k in args}
    if "hash" in args:
        query["record_hash"] = args["hash"]
    result = ctx.session.call("ledger find", query)
    return Result(result, records_view(result.get("records", [])))


def verify(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("ledger verify", timeout=max(ctx.session.timeout, 60.0))
    ok = bool(result.get("ok"))
    view = r.line(("class:ok", "all chains verify") if ok else ("class:err", "VERIFICATION FAILED"),
                  f"  ({len(result.get('chains', []))} chains)")
    if result.get("first_failure"):
        view += r.line(("class:err", "first failure: "), r.cell(result["first_failure"]))
    return Result(result, view)


def prove(ctx: Context, args: dict[str, Any]) -> Result:
    if "hash" in args:
        query: dict[str, Any] = {"record_hash": args["hash"]}
    elif all(k in args for k in ("author", "height", "index")):
        query = {k: args[k] for k in ("author", "height", "index")}
    else:
        raise UsageError("give --hash, or AUTHOR HEIGHT INDEX\nusage: ledger prove [AUTHOR HEIGHT INDEX] [--hash H]")
    return Result(result := ctx.session.call("ledger prove", query), _json_view(result))


COMMANDS = [
    Command(("ledger", "status"), "own chain height, verification state, failures, forks", status),
    Command(("ledger", "heads"), "the head of every chain this node holds", heads),
    Command(("ledger", "tail"), "newest records", tail,
            (AUTHOR, Param("--n", "how many (default 10)", convert=int, metavar="N"))),
    Command(("ledger", "show"), "one block with its records", show,
            (Param("AUTHOR", "the chain's author", source="peer_ids", required=True),
             Param("HEIGHT", "block height", convert=non_negative_int, required=True))),
    Command(("ledger", "find"), "records by type, actor, author or hash", find,
            (Param("--type", "record type, e.g. anomaly_alert_created", source="record_types", metavar="T"),
             Param("--actor", "who caused it (peer ID)", source="peer_ids", metavar="PEER_ID"), AUTHOR,
             Param("--hash", "a record hash", metavar="H"),
             Param("--limit", "how many (default 50)", convert=int, metavar="N"))),
    Command(("ledger", "verify"), "re-verify every stored chain now", verify),
    Command(("ledger", "prove"), "Merkle inclusion proof of one record", prove,
            (Param("AUTHOR", "the chain's author", source="peer_ids"),
             Param("HEIGHT", "block height", convert=non_negative_int),
             Param("INDEX", "record index in the block", convert=non_negative_int),
             Param("--hash", "prove a record by its hash instead", metavar="H"))),
]
