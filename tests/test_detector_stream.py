"""The detector is causal and a batch run equals a tick-by-tick run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.analytics.detector import DetectorConfig, MarketDetector, StreamingDetector

# small forest schedule so several refits happen within a short series
SMALL = DetectorConfig(forest_refit_every=64, forest_window=96, forest_trees=4,
                       forest_samples=32, warmup=40, calibration_span=200, long_span=100)


def _series(n: int = 400, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 10 + np.sin(np.arange(n) / 9.0) + rng.normal(0, 0.3, n)
    x[n // 2] += 6.0
    x[3 * n // 4:] += 2.0
    x[n // 4:n // 4 + 40] = 10.0  # a flatline exercises the variance floors
    return x


def _run(x: np.ndarray, cuts: list[int], config: DetectorConfig = SMALL) -> tuple[np.ndarray, np.ndarray]:
    det = StreamingDetector(config)
    parts = [det.detect(x[a:b]) for a, b in zip([0, *cuts], [*cuts, len(x)])]
    return np.concatenate([p.scores for p in parts]), np.concatenate([p.alerts for p in parts])


def test_tick_by_tick_equals_batch() -> None:
    x = _series(200)
    batch_scores, batch_alerts = _run(x, [])
    tick_scores, tick_alerts = _run(x, list(range(1, len(x))))
    np.testing.assert_array_equal(tick_scores, batch_scores)
    np.testing.assert_array_equal(tick_alerts, batch_alerts)
    assert batch_scores.max() > 0.5  # the test is not vacuous: something scored


_REFERENCE = _run(_series(), [])[0]


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(1, 399), max_size=12, unique=True))
def test_any_chunking_equals_batch(cuts: list[int]) -> None:
    np.testing.assert_array_equal(_run(_series(), sorted(cuts))[0], _REFERENCE)


def test_causal_future_rows_do_not_change_the_past() -> None:
    x = _series()
    y = x.copy()
    y[250:] = np.random.default_rng(9).normal(50, 20, len(x) - 250)
    np.testing.assert_array_equal(_run(x, [])[0][:250], _run(y, [])[0][:250])


def test_market_detector_chunking() -> None:
    rng = np.random.default_rng(5)
    n = 300
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    volumes = rng.lognormal(3, 0.4, n)
    one = MarketDetector(SMALL).score_batch(prices, volumes)
    det = MarketDetector(SMALL)
    many = [s for a in range(0, n, 7) for s in det.score_batch(prices[a:a + 7], volumes[a:a + 7])]
    assert one == many


def test_state_is_bounded() -> None:
    det = StreamingDetector(DetectorConfig(**{**SMALL.__dict__, "forest_refit_every": 400}))
    x = np.random.default_rng(1).normal(size=2000)
    det.detect(x[:800])
    sizes = _state_sizes(det)
    det.detect(x[800:])
    assert _state_sizes(det) == sizes


def _state_sizes(obj: object, seen: set[int] | None = None) -> int:
    """Total elements of arrays/lists reachable from obj (not the sklearn model)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen or type(obj).__module__.startswith("sklearn"):
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.size
    if isinstance(obj, (list, tuple)):
        return len(obj) + sum(_state_sizes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(_state_sizes(o, seen) for o in obj.values())
    slots = getattr(type(obj), "__slots__", ())
    attrs = dict(getattr(obj, "__dict__", {}))
    attrs.update({s: getattr(obj, s) for s in slots if hasattr(obj, s)})
    return sum(_state_sizes(v, seen) for v in attrs.values())


def test_empty_batch() -> None:
    det = StreamingDetector(SMALL)
    assert det.score_batch(np.array([])).shape == (0,)
    x = _series()
    np.testing.assert_array_equal(det.score_batch(x), _run(x, [])[0])


@pytest.mark.parametrize("cfg", [DetectorConfig(use_forest=False), DetectorConfig(use_statistics=False)])
def test_ablations_stream_too(cfg: DetectorConfig) -> None:
    small = DetectorConfig(**{**SMALL.__dict__, "use_forest": cfg.use_forest,
                              "use_statistics": cfg.use_statistics})
    x = _series()
    np.testing.assert_array_equal(_run(x, [100, 101, 333], small)[0], _run(x, [], small)[0])


def test_early_forest_fits_stream_too() -> None:
    early = DetectorConfig(**{**SMALL.__dict__, "forest_first_fits": (30, 50)})
    x = _series()
    batch = _run(x, [], early)
    for cuts in ([29, 30, 31, 50, 64], list(range(1, 120))):
        chunked = _run(x, cuts, early)
        np.testing.assert_array_equal(chunked[0], batch[0])
        np.testing.assert_array_equal(chunked[1], batch[1])
    assert not np.array_equal(batch[0], _run(x, [])[0])  # the early fits did change scores


def test_vector_calibrator_equals_one_per_column_in_any_chunking() -> None:
    """The detector calibrates every feature in one call (rows of k scores): it must give what k
    separate calibrators give, batch or row by row, warm-up rows included (an empty update used
    to take scipy's uninitialised filter state for 0 rows)."""
    from node.analytics.calibrate import TailCalibrator

    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(300, 3)))
    ready = np.arange(300) >= 100
    batch = TailCalibrator(2000, 100).update(x, ready)
    columns = np.column_stack([TailCalibrator(2000, 100).update(x[:, j], ready) for j in range(3)])
    one = TailCalibrator(2000, 100)
    rows = np.vstack([one.update(x[i:i + 1], ready[i:i + 1]) for i in range(300)])
    np.testing.assert_array_equal(batch, columns)
    np.testing.assert_array_equal(batch, rows)
    assert (batch[100:] < 0).any()  # it did calibrate something


@pytest.mark.parametrize("shape", [(257,), (257, 3)])
def test_ew_mean_runs_the_same_filter_as_scipy_lfilter(shape) -> None:
    """EWMean calls SciPy's C filter directly (node/analytics/ewstats.py): its rows must be
    bit-for-bit lfilter's over the whole series, whatever the chunking."""
    from scipy.signal import lfilter

    from node.analytics.ewstats import EWMean

    x = np.random.default_rng(11).normal(3.0, 2.0, size=shape)
    alpha = 2.0 / 9
    expected = lfilter([alpha], [1.0, alpha - 1.0], x, axis=0)
    expected /= -np.expm1(np.arange(1, len(x) + 1) * np.log1p(-alpha)).reshape((-1,) + (1,) * (x.ndim - 1))
    for cuts in ([], [1, 2, 3, 50, 51, 200]):
        ew = EWMean(alpha)
        got = np.concatenate([ew.update(x[a:b]) for a, b in zip([0, *cuts], [*cuts, len(x)])])
        np.testing.assert_array_equal(got, expected)
    assert EWMean(alpha).update(x[:0]).shape == x[:0].shape


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=6), st.integers(1, 17), st.booleans())
def test_lag_helpers_equal_their_reference_forms(chunks: list[int], k: int, two_d: bool) -> None:
    """`lagged` and `LagWindow` are hand-rolled for speed: they must give what the plain NumPy
    forms they replaced give (a concatenated broadcast row; a reversed sliding window), chunk by chunk."""
    from node.analytics.ewstats import lagged
    from node.analytics.features import LagWindow

    rng = np.random.default_rng(sum(chunks) * 31 + k)
    window, tail = LagWindow(k), np.zeros(k - 1)
    previous: float | np.ndarray = np.nan if not two_d else np.array([np.nan, 1.5])
    for n in chunks:
        x = rng.normal(size=(n, 2) if two_d else n)
        expected = np.concatenate((np.broadcast_to(previous, x.shape[1:])[None], x[:-1]))[:n]  # 0 rows -> 0 rows
        np.testing.assert_array_equal(lagged(x, previous), expected)
        if n:
            previous = x[-1].copy()
        col = x[:, 0] if two_d else x
        ext = np.concatenate((tail, col))
        reference = np.lib.stride_tricks.sliding_window_view(ext, k)[:, ::-1] if len(col) else np.zeros((0, k))
        tail = ext[len(ext) - (k - 1):]
        np.testing.assert_array_equal(window.update(col), reference)
