"""Exponentially weighted mean and variance that stream exactly like a batch.

Why a linear filter: ``scipy.signal.lfilter`` runs the recurrence
``m_t = (1 - a) m_{t-1} + a x_t`` sequentially in C and hands back its state,
so feeding a series in chunks of any size (down to one row) gives bit-for-bit
the same output as one call.  That is what lets the detector promise
"tick-by-tick == batch" while scoring hundreds of thousands of rows per second.

Estimates are bias-corrected (divided by ``1 - (1 - a)^n``), so they are the
exact weighted average of the rows seen so far, not pulled towards 0 at
start-up.  Memory is O(1) per statistic.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


class EWMean:
    """Bias-corrected exponentially weighted mean of a stream."""

    __slots__ = ("alpha", "_b", "_a", "_zi", "n")

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._b = np.array([alpha])
        self._a = np.array([1.0, alpha - 1.0])
        self._zi = np.zeros(1)
        self.n = 0

    def update(self, x: np.ndarray) -> np.ndarray:
        """Feed rows; return the estimate after each row (including it)."""
        raw, self._zi = lfilter(self._b, self._a, x, zi=self._zi)
        weight = -np.expm1((self.n + np.arange(1, len(x) + 1)) * np.log1p(-self.alpha)) \
            if self.alpha < 1.0 else np.ones(len(x))
        self.n += len(x)
        return raw / weight


def lagged(current: np.ndarray, previous: float) -> np.ndarray:
    """``current`` shifted one row later, ``previous`` in front: the value at t-1."""
    return np.concatenate(([previous], current[:-1]))


class EWMoments:
    """EW mean and variance of a stream; ``update`` returns the *prior* moments.

    The prior (row t-1) moments are what a causal z-score of row t needs; the
    variance is the EW mean of squared deviations from the prior mean.
    """

    __slots__ = ("_mean", "_var", "_last_mean", "_last_var")

    def __init__(self, alpha: float) -> None:
        self._mean = EWMean(alpha)
        self._var = EWMean(alpha)
        self._last_mean = float("nan")
        self._last_var = float("nan")

    @property
    def n(self) -> int:
        return self._mean.n

    def update(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed rows; return (mean, variance) as they were before each row."""
        mean = self._mean.update(x)
        prior_mean = lagged(mean, self._last_mean)
        dev = np.where(np.isnan(prior_mean), 0.0, x - prior_mean)
        var = self._var.update(dev * dev)
        prior_var = lagged(var, self._last_var)
        if len(x):
            self._last_mean, self._last_var = float(mean[-1]), float(var[-1])
        return prior_mean, prior_var
