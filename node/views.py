"""Network-wide operator views over the replicated ledger: alerts, reviews, risk, portfolio.

Alerts, reviews, risk snapshots and portfolio changes are all ledger records, and every node
holds (and verifies) every chain, so any node answers these commands from its own store. A write
(`review`, `risk portfolio set`) goes on this node's chain and is durable before the reply; the
others see it once their replicas catch up.

Pure functions over a `chain.store.Store` do the reading (run in a thread by `ledger.query`);
`register` wires them to control commands. Each read scans a bounded number of the newest
records (SCAN_LIMIT), so the cost stays bounded however long the ledger grows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chain import queries
from chain.errors import LedgerError
from node.analytics.risk import InvalidWeights, validate_weights
from node.protocols.control import CommandError, CommandRegistry

if TYPE_CHECKING:
    from chain.store import Store
    from node.identity import Identity
    from node.ledger_service import LedgerService

ALERT_CREATED = "anomaly_alert_created"
ALERT_REVIEWED = "anomaly_alert_reviewed"
RISK_SNAPSHOT = "risk_snapshot_computed"
PORTFOLIO_SET = "portfolio_set"
PENDING_REVIEW = "pending_review"
DECISIONS = ("confirmed", "false_positive", "dismissed")
STATUSES = (PENDING_REVIEW, *DECISIONS)
SCAN_LIMIT = 5000  # newest records of one type a view reads
MAX_LIMIT = 1000
MAX_NOTES = 1000
MAX_PORTFOLIO_SYMBOLS = 256
MAX_SYMBOL_CHARS = 64


# --- pure reads over a store ------------------------------------------------------------------

def _records(store: Store, record_type: str, limit: int = SCAN_LIMIT) -> list[dict]:
    """Records of one type with payloads, newest first (by timestamp, then author/height/index)."""
    rows = queries.find(store, record_type=record_type, limit=limit)["records"]
    return sorted(rows, key=lambda r: (r["timestamp_ms"], r["author"], r["height"], r["index"]), reverse=True)


def _review_history(store: Store) -> dict[str, list[dict]]:
    history: dict[str, list[dict]] = {}
    for rec in reversed(_records(store, ALERT_REVIEWED)):  # oldest first
        p = rec["payload"]
        history.setdefault(str(p.get("alert_id")), []).append({
            "decision": p.get("decision"), "operator": p.get("operator"), "notes": p.get("notes", ""),
            "recorded_by": rec["author"], "timestamp_ms": rec["timestamp_ms"], "record_hash": rec["record_hash"]})
    return history


def alerts_view(store: Store, *, status: str | None = None, symbol: str | None = None,
                limit: int = 50, alert_id: str | None = None) -> list[dict]:
    """Alerts of every chain, newest first, each with its current status and full review history.

    An alert recorded twice (the same event scored by two nodes around an ownership change)
    is listed once, as first recorded.
    """
    reviews = _review_history(store)
    first: dict[str, dict] = {}
    for rec in reversed(_records(store, ALERT_CREATED)):
        aid = rec["payload"].get("alert_id")
        if isinstance(aid, str) and aid not in first:
            first[aid] = rec
    out = []
    for aid, rec in sorted(first.items(), key=lambda kv: kv[1]["timestamp_ms"], reverse=True):
        if alert_id is not None and aid != alert_id:
            continue
        history = reviews.get(aid, [])
        alert = {**rec["payload"], "recorded_by": rec["author"], "record_hash": rec["record_hash"],
                 "recorded_ms": rec["timestamp_ms"],
                 "status": history[-1]["decision"] if history else rec["payload"].get("status", PENDING_REVIEW),
                 "reviews": history}
        if (status is None or alert["status"] == status) and (symbol is None or alert.get("symbol") == symbol):
            out.append(alert)
            if len(out) >= limit:
                break
    return out


def current_portfolio(store: Store) -> dict | None:
    """The newest `portfolio_set` record of any chain, or None."""
    found = _records(store, PORTFOLIO_SET, limit=1)
    if not found:
        return None
    rec = found[0]
    return {"weights": rec["payload"].get("weights"), "set_by": rec["payload"].get("operator", rec["actor"]),
            "recorded_by": rec["author"], "timestamp_ms": rec["timestamp_ms"], "record_hash": rec["record_hash"]}


def risk_latest(store: Store) -> dict | None:
    """Newest figures per symbol (any risk node) and each risk node's newest portfolio snapshot."""
    snapshots = _records(store, RISK_SNAPSHOT, limit=1000)
    if not snapshots:
        return None
    symbols: dict[str, dict] = {}
    portfolios: dict[str, dict] = {}
    for rec in snapshots:  # newest first
        p = rec["payload"]
        for sym, figures in (p.get("symbols") or {}).items():
            symbols.setdefault(sym, {**figures, "computed_by": rec["author"], "timestamp_ms": rec["timestamp_ms"]})
        if rec["author"] not in portfolios:
            portfolios[rec["author"]] = {"portfolio": p.get("portfolio"), "scope": p.get("scope"),
                                         "timestamp_ms": rec["timestamp_ms"]}
    return {"symbols": dict(sorted(symbols.items())), "portfolios": portfolios}


def risk_history(store: Store, *, symbol: str | None = None, limit: int = 50) -> list[dict]:
    out = []
    for rec in _records(store, RISK_SNAPSHOT, limit=SCAN_LIMIT if symbol else limit):
        p = rec["payload"]
        if symbol is None:
            out.append({**p, "computed_by": rec["author"], "timestamp_ms": rec["timestamp_ms"]})
        elif symbol in (p.get("symbols") or {}):
            out.append({**p["symbols"][symbol], "symbol": symbol, "computed_by": rec["author"],
                        "timestamp_ms": rec["timestamp_ms"]})
        if len(out) >= limit:
            break
    return out


def check_weights(weights: Any) -> dict[str, float]:
    """Operator-supplied weights, validated by the analytics module (raises CommandError)."""
    if not isinstance(weights, Mapping) or not weights:
        raise CommandError('usage: risk portfolio set {"weights": {"BTCUSD": 0.5, "ETHUSD": 0.5}}')
    if len(weights) > MAX_PORTFOLIO_SYMBOLS:
        raise CommandError(f"at most {MAX_PORTFOLIO_SYMBOLS} symbols", code="invalid_weights")
    for sym, value in weights.items():
        if not isinstance(sym, str) or not sym or len(sym) > MAX_SYMBOL_CHARS:
            raise CommandError(f"symbol {sym!r} must be a string of 1..{MAX_SYMBOL_CHARS} chars",
                               code="invalid_weights")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CommandError(f"weight of {sym} must be a number, got {value!r}", code="invalid_weights")
    try:
        return validate_weights(weights, frozenset(weights))
    except InvalidWeights as exc:
        raise CommandError(str(exc), code=exc.code) from None


# --- control commands -------------------------------------------------------------------------

def _opt_str(args: dict, name: str) -> str | None:
    value = args.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise CommandError(f"{name} must be a non-empty string")
    return value


def _limit(args: dict, default: int = 50) -> int:
    value = args.get("limit", default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise CommandError(f"limit must be an integer in 1..{MAX_LIMIT}")
    return value


class _Views:
    def __init__(self, ledger_service: LedgerService | None, identity: Identity) -> None:
        self._service = ledger_service
        self._me = identity.peer_id

    def _ledger(self) -> LedgerService:
        if self._service is None:
            raise CommandError("this node runs no ledger, so it holds no alerts, reviews or risk records",
                               code="unavailable")
        return self._service

    async def _query(self, fn, *args, **kwargs) -> Any:
        try:
            return await self._ledger().ledger.query(fn, *args, **kwargs)
        except LedgerError as exc:
            raise CommandError(str(exc), code=exc.code) from None

    async def _record(self, record_type: str, payload: dict) -> None:
        try:
            await self._ledger().record(record_type, payload, self._me)
        except LedgerError as exc:
            raise CommandError(f"not recorded: {exc}", code=exc.code) from None

    async def alerts(self, args: dict, operator: str) -> dict:
        status = _opt_str(args, "status")
        if status is not None and status not in STATUSES:
            raise CommandError(f"status must be one of {', '.join(STATUSES)}")
        alerts = await self._query(alerts_view, status=status, symbol=_opt_str(args, "symbol"), limit=_limit(args))
        return {"alerts": alerts, "count": len(alerts)}

    async def review(self, args: dict, operator: str) -> dict:
        usage = f"usage: review {{alert_id, status: {'|'.join(DECISIONS)}, notes?}}"
        alert_id, decision, notes = args.get("alert_id"), args.get("status"), args.get("notes", "")
        if not isinstance(alert_id, str) or not alert_id or decision not in DECISIONS:
            raise CommandError(usage)
        if not isinstance(notes, str) or len(notes) > MAX_NOTES:
            raise CommandError(f"notes must be a string of at most {MAX_NOTES} chars; {usage}")
        if not await self._query(alerts_view, alert_id=alert_id, limit=1):
            raise CommandError(f"no alert {alert_id!r} in this node's ledger", code="not_found")
        await self._record(ALERT_REVIEWED, {"alert_id": alert_id, "decision": decision, "operator": operator,
                                            "notes": notes})
        return {"alert": (await self._query(alerts_view, alert_id=alert_id, limit=1))[0]}

    async def risk_latest(self, args: dict, operator: str) -> dict:
        latest = await self._query(risk_latest)
        if latest is None:
            raise CommandError("no risk snapshot recorded yet: is a risk node running and receiving prices?",
                               code="unavailable")
        return latest

    async def risk_history(self, args: dict, operator: str) -> dict:
        snapshots = await self._query(risk_history, symbol=_opt_str(args, "symbol"), limit=_limit(args))
        return {"snapshots": snapshots, "count": len(snapshots)}

    async def risk_portfolio(self, args: dict, operator: str) -> dict:
        portfolio = await self._query(current_portfolio)
        if portfolio is None:
            raise CommandError('no portfolio set yet: risk portfolio set {"weights": {...}}', code="unavailable")
        return portfolio

    async def risk_portfolio_set(self, args: dict, operator: str) -> dict:
        weights = check_weights(args.get("weights"))
        await self._record(PORTFOLIO_SET, {"weights": weights, "operator": operator})
        return {"weights": weights, "set_by": operator, "recorded_by": self._me}


def register(control: CommandRegistry, ledger_service: LedgerService | None, identity: Identity) -> None:
    """Add the network-wide views to a node's control commands (every node serves them)."""
    views = _Views(ledger_service, identity)
    control.register("alerts", views.alerts, "anomaly alerts of the whole network with review status "
                     "(args: status, symbol, limit)")
    control.register("review", views.review, f"review an alert (args: alert_id, status: {'|'.join(DECISIONS)}, notes)")
    control.register("risk latest", views.risk_latest, "newest risk figures per symbol and per risk node's portfolio")
    control.register("risk history", views.risk_history, "recorded risk snapshots, newest first (args: symbol, limit)")
    control.register("risk portfolio", views.risk_portfolio, "the current portfolio weights and who set them")
    control.register("risk portfolio set", views.risk_portfolio_set,
                     "replace the portfolio network-wide (args: weights {symbol: weight}, summing to 1)")
