"""Commands about the attached node itself: status, peers, caps, route, metrics, connect, quit."""

from __future__ import annotations

from typing import Any

from shell import render as r
from shell.context import Context, ExitShell
from shell.table import Command, Param, Result

PEER_COLUMNS = [("name", "NAME"), ("state", "STATE"), ("seen", "SEEN"), ("roles", "ROLES"), ("peer_id", "PEER ID")]


def ledger_summary(ledger: dict[str, Any] | None) -> str:
    if not ledger:
        return "no ledger"
    verified = {True: "verified", False: "VERIFICATION FAILED", None: "not verified yet"}[ledger.get("verified")]
    counts = ledger.get("counts") or {}
    height = ledger.get("height")
    return (f"height {'-' if height is None else height}, {verified}, "
            f"{counts.get('chains', '?')} chains / {counts.get('blocks', '?')} blocks"
            + (f", forks: {', '.join(ledger['forks'])}" if ledger.get("forks") else ""))


def peers_view(peers: list[dict[str, Any]]) -> r.Fragments:
    rows = [{**p, "seen": f"{p.get('last_seen_s', 0):.1f}s"} for p in sorted(peers, key=lambda p: p.get("name", ""))]
    return r.table(rows, PEER_COLUMNS, styles={"state": r.STATE_STYLES}, empty="(no peers known yet)")


def status(ctx: Context, args: dict[str, Any]) -> Result:
    s = ctx.session.call("status")
    ledger = s.get("ledger")
    ledger_style = "class:ok" if ledger and ledger.get("verified") else "class:warn"
    view = r.line(("class:name", s.get("name", "")), "  ", ("class:dim", s.get("peer_id", "")))
    view += r.kv([("roles", s.get("roles")), ("capabilities", s.get("capabilities")), ("listen", " ".join(s.get("listen", []))),
                  ("uptime", f"{s.get('uptime_s', 0):.0f} s   version {s.get('version', '?')}"),
                  ("peers", f"{s.get('peers_online', 0)} online, {s.get('peers_stale', 0)} stale, {s.get('peers_gone', 0)} gone")])
    view += r.line(("class:dim", "ledger: "), (ledger_style, ledger_summary(ledger)))
    return Result(s, view)


def peers(ctx: Context, args: dict[str, Any]) -> Result:
    found = ctx.session.peers(fresh=True)
    return Result({"peers": found}, peers_view(found))


def caps(ctx: Context, args: dict[str, Any]) -> Result:
    wanted = args.get("capability")
    result = ctx.session.call("caps", {"capability": wanted} if wanted else {})
    rows = [{"capability": cap, "peers": [p.get("name") or p.get("peer_id") for p in found]}
            for cap, found in result.get("capabilities", {}).items()]
    return Result(result, r.table(rows, [("capability", "CAPABILITY"), ("peers", "PEERS")], empty="(no live peers)"))


def route(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("route", {"symbol": args["symbol"]})
    rows = [{"capability": cap, "owner": (found[0].get("name") or found[0]["peer_id"]) if found else None,
             "failover": [p.get("name") or p["peer_id"] for p in found[1:]]}
            for cap, found in result.get("routes", {}).items()]
    view = r.line("routes for ", ("class:name", args["symbol"]), ":")
    view += r.table(rows, [("capability", "CAPABILITY"), ("owner", "OWNER"), ("failover", "THEN")])
    return Result(result, view)


def metrics(ctx: Context, args: dict[str, Any]) -> Result:
    counters = ctx.session.call("metrics").get("counters", {})
    prefix = args.get("prefix")
    if prefix:
        counters = {k: v for k, v in counters.items() if k.startswith(prefix)}
    return Result({"counters": counters}, r.kv(sorted(counters.items())) or r.line(("class:dim", "(no counters)")))


def connect(ctx: Context, args: dict[str, Any]) -> Result:
    address, _label = ctx.session.resolve(args["peer"])
    target = ctx.session.attach(address)
    data = {"name": target.name, "peer_id": target.peer_id, "roles": target.roles, "address": target.address}
    return Result(data, r.line("attached to ", ("class:name", target.label), f" ({', '.join(target.roles)})  ",
                               ("class:dim", target.peer_id)))


def quit_(ctx: Context, args: dict[str, Any]) -> Result:
    raise ExitShell()


COMMANDS = [
    Command(("status",), "the node's identity, roles, peers and ledger state", status),
    Command(("peers",), "the node's peer table (name, state, last seen, roles)", peers),
    Command(("caps",), "live peers by capability", caps,
            (Param("CAPABILITY", "only this capability", source="capabilities"),)),
    Command(("route",), "which peers own SYMBOL for each pipeline stage (rendezvous hashing)", route,
            (Param("SYMBOL", "a market symbol, e.g. BTCUSD", source="symbols", required=True),)),
    Command(("metrics",), "the node's counters", metrics, (Param("PREFIX", "only counters starting with this"),)),
    Command(("connect",), "attach to another node without leaving the shell", connect,
            (Param("PEER", "a peer ID, a node name (or a unique prefix), or a multiaddr", source="peers",
                   required=True, metavar="PEER_ID|NAME"),),
            detail="Names and peer IDs are looked up in the attached node's peer table (`peers`)."),
    Command(("quit",), "leave the shell (Ctrl-D does too)", quit_),
    Command(("exit",), "leave the shell", quit_),
]
