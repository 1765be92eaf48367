"""Portfolio weights, bar resampling and annualisation, checked against
direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.analytics import risk


def _paths(seed: int = 7, n: int = 300) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))) for s in ("AAA", "BBB", "CCC")}


def test_portfolio_matches_direct_loop() -> None:
    prices = _paths()
    rets = {s: risk.simple_returns(p) for s, p in prices.items()}
    w = {"AAA": 0.5, "BBB": 0.3, "CCC": 0.2}
    got = risk.portfolio_returns(w, rets)
    direct = [sum(w[s] * rets[s][t] for s in w) for t in range(len(rets["AAA"]))]
    np.testing.assert_allclose(got, direct, rtol=1e-12, atol=1e-15)
    value = risk.portfolio_prices(w, prices)
    assert value[0] == 1.0
    np.testing.assert_allclose(risk.simple_returns(value), got, rtol=1e-9, atol=1e-12)
    var = risk.historical_var(got)
    assert var == pytest.approx(-np.quantile(np.array(direct), 0.05), rel=1e-12)


def test_single_asset_portfolio_is_the_asset() -> None:
    prices = _paths()
    rets = {s: risk.simple_returns(p) for s, p in prices.items()}
    np.testing.assert_array_equal(risk.portfolio_returns({"BBB": 1.0}, rets), rets["BBB"])


@pytest.mark.parametrize(
    "weights, fragment",
    [
        ({"AAA": 0.5, "ZZZ": 0.5}, "unknown symbols: ZZZ"),
        ({"AAA": 1.2, "BBB": -0.2}, "finite and >= 0: BBB"),
        ({"AAA": float("nan"), "BBB": 1.0}, "finite and >= 0: AAA"),
        ({"AAA": 0.5, "BBB": 0.4}, "not 1"),
        ({}, "no weights"),
    ],
)
def test_invalid_weights(weights: dict[str, float], fragment: str) -> None:
    rets = {s: risk.simple_returns(p) for s, p in _paths().items()}
    with pytest.raises(risk.InvalidWeights, match=fragment) as exc:
        risk.portfolio_returns(weights, rets)
    assert exc.value.code == "invalid_weights"


def test_misaligned_series() -> None:
    rets = {"AAA": np.zeros(5), "BBB": np.zeros(6)}
    with pytest.raises(risk.MisalignedSeries) as exc:
        risk.portfolio_returns({"AAA": 0.5, "BBB": 0.5}, rets)
    assert exc.value.code == "misaligned_series"


def test_invalid_prices_and_short_input() -> None:
    with pytest.raises(risk.InvalidPrices):
        risk.simple_returns([1.0, 0.0, 2.0])
    with pytest.raises(risk.InsufficientData):
        risk.simple_returns([1.0])
    with pytest.raises(risk.RiskError):
        risk.historical_var([0.01, 0.02], 1.5)


def test_drawdown_of_rising_path_is_zero() -> None:
    dd = risk.max_drawdown([1.0, 2.0, 3.0])
    assert dd.value == 0.0


def test_bar_closes() -> None:
    t = np.array([0.0, 10.0, 59.9, 60.0, 61.0, 185.0])
    p = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    starts, closes = risk.bar_closes(t, p, 60.0)
    np.testing.assert_array_equal(starts, [0.0, 60.0, 180.0])  # bar 120 had no tick
    np.testing.assert_array_equal(closes, [3.0, 5.0, 6.0])
    with pytest.raises(risk.RiskError):
        risk.bar_closes(t[::-1], p, 60.0)


def test_annualisation_factor() -> None:
    assert risk.periods_per_year(risk.SESSION_SECONDS) == 252
    assert risk.periods_per_year(60.0) == pytest.approx(252 * 390)
    assert risk.periods_per_year(3600.0, session_seconds=86400, sessions_per_year=365) == 365 * 24
    # minute-bar volatility annualised with the minute factor, not sqrt(252)
    r = np.random.default_rng(1).normal(0, 0.001, 1000)
    assert risk.annualised_volatility(r, risk.periods_per_year(60.0)) == pytest.approx(
        np.std(r, ddof=1) * math.sqrt(252 * 390), rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=3))
def test_normalised_weights_are_accepted(raw: list[float]) -> None:
    syms = ["AAA", "BBB", "CCC"][: len(raw)]
    total = math.fsum(raw)
    w = {s: v / total for s, v in zip(syms, raw)}
    rets = {s: risk.simple_returns(p) for s, p in _paths().items()}
    got = risk.portfolio_returns(w, rets)
    assert got.shape == rets["AAA"].shape
