"""What the detector flags, how it suppresses repeats, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from node.analytics import calibrate
from node.analytics.detector import (
    DEFAULT_THRESHOLD, AlertGate, DetectorConfig, DetectorError, InvalidInput,
    MarketDetector, StreamingDetector, severity,
)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return 50 + np.random.default_rng(seed).normal(0, 1, n)


def test_spike_is_an_alert_and_quiet_noise_is_not() -> None:
    x = _noise(3000)
    x[2500] += 15
    d = StreamingDetector().detect(x)
    assert d.alerts[2500]
    assert d.scores[2500] >= DEFAULT_THRESHOLD
    assert d.alerts[:2500].sum() <= 2  # white noise: (almost) never


def test_level_shift_alerts_once() -> None:
    x = _noise(3000)
    x[2000:] += 8
    d = StreamingDetector().detect(x)
    hits = np.flatnonzero(d.alerts[1900:])
    assert len(hits) == 1 and hits[0] + 1900 - 2000 < 5  # early, and one event = one alert
    assert d.alert_scores[d.scores >= DEFAULT_THRESHOLD].astype(bool).sum() == 1


def test_flatline_is_flagged() -> None:
    x = _noise(3000)
    x[2000:] = x[1999]
    d = StreamingDetector().detect(x)
    assert d.alerts[2000:2100].any()


def test_alert_gate_suppresses_one_ongoing_event() -> None:
    gate = AlertGate(0.5, quiet_rows=3)
    s = np.array([0.9, 0.9, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1, 0.9])
    np.testing.assert_array_equal(gate.update(s), [1, 0, 0, 0, 0, 0, 0, 0, 1])


def test_alert_gate_mutes_a_recurring_event_only() -> None:
    gate = AlertGate(0.5, quiet_rows=1, recurrence_eps=0.5, memory=4, width=2)
    s = np.array([0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9])
    sig = np.array([[1.0, 2.0], [0, 0], [0, 0], [1.2, 2.1], [0, 0], [0, 0], [3.0, 2.0]])
    np.testing.assert_array_equal(gate.update(s, sig), [1, 0, 0, 0, 0, 0, 1])


def test_a_daily_cycle_raises_fewer_alerts_with_the_recurrence_check() -> None:
    day = np.r_[np.zeros(200), np.full(88, 10.0)]  # noise-free square wave, 288 rows a day
    x = np.tile(day, 14) + 20
    cfg = DetectorConfig(use_forest=False)
    muted = StreamingDetector(cfg).detect(x).alerts.sum()
    plain = StreamingDetector(DetectorConfig(use_forest=False, recurrence_eps=0.0)).detect(x).alerts.sum()
    assert muted < plain


def test_severity_buckets() -> None:
    assert severity(0.1, 0.7) == "low"
    assert severity(0.7, 0.7) == "medium"
    assert severity(0.85, 0.7) == "high"
    assert severity(1.0, 0.7) == "critical"


def test_calibration_and_fisher() -> None:
    logp = np.log(np.array([[0.01, 0.01], [1.0, 1.0], [1e-6, 1.0]]))
    got = np.exp(calibrate.fisher(logp))
    # closed form for k = 2: p1 p2 (1 - ln(p1 p2))
    expect = [1e-4 * (1 - np.log(1e-4)), 1.0, 1e-6 * (1 - np.log(1e-6))]
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    assert np.exp(calibrate.bonferroni(logp[2:])) == pytest.approx(2e-6)


def test_market_reason_names_what_deviated() -> None:
    rng = np.random.default_rng(2)
    n = 3000
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    volumes = rng.lognormal(3, 0.3, n)
    prices[2200:] *= 1.03  # a 3 % gap: a ~30 sigma return
    volumes[2600] *= 30
    scores = MarketDetector().score_batch(prices, volumes)
    assert scores[2200].alert and "price return +" in scores[2200].reason
    assert scores[2600].alert and "volume" in scores[2600].reason
    assert scores[2600].severity in ("high", "critical")
    assert all(0.0 <= s.score <= 1.0 for s in scores)


@pytest.mark.parametrize(
    "call",
    [
        lambda: StreamingDetector().detect(np.array([1.0, np.nan])),
        lambda: StreamingDetector().detect(np.ones((2, 2))),
        lambda: MarketDetector().detect(np.array([1.0, -1.0]), np.array([1.0, 1.0])),
        lambda: MarketDetector().detect(np.array([1.0]), np.array([1.0, 1.0])),
    ],
)
def test_invalid_input(call) -> None:
    with pytest.raises(InvalidInput) as exc:
        call()
    assert exc.value.code == "invalid_input"


def test_invalid_config() -> None:
    with pytest.raises(DetectorError):
        DetectorConfig(use_statistics=False, use_forest=False)
    with pytest.raises(DetectorError):
        DetectorConfig(threshold=0.0)


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_direct_forest_scores_equal_scikit_learns(max_features) -> None:
    from sklearn.ensemble import IsolationForest

    from node.analytics.forest import path_length_denominator, score_samples

    rng = np.random.default_rng(3)
    model = IsolationForest(n_estimators=16, max_samples=128, max_features=max_features,
                            random_state=4).fit(rng.normal(size=(500, 6)))
    for rows in (rng.normal(size=(1, 6)), rng.normal(size=(50, 6)), rng.normal(scale=5, size=(300, 6))):
        expected = model.score_samples(rows)
        np.testing.assert_allclose(score_samples(model, rows), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(score_samples(model, rows, path_length_denominator(model)), expected,
                                   rtol=0, atol=1e-12)
