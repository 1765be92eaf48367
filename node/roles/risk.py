"""risk role: per-symbol bar series, the network's portfolio, and risk snapshots.

Ingestion routes each symbol to one risk node, so a node holds bar closes (last price of each
`bar_s` bar of event time, bounded) for the symbols it owns. Snapshots (node.analytics.risk:
annualised volatility with the periods per year of the bar size, historical VaR 95%, ES 97.5%,
max drawdown, rolling returns) are computed per symbol and for the portfolio restricted to those
symbols, every `snapshot_interval_s` when something changed and on demand (`risk snapshot`).
The newest is recorded as `risk_snapshot_computed` at most every `record_interval_s`.

The portfolio is the newest `portfolio_set` record of any chain (node/views.py writes it), so
setting it on any node reaches every risk node through ledger replication.
"""

from __future__ import annotations

import logging
import math
import time
from bisect import bisect_left
from collections import OrderedDict, deque
from typing import Any

import numpy as np
import trio

from chain.errors import LedgerError
from node.analytics import risk as rm
from node.errors import ConfigError
from node.market_events import MarketEvent, RecentIds
from node.protocols import ticks
from node.roles.batches import decode_batch
from node.roles.base import Role
from node.views import current_portfolio

log = logging.getLogger("quantian.risk")

SCOPE = "symbols owned by this node (rendezvous ownership): the portfolio covers only those"
DEFAULTS: dict[str, float] = {
    "bar_s": 1.0,  # bar size in event-time seconds
    "snapshot_interval_s": 1.0,  # compute when inputs changed, this often
    "record_interval_s": 5.0,  # record the newest snapshot on the ledger at most this often
    "max_bars": 1000,  # per symbol
    "max_symbols": 256,
    "history": 300,  # snapshots kept in memory
    "horizon_bars": 20,  # rolling return horizon
    "session_s": 86400.0,  # trading seconds per session: around the clock by default (crypto testnet)
    "sessions_per_year": 365.0,
    "record_max_symbols": 64,  # keeps a snapshot record far below the ledger's record size cap
    "dedup_capacity": 65536,
}


def risk_settings(given: dict[str, Any]) -> dict[str, float]:
    """DEFAULTS overridden by the node's [risk] settings; raises ConfigError naming the bad one."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"[risk] unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(DEFAULTS))}")
    settings = dict(DEFAULTS)
    for key, value in given.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0 \
                or (value == 0 and key != "record_interval_s"):
            raise ConfigError(f"[risk] {key} must be a number > 0, got {value!r}")
        settings[key] = value
    return settings


class BarSeries:
    """Closes of the most recent `max_bars` non-empty bars: (bar index, last price in it).

    Why order does not matter: ticks of one symbol reach this node in event-time order only while
    one iot bridge carries them. Bridges sharing the MQTT subscription (and redelivery after a
    crash) interleave them, so a tick may arrive after a newer bar has opened. Each bar keeps the
    event time (and id, for ties) of its close, so any arrival order of the same ticks builds the
    same bars; only a tick older than every bar kept, with all `max_bars` in use, is late."""

    def __init__(self, bar_s: float, max_bars: int) -> None:
        self.bar_s = bar_s
        self.max_bars = max_bars
        self._keys: list[int] = []  # bar indices, ascending
        self._closes: list[tuple[int, str, float]] = []  # per bar: (event time, event id, price) of its close

    def add(self, event_time_us: int, price: float, event_id: str = "") -> bool:
        """Apply one tick; False when it falls before every bar kept and none is free (late, ignored)."""
        k = math.floor(event_time_us / 1e6 / self.bar_s)
        close = (event_time_us, event_id, price)
        keys = self._keys
        if not keys or k > keys[-1]:  # the common case: a tick opens the next bar
            keys.append(k)
            self._closes.append(close)
        else:
            i = bisect_left(keys, k)
            if i < len(keys) and keys[i] == k:
                if close[:2] >= self._closes[i][:2]:  # ties on both: the later arrival, as in order
                    self._closes[i] = close
                return True
            if i == 0 and len(keys) >= self.max_bars:
                return False
            keys.insert(i, k)
            self._closes.insert(i, close)
        if len(keys) > self.max_bars:
            del keys[0], self._closes[0]
        return True

    @property
    def bars(self) -> list[tuple[int, float]]:
        return [(k, c[2]) for k, c in zip(self._keys, self._closes)]

    def closes(self) -> np.ndarray:
        return np.array([c[2] for c in self._closes], dtype=float)


def series_figures(closes: np.ndarray, periods: float, horizon: int) -> dict[str, Any]:
    """node.analytics.risk.snapshot of one close path, or why there is none yet."""
    try:
        return rm.snapshot(closes, periods=periods, horizon=horizon)
    except rm.RiskError as exc:
        return {"n_prices": int(len(closes)), "unavailable": exc.code, "detail": str(exc)}


def portfolio_figures(weights: dict[str, float] | None, series: dict[str, BarSeries], periods: float,
                      horizon: int) -> dict[str, Any] | None:
    """Snapshot of the fixed-weight portfolio over the weighted symbols held here, on common bars.

    The weights of the symbols held are renormalised to sum to 1; `coverage` says how much of
    the full portfolio's weight that is, `missing` which weighted symbols another node owns.
    """
    if not weights:
        return None
    held = sorted(s for s, w in weights.items() if w > 0 and s in series and series[s].bars)
    missing = sorted(s for s, w in weights.items() if w > 0 and s not in held)
    coverage = math.fsum(weights[s] for s in held)
    out: dict[str, Any] = {"weights": dict(weights), "held": held, "missing": missing, "coverage": coverage}
    if not held:
        return {**out, "unavailable": "no_data", "detail": "this node holds none of the weighted symbols"}
    common = set.intersection(*({k for k, _ in series[s].bars} for s in held))
    bars = sorted(common)
    aligned = {s: np.array([p for k, p in series[s].bars if k in common], dtype=float) for s in held}
    local = {s: weights[s] / coverage for s in held}
    try:
        value = rm.portfolio_prices(local, aligned)
    except rm.RiskError as exc:
        return {**out, "n_bars": len(bars), "unavailable": exc.code, "detail": str(exc)}
    return {**out, "n_bars": len(bars), **series_figures(value, periods, horizon)}


class RiskRole(Role):
    name = "risk"
    capabilities = ("compute_risk",)

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        settings = self.settings = risk_settings(dict(ctx.config.extra.get("risk", {})))
        self.bar_s = float(settings["bar_s"])
        self.periods = rm.periods_per_year(self.bar_s, session_seconds=float(settings["session_s"]),
                                           sessions_per_year=float(settings["sessions_per_year"]))
        self._series: OrderedDict[str, BarSeries] = OrderedDict()
        self._seen = RecentIds(int(settings["dedup_capacity"]))
        self.portfolio: dict[str, Any] | None = None  # the newest portfolio_set, as views.current_portfolio
        self._rejected: str | None = None  # record hash of a portfolio_set that failed validation
        self.history: deque[dict[str, Any]] = deque(maxlen=int(settings["history"]))
        self._version = 0  # bumped by every change of inputs (prices, portfolio)
        self._snapshot_version = -1
        self._recorded_version = -1
        self._last_record = -math.inf
        self.counts = {"batches": 0, "applied": 0, "duplicates": 0, "late": 0, "refused": 0, "snapshots": 0,
                       "recorded": 0, "symbols_evicted": 0}
        ctx.services["batch_handlers"][ticks.KIND_RISK] = self.on_batch
        ctx.control.register("risk snapshot", self._cmd_snapshot,
                             "compute a risk snapshot of this node's symbols now (risk nodes only)")

    # --- input -------------------------------------------------------------------------------

    async def on_batch(self, sender: str, batch: ticks.Batch) -> dict[str, Any]:
        try:
            events = decode_batch(batch)
        except ticks.BatchRefused as exc:
            self.counts["refused"] += 1
            self.ctx.metrics.inc("risk.batches_refused")
            log.warning("refused risk batch %s from %s: %s", batch.batch_id, sender, exc)
            raise
        applied = duplicates = late = 0
        for event in events:
            if not self._seen.add(event.event_id):
                duplicates += 1
                continue
            if self._apply(event):
                applied += 1
            else:
                late += 1
        if applied:
            self._version += 1
        for key, n in (("applied", applied), ("duplicates", duplicates), ("late", late)):
            self.counts[key] += n
            self.ctx.metrics.inc(f"risk.{key}", n)
        self.counts["batches"] += 1
        self.ctx.metrics.inc("risk.batches")
        return {"applied": applied, "duplicates": duplicates, "late": late}

    def _apply(self, event: MarketEvent) -> bool:
        series = self._series.pop(event.symbol, None)
        if series is None:
            series = BarSeries(self.bar_s, int(self.settings["max_bars"]))
        self._series[event.symbol] = series
        if len(self._series) > int(self.settings["max_symbols"]):
            self._series.popitem(last=False)
            self.counts["symbols_evicted"] += 1
        return series.add(event.event_time_us, event.price, event.event_id)

    # --- snapshots ---------------------------------------------------------------------------

    def weights(self) -> dict[str, float] | None:
        return self.portfolio["weights"] if self.portfolio else None

    def compute_snapshot(self) -> dict[str, Any]:
        horizon = int(self.settings["horizon_bars"])
        snapshot = {
            "ts_ms": int(time.time() * 1000), "node": self.ctx.identity.peer_id, "scope": SCOPE,
            "bar_s": self.bar_s, "periods_per_year": self.periods, "horizon_bars": horizon,
            "symbols": {s: series_figures(self._series[s].closes(), self.periods, horizon)
                        for s in sorted(self._series)},
            "portfolio": portfolio_figures(self.weights(), self._series, self.periods, horizon),
            "portfolio_set_by": self.portfolio and self.portfolio["set_by"],
        }
        self._snapshot_version = self._version
        self.history.append(snapshot)
        self.counts["snapshots"] += 1
        self.ctx.metrics.inc("risk.snapshots")
        return snapshot

    async def refresh_portfolio(self) -> None:
        """Adopt the newest `portfolio_set` record of the replicated ledger."""
        try:
            newest = await self.ctx.services["ledger"].ledger.query(current_portfolio)
        except LedgerError as exc:
            log.warning("portfolio not read from the ledger: %s", exc)
            return
        current = self.portfolio["record_hash"] if self.portfolio else None
        if newest is None or newest["record_hash"] in (self._rejected, current):
            return
        weights = newest.get("weights")
        try:
            newest["weights"] = rm.validate_weights(weights, frozenset(weights))
        except (TypeError, ValueError) as exc:  # InvalidWeights is a ValueError; written by other rules: skip it
            self._rejected = newest["record_hash"]  # counted and logged once
            self.ctx.metrics.inc("risk.portfolio_rejected")
            log.warning("ignoring portfolio_set %s: %s", newest["record_hash"], exc)
            return
        self.portfolio = newest
        self._version += 1
        log.info("portfolio set by %s: %s", newest["set_by"], newest["weights"])

    def _record(self, snapshot: dict[str, Any]) -> None:
        keep = sorted(snapshot["symbols"])[: int(self.settings["record_max_symbols"])]
        payload = {**snapshot, "symbols": {s: snapshot["symbols"][s] for s in keep},
                   "symbols_omitted": len(snapshot["symbols"]) - len(keep)}
        self.ctx.services["ledger"].record_soon("risk_snapshot_computed", payload, self.ctx.identity.peer_id)
        self._recorded_version = self._snapshot_version
        self._last_record = time.monotonic()
        self.counts["recorded"] += 1

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.tick()
            await trio.sleep(float(self.settings["snapshot_interval_s"]))  # periodic by design

    async def tick(self) -> None:
        """One scheduler step: adopt a new portfolio, snapshot if inputs changed, maybe record."""
        await self.refresh_portfolio()
        if self._version != self._snapshot_version and self._series:
            self.compute_snapshot()
        due = time.monotonic() - self._last_record >= float(self.settings["record_interval_s"])
        if self.history and self._snapshot_version != self._recorded_version and due:
            self._record(self.history[-1])

    async def _cmd_snapshot(self, args: dict, operator: str) -> dict:
        await self.refresh_portfolio()
        return self.compute_snapshot()

    def status(self) -> dict[str, Any]:
        return {**self.counts, "symbols": len(self._series), "bar_s": self.bar_s,
                "portfolio": self.weights(), "periods_per_year": self.periods}
