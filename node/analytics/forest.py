"""IsolationForest refitted on a fixed row schedule, scored in batches.

Why a schedule: refitting per tick manages ~44 rows/s; scoring 1,000 rows per
call manages tens of thousands.  Refit points depend only on the global row
index (the optional ``first_fits`` rows, then every ``refit_every`` rows, on
the trailing ``window`` feature rows), and
each refit is seeded by its index, so a tick-by-tick run builds exactly the
same forests as a batch run and the scores are identical.  Memory is one
fixed-size ring of feature rows.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length


def path_length_denominator(model: IsolationForest) -> float:
    """The normaliser of `score_samples`: trees x average path length at max_samples. Worth
    computing once per fit: sklearn's `_average_path_length` validates its input (~120 µs a call)."""
    return float(len(model.estimators_) * _average_path_length([model._max_samples])[0])


def score_samples(model: IsolationForest, rows: np.ndarray, denominator: float | None = None) -> np.ndarray:
    """Exactly `model.score_samples(rows)`, without its per-call overhead.

    scikit-learn scores through joblib, one task per tree: ~1.5 ms per call whatever the row
    count, paid per symbol per batch by the anomaly role (bench/micro.py). This walks the same
    trees with `tree_.apply` and the same path-length tables (the formula of sklearn's
    `_compute_score_samples`): ~100 µs for 50 rows given `denominator` (path_length_denominator).
    tests/test_detector_behaviour.py checks it equals sklearn's own scores, so an upgrade that
    changes the internals fails loudly."""
    x = np.ascontiguousarray(rows, dtype=np.float32)
    subsample = model._max_features != x.shape[1]
    depths = np.zeros(len(x))
    for tree, features, path_lengths, average_lengths in zip(
            model.estimators_, model.estimators_features_, model._decision_path_lengths,
            model._average_path_length_per_tree):
        leaves = tree.tree_.apply(x[:, features] if subsample else x)
        depths += path_lengths[leaves] + average_lengths[leaves] - 1.0
    if denominator is None:
        denominator = path_length_denominator(model)
    return -np.power(2.0, -np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0))


class ScheduledForest:
    """Anomaly path-length score of each row from the last scheduled forest."""

    def __init__(self, n_features: int, *, refit_every: int, window: int,
                 n_estimators: int, max_samples: int, seed: int, first_fits: tuple[int, ...] = ()) -> None:
        if refit_every < 1 or window < 2:
            raise ValueError("refit_every must be >= 1 and window >= 2")
        if any(f < 2 for f in first_fits):
            raise ValueError("first_fits must be row counts >= 2")
        self._every = refit_every
        # extra early fits: without them a stream has no forest for its first refit_every rows
        self._first = tuple(sorted(f for f in set(first_fits) if f < refit_every))
        self._params = dict(n_estimators=n_estimators, max_samples=min(max_samples, window))
        self._seed = seed
        self._ring = np.zeros((window, n_features))
        self._n = 0  # rows seen
        self._model: IsolationForest | None = None
        self._denominator = 0.0

    def _fit(self) -> None:
        w = len(self._ring)
        idx = np.arange(self._n - min(self._n, w), self._n) % w  # oldest first
        params = {**self._params, "max_samples": min(self._params["max_samples"], len(idx))}  # early fits
        self._model = IsolationForest(random_state=self._seed + self._n // self._every,
                                      **params).fit(self._ring[idx])
        self._denominator = path_length_denominator(self._model)

    def update(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw score, valid) per row: raw = -score_samples, higher = stranger."""
        n_rows = len(feats)
        raw = np.zeros(n_rows)
        valid = np.zeros(n_rows, dtype=bool)
        start = 0
        while start < n_rows:
            t = self._n  # global index of feats[start]
            if t in self._first or (t % self._every == 0 and t >= self._every):
                self._fit()
            boundary = min([f for f in self._first if f > t] + [t - t % self._every + self._every])
            stop = min(n_rows, start + boundary - t)
            if self._model is not None:
                raw[start:stop] = -score_samples(self._model, feats[start:stop], self._denominator)
                valid[start:stop] = True
            w = len(self._ring)
            keep = max(start, stop - w)  # rows older than the ring never matter
            self._ring[np.arange(t + keep - start, t + stop - start) % w] = feats[keep:stop]
            self._n += stop - start
            start = stop
        return raw, valid
