"""Risk math against shared/risk/golden.json (values cross-checked with
empyrical-reloaded and quantstats), to 1e-9 relative."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from node.analytics import risk

SHARED = Path(__file__).resolve().parents[2] / "shared" / "risk"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"golden data not found at {SHARED}")
REL = 1e-9
CSV = {"sp500_full": "sp500_adj_close.csv", "toy_22": "toy_prices.csv"}


def _load(tag: str) -> tuple[list[str], np.ndarray]:
    with open(SHARED / CSV[tag]) as f:
        rows = list(csv.DictReader(f))
    return [r["date"] for r in rows], np.array([float(r["adj_close"]) for r in rows])


def _cases() -> list[dict]:
    if not SHARED.is_dir():
        return []
    return json.loads((SHARED / "golden.json").read_text())["cases"]


@pytest.fixture(params=_cases(), ids=lambda c: c["tag"])
def case(request: pytest.FixtureRequest) -> tuple[dict, list[str], np.ndarray]:
    dates, prices = _load(request.param["tag"])
    assert len(prices) == request.param["n_prices"]
    return request.param, dates, prices


def test_volatility(case: tuple[dict, list[str], np.ndarray]) -> None:
    g, _, p = case
    r = risk.simple_returns(p)
    assert len(r) == g["n_returns"]
    assert risk.annualised_volatility(r) == pytest.approx(g["ann_vol_simple_ddof1"], rel=REL)
    assert risk.annualised_volatility(r, ddof=0) == pytest.approx(g["ann_vol_simple_ddof0"], rel=REL)
    assert risk.annualised_volatility(risk.log_returns(p)) == pytest.approx(g["ann_vol_log_ddof1"], rel=REL)
    assert risk.annualised_volatility(r, risk.periods_per_year(risk.SESSION_SECONDS)) == pytest.approx(
        g["ann_vol_simple_ddof1"], rel=REL)


@pytest.mark.parametrize("method", ["linear", "lower", "higher", "nearest", "midpoint", "hazen", "weibull"])
def test_var95_methods(case: tuple[dict, list[str], np.ndarray], method: str) -> None:
    g, _, p = case
    got = risk.historical_var(risk.simple_returns(p), 0.95, method=method)
    assert got == pytest.approx(g[f"var95_1d_hist_simple_{method}"], rel=REL)


def test_var_es(case: tuple[dict, list[str], np.ndarray]) -> None:
    g, _, p = case
    r, lr = risk.simple_returns(p), risk.log_returns(p)
    assert risk.historical_var(r) == pytest.approx(g["var95_1d_hist_simple_linear"], rel=REL)
    assert risk.historical_var(lr) == pytest.approx(g["var95_1d_hist_log_linear"], rel=REL)
    assert risk.historical_var(r, 0.99) == pytest.approx(g["var99_1d_hist_simple_linear"], rel=REL)
    assert risk.expected_shortfall(r) == pytest.approx(g["es975_1d_hist_simple_linear"], rel=REL)
    assert risk.expected_shortfall(r, 0.95) == pytest.approx(g["es95_1d_hist_simple_linear"], rel=REL)
    assert risk.expected_shortfall(lr) == pytest.approx(g["es975_1d_hist_log_linear"], rel=REL)
    # empyrical reports the same numbers in return space (negative)
    assert -risk.historical_var(r) == pytest.approx(g["xchk_empyrical_value_at_risk_0.05"], rel=REL)
    assert -risk.expected_shortfall(r) == pytest.approx(g["xchk_empyrical_cvar_0.025"], rel=REL)


def test_max_drawdown(case: tuple[dict, list[str], np.ndarray]) -> None:
    g, dates, p = case
    dd = risk.max_drawdown(p)
    assert dd.value == pytest.approx(g["max_drawdown"], rel=REL)
    assert dates[dd.peak_index] == g["max_drawdown_peak_date"]
    assert dates[dd.trough_index] == g["max_drawdown_trough_date"]


def test_period_returns(case: tuple[dict, list[str], np.ndarray]) -> None:
    g, dates, p = case
    assert risk.period_return(p, 1) == pytest.approx(g["ret_1d_last"], rel=REL)
    assert risk.period_return(p, 20) == pytest.approx(g["ret_20d_last"], rel=REL)
    assert risk.period_return(p, 20, log=True) == pytest.approx(g["logret_20d_last"], rel=REL)
    assert risk.period_return(p, len(p) - 1) == pytest.approx(g["total_return"], rel=REL)
    r20 = risk.rolling_returns(p, 20)
    assert float(np.mean(r20)) == pytest.approx(g["ret_20d_mean"], rel=REL)
    assert float(r20.min()) == pytest.approx(g["ret_20d_min"], rel=REL)
    assert float(r20.max()) == pytest.approx(g["ret_20d_max"], rel=REL)
    assert dates[20 + int(np.argmin(r20))] == g["ret_20d_min_date"]


def test_snapshot_is_json(case: tuple[dict, list[str], np.ndarray]) -> None:
    g, _, p = case
    snap = json.loads(json.dumps(risk.snapshot(p)))
    assert snap["var95"] == pytest.approx(g["var95_1d_hist_simple_linear"], rel=REL)
    assert snap["max_drawdown"] == pytest.approx(g["max_drawdown"], rel=REL)
    assert snap["return_20"] == pytest.approx(g["ret_20d_last"], rel=REL)
