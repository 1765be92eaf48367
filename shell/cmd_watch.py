"""`watch alerts|peers|prices`: one frame each; the interactive shell redraws them in place.

With `-c` a watch command prints a single frame, which is what a script wants anyway.
"""

from __future__ import annotations

from typing import Any

from shell import render as r
from shell.cmd_node import peers_view
from shell.cmd_pipeline import alerts_view, fetch_ticks
from shell.context import Context
from shell.table import Command, Param, Result

PRICE_WINDOW = 300  # ticks fetched per frame (all symbols together)
SPARK_WIDTH = 48
EVERY = Param("--every", "seconds between refreshes (default 2)", convert=float, metavar="SECONDS")


def price_series(ticks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per symbol, in event-time order: last price, change over the window and a sparkline."""
    series: dict[str, list[float]] = {}
    for t in sorted(ticks, key=lambda t: t.get("event_time_us", 0)):
        series.setdefault(t["symbol"], []).append(float(t["price"]))
    return {sym: {"last": prices[-1], "first": prices[0], "points": len(prices),
                  "change_pct": round((prices[-1] / prices[0] - 1) * 100, 4) if prices[0] else 0.0,
                  "sparkline": r.sparkline(prices, SPARK_WIDTH)}
            for sym, prices in sorted(series.items())}


def watch_prices(ctx: Context, args: dict[str, Any]) -> Result:
    found, source = fetch_ticks(ctx, None, PRICE_WINDOW)
    prices = price_series(found)
    width = max((len(s) for s in prices), default=6)
    view = r.line(("class:dim", f"prices from {source}, last {len(found)} ticks"))
    for sym, p in prices.items():
        style = "class:ok" if p["change_pct"] >= 0 else "class:err"
        view += r.line(("class:name", f"{sym:<{width}} "), ("class:spark", f"{p['sparkline']:<{SPARK_WIDTH}} "),
                       f"{p['last']:>12.6g} ", (style, f"{p['change_pct']:+.3f}%"))
    if not prices:
        view += r.line(("class:dim", "(no ticks stored yet)"))
    return Result({"prices": prices, "source": source}, view)


def watch_alerts(ctx: Context, args: dict[str, Any]) -> Result:
    result = ctx.session.call("alerts", {"limit": 20})
    return Result(result, alerts_view(result.get("alerts", [])))


def watch_peers(ctx: Context, args: dict[str, Any]) -> Result:
    found = ctx.session.peers(fresh=True)
    return Result({"peers": found}, peers_view(found))


COMMANDS = [
    Command(("watch", "alerts"), "the newest alerts, refreshed in place until a key is pressed", watch_alerts,
            (EVERY,), live=True),
    Command(("watch", "peers"), "the peer table, refreshed in place until a key is pressed", watch_peers,
            (EVERY,), live=True),
    Command(("watch", "prices"), "a price sparkline per symbol, refreshed in place until a key is pressed",
            watch_prices, (EVERY,), live=True),
]
