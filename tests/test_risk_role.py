"""The risk role in memory: bars, snapshot figures equal to node.analytics.risk on the same bars,
the portfolio restricted to this node's symbols, and how often snapshots reach the ledger."""

from __future__ import annotations

import numpy as np
import pytest

from node.analytics import risk as rm
from node.errors import ConfigError
from node.protocols import ticks
from node.roles.risk import RiskRole
from test_anomaly_role import batches, fake_ctx, make_events, random_walk

PERIODS_1S = rm.periods_per_year(1.0, session_seconds=86400, sessions_per_year=365)


def bars_of(events) -> np.ndarray:
    times = np.array([e.event_time_us / 1e6 for e in events])
    return rm.bar_closes(times, np.array([e.price for e in events]), 1.0)[1]


async def feed(role: RiskRole, events) -> list[dict]:
    return [await role.on_batch("ingestion", b) for b in batches("risk", events, size=250)]


async def test_snapshot_equals_direct_computation_on_the_same_bars():
    role = RiskRole(fake_ctx())
    btc = make_events("BTCUSD", *random_walk(600, seed=7), step_us=230_000)  # ~4 ticks per 1 s bar
    eth = make_events("ETHUSD", *random_walk(600, seed=8), step_us=230_000)
    acks = await feed(role, btc + eth)
    assert sum(a["applied"] for a in acks) == 1200
    role.portfolio = {"weights": {"BTCUSD": 0.6, "ETHUSD": 0.4}, "set_by": "op", "record_hash": "h"}
    snap = role.compute_snapshot()

    assert snap["periods_per_year"] == pytest.approx(PERIODS_1S) and "owned by this node" in snap["scope"]
    for symbol, events in (("BTCUSD", btc), ("ETHUSD", eth)):
        closes = bars_of(events)
        assert len(closes) == 138
        assert snap["symbols"][symbol] == pytest.approx(rm.snapshot(closes, periods=PERIODS_1S, horizon=20))
    # the original's bug: per-tick returns scaled by sqrt(252)
    assert snap["symbols"]["BTCUSD"]["ann_vol"] != pytest.approx(
        np.std(rm.simple_returns([e.price for e in btc]), ddof=1) * np.sqrt(252))

    value = rm.portfolio_prices({"BTCUSD": 0.6, "ETHUSD": 0.4}, {"BTCUSD": bars_of(btc), "ETHUSD": bars_of(eth)})
    port = snap["portfolio"]
    assert port["coverage"] == pytest.approx(1.0) and port["missing"] == [] and port["n_bars"] == 138
    expected = rm.snapshot(value, periods=PERIODS_1S, horizon=20)
    assert {k: port[k] for k in expected} == pytest.approx(expected)
    assert port["var95"] > 0 and port["es975"] >= port["var95"] and port["max_drawdown"] <= 0


async def test_portfolio_covers_only_the_symbols_held_here():
    role = RiskRole(fake_ctx())
    btc = make_events("BTCUSD", *random_walk(100, seed=9), step_us=1_000_000)
    await feed(role, btc)
    role.portfolio = {"weights": {"BTCUSD": 0.25, "SPY": 0.75}, "set_by": "op", "record_hash": "h"}
    port = role.compute_snapshot()["portfolio"]
    assert port["held"] == ["BTCUSD"] and port["missing"] == ["SPY"] and port["coverage"] == 0.25
    # renormalised to the held symbol: the portfolio is that symbol
    assert port["ann_vol"] == pytest.approx(rm.snapshot(bars_of(btc), periods=PERIODS_1S)["ann_vol"])


async def test_bars_follow_the_configured_interval_and_late_ticks_are_dropped():
    role = RiskRole(fake_ctx({"risk": {"bar_s": 60.0, "session_s": 23400, "sessions_per_year": 252}}))
    assert role.periods == pytest.approx(252 * 390)  # one-minute bars of an equity session
    events = make_events("SPY", *random_walk(300, seed=10), step_us=1_000_000)
    await feed(role, events)
    late = make_events("SPY", [100.0], [1.0], tag="late")  # event time of the very first tick
    assert await role.on_batch("ingestion", batches("risk", late)[0]) == {"applied": 0, "duplicates": 0, "late": 1}
    times = np.array([e.event_time_us / 1e6 for e in events])
    assert role._series["SPY"].closes().tolist() == rm.bar_closes(times, np.array([e.price for e in events]), 60.0)[1].tolist()


async def test_too_few_bars_say_so():
    role = RiskRole(fake_ctx())
    await feed(role, make_events("BTCUSD", [100.0, 101.0], [1.0, 1.0], step_us=1_000_000))
    figures = role.compute_snapshot()["symbols"]["BTCUSD"]
    assert figures["unavailable"] == "insufficient_data" and figures["n_prices"] == 2


async def test_ledger_grows_only_on_change_and_at_most_every_interval():
    ctx = fake_ctx({"risk": {"record_interval_s": 0.0}})
    role = RiskRole(ctx)
    records = ctx.services["ledger"].records
    await role.tick()
    assert records == []  # nothing held yet
    events = make_events("BTCUSD", *random_walk(40, seed=11), step_us=1_000_000)
    await feed(role, events[:20])
    await role.tick()
    await role.tick()
    assert [r[0] for r in records] == ["risk_snapshot_computed"] and role.status()["snapshots"] == 1
    assert records[0][1]["symbols"]["BTCUSD"]["n_prices"] == 20
    await feed(role, events[:20])  # redelivered: no change
    await role.tick()
    assert len(records) == 1
    role.settings["record_interval_s"] = 3600.0
    await feed(role, events[20:])
    await role.tick()
    assert len(records) == 1 and role.status()["snapshots"] == 2  # computed, not recorded yet


async def test_malformed_risk_batch_is_refused():
    role = RiskRole(fake_ctx())
    with pytest.raises(ticks.BatchRefused):
        await role.on_batch("rogue", ticks.Batch("risk", 1, [[1, 2, 3]], ["x"]))
    assert role.status()["refused"] == 1


async def test_portfolio_comes_from_the_newest_ledger_record_and_bad_ones_are_ignored():
    ctx = fake_ctx()
    role = RiskRole(ctx)
    newest: dict = {}

    async def query(fn, *args, **kwargs):
        return dict(newest) if newest else None

    ctx.services["ledger"].query = query
    await role.refresh_portfolio()
    assert role.weights() is None
    newest.update(weights={"BTCUSD": 0.5, "ETHUSD": 0.5}, set_by="op-a", record_hash="h1")
    await role.refresh_portfolio()
    assert role.weights() == {"BTCUSD": 0.5, "ETHUSD": 0.5} and role.status()["portfolio"] == role.weights()
    for bad in ({"BTCUSD": "lots"}, {"BTCUSD": 2.0}, None):
        newest.update(weights=bad, record_hash=f"bad-{bad}")
        await role.refresh_portfolio()
        assert role.weights() == {"BTCUSD": 0.5, "ETHUSD": 0.5}
    assert ctx.metrics.get("risk.portfolio_rejected") == 3
    await role.refresh_portfolio()  # the same bad record again: not counted twice
    assert ctx.metrics.get("risk.portfolio_rejected") == 3


@pytest.mark.parametrize("settings, what", [
    ({"bar": 1}, "unknown setting"),
    ({"bar_s": 0}, "bar_s"),
    ({"snapshot_interval_s": "fast"}, "snapshot_interval_s"),
    ({"max_bars": -1}, "max_bars"),
])
def test_bad_risk_settings_are_config_errors(settings, what):
    with pytest.raises(ConfigError, match=what):
        RiskRole(fake_ctx({"risk": settings}))
