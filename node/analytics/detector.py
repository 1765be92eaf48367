"""Streaming anomaly detector: calibrated statistics + scheduled IsolationForest.

Design (issue 6).  Each input stream goes through a :class:`FeatureBank`
(multi-scale, scale-free deviations of row t from rows < t).  Two detectors
read those features:

* the *statistical* part judges every feature against its own recent history
  (:class:`TailCalibrator`) and takes the most surprising one (Bonferroni);
* the *IsolationForest* part looks at the joint feature vector, refitted on a
  fixed row schedule, its path-length score calibrated the same way.

The two tail probabilities are combined with Fisher's method and mapped to a
score in [0, 1] (``-log10 p / decades``).  :class:`AlertGate` then raises one
alert per ongoing event: after an alert, rows above the threshold extend the
event and stay silent until ``quiet_rows`` rows pass without one.

Causal and streaming: the score of row t uses rows <= t only, and every piece
of state is advanced by the global row index, so scoring a series in one batch
or tick by tick gives the same scores (tests/test_detector_stream.py).  All
state is fixed-size (EW statistics, one ring of feature rows, one forest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .calibrate import TailCalibrator, bonferroni, fisher, to_score
from .features import FeatureBank
from .forest import ScheduledForest

#: The one alert threshold: used by the anomaly role and by bench/nab.py.
#: Chosen once on the NAB corpus (standard profile), never per file.
DEFAULT_THRESHOLD = 0.6

Severity = Literal["low", "medium", "high", "critical"]


class DetectorError(ValueError):
    """Root of detector errors; ``code`` is stable for logs."""

    code = "detector_error"


class InvalidInput(DetectorError):
    """Input arrays of the wrong shape, or prices/volumes out of domain."""

    code = "invalid_input"


@dataclass(frozen=True)
class DetectorConfig:
    """Detector parameters; the defaults are the benchmarked ones."""

    scales: tuple[int, ...] = (1, 8, 48)
    long_span: int = 1000
    noise_span: int = 24
    calibration_span: int = 2000
    warmup: int = 100
    use_statistics: bool = True
    use_forest: bool = True
    forest_refit_every: int = 1000
    forest_window: int = 2000
    forest_trees: int = 16
    forest_samples: int = 128
    seed: int = 0
    decades: float = 20.0
    threshold: float = DEFAULT_THRESHOLD
    quiet_rows: int = 150

    def __post_init__(self) -> None:
        if not (self.use_statistics or self.use_forest):
            raise DetectorError("enable at least one of statistics and forest")
        if not 0.0 < self.threshold <= 1.0:
            raise DetectorError(f"threshold must be in (0, 1], got {self.threshold}")
        if not self.scales or min(self.scales) < 1:
            raise DetectorError("scales must be positive row counts")


def severity(score: float, threshold: float = DEFAULT_THRESHOLD) -> Severity:
    """Bucket a score: below the threshold is "low"; the rest split in thirds."""
    if score < threshold:
        return "low"
    step = (1.0 - threshold) / 3.0
    if score < threshold + step:
        return "medium"
    if score < threshold + 2 * step:
        return "high"
    return "critical"


class AlertGate:
    """One alert per ongoing event (hysteresis in rows, not wall time)."""

    def __init__(self, threshold: float, quiet_rows: int) -> None:
        self.threshold = threshold
        self.quiet_rows = quiet_rows
        self._n = 0
        self._last_hot: int | None = None

    def update(self, scores: np.ndarray) -> np.ndarray:
        """Alert flags: the first above-threshold row after a quiet spell."""
        alerts = np.zeros(len(scores), dtype=bool)
        for i in np.flatnonzero(scores >= self.threshold):
            t = self._n + int(i)
            if self._last_hot is None or t - self._last_hot > self.quiet_rows:
                alerts[i] = True
            self._last_hot = t
        self._n += len(scores)
        return alerts


@dataclass(frozen=True)
class Detections:
    """Per-row output of one batch."""

    scores: np.ndarray  # combined score in [0, 1]
    alerts: np.ndarray  # bool, after event suppression
    statistic: np.ndarray  # score of the statistical part alone
    forest: np.ndarray  # score of the IsolationForest part alone
    threshold: float
    features: np.ndarray = field(repr=False)  # signed deviations, (rows, k)
    feature_logp: np.ndarray = field(repr=False)  # their calibrated log tail p

    @property
    def alert_scores(self) -> np.ndarray:
        """Scores with suppressed rows (above threshold, no alert) set to 0.

        This is the alert stream a consumer sees, and what bench/nab.py scores.
        """
        return np.where(self.alerts | (self.scores < self.threshold), self.scores, 0.0)


class _Engine:
    """Shared core for any number of aligned input channels."""

    def __init__(self, config: DetectorConfig, n_channels: int) -> None:
        c = config
        self.config = c
        self.banks = [FeatureBank(c.scales, c.long_span, c.noise_span) for _ in range(n_channels)]
        self.names = [n for b in self.banks for n in b.names]
        self._feature_cal = [TailCalibrator(c.calibration_span, c.warmup) for _ in self.names]
        self._forest = ScheduledForest(
            len(self.names), refit_every=c.forest_refit_every, window=c.forest_window,
            n_estimators=c.forest_trees, max_samples=c.forest_samples, seed=c.seed,
        ) if c.use_forest else None
        self._forest_cal = TailCalibrator(c.calibration_span, c.warmup)
        self._gate = AlertGate(c.threshold, c.quiet_rows)
        self._n = 0

    def detect(self, columns: list[np.ndarray]) -> Detections:
        c = self.config
        n = len(columns[0])
        feats = np.hstack([b.update(col) for b, col in zip(self.banks, columns)]) if n else \
            np.zeros((0, len(self.names)))
        # features of the first rows rest on too little history to judge by
        ready = (self._n + np.arange(n)) >= c.warmup
        logp_feat = np.column_stack([cal.update(np.abs(feats[:, j]), ready)
                                     for j, cal in enumerate(self._feature_cal)]) if n else feats
        stat = bonferroni(logp_feat) if n else np.zeros(0)
        forest = np.zeros(n)
        if self._forest is not None and n:
            raw, valid = self._forest.update(feats)
            forest = self._forest_cal.update(raw, valid & ready)
        parts = [p for p, on in ((stat, c.use_statistics), (forest, c.use_forest)) if on]
        combined = parts[0] if len(parts) == 1 else fisher(np.stack(parts, axis=-1))
        scores = to_score(combined, c.decades)
        alerts = self._gate.update(scores)
        self._n += n
        return Detections(scores, alerts, to_score(stat, c.decades), to_score(forest, c.decades),
                          c.threshold, feats, logp_feat)


def _column(values: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise InvalidInput(f"{name} must be a 1-d array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InvalidInput(f"{name} must be finite")
    return x


class StreamingDetector:
    """Univariate detector (what NAB measures): one instance per stream."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._engine = _Engine(self.config, 1)

    def detect(self, values: np.ndarray) -> Detections:
        """Score the next rows of the stream and decide alerts."""
        return self._engine.detect([_column(values, "values")])

    def score_batch(self, values: np.ndarray) -> np.ndarray:
        """Combined scores in [0, 1] of the next rows of the stream."""
        return self.detect(values).scores

    def is_alert(self, score: float) -> bool:
        """Above the alert threshold (event suppression lives in ``detect``)."""
        return score >= self.config.threshold
