"""Turn raw anomaly scores into tail probabilities and combine them.

Why: a raw score (a z-value, an IsolationForest path length) means different
things on different streams and drifts over time.  Judging each raw score
against *its own* recent history — "how unusual is this value of this score
here" — gives a probability on one scale, so heterogeneous detectors can be
combined and one alert threshold can serve every stream.  All functions work
on natural-log tail probabilities (``log p <= 0``) so tiny p do not underflow.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr

from .ewstats import EWMoments, nan_to_zero

LN10 = math.log(10.0)
#: Smallest std credited to a raw score's history, relative to its mean.
REL_STD_FLOOR = 0.05


class TailCalibrator:
    """Gaussian upper-tail probability of a raw score against its EW history."""

    def __init__(self, span: int, min_history: int) -> None:
        self._moments = EWMoments(2.0 / (span + 1))
        self._min_history = min_history

    def update(self, raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """log P(raw' >= raw) under the history before each row (0 while warming up).

        Rows where ``valid`` is False are scored 0 and do not enter the history.
        ``raw`` of shape ``(n, k)`` calibrates k scores of one stream at once.
        """
        raw = np.asarray(raw, dtype=float)
        if valid is not None and not valid.all():
            out = np.zeros(raw.shape)
            out[valid] = self.update(raw[valid])
            return out
        seen = (self._moments.n + np.arange(len(raw))).reshape((-1,) + (1,) * (raw.ndim - 1))
        mean, var = self._moments.update(raw)
        mean = nan_to_zero(mean)
        # a raw score that never moved must not make a tiny wiggle "impossible"
        std = np.maximum(np.sqrt(nan_to_zero(var)), REL_STD_FLOOR * np.abs(mean) + 1e-9)
        logp = log_ndtr(-(raw - mean) / std)
        return np.where(seen >= self._min_history, np.minimum(logp, 0.0), 0.0)


def bonferroni(logp: np.ndarray) -> np.ndarray:
    """log of ``min(1, k * min_i p_i)`` across the last axis (any one is enough)."""
    k = logp.shape[-1]
    return np.minimum(logp.min(axis=-1) + math.log(k), 0.0)


def fisher(logp: np.ndarray) -> np.ndarray:
    """log tail probability of Fisher's ``-2 sum ln p_i`` across the last axis.

    Rewards agreement: two moderately small p give a smaller combined p than
    either alone, yet one component at p = 1 costs only a modest factor.
    """
    k = logp.shape[-1]
    half = -logp.sum(axis=-1)  # X/2 with X ~ chi2(2k) under the null
    terms = np.stack([j * np.log(np.maximum(half, 1e-300)) - math.lgamma(j + 1) for j in range(k)], axis=-1)
    return np.minimum(-half + np.logaddexp.reduce(terms, axis=-1), 0.0)


def to_score(logp: np.ndarray, decades: float) -> np.ndarray:
    """Map log p to [0, 1]: ``-log10(p) / decades``, clipped."""
    return np.clip(-logp / (LN10 * decades), 0.0, 1.0) + 0.0  # no -0.0
