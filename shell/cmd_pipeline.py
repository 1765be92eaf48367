"""Commands over the market pipeline: ticks, alerts and reviews, risk, the MQTT bridge, injection.

Alerts, reviews and risk are network-wide views every node answers from its ledger replica;
ticks and iot stats live on the ingestion and iot nodes, so those commands go to a peer that
has the capability when the attached node does not serve them.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from shell import render as r
from shell.context import Context
from shell.errors import ShellError, UsageError
from shell.session import broker_url_near
from shell.table import Command, Param, Result

DECISIONS = ("confirmed", "false_positive", "dismissed")
STATUSES = ("pending_review", *DECISIONS)
TICK_SOURCE = ("store_market_events", "ticks recent")
IOT_SOURCE = ("mqtt_bridge", "iot stats")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def clock(us: int | None) -> str:
    if not us:
        return "-"
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def fetch_ticks(ctx: Context, symbol: str | None, limit: int) -> tuple[list[dict[str, Any]], str]:
    """Recent ticks (newest first) and the name of the node that answered."""
    args: dict[str, Any] = {"limit": limit}
    if symbol:
        args["symbol"] = symbol
    result, label = ctx.session.call_capable(*TICK_SOURCE, args)
    return result.get("ticks", []), label


def ticks(ctx: Context, args: dict[str, Any]) -> Result:
    found, source = fetch_ticks(ctx, args.get("symbol"), args.get("limit", 20))
    rows = [{**t, "time": clock(t.get("event_time_us")),
             "return": None if t.get("price_return") is None else f"{t['price_return'] * 100:+.3f}%"} for t in found]
    view = r.line(("class:dim", f"from {source}"))
    view += r.table(rows, [("time", "EVENT TIME"), ("symbol", "SYMBOL"), ("price", "PRICE"), ("return", "RETURN"),
                           ("volume", "VOLUME"), ("event_id", "EVENT ID")], empty="(no ticks stored yet)")
    return Result({"ticks": found, "source": source}, view)


def alerts_view(alerts: list[dict[str, Any]]) -> r.Fragments:
    rows = [{**a, "when": a.get("event_time") or r.ago(a.get("recorded_ms"))} for a in alerts]
    return r.table(rows, [("alert_id", "ALERT"), ("symbol", "SYMBOL"), ("status", "STATUS"), ("severity", "SEVERITY"),
                          ("score", "SCORE"), ("price", "PRICE"), ("when", "EVENT TIME"), ("reason", "REASON")],
                   styles={"status": r.STATE_STYLES}, empty="(no alerts)")


def alerts(ctx: Context, args: dict[str, Any]) -> Result:
    query = {k: args[k] for k in ("status", "symbol", "limit") if k in args}
    result = ctx.session.call("alerts", query)
    return Result(result, alerts_view(result.get("alerts", [])))


def review(ctx: Context, args: dict[str, Any]) -> Result:
    query = {"alert_id": args["alert_id"], "status": args["decision"]}
    if args.get("notes"):
        query["notes"] = args["notes"]
    result = ctx.session.call("review", query)
    alert = result.get("alert", {})
    view = r.line("alert ", ("class:name", alert.get("alert_id", args["alert_id"])), " is now ",
                  (r.STATE_STYLES.get(alert.get("status", ""), ""), str(alert.get("status"))),
                  ("class:dim", f"  ({len(alert.get('reviews', []))} review(s), recorded on {ctx.session.target.label})"))
    return Result(result, view)


def risk_latest(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("risk latest")
    rows = [{"symbol": sym, **figures, "age": r.ago(figures.get("timestamp_ms"))}
            for sym, figures in result.get("symbols", {}).items()]
    keys = sorted({k for row in rows for k in row} - {"symbol", "age", "timestamp_ms", "computed_by"})
    view = r.table(rows, [("symbol", "SYMBOL"), *[(k, k.upper()) for k in keys[:6]], ("age", "AGE")])
    for author, snap in result.get("portfolios", {}).items():
        view += r.line(("class:dim", f"portfolio by {r.short(author)}: "), r.cell(snap.get("portfolio")))
    return Result(result, view)


def risk_history(ctx: Context, args: dict[str, Any]) -> Result:
    query = {k: args[k] for k in ("symbol", "limit") if k in args}
    result = ctx.session.call("risk history", query)
    rows = [{**s, "age": r.ago(s.get("timestamp_ms")), "by": r.short(s.get("computed_by"))} for s in result.get("snapshots", [])]
    keys = sorted({k for row in rows for k in row if not isinstance(row[k], (dict, list))}
                  - {"age", "by", "timestamp_ms", "computed_by"})
    return Result(result, r.table(rows, [("age", "AGE"), ("by", "BY"), *[(k, k.upper()) for k in keys[:6]]],
                                  empty="(no risk snapshots yet)"))


def risk_portfolio(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("risk portfolio")
    view = r.kv(sorted((result.get("weights") or {}).items()))
    view += r.line(("class:dim", f"set by {r.short(result.get('set_by'))}, {r.ago(result.get('timestamp_ms'))}"))
    return Result(result, view)


def weight_pair(text: str) -> tuple[str, float]:
    symbol, eq, weight = text.partition("=")
    if not eq or not symbol:
        raise ValueError("write SYMBOL=WEIGHT")
    return symbol, float(weight)


def risk_portfolio_set(ctx: Context, args: dict[str, Any]) -> Result:
    weights = dict(args["weights"])
    if len(weights) != len(args["weights"]):
        raise UsageError("a symbol is given twice\nusage: risk portfolio set SYMBOL=WEIGHT ...")
    result = ctx.session.call("risk portfolio set", {"weights": weights})
    return Result(result, r.line("portfolio set: ", r.cell(result.get("weights"))))


def iot_stats(ctx: Context, args: dict[str, Any]) -> Result:
    result, label = ctx.session.call_capable(*IOT_SOURCE)
    mqtt = result.get("mqtt") or {}
    view = r.line(("class:dim", f"from {label}"))
    view += r.kv([(k, v) for k, v in result.items() if k not in ("mqtt", "rejected", "reject_samples")])
    view += r.kv([(f"mqtt.{k}", v) for k, v in mqtt.items()])
    view += r.kv([(f"rejected.{k}", v) for k, v in (result.get("rejected") or {}).items()])
    return Result({**result, "source": label}, view)


def sim_inject(ctx: Context, args: dict[str, Any]) -> Result:
    """Publish one spiked tick through the broker, priced off the symbol's latest stored price."""
    try:
        from sim.market import SimError, spike_tick
        from sim.publisher import PublishError, publish_ticks
    except ImportError as exc:  # the simulator is optional on an operator's machine
        raise ShellError(f"sim inject needs the simulator package (sim/): {exc}") from None

    symbol, pct = args["symbol"], args["spike"]
    url = args.get("mqtt_url") or ctx.session.mqtt_url or broker_url_near(ctx.session.data_dir)
    if not url:
        raise UsageError("no MQTT broker known: pass --mqtt-url mqtt://HOST:PORT (or start the shell with it)\n"
                         "usage: sim inject SYMBOL --spike PCT [--mqtt-url URL]")
    base = None
    try:
        recent, _ = fetch_ticks(ctx, symbol, 1)
        base = recent[0] if recent else None
    except ShellError:
        base = None  # no ingestion node to ask: fall back to the simulator's reference price
    try:
        tick = spike_tick(symbol, asset_class=base.get("asset_class") if base else None,
                          price=base.get("price") if base else None, magnitude=pct / 100.0,
                          event_time_us=int(time.time() * 1e6), sensor_id="quantian-shell")
        summary = publish_ticks(url, [tick], ack_timeout=15.0)
    except (SimError, PublishError) as exc:
        raise ShellError(f"sim inject: {exc}") from None
    if summary.acked < 1:
        raise ShellError(f"sim inject: the broker at {url} did not acknowledge the tick")
    data = {"symbol": symbol, "price": tick.price, "base_price": base.get("price") if base else None,
            "spike_pct": pct, "topic": tick.topic, "event_id": tick.event_id, "broker": url, "acked": summary.acked}
    return Result(data, r.line(f"published {symbol} at {tick.price:g} ({pct:+g}% on ",
                               f"{data['base_price']:g}" if base else "the reference price", f") to {url} ",
                               ("class:dim", tick.topic)))


COMMANDS = [
    Command(("ticks",), "recent market events from an ingestion node", ticks,
            (Param("SYMBOL", "only this symbol", source="symbols"),
             Param("--limit", "how many (default 20)", convert=positive_int, metavar="N")),
            detail="Asks the attached node if it stores market events, else the first online peer with "
                   "capability store_market_events."),
    Command(("alerts",), "anomaly alerts of the whole network with their review status", alerts,
            (Param("--status", "only alerts in this state", choices=STATUSES, metavar="S"),
             Param("--symbol", "only this symbol", source="symbols", metavar="S"),
             Param("--limit", "how many (default 50)", convert=positive_int, metavar="N"))),
    Command(("review",), "record an operator decision on an alert (on the attached node's chain)", review,
            (Param("ALERT_ID", "from `alerts`", source="alerts", required=True),
             Param("DECISION", "the decision", choices=DECISIONS, required=True),
             Param("--notes", "free text (quote it)", metavar="TEXT"))),
    Command(("risk", "latest"), "newest risk figures per symbol and portfolio", risk_latest),
    Command(("risk", "history"), "recorded risk snapshots, newest first", risk_history,
            (Param("--symbol", "only this symbol", source="symbols", metavar="S"),
             Param("--limit", "how many (default 50)", convert=positive_int, metavar="N"))),
    Command(("risk", "portfolio"), "the current portfolio weights and who set them", risk_portfolio),
    Command(("risk", "portfolio", "set"), "replace the portfolio network-wide (weights sum to 1)", risk_portfolio_set,
            (Param("WEIGHTS", "SYMBOL=WEIGHT pairs", source="symbol_weights", required=True, repeat=True,
                   convert=weight_pair, metavar="SYMBOL=WEIGHT"),)),
    Command(("iot", "stats"), "MQTT bridge figures and rejects by reason (iot node or first mqtt_bridge peer)", iot_stats),
    Command(("sim", "inject"), "publish one synthetic price spike through the real MQTT path", sim_inject,
            (Param("SYMBOL", "symbol to spike", source="symbols", required=True),
             Param("--spike", "percent move, e.g. 25 or -30", convert=float, required=True, metavar="PCT"),
             Param("--mqtt-url", "broker (default: the shell's --mqtt-url, else the testnet's broker)", metavar="URL")),
            detail="The tick is priced off the symbol's newest stored price and goes broker -> iot -> ingestion -> "
                   "anomaly like any sensor's."),
]
