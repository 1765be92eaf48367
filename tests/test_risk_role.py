"""The risk role in memory: bars, snapshot figures equal to node.analytics.risk on the same bars,
the portfolio restricted to this node's symbols, and how often snapshots reach the ledger."""

from __future__ import annotations

import numpy as np
import pytest

from node.analytics import risk as rm
from node.errors import ConfigError
from node.protocols import ticks
from node.roles.risk import BarSeries, RiskRole
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


async def test_bars_follow_the_configured_interval_and_only_ticks_older_than_every_kept_bar_are_late():
    role = RiskRole(fake_ctx({"risk": {"bar_s": 60.0, "session_s": 23400, "sessions_per_year": 252, "max_bars": 3}}))
    assert role.periods == pytest.approx(252 * 390)  # one-minute bars of an equity session
    events = make_events("SPY", *random_walk(300, seed=10), step_us=1_000_000)
    await feed(role, events)
    times = np.array([e.event_time_us / 1e6 for e in events])
    expected = rm.bar_closes(times, np.array([e.price for e in events]), 60.0)[1][-3:].tolist()
    assert role._series["SPY"].closes().tolist() == expected
    late = make_events("SPY", [100.0], [1.0], tag="late")  # event time of the very first tick: bar 0 is gone
    assert await role.on_batch("ingestion", batches("risk", late)[0]) == {"applied": 0, "duplicates": 0, "late": 1}
    assert role._series["SPY"].closes().tolist() == expected


async def test_any_arrival_order_builds_the_same_bars():
    """Two iot bridges sharing the subscription interleave a symbol's ticks: a tick may arrive
    after a newer bar opened. It still counts (applied, not late), and the bars equal in-order ones."""
    events = make_events("BTCUSD", *random_walk(2000, seed=12), step_us=7_000)  # ~140 ticks per 1 s bar
    in_order = RiskRole(fake_ctx())
    await feed(in_order, sorted(events, key=lambda e: (e.event_time_us, e.event_id)))
    rng = np.random.default_rng(13)
    # two bridges' 100 ms batches: each tick ends up in one of them, the batches arrive interleaved
    sides = rng.integers(0, 2, len(events))
    halves = [[e for e, side in zip(events, sides) if side == b] for b in (0, 1)]
    interleaved = [e for pair in zip(halves[0][::-1], halves[1]) for e in pair]  # one half newest first
    interleaved += halves[0][::-1][len(halves[1]):] + halves[1][len(halves[0]):]
    shuffled = RiskRole(fake_ctx())
    acks = await feed(shuffled, interleaved)
    assert sum(a["applied"] for a in acks) == len(events) and sum(a["late"] for a in acks) == 0
    assert shuffled._series["BTCUSD"].bars == in_order._series["BTCUSD"].bars
    assert len(in_order._series["BTCUSD"].bars) == 14
    assert interleaved != events  # the test is not vacuous: the arrival order differs


def test_a_tie_on_event_time_closes_the_bar_with_the_larger_event_id_in_either_order():
    for ticks_in in ([(5_000_000, 101.0, "b"), (5_000_000, 99.0, "a")], [(5_000_000, 99.0, "a"), (5_000_000, 101.0, "b")]):
        series = BarSeries(1.0, 10)
        assert all(series.add(t, p, i) for t, p, i in ticks_in)
        assert series.bars == [(5, 101.0)]
    series = BarSeries(1.0, 10)  # without ids, as in order: the later arrival
    series.add(5_000_000, 101.0)
    series.add(5_000_000, 99.0)
    assert series.bars == [(5, 99.0)]
    series.add(3_000_000, 98.0)  # an older bar still free to fill: inserted in place
    series.add(4_000_000, 97.0)
    assert series.bars == [(3, 98.0), (4, 97.0), (5, 99.0)]


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
